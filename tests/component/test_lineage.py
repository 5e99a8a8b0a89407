"""What crosses an exec or goes to a successor, round trip: `Lineage.hand_over` ->
`handover.export` (the environment) -> `Inherited.take` -> the next `Lineage.inherit`.

Both masters are in this process: the "exec" is a second `Lineage` over a second
pool, given what the first one exported. The workers are fake processes that
outlive the first pool, as real ones outlive an exec.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from procbus import protocol
from procbus.errors import StartupError
from procbus.master.control_server import ControlSettings
from procbus.master.endpoints import Endpoints
from procbus.master.events import EventStream
from procbus.master.handover import (
    FDS_VARIABLE,
    RETAINED_VARIABLE,
    AdoptedWorker,
    HandOver,
    Inherited,
    export,
)
from procbus.master.jobs import upgrade
from procbus.master.lineage import Lineage
from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from procbus.master.relay import Relay
from procbus.master.retainer import Retainer
from procbus.master.runtime import RuntimeDir
from procbus.master.settings import TreeSettings
from tests.component.fakes import FakeProcesses, Recorder, fake_pool
from tests.helpers import Sockets


@dataclass
class Line:
    """One master's lineage and what it is built on."""

    lineage: Lineage
    pool: Pool
    relay: Relay
    runtime: RuntimeDir
    endpoints: Endpoints
    retainer: Retainer
    exits: list[bool] = field(default_factory=list)


@pytest.fixture
def make_line(
    loop: EventLoop, sockets: Sockets, short_tmp: Path, recorder: Recorder
) -> Iterator[Callable[[Pool, int], Line]]:
    """Builds the lineage of a master over `pool`, configured for `workers` workers."""
    made: list[Line] = []

    def make(pool: Pool, workers: int) -> Line:
        runtime = RuntimeDir.for_name("component", short_tmp / "rt")
        endpoints = Endpoints(runtime, ControlSettings(), None, EventStream(loop, dict, 1.0))
        relay = Relay(sockets.socket(zmq.PUB), loop)
        exits: list[bool] = []
        retainer = Retainer(recorder.emit)
        lineage = Lineage(
            pool=pool, runtime=runtime, endpoints=endpoints, sockets=[],
            settings=lambda: TreeSettings(workers=workers), relay=lambda: relay, loop=loop,
            emit=recorder.emit, request_exit=lambda fast=False: exits.append(fast),
            exiting=lambda: False, retainer=retainer,
        )  # fmt: skip
        line = Line(lineage, pool, relay, runtime, endpoints, retainer, exits)
        made.append(line)
        return line

    try:
        yield make
    finally:
        for line in made:
            line.runtime.release()


def across(hand: HandOver) -> tuple[Inherited, dict[str, str]]:
    """Export `hand` into a fresh environment and take it back, as the next master does."""
    environ: dict[str, str] = {}
    export(environ, hand)
    return Inherited.take(environ), environ


def workers_of(pool: Pool) -> list[tuple[int, int, int]]:
    return [(w.id, w.generation, w.pid) for w in pool.current_workers()]


def next_pool(loop: EventLoop, processes: FakeProcesses, recorder: Recorder, target: int) -> Pool:
    """The pool of the re-executed master (the workers' processes are the same)."""
    return fake_pool(loop, processes, recorder.emit, target=target)


