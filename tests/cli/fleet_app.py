"""The worker app of the fleet tests (imported in the workers, after fork).

A worker fails to boot while the file named by ``PROCBUS_TEST_FAIL_BOOT``
exists (as an app whose config was broken before a reload); its ``stamp``
listener sleeps and says when it ran, so that a test can tell whether the
masters ran a publish at the same time.
"""

from __future__ import annotations

import os
import time
from typing import Any

from procbus.worker.apps import WorkerContext

_FLAG = os.environ.get("PROCBUS_TEST_FAIL_BOOT")
if _FLAG and os.path.exists(_FLAG):
    raise RuntimeError(f"{_FLAG} exists: this worker refuses to boot")


def stamping(ctx: WorkerContext) -> None:
    """A worker whose ``stamp SECONDS`` listener sleeps, then returns when it ran."""

    @ctx.bus.subscribe("stamp")
    def stamp(seconds: float) -> dict[str, Any]:
        start = time.time()
        time.sleep(seconds)
        return {"pid": os.getpid(), "start": start, "end": time.time()}

    ctx.stopping.wait()
