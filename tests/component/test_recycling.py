"""Recycling over a real pool of fake workers: every limit (max_requests, max_age,
max_rss) replaces a worker without a gap, and memory-aware recycling's `MemoryWatch`
samples on the loop's fake clock while the planner decides."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterable

import pytest

from procbus.master.loop import EventLoop
from procbus.master.memory import MemoryWatch
from procbus.master.planner import RecycleReason, WorkerState
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings
from tests.component.fakes import FakeProcesses, Fate, Recorder
from tests.helpers import FakeClock

MIB = 2**20
SETTINGS = TreeSettings(heartbeat_interval=0.5)


class FakeMemory:
    """The RSS of each fake worker (what `ProcessMonitor.rss` would read), and every read."""

    def __init__(self, default: int = 50 * MIB) -> None:
        self.default = default
        self.by_pid: dict[int, int | None] = {}
        self.reads: list[tuple[int, ...]] = []

    def read(self, pids: Iterable[int]) -> dict[int, int | None]:
        asked = tuple(pids)
        self.reads.append(asked)
        return {pid: self.by_pid.get(pid, self.default) for pid in asked}


def limit(pool: Pool, max_rss: int, samples: int = 2) -> None:
    pool.policy = dataclasses.replace(pool.policy, max_rss=max_rss, rss_samples=samples)


@pytest.mark.parametrize("reason", list(RecycleReason))
def test_every_limit_replaces_the_worker_before_it_drains_and_is_counted(
    pool: Pool,
    processes: FakeProcesses,
    recorder: Recorder,
    loop: EventLoop,
    reason: RecycleReason,
) -> None:
    """Steps: two running workers (fake heartbeats count one request a second); worker 1
    reaches `reason`'s limit: max_requests 3, max_age 3 s (worker 2 forked later, to stay
    younger), or max_rss 100 MiB (its RSS 200 MiB, 2 samples); run until its old process
    is gone.
    Expected: the old process got SIGTERM only, once, while two others served (its
    replacement ran first: `ready` of the slot before its `drain`); one `recycle` event
    with that reason; pool.recycles counts exactly one of that reason; the slot's
    last_recycle has it."""
    one, two = pool.current_workers()
    memory = FakeMemory()
    if reason is RecycleReason.MAX_REQUESTS:
        pool.policy = dataclasses.replace(pool.policy, max_requests=3)
        two.counters["requests"] = -100  # the fake heartbeat counts on from here
    elif reason is RecycleReason.MAX_AGE:
        pool.policy = dataclasses.replace(pool.policy, max_age=3.0)
        two.started_at += 2.0
    else:
        memory.by_pid[one.pid] = 200 * MIB
        limit(pool, 100 * MIB)
    MemoryWatch(pool, memory.read, lambda: SETTINGS)
    pool.replan()
    slot = pool.slot(1)
    assert slot is not None
    assert loop.run_until(lambda: not one.alive, 10.0)

    assert processes.signalled(one.pid) == [signal.SIGTERM]
    assert processes.serving_at_stop[0] == 2
    names = [(name, data.get("worker"), data.get("pid")) for name, data in recorder.events]
    recycled = names.index(("recycle", 1, one.pid))
    drained = names.index(("drain", 1, one.pid))
    assert any(name == "ready" and w == 1 for name, w, _ in names[recycled:drained])
    assert [(data["worker"], data["reason"]) for data in recorder.named("recycle")] == [
        (1, reason.value)
    ]
    assert pool.recycles == {reason.value: 1}
    assert slot.last_recycle is not None and slot.last_recycle.reason is reason


def test_a_recycle_whose_first_replacement_fails_is_counted_once(
    pool: Pool, processes: FakeProcesses, recorder: Recorder, loop: EventLoop
) -> None:
    """Steps: max_requests 3; worker 1's first replacement (generation 2) fails at boot,
    the next one runs; run until the old worker is gone.
    Expected: the old worker served on until generation 3 ran; one `recycle` event and
    one max_requests recycle counted, though two replacements were forked."""
    one, two = pool.current_workers()
    two.counters["requests"] = -100
    processes.plan(1, 2, Fate.CRASH)
    pool.policy = dataclasses.replace(pool.policy, max_requests=3)
    assert loop.run_until(lambda: not one.alive, 20.0)
    slot = pool.slot(1)
    assert slot is not None and slot.current is not None
    assert slot.current.generation == 3
    assert processes.serving_at_stop[0] == 2
    assert len(recorder.named("recycle")) == 1
    assert pool.recycles == {"max_requests": 1}


def test_a_worker_above_max_rss_in_k_samples_is_replaced_before_it_drains(
    pool: Pool, processes: FakeProcesses, recorder: Recorder, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: two running workers, max_rss 100 MiB, 2 samples, sampled every 0.5 s; worker
    1's RSS is 200 MiB, worker 2's 50 MiB; run until worker 1 was replaced.
    Expected: worker 1's old process was sent SIGTERM only, once, while two other workers
    served (its replacement ran first); a `recycle` event names worker 1, its pid and
    generation, reason max_rss and the figure; pool.recycles counts one max_rss; the slot's
    last_recycle says max_rss and when; worker 2 was not touched."""
    memory = FakeMemory()
    one, two = pool.current_workers()
    memory.by_pid[one.pid] = 200 * MIB
    limit(pool, 100 * MIB)
    began = clock()
    MemoryWatch(pool, memory.read, lambda: SETTINGS)
    slot = pool.slot(1)
    assert slot is not None
    assert loop.run_until(lambda: slot.current is not one and not one.alive, 10.0)

    assert processes.signalled(one.pid) == [signal.SIGTERM]
    assert processes.serving_at_stop == [2]
    (recycle,) = recorder.named("recycle")
    assert recycle == {
        "worker": 1, "pid": one.pid, "generation": 1, "reason": "max_rss",
        "detail": "RSS 200.0M above max_rss 100.0M in 2 samples in a row",
    }  # fmt: skip
    assert pool.recycles == {"max_rss": 1}
    assert slot.last_recycle is not None
    assert (slot.last_recycle.reason, slot.last_recycle.pid) == (RecycleReason.MAX_RSS, one.pid)
    assert began + 2 * SETTINGS.heartbeat_interval <= slot.last_recycle.at < began + 2.0
    assert slot.current is not None and slot.current.state is WorkerState.RUNNING
    assert processes.signalled(two.pid) == [] and two.alive
    assert pool.slot(2) is not None and pool.slot(2).last_recycle is None  # type: ignore[union-attr]


