"""A master as the plugins of ``procbus run`` see it, driven by hand.

`MasterPIDFile` and `SystemdNotify` read a master's bus, event stream, loop,
pool figures and lineage. Here the bus, the event loop (on a clock the test
moves) and the event stream are real; the pool and the lineage are plain
objects whose figures the test sets. Nothing is forked or bound.
"""

from __future__ import annotations

import os
from typing import Any

from procbus.bus import Bus
from procbus.master.events import EventStream
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc, WorkerState


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Workers:
    """The pool's figures: the workers wanted, and every child by pid."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.by_pid: dict[int, WorkerProc] = {}

    def add(self, state: WorkerState, heartbeat: float | None = None) -> WorkerProc:
        worker_id = len(self.by_pid) + 1
        worker = WorkerProc(worker_id, 1, 10_000 + worker_id, 0.0, state=state)
        worker.last_heartbeat = heartbeat
        self.by_pid[worker.pid] = worker
        return worker

    def all_running(self) -> bool:
        running = [w for w in self.by_pid.values() if w.state is WorkerState.RUNNING]
        return len(running) == self.target


class Line:
    """Where the master is in its line (`procbus.master.lineage.Lineage`'s flags)."""

    def __init__(self) -> None:
        self.successor: object | None = None
        self.exec_requested = False
        self.upgraded_to: int | None = None

    @property
    def going(self) -> bool:
        return self.exec_requested or self.upgraded_to is not None


class HostedMaster:
    """The master's parts its plugins read; `close` it."""

    def __init__(self, workers: int = 2, bus: Bus | None = None) -> None:
        self.pid = os.getpid()
        self.generation = 1
        self.bus = bus if bus is not None else Bus()
        self.clock = ManualClock()
        self.loop = EventLoop(self.clock)
        self.event_stream = EventStream(self.loop, dict, 1.0)
        self.pool = Workers(workers)
        self.lineage = Line()

    def emit(self, event: str, **data: Any) -> None:
        """An event, as the master's parts emit them (no socket: observers only)."""
        self.event_stream.emit(event, **data)

    def run_workers(self) -> None:
        """Every wanted worker runs, having just heartbeat; the pool says ``ready``."""
        while len(self.pool.by_pid) < self.pool.target:
            self.pool.add(WorkerState.RUNNING, heartbeat=self.clock.now)
            self.emit("ready", worker=len(self.pool.by_pid))

    def advance(self, seconds: float) -> None:
        """Move the clock, and run the timers that fell due."""
        self.clock.now += seconds
        self.loop.run_once(0)

    def close(self) -> None:
        self.loop.close()
