"""A user's script driving the tree with the Python API only (run as a subprocess).

Two masters in sequence on the process's own `procbus.bus`, as a script that
restarts its tree would do; prints one JSON line per master.
"""

from __future__ import annotations

import json
import sys

from procbus import ChannelFailures, bus
from procbus.master import Master


async def _async_listener() -> str:
    return "never awaited on the master"


def main(runtime_dir: str) -> int:
    for round_number in (1, 2):
        master = Master(
            "tests.tree.apps:echo", workers=4, runtime_dir=f"{runtime_dir}/{round_number}"
        )
        with master:
            if not master.start(timeout=30):
                raise SystemExit("the workers did not start")
            reply = master.publish("whoami", timeout=10)
            failed = master.publish("boom", timeout=10)
            try:
                failed.raise_for_failures()
            except ChannelFailures as exc:
                failures = [str(error) for error in exc.get_instances()]
            else:
                failures = []
            bus.subscribe("nap", _async_listener)
            napped = master.publish("nap", timeout=10)
            bus.unsubscribe("nap", _async_listener)
            workers = {str(w): [r.status.value, r.results] for w, r in reply.workers.items()}
            listeners = {k: len(v) for k, v in bus.listeners.items() if v}
            print(
                json.dumps(
                    {
                        "round": round_number,
                        "ok": reply.ok,
                        "workers": workers,
                        "failures": sorted(failures),
                        "listeners": listeners,
                        "async_on_master": [str(e) for e in napped.master_errors],
                    }
                ),
                flush=True,
            )
    print(json.dumps({"state": str(bus.state)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
