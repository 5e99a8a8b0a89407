"""The master process: event loop, pool, relay and runtime directory.

The names below are imported on first use: ``procbus ctl`` imports
``procbus.paths`` to find a master's control socket, and must not pay
for the whole master (pyzmq's poller, psutil, the planner, the worker) when it
does.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from procbus.master.master import Master
    from procbus.master.planner import Backoff, Supervision, WorkerState
    from procbus.master.relay import TreeReply, WorkerResult, WorkerStatus
    from procbus.master.settings import TreeSettings

_HOMES: Final = {
    "Backoff": "procbus.master.planner",
    "Master": "procbus.master.master",
    "Supervision": "procbus.master.planner",
    "TreeReply": "procbus.master.relay",
    "TreeSettings": "procbus.master.settings",
    "WorkerResult": "procbus.master.relay",
    "WorkerState": "procbus.master.planner",
    "WorkerStatus": "procbus.master.relay",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "Backoff",
    "Master",
    "Supervision",
    "TreeReply",
    "TreeSettings",
    "WorkerResult",
    "WorkerState",
    "WorkerStatus",
]
