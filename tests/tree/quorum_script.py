"""A user's script publishing with a requirement and to chosen workers, from the Python
API (run as a subprocess); prints one JSON line per publish."""

from __future__ import annotations

import json
import sys
from typing import Any

from procbus import ChannelFailures
from procbus.master import Master, TreeReply


def summary(reply: TreeReply) -> dict[str, Any]:
    return {
        "ok": reply.ok,
        "met": reply.met,
        "pending": reply.pending,
        "workers": {str(w): r.status.value for w, r in reply.workers.items()},
        "results": {str(w): r.results for w, r in reply.workers.items()},
    }


def main(runtime_dir: str) -> int:
    with Master("tests.tree.apps:echo", workers=4, runtime_dir=runtime_dir) as master:
        if not master.start(timeout=30):
            raise SystemExit("the workers did not start")
        quorum = master.publish("hang", 2, 3.0, require=3, timeout=10)
        print(json.dumps({"quorum": summary(quorum)}), flush=True)
        targeted = master.publish("whoami", to=[3], timeout=10)
        print(json.dumps({"targeted": summary(targeted)}), flush=True)
        try:
            master.publish("whoami", to=[9])
        except ValueError as exc:
            print(json.dumps({"refused": str(exc)}), flush=True)
        failed = master.publish("boom", require="any", timeout=10)
        try:
            failed.raise_for_failures()
        except ChannelFailures as exc:
            raised = [f"{type(e).__name__}: {e}" for e in exc.get_instances()]
        print(json.dumps({"failed": summary(failed), "raised": raised}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
