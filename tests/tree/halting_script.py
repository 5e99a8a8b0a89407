"""A user's script whose app cannot boot, driving `Master` from Python only (a subprocess).

First `start()` then `run()`, each on a fresh master with a boot timeout far longer
than the test waits: each must give up as soon as a worker fails to boot. Prints one
JSON line per master.
"""

from __future__ import annotations

import json
import sys

from procbus.master import Master, Supervision, TreeSettings

APP = "tests.tree.broken_app:main"


def main(runtime_dir: str) -> int:
    settings = TreeSettings(workers=2, supervision=Supervision(boot_timeout=600.0))
    master = Master(APP, runtime_dir=f"{runtime_dir}/1", settings=settings)
    with master:
        started = master.start()
        print(
            json.dumps(
                {"started": started, "exiting": master.exiting, "halted": master.pool.view.halted}
            ),
            flush=True,
        )
    master = Master(APP, runtime_dir=f"{runtime_dir}/2", settings=settings)
    status = master.run()
    print(json.dumps({"run": status, "halted": master.pool.view.halted}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
