"""Snapshots (``ctl status``, ``ctl stats``, each ``stats`` event) of a tree of fake
workers: every field, None where a figure is unknown, and nothing they read changed."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from procbus.bus import Bus
from procbus.master import Master, snapshot
from procbus.master.control_server import ControlServer
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from procbus.master.stats import ProcessMonitor
from procbus.protocol import BusState, WorkerBusState
from procbus.worker.apps import COUNTER_NAMES
from tests.component.fakes import FakeProcesses, Fate
from tests.helpers import FakeClock

FIGURES = ("pid", "cpu_percent", "rss", "uss", "threads", "fds", "connections", "cpu_seconds")


@dataclass
class ObservedTree:
    """A `snapshot.Observed`: a master (this process) with a pool of fake workers."""

    pool: Pool
    loop: EventLoop
    monitor: ProcessMonitor
    pid: int = field(default_factory=os.getpid)
    name: str = "component"
    started_at: float = field(default_factory=lambda: time.time() - 60)
    bus: Bus = field(default_factory=Bus)
    generation: int = 3
    addresses: dict[str, str] = field(default_factory=lambda: {"control": "ipc:///run/x/ctl"})
    hub: Hub | None = None
    control: ControlServer | None = None


@pytest.fixture
def tree(pool: Pool, loop: EventLoop, clock: FakeClock) -> ObservedTree:
    return ObservedTree(pool, loop, ProcessMonitor(max_age=0.5, clock=clock))


def unchanged(tree: ObservedTree) -> tuple[str, dict[int, Any], list[dict[str, int]]]:
    """What a snapshot must leave as it was."""
    pool = tree.pool
    counters = [dict(w.counters) for w in pool.by_pid.values()]
    return repr(pool.view), dict(pool.by_pid), counters


def test_status_describes_the_master_and_every_slot_running_or_backing_off(
    tree: ObservedTree, processes: FakeProcesses, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: two running workers, worker 1 having served 7 requests (its bus STARTED);
    worker 2's app fails ('app: it broke') and it exits 3, early, so its slot backs off;
    take the status.
    Expected: the master's pid, name, bus state, generation, uptime and endpoints;
    worker 1 running with its bus STARTED, its pid, generation, age and heartbeat age from
    the fake clock, its requests, no restart, no recycle, and None for CPU and memory (no
    such process); worker 2 in backoff with no pid, no bus state, no age, its slot's
    generation, one restart and its error."""
    one, two = tree.pool.current_workers()
    tree.pool.heartbeat(one, {"requests": 7}, BusState.STARTED)
    tree.pool.worker_state(two, WorkerBusState.FAILED, "app: it broke")
    processes.exit(two.pid, 3)
    loop.run_once(0)
    status = snapshot.status(tree)
    master = status["master"]
    assert master == {
        "pid": os.getpid(), "name": "component", "state": "STOPPED", "generation": 3,
        "uptime": master["uptime"], "endpoints": {"control": "ipc:///run/x/ctl"},
    }  # fmt: skip
    assert 60 <= master["uptime"] < 120
    assert one.last_heartbeat is not None
    assert status["workers"] == [
        {
            "id": 1, "pid": one.pid, "state": "running", "bus_state": "STARTED",
            "generation": 1, "age": clock() - one.started_at,
            "heartbeat_age": clock() - one.last_heartbeat, "cpu_percent": None, "rss": None,
            "requests": 7, "restarts": 0, "last_error": None, "last_recycle": None,
        },
        {
            "id": 2, "pid": None, "state": "backoff", "bus_state": None, "generation": 1,
            "age": None, "heartbeat_age": None, "cpu_percent": None, "rss": None,
            "requests": 0, "restarts": 1, "last_error": "app: it broke", "last_recycle": None,
        },
    ]  # fmt: skip


def test_a_slot_whose_workers_keep_dying_at_boot_shows_as_flapping(
    tree: ObservedTree, processes: FakeProcesses, loop: EventLoop
) -> None:
    """Steps: worker 2's next processes all fail at boot; kill worker 2; wait until its
    slot gives up.
    Expected: worker 2 shows as flapping, with its last generation and error."""
    for generation in range(2, 12):
        processes.plan(2, generation, Fate.CRASH)
    _, two = tree.pool.current_workers()
    processes.kill(two.pid, signal.SIGKILL)
    slot = tree.pool.slot(2)
    assert slot is not None
    assert loop.run_until(lambda: slot.flapping, 60.0)
    (shown,) = [w for w in snapshot.status(tree)["workers"] if w["id"] == 2]
    assert shown["state"] == "flapping"
    assert shown["generation"] == slot.generation > 2
    assert shown["last_error"] == f"app: boom in generation {slot.generation}"