def test_restart_adopt_hands_generations_target_and_live_workers_to_the_next_master(
    pool: Pool,
    loop: EventLoop,
    processes: FakeProcesses,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: a master configured for 2 workers runs 3 (scaled at runtime); worker 1 died
    once (now generation 2); 41 publishes went out. It restarts with --adopt: the
    hand-over crosses the environment to the next master, configured for 2 again, which
    adopts.
    Expected: the next master is generation 2; worker generations go on from {1: 2,
    2: 1, 3: 1}; it keeps 3 workers; it adopts the same three pids at their generations
    and forks nothing; the publish numbers go on from 42; no hand-over variable is left
    in the environment but the listening sockets' (read by `procbus run`)."""
    first = make_line(pool, 2)
    pool.scale(3)
    assert loop.run_until(pool.all_running, 5.0)
    (one,) = [w for w in pool.current_workers() if w.id == 1]
    processes.exit(one.pid, -signal.SIGKILL)
    assert loop.run_until(lambda: pool.all_running() and workers_of(pool)[0][1] == 2, 10.0), (
        workers_of(pool)
    )
    first.relay.seq = 41
    live = workers_of(pool)
    first.lineage.re_execute(adopt=True)
    assert first.exits == [False]
    first.lineage.before_exec()
    found, environ = across(first.lineage.hand_over())
    assert [name for name in environ if name.startswith("PROCBUS_")] == [FDS_VARIABLE]

    forked = len(processes.by_pid)
    second = make_line(next_pool(loop, processes, recorder, target=2), 2)
    second.lineage.inherit(found, configured_workers=2)
    assert second.lineage.generation == 2
    assert second.pool.generations == {1: 2, 2: 1, 3: 1}
    assert second.pool.target == 3
    assert second.lineage.worker_tag() == first.runtime.worker_tag
    second.lineage.adopt()
    assert workers_of(second.pool) == live
    assert all(w.adopted for w in second.pool.current_workers())
    assert second.relay.next_seq == 42
    second.pool.activate()
    loop.run_until(lambda: False, 1.0)
    assert len(processes.by_pid) == forked


def test_a_changed_configured_count_wins_over_the_count_set_at_runtime(
    pool: Pool,
    processes: FakeProcesses,
    loop: EventLoop,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: configured for 2, scaled to 3 at runtime; restart (no adopt) into a master
    whose configuration now says 4.
    Expected: the next master keeps its configured 4; without adoption it adopts nothing
    (its workers are forked anew); the generation still goes on."""
    first = make_line(pool, 2)
    pool.scale(3)
    first.lineage.re_execute(adopt=False)
    first.lineage.before_exec()
    found, _ = across(first.lineage.hand_over())
    assert found.adoption is None
    second = make_line(next_pool(loop, processes, recorder, target=4), 4)
    second.lineage.inherit(found, configured_workers=4)
    assert second.pool.target == 4
    assert second.lineage.generation == 2
    second.lineage.adopt()
    assert workers_of(second.pool) == []


def test_a_worker_that_dies_between_the_restart_job_and_the_exec_is_not_adopted(
    pool: Pool, processes: FakeProcesses, make_line: Callable[[Pool, int], Line]
) -> None:
    """Steps: two running workers; restart --adopt is decided; then worker 2's process
    dies, before the master's loop saw it (no SIGCHLD handled yet); the loop ends and
    the master prepares the exec.
    Expected: the hand-over adopts worker 1 only (the dead pid is reaped first)."""
    first = make_line(pool, 2)
    one, two = pool.current_workers()
    first.lineage.re_execute(adopt=True)
    processes.exit(two.pid, -signal.SIGKILL)
    first.lineage.before_exec()
    found, _ = across(first.lineage.hand_over())
    assert found.adoption is not None
    assert found.adoption.workers == (AdoptedWorker(1, one.generation, one.pid),)


def test_live_workers_leave_out_dead_workers_and_empty_slots(
    pool: Pool, loop: EventLoop, processes: FakeProcesses, make_line: Callable[[Pool, int], Line]
) -> None:
    """Steps: two running workers; worker 1 dies and is reaped; look at the live workers
    before its slot is filled again.
    Expected: only worker 2, with its generation and pid, and the tree's worker tag."""
    line = make_line(pool, 2)
    one, two = pool.current_workers()
    processes.exit(one.pid, -signal.SIGKILL)
    loop.run_once(0)
    slot = pool.slot(1)
    assert slot is not None and slot.current is None
    live = line.lineage.live_workers()
    assert live.workers == (AdoptedWorker(2, two.generation, two.pid),)
    assert live.worker_tag == line.runtime.worker_tag


def test_the_lock_and_the_names_sockets_cross_the_exec(
    pool: Pool,
    loop: EventLoop,
    processes: FakeProcesses,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: a master holds its runtime directory's lock and a descriptor of its control
    socket; it restarts; the next master (same process) inherits.
    Expected: the next master holds the same lock (a third master is refused: another
    master is already running) and gets the control descriptor to listen on."""
    first = make_line(pool, 2)
    first.runtime.acquire()
    control_r, control_w = os.pipe()
    try:
        first.endpoints.name_fds = {"control": control_r}
        first.lineage.re_execute(adopt=False)
        hand = first.lineage.hand_over()
        assert hand.lock_fd == first.runtime.lock_fd is not None
        found, _ = across(hand)
        first.runtime.release(keep_lock=True)  # as the exec does
        second = make_line(next_pool(loop, processes, recorder, target=2), 2)
        second.lineage.inherit(found, configured_workers=2)
        assert second.runtime.lock_fd == hand.lock_fd
        assert second.endpoints.inherited_fds == {"control": control_r}
        second.runtime.acquire()  # checks the lock it kept is the directory's
        third = RuntimeDir.for_name("component", second.runtime.path)
        with pytest.raises(StartupError, match="another master is already running"):
            third.acquire()
        third.release()
    finally:
        os.close(control_r)
        os.close(control_w)


def test_an_upgrade_hands_the_successor_its_pipes_but_neither_lock_nor_workers(
    pool: Pool,
    loop: EventLoop,
    processes: FakeProcesses,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: a running master hands over to a successor (upgrade): its hand-over with the
    two pipes crosses to the new master.
    Expected: the new master is the next generation, waits to take the name over (it
    does not hold it yet), and has the pipes; no lock and no workers were handed over."""
    first = make_line(pool, 2)
    ready_r, ready_w = os.pipe()
    alive_r, alive_w = os.pipe()
    try:
        hand = dataclasses.replace(first.lineage.hand_over(), successor=(ready_w, alive_r))
        assert (hand.lock_fd, hand.adoption) == (None, None)
        found, _ = across(hand)
        second = make_line(next_pool(loop, processes, recorder, target=2), 2)
        second.lineage.inherit(found, configured_workers=2)
        assert second.lineage.generation == 2
        assert not second.lineage.holds_name
        successor = second.lineage.successor
        assert successor is not None
        assert (successor.ready_fd, successor.alive_fd) == (ready_w, alive_r)
        assert second.runtime.lock_fd is None and second.lineage.to_adopt is None
    finally:
        for fd in (ready_r, ready_w, alive_r, alive_w):
            os.close(fd)


def retain(line: Line, channel: str, seq: int) -> None:
    frame = protocol.PublishTemplate(channel, [seq], {}, 5.0).frame(seq)
    line.retainer.keep(channel, seq, frame, "master code")


def test_the_retained_publishes_cross_a_restart_in_order_and_go_on_from_there(
    pool: Pool,
    loop: EventLoop,
    processes: FakeProcesses,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: retain a, b, then a again; restart (no adopt): the hand-over crosses the
    environment; the next master retains c.
    Expected: the next master holds b then a (the same frames, seqs, times and who),
    and c after them; the environment holds a descriptor's number for them, not the
    publishes."""
    first = make_line(pool, 2)
    for channel, seq in (("a", 1), ("b", 2), ("a", 3)):
        retain(first, channel, seq)
    first.lineage.re_execute(adopt=False)
    first.lineage.before_exec()
    environ: dict[str, str] = {}
    export(environ, first.lineage.hand_over())
    assert environ[RETAINED_VARIABLE].isdigit()
    found = Inherited.take(environ)
    second = make_line(next_pool(loop, processes, recorder, target=2), 2)
    second.lineage.inherit(found, configured_workers=2)
    assert list(second.retainer.store) == list(first.retainer.store)
    assert [p.channel for p in second.retainer.store] == ["b", "a"]
    retain(second, "c", 1)
    assert [p.channel for p in second.retainer.store.since(first.retainer.store.last_order)] == [
        "c"
    ]


def test_adopted_workers_are_owed_only_what_is_retained_after_the_exec(
    pool: Pool,
    loop: EventLoop,
    processes: FakeProcesses,
    recorder: Recorder,
    make_line: Callable[[Pool, int], Line],
) -> None:
    """Steps: retain a; restart --adopt; the next master adopts the two workers.
    Expected: each adopted worker is owed (it is sent what is retained from now on,
    before its WELCOME), and has a already: nothing retained since the exec."""
    first = make_line(pool, 2)
    retain(first, "a", 1)
    first.lineage.re_execute(adopt=True)
    first.lineage.before_exec()
    found, _ = across(first.lineage.hand_over())
    second = make_line(next_pool(loop, processes, recorder, target=2), 2)
    second.lineage.inherit(found, configured_workers=2)
    second.lineage.adopt()
    adopted = list(second.pool.current_workers())
    assert len(adopted) == 2
    assert all(second.retainer.owes(worker) for worker in adopted)
    assert second.retainer.store.since(second.retainer.store.last_order) == []


def test_an_upgrade_seals_the_retained_publishes_until_it_fails(
    pool: Pool, make_line: Callable[[Pool, int], Line]
) -> None:
    """Steps: retain a; take the hand-over for an upgrade; try to retain and to clear;
    the upgrade fails.
    Expected: while the hand-over is out, both are refused in one line saying why (a
    change would not reach the new master); after the failure they are allowed again."""
    line = make_line(pool, 2)
    retain(line, "a", 1)
    line.lineage.hand_over()
    for channel in ("a", "b"):
        with pytest.raises(ValueError, match=r"cannot change now: .*handed over"):
            line.retainer.check(channel, 10)
    line.lineage.upgrade_failed()
    line.retainer.check("b", 10)
    assert line.retainer.clear("a")


def test_an_upgrade_that_cannot_start_its_successor_unseals_the_retained_publishes(
    pool: Pool, make_line: Callable[[Pool, int], Line], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: retain a; an upgrade whose fork of the new master fails.
    Expected: the upgrade raises the fork's error; this master serves on and may retain
    and clear again (the store is not left sealed)."""
    line = make_line(pool, 2)
    retain(line, "a", 1)

    def no_fork(*args: object) -> None:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(upgrade, "spawn_successor", no_fork)
    tree = SimpleNamespace(
        lineage=line.lineage, bus=SimpleNamespace(exec_args=lambda: ("python", ["python"]))
    )
    with pytest.raises(OSError, match="Resource temporarily unavailable"):
        upgrade.upgrade_tree(tree, None)  # type: ignore[arg-type]
    line.retainer.check("b", 10)
    assert line.retainer.clear("a")
