"""Samples for memory-aware recycling: every worker's RSS, on one timer, only while
``max_rss`` is set.

The decision is the planner's (`procbus.master.planner.rss_exceeded`: a pure
function of a worker's last samples and the policy). This module only takes
the samples, through the process monitor's psutil handles, and hands them to
the pool, which records them on each worker and asks the planner again when
one is over the limit. With ``max_rss`` 0 nothing runs: no timer, no read.

One sample per heartbeat interval (1 s by default), of the running workers
only (a booting or draining worker is not recycled). Memory grows with the
requests a worker serves, so `rss_samples` samples in a row (3 s by default)
see a leak long before it matters, and one read of ``/proc/PID/statm`` per
worker per interval is nothing beside what receiving the heartbeats costs the
master (``scripts/bench_idle.py --max-rss`` measures it). The heartbeat
interval is already the tree's pace for "how often the master hears about a
worker": shortening it for a quicker hang detection quickens this too, and
no other knob is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from procbus.master.loop import EventLoop, Timer
from procbus.master.planner import WorkerState
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings

ReadRss = Callable[[Iterable[int]], Mapping[int, int | None]]
"""pids -> the RSS of each in bytes, None where it cannot be read (`ProcessMonitor.rss`)."""


class MemoryWatch:
    """Samples the running workers' RSS every heartbeat interval of the tree's current
    `settings()` while the pool's policy has a ``max_rss``; records them on the pool."""

    def __init__(self, pool: Pool, read: ReadRss, settings: Callable[[], TreeSettings]) -> None:
        self.pool = pool
        self.loop: EventLoop = pool.loop
        self.read = read
        self.settings = settings
        self._timer: Timer | None = None
        self.update()

    @property
    def sampling(self) -> bool:
        return self._timer is not None

    def update(self) -> None:
        """Start sampling if the policy has a ``max_rss`` now (at first, and when the
        settings change); a series stops by itself at its next turn once it has none."""
        if self._timer is None and self.pool.policy.max_rss > 0:
            self._timer = self.loop.call_later(self.settings().heartbeat_interval, self._sample)

    def _sample(self) -> None:
        self._timer = None
        if self.pool.policy.max_rss <= 0:
            return
        running = [w for w in self.pool.current_workers() if w.state is WorkerState.RUNNING]
        if running:
            figures = self.read([worker.pid for worker in running])
            self.pool.record_rss({worker: figures.get(worker.pid) for worker in running})
        self.update()