def test_status_shows_each_workers_bus_state_and_the_last_recycle_of_its_slot(
    tree: ObservedTree, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: max_requests 10; worker 1 heartbeats 10 requests with its bus STARTED, and
    is recycled; 3 s later, while worker 2's bus reports STOPPING, take the status.
    Expected: worker 1 (its new process) shows no bus state yet and its slot's last recycle:
    max_requests, the figure, 3 s ago and the wall-clock time of then; worker 2 shows
    STOPPING and no recycle."""
    tree.pool.policy = dataclasses.replace(tree.pool.policy, max_requests=10)
    one, two = tree.pool.current_workers()
    tree.pool.heartbeat(one, {"requests": 10}, BusState.STARTED)
    slot = tree.pool.slot(1)
    assert slot is not None
    assert loop.run_until(lambda: slot.current is not one, 5.0)
    assert slot.last_recycle is not None
    clock.now = slot.last_recycle.at + 3.0
    tree.pool.heartbeat(two, {}, BusState.STOPPING)
    first, second = snapshot.status(tree)["workers"]
    recycled = first["last_recycle"]
    assert (first["pid"], first["bus_state"]) == (slot.current.pid, None)  # type: ignore[union-attr]
    assert {k: recycled[k] for k in ("reason", "detail", "age")} == {
        "reason": "max_requests",
        "detail": "served 10 requests (max_requests 10)",
        "age": 3.0,
    }
    assert abs(recycled["time"] - (time.time() - 3.0)) < 1.0
    assert (second["bus_state"], second["last_recycle"]) == ("STOPPING", None)


def test_stats_give_live_workers_figures_or_none_and_every_counter(
    tree: ObservedTree, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: two running workers that heartbeat; take the stats.
    Expected: the master's name, state, uptime, target, its own figures (numbers: it is
    this process) and zero counters (no hub, no control socket); per live worker its id,
    generation, state, age, every figure None (no such process) and every counter,
    0 unless its heartbeat said otherwise."""
    one, two = tree.pool.current_workers()
    loop.run_until(lambda: one.requests > 0 and two.requests > 0, 5.0)
    stats = snapshot.stats(tree)
    master = stats["master"]
    assert (master["name"], master["state"], master["target_workers"]) == (
        "component",
        "STOPPED",
        2,
    )
    assert master["pid"] == os.getpid()
    assert isinstance(master["rss"], int) and master["rss"] > 0
    assert {k: master[k] for k in snapshot.counters(None, None)} == dict.fromkeys(
        snapshot.counters(None, None), 0
    )
    for shown, worker in zip(stats["workers"], (one, two), strict=True):
        assert shown == {
            "id": worker.id, "generation": 1, "state": "running",
            "age": clock() - worker.started_at,
            **dict.fromkeys(FIGURES, None), "pid": worker.pid,
            "counters": {**dict.fromkeys(COUNTER_NAMES, 0), "requests": worker.requests},
        }  # fmt: skip


def test_snapshots_change_nothing_they_read(tree: ObservedTree, loop: EventLoop) -> None:
    """Steps: two running workers that heartbeat; take status and stats twice.
    Expected: the pool's records, its workers and their counters are as before; both
    takes agree (but for uptime)."""
    loop.run_until(lambda: all(w.requests for w in tree.pool.current_workers()), 5.0)
    before = unchanged(tree)
    first = (snapshot.status(tree), snapshot.stats(tree))
    second = (snapshot.status(tree), snapshot.stats(tree))
    assert unchanged(tree) == before
    for taken in (first, second):
        for document in taken:
            document["master"].pop("uptime")
    assert first == second


def test_a_master_that_is_not_open_has_a_status_and_stats(short_tmp: Path) -> None:
    """Steps: build a `Master` (2 workers wanted) without opening it; ask for its status
    and stats.
    Expected: its pid, name, generation 1, no endpoint and no worker yet; stats with
    its target and zero counters."""
    master = Master("tests.tree.apps:echo", 2, name="unopened", runtime_dir=short_tmp, bus=Bus())
    try:
        status = master.status()
        assert (status["master"]["pid"], status["master"]["name"]) == (os.getpid(), "unopened")
        assert (status["master"]["generation"], status["master"]["endpoints"]) == (1, {})
        assert status["workers"] == []
        stats = master.stats()
        assert stats["master"]["target_workers"] == 2
        assert stats["master"]["publishes"] == stats["master"]["control_requests"] == 0
        assert stats["workers"] == []
    finally:
        master.close()
