"""The pool's records: workers adopted from a previous master (``restart --adopt``), and
the DRAIN marker a worker is sent before its SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from procbus.master.loop import EventLoop
from procbus.master.planner import Supervision, WorkerProc, WorkerState
from procbus.master.pool import Pool
from procbus.protocol import WorkerBusState


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
            waitpid=lambda pid, flags: (0, 0),  # every adopted pid is a live child
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


class Draining:
    """A pool on a real `EventLoop` that forks nothing: what it marks and signals, in order."""

    def __init__(self, loop: EventLoop, target: int) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.pool = Pool(
            loop,
            policy=Supervision(),
            spawn=self._spawn,
            emit=lambda event, **data: None,
            target=target,
            kill=lambda pid, signum: self.events.append(("signal", pid, signum)),
        )
        self.pool.on_drain = lambda worker: self.events.append(("drain", worker.id))

    @staticmethod
    def _spawn(worker_id: int, generation: int) -> int:
        return 1000 * worker_id + generation

    def run(self, worker: WorkerProc) -> None:
        """`worker` says hello, subscribes and runs (a target of publishes from now on)."""
        self.pool.hello(worker)
        self.pool.subscribed(worker.topic)
        self.pool.worker_state(worker, WorkerBusState.RUNNING, None)
        assert worker.state is WorkerState.RUNNING

    def worker(self, worker_id: int) -> WorkerProc:
        slot = self.pool.slot(worker_id)
        assert slot is not None and slot.current is not None
        return slot.current


@pytest.fixture
def draining() -> Iterator[Draining]:
    loop = EventLoop()
    try:
        yield Draining(loop, target=2)
    finally:
        loop.close()


def test_running_worker_drained_is_sent_its_marker_before_its_sigterm(
    draining: Draining,
) -> None:
    """Steps: 2 running workers; scale to 1.
    Expected: worker 2 is sent its DRAIN marker, then SIGTERM; worker 1 neither."""
    draining.pool.activate()
    second = draining.worker(2)
    for worker_id in (1, 2):
        draining.run(draining.worker(worker_id))
    draining.pool.scale(1)
    assert draining.events == [("drain", 2), ("signal", second.pid, signal.SIGTERM)]
    assert second.state is WorkerState.STOPPING


def test_no_marker_for_a_worker_not_yet_running_or_stopped_fast(draining: Draining) -> None:
    """Steps: worker 1 runs, worker 2 is still booting; scale to 1, then stop fast.
    Expected: worker 2 (nobody's target yet) gets SIGTERM only; worker 1, cut by a fast
    stop, gets SIGQUIT only: neither drains."""
    draining.pool.activate()
    first, second = draining.worker(1), draining.worker(2)
    draining.run(first)
    draining.pool.scale(1)
    draining.pool.deactivate(fast=True)
    assert draining.events == [
        ("signal", second.pid, signal.SIGTERM),
        ("signal", first.pid, signal.SIGQUIT),
    ]


def test_worker_that_stops_on_its_own_is_sent_its_marker_once(draining: Draining) -> None:
    """Steps: 2 running workers; worker 2 reports 'stopping' (someone else's TERM), then
    'stopped'; worker 1 reports 'failed' (its app ended).
    Expected: worker 2 is sent its marker once, when it reports stopping, and is no
    longer a target; worker 1, which does not drain, is sent none; nobody is signalled."""
    draining.pool.activate()
    first, second = draining.worker(1), draining.worker(2)
    draining.run(first)
    draining.run(second)
    draining.pool.worker_state(second, WorkerBusState.STOPPING, None)
    draining.pool.worker_state(second, WorkerBusState.STOPPED, None)
    draining.pool.worker_state(first, WorkerBusState.FAILED, "app: it broke")
    assert draining.events == [("drain", 2)]
    assert draining.pool.publish_targets() == ([], [])


def test_a_worker_that_died_before_the_exec_is_not_adopted() -> None:
    """Steps: adopt pid 4242, which is no child of ours any more (it died and was reaped
    before the master re-executed). Expected: nothing adopted, no slot made for it, and
    the slot's next worker goes on from its generation."""
    loop = EventLoop()
    spawned: list[tuple[int, int]] = []

    def not_a_child(pid: int, flags: int) -> tuple[int, int]:
        raise ChildProcessError(pid)

    try:
        pool = Pool(
            loop,
            policy=Supervision(),
            spawn=lambda worker_id, generation: spawned.append((worker_id, generation)) or 5000,
            emit=lambda event, **data: None,
            target=1,
            kill=lambda pid, signum: None,
            waitpid=not_a_child,
        )
        assert pool.adopt(1, 7, 4242) is None
        assert pool.by_pid == {}
        pool.activate()
        assert spawned == [(1, 8)]
    finally:
        loop.close()


def test_a_worker_whose_process_vanished_is_forgotten_when_signalled() -> None:
    """Steps: a worker whose pid no longer exists (kill raises ProcessLookupError) is
    drained. Expected: it is counted as exited (not waited for forever), with an error
    saying so, and its slot counts a restart (it is filled again after the backoff)."""
    loop = EventLoop()
    spawned: list[int] = []

    def gone(pid: int, signum: int) -> None:
        raise ProcessLookupError(pid)

    try:
        pool = Pool(
            loop,
            policy=Supervision(),
            spawn=lambda worker_id, generation: spawned.append(worker_id) or 6000 + len(spawned),
            emit=lambda event, **data: None,
            target=1,
            kill=gone,
            waitpid=lambda pid, flags: (0, 0),
        )
        pool.activate()
        (worker,) = pool.by_pid.values()
        pool.signal(worker, signal.SIGTERM)
        assert worker.state is WorkerState.EXITED
        assert worker.last_error is not None and "gone" in worker.last_error
        slot = pool.slot(1)
        assert slot is not None and slot.current is None and slot.restarts == 1
        assert pool.by_pid == {}
    finally:
        loop.close()


class Booting:
    """A pool on a real `EventLoop` whose forks are fake and whose children exit when the
    test says so (with the status it says): what it forked, emitted and gave up for."""

    BOOT_FAILED = 12

    def __init__(self, loop: EventLoop, target: int) -> None:
        self.spawned: list[int] = []
        self.exits: list[tuple[int, int]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.halts: list[str] = []
        self.pool = Pool(
            loop,
            policy=Supervision(),
            spawn=self._spawn,
            emit=lambda event, **data: self.events.append((event, data)),
            target=target,
            kill=lambda pid, signum: None,
            waitpid=self._waitpid,
            boot_failed_status=self.BOOT_FAILED,
        )
        self.pool.on_halt = self.halts.append

    def _spawn(self, worker_id: int, generation: int) -> int:
        self.spawned.append(worker_id)
        return 7000 + len(self.spawned)

    def _waitpid(self, pid: int, flags: int) -> tuple[int, int]:
        return self.exits.pop(0) if self.exits else (0, 0)

    def exit(self, worker: WorkerProc, code: int, error: str) -> None:
        """`worker` said why it fails, then exits with `code`; the pool reaps it."""
        self.pool.worker_state(worker, WorkerBusState.FAILED, error)
        self.exits.append((worker.pid, code << 8))
        self.pool.reap()

    def run(self, worker: WorkerProc) -> None:
        self.pool.hello(worker)
        self.pool.subscribed(worker.topic)
        self.pool.worker_state(worker, WorkerBusState.RUNNING, None)


@pytest.fixture
def booting() -> Iterator[Booting]:
    loop = EventLoop()
    try:
        yield Booting(loop, target=2)
    finally:
        loop.close()


def test_first_worker_that_cannot_boot_halts_the_pool_once(booting: Booting) -> None:
    """Steps: 2 workers forked; worker 1 reports a boot failure and exits with the
    boot-failure status, before any worker ran; then worker 2 does the same.
    Expected: on_halt is called once, with "worker 1 could not boot: <its error>"; a
    `halt` event says so; nothing is forked again; the pool counts as settled (nothing
    left to wait for) although no worker runs."""
    pool = booting.pool
    pool.activate()
    first, second = (slot.current for slot in pool.slots())
    assert first is not None and second is not None
    booting.exit(first, Booting.BOOT_FAILED, "boot: ImportError: no app")
    assert booting.halts == ["worker 1 could not boot: ImportError: no app"]
    assert ("halt", {"worker": 1, "reason": booting.halts[0]}) in booting.events
    booting.exit(second, Booting.BOOT_FAILED, "boot: ImportError: no app")
    assert len(booting.halts) == 1
    assert booting.spawned == [1, 2]
    assert pool.settled() and not pool.all_running()


def test_boot_failure_after_the_pool_came_up_is_backed_off_not_halted(booting: Booting) -> None:
    """Steps: 2 workers run (the pool came up); then worker 1 exits with the boot-failure
    status (say, a reload broke the app); the loop runs.
    Expected: no halt; slot 1 is forked again once its backoff passed."""
    pool = booting.pool
    pool.activate()
    for slot in pool.slots():
        assert slot.current is not None
        booting.run(slot.current)
    assert pool.view.booted
    first = pool.slots()[0].current
    assert first is not None
    booting.exit(first, Booting.BOOT_FAILED, "boot: ImportError: no app")
    assert booting.halts == []
    assert pool.view.halted is None
    assert booting.spawned == [1, 2]  # not at once: after the backoff
    assert pool.loop.run_until(lambda: booting.spawned == [1, 2, 1], timeout=5.0)
