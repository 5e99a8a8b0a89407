"""The master process: event loop, pool, relay and runtime directory."""

from procbus.master.master import Master, TreeSettings
from procbus.master.planner import Backoff, Supervision, WorkerState
from procbus.master.relay import TreeReply, WorkerResult, WorkerStatus

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