def test_sampling_runs_only_while_max_rss_is_set(
    pool: Pool, processes: FakeProcesses, loop: EventLoop
) -> None:
    """Steps: two running workers with max_rss 0: a MemoryWatch, 5 s pass; set max_rss
    1 GiB and update it, 2 s pass; set max_rss back to 0, 5 s pass.
    Expected: no read while off; with max_rss, a read of both running workers every 0.5 s
    (3 or 4 in 2 s), each kept on the worker (at most rss_samples); at most one more read
    once max_rss is 0 again, then none; nothing recycled."""
    memory = FakeMemory()
    watch = MemoryWatch(pool, memory.read, lambda: SETTINGS)
    loop.run_until(lambda: False, 5.0)
    assert memory.reads == [] and not watch.sampling

    limit(pool, 1024 * MIB, samples=3)
    watch.update()
    watch.update()  # one series, however often it is asked
    loop.run_until(lambda: False, 2.0)
    pids = tuple(w.pid for w in pool.current_workers())
    assert 3 <= len(memory.reads) <= 4
    assert set(memory.reads) == {pids}
    assert all(w.rss == [50 * MIB] * 3 for w in pool.current_workers())

    limit(pool, 0)
    sampled = len(memory.reads)
    loop.run_until(lambda: False, 5.0)
    assert len(memory.reads) <= sampled + 1
    assert not watch.sampling
    assert pool.recycles == {}
    assert all(processes.signalled(pid) == [] for pid in pids)


@pytest.mark.parametrize("figures", [[200, None, 200], [200, 50, 200]])
def test_a_sample_under_the_limit_breaks_the_run_and_an_unreadable_one_does_not_count(
    pool: Pool, loop: EventLoop, figures: list[int | None]
) -> None:
    """Steps: max_rss 100 MiB, 2 samples; worker 1's reads give `figures` (MiB, None:
    unreadable), then 50 MiB; each read happens.
    Expected: [200, None, 200] recycles worker 1 at the third read (the unreadable one
    is no sample: two in a row above); [200, 50, 200] does not (the 50 breaks the run)."""
    memory = FakeMemory()
    one, _ = pool.current_workers()
    limit(pool, 100 * MIB)
    watch = MemoryWatch(pool, memory.read, lambda: SETTINGS)
    for figure in figures:
        memory.by_pid[one.pid] = None if figure is None else figure * MIB
        reads = len(memory.reads)
        assert loop.run_until(lambda: len(memory.reads) > reads, 2.0)  # noqa: B023
    memory.by_pid[one.pid] = 50 * MIB
    assert watch.sampling
    assert pool.recycles == ({"max_rss": 1} if None in figures else {})
