#!/usr/bin/env python3
"""The master's cost per event of a reload, by pool size: is anything quadratic?

A real `procbus.master.pool.Pool` (and so the planner) over simulated
processes on a fake clock: N running workers, then one reload (the surge, or
``--batch K``), driven event by event as the master's loop would: each new
worker's hello, subscription and RUNNING state, every worker's heartbeat once,
the promotions and drains the planner decides, and the reap of every old
worker. Each event handler is timed with ``time.perf_counter``; the reload's
events are counted.

Printed per N: the events, the total time, the mean and the largest time per
event, and the mean per event divided by N. The planner looks at every slot on
every event, so the mean per event grows with N; if nothing is quadratic per
event, the last column stays flat from 16 to 128 workers.

Run: ``.venv/bin/python scripts/bench_planner.py [--workers 16 64 128] [--batch 0]``.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

from procbus.master.loop import EventLoop
from procbus.master.planner import RolloutOutcome, Supervision, WorkerProc
from procbus.master.pool import Pool
from procbus.protocol import WorkerBusState


class Simulated:
    """The kernel as the pool sees it: forks succeed, a signalled process exits."""

    def __init__(self) -> None:
        self.alive: set[int] = set()
        self.exited: collections.deque[tuple[int, int]] = collections.deque()
        self._pids = itertools.count(10_000_000)

    def spawn(self, worker_id: int, generation: int) -> int:
        pid = next(self._pids)
        self.alive.add(pid)
        return pid

    def kill(self, pid: int, signum: int) -> None:
        if pid not in self.alive:
            raise ProcessLookupError(pid)
        self.alive.discard(pid)
        self.exited.append((pid, 0))

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if self.exited:
            return self.exited.popleft()
        if self.alive:
            return 0, 0
        raise ChildProcessError(pid)


def boot(pool: Pool, worker: WorkerProc, timed: Callable[..., None]) -> None:
    """`worker` says hello, subscribes and runs, each one event."""
    timed(pool.hello, worker)
    timed(pool.subscribed, worker.topic)
    timed(pool.worker_state, worker, WorkerBusState.RUNNING, None)


def measure(workers: int, batch: int) -> list[float]:
    """Seconds spent in each event handler during one reload of `workers` workers."""
    now = [0.0]
    loop = EventLoop(lambda: now[0])
    kernel = Simulated()
    pool = Pool(
        loop,
        policy=Supervision(),
        spawn=kernel.spawn,
        emit=lambda event, **data: None,
        target=workers,
        kill=kernel.kill,
        waitpid=kernel.waitpid,
    )
    times: list[float] = []

    def timed(handler: Callable[..., None], *args: Any) -> None:
        began = time.perf_counter()
        handler(*args)
        times.append(time.perf_counter() - began)

    try:
        pool.activate()
        for worker in list(pool.by_pid.values()):
            boot(pool, worker, lambda handler, *args: handler(*args))
        assert pool.all_running()
        rollout = pool.start_rollout(batch)
        booted: set[int] = set()
        while rollout.outcome is RolloutOutcome.RUNNING:
            now[0] += 0.1
            fresh = [w for w in pool.by_pid.values() if w.generation > 1 and w.pid not in booted]
            for worker in fresh:
                booted.add(worker.pid)
                boot(pool, worker, timed)
            for worker in list(pool.by_pid.values()):
                timed(pool.heartbeat, worker, {"requests": 1})
            timed(pool.reap)
            if not fresh and not kernel.exited and rollout.outcome is RolloutOutcome.RUNNING:
                raise RuntimeError("the reload is stuck")
        assert rollout.outcome is RolloutOutcome.DONE, rollout.failure
        return times
    finally:
        loop.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--batch", type=int, default=0, help="0: the surge (default)")
    parser.add_argument("--repeat", type=int, default=5, help="reloads per size; best kept")
    args = parser.parse_args()
    print(f"reload, batch {args.batch} ({'surge' if args.batch == 0 else 'rolling'})")
    print(f"{'workers':>7} {'events':>7} {'total ms':>9} {'mean us':>8} {'max us':>8} {'us/N':>6}")
    for workers in args.workers:
        runs = [measure(workers, args.batch) for _ in range(args.repeat)]
        best = min(runs, key=sum)
        mean = statistics.fmean(best)
        print(
            f"{workers:>7} {len(best):>7} {sum(best) * 1e3:>9.1f} {mean * 1e6:>8.1f}"
            f" {max(best) * 1e6:>8.0f} {mean * 1e6 / workers:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
