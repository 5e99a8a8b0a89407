"""The pool's records of workers it adopted from a previous master (``restart --adopt``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from procbus.master.loop import EventLoop
from procbus.master.planner import Supervision, WorkerProc, WorkerState
from procbus.master.pool import Pool


class Adopting:
    """A pool on a real `EventLoop` that may neither fork nor signal, and whom it welcomed."""

    def __init__(self, loop: EventLoop) -> None:
        self.welcomed: list[WorkerProc] = []
        self.pool = Pool(
            loop,
            policy=Supervision(),
            spawn=self._no_spawn,
            emit=lambda event, **data: None,
            target=1,
            kill=self._no_kill,
        )
        self.pool.on_ready = self.welcomed.append

    @staticmethod
    def _no_spawn(worker_id: int, generation: int) -> int:
        raise AssertionError(f"worker {worker_id} was forked; it should have been adopted")

    @staticmethod
    def _no_kill(pid: int, signum: int) -> None:
        raise AssertionError(f"pid {pid} was sent signal {signum}")


@pytest.fixture
def adopting() -> Iterator[Adopting]:
    loop = EventLoop()
    try:
        yield Adopting(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("heartbeat_first", [False, True])
def test_adopted_worker_is_welcomed_once_subscribed_and_heard(
    adopting: Adopting, heartbeat_first: bool
) -> None:
    """Steps: adopt worker 1 (generation 3); its subscription arrives on XPUB and its
    first heartbeat on ROUTER, in either order.
    Expected: it stays starting, unwelcomed, until both happened (a WELCOME sent before
    its DEALER reconnected would be dropped); then it runs and is welcomed once."""
    pool = adopting.pool
    worker = pool.adopt(1, 3, 4242)
    pool.activate()
    steps = [lambda: pool.subscribed(b"w.1.3."), lambda: pool.heartbeat(worker, {})]
    first, second = reversed(steps) if heartbeat_first else steps
    first()
    assert worker.state is WorkerState.STARTING
    assert adopting.welcomed == []
    second()
    assert worker.state is WorkerState.RUNNING
    assert adopting.welcomed == [worker]
    pool.heartbeat(worker, {})
    assert adopting.welcomed == [worker]
