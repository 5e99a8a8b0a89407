"""The reload job's two plans over a real pool of fake processes on a fake clock: the
surge (the default: the whole new generation at once, the old one drained once all of
it runs, everything rolled back on one boot failure) and the rolling reload of
``--batch K``.

Judged as an operator would: the job's end, which processes were forked and
signalled in what order (the pool's events), and which workers serve afterwards.
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any

import pytest

from procbus.master.jobs import JobState
from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings
from tests.component.fakes import POLICY, FakeProcesses, FakeTree, Fate, Recorder, fake_pool
from tests.component.test_jobs import run_job, serving
from tests.helpers import FakeClock, keep_time_moving

WORKERS = 4


@pytest.fixture
def four(loop: EventLoop, clock: FakeClock, processes: FakeProcesses, recorder: Recorder) -> Pool:
    """Four running workers (fake processes); fake time passes whenever the loop waits."""
    workers = fake_pool(loop, processes, recorder.emit, target=WORKERS)
    keep_time_moving(loop, clock, 0.05)
    workers.activate()
    assert loop.run_until(workers.all_running, 5.0)
    return workers


@pytest.fixture
def tree(four: Pool, loop: EventLoop, recorder: Recorder) -> FakeTree:
    return FakeTree(four, loop, recorder)


def of_generation(recorder: Recorder, name: str, generation: int) -> list[int]:
    """Indexes in the event record of the `name` events of workers of `generation`."""
    pids = {d["pid"] for d in recorder.named("spawn") if d["generation"] == generation}
    return [i for i, (n, d) in enumerate(recorder.events) if n == name and d["pid"] in pids]


def stagger(processes: FakeProcesses, fate_of: dict[int, Fate] | None = None) -> None:
    """The new workers (generation 2) of slots 1..4 boot in 0.5, 1.0, 1.5 and 2.0 s (or
    meet `fate_of` their slot then)."""
    for worker_id in range(1, WORKERS + 1):
        fate = (fate_of or {}).get(worker_id, Fate.RUN)
        processes.plan(worker_id, 2, fate, after=0.5 * worker_id)


def test_a_surge_forks_every_new_worker_at_once_and_drains_the_old_once_all_run(
    tree: FakeTree, processes: FakeProcesses, recorder: Recorder
) -> None:
    """Steps: four running workers (generation 1); their new workers boot in 0.5 to 2 s;
    reload without a batch (the reload_batch setting: 0, the surge).
    Expected: the job is done with batch 0 in its result, naming four generation-2
    workers; the four forks of generation 2 come one after another before any of them
    is ready; every old worker got SIGTERM only, once, after the last new one was ready,
    and at each SIGTERM at least four other workers served; the new workers serve; one
    reload is counted "ok"."""
    old = serving(tree.pool)
    stagger(processes)
    job = run_job(tree, "reload")
    assert job.state is JobState.DONE, job.error
    assert job.result["batch"] == 0
    now = serving(tree.pool)
    assert {i: g for i, (_, g) in now.items()} == dict.fromkeys(range(1, WORKERS + 1), 2)
    assert [r["generation"] for r in job.result["replaced"]] == [2] * WORKERS
    forks = of_generation(recorder, "spawn", 2)
    ready = of_generation(recorder, "ready", 2)
    assert len(forks) == len(ready) == WORKERS
    assert forks == list(range(forks[0], forks[0] + WORKERS))
    assert max(forks) < min(ready)
    drains = [i for i, (n, d) in enumerate(recorder.events) if n == "drain"]
    assert len(drains) == WORKERS and min(drains) > max(ready)
    for pid, _ in old.values():
        assert processes.signalled(pid) == [signal.SIGTERM]
    assert min(processes.serving_at_stop) >= WORKERS
    assert tree.pool.reload_results == {"ok": 1}


@pytest.mark.parametrize("fate", [Fate.CRASH, Fate.HANG])
def test_one_new_worker_that_cannot_boot_rolls_the_whole_surge_back(
    tree: FakeTree, processes: FakeProcesses, loop: EventLoop, fate: Fate
) -> None:
    """Steps: four running workers; in the surge, the new worker of slot 3 crashes at
    boot ('app: boom') or never says anything, while the three others run; reload; then
    let 30 more seconds pass.
    Expected: the job failed naming worker 3 (and the crash's error), its result naming
    the failed worker; every other new worker, although it ran, got SIGTERM and is gone;
    no old worker was signalled and the old ones (same pids, generation 1) serve, also
    30 s later; nothing of generation 2 is alive; the reload is counted "rolled_back"."""
    old = serving(tree.pool)
    stagger(processes, {3: fate})
    job = run_job(tree, "reload")
    assert job.state is JobState.FAILED
    assert job.error is not None and "worker 3" in job.error
    if fate is Fate.CRASH:
        assert "app: boom in generation 2" in job.error
    assert job.result["failed_worker"] == 3
    new = [p for p in processes.by_pid.values() if p.generation == 2]
    assert len(new) == WORKERS
    for proc in new:
        if proc.worker_id != 3 or fate is Fate.HANG:
            assert processes.signalled(proc.pid)[:1] == [signal.SIGTERM]
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert serving(tree.pool) == old
    loop.run_until(lambda: False, 30.0)
    assert serving(tree.pool) == old
    assert not any(p.alive for p in new)
    assert tree.pool.reload_results == {"rolled_back": 1}


def test_a_rolling_reload_of_batch_two_replaces_two_at_a_time(
    tree: FakeTree, processes: FakeProcesses, recorder: Recorder
) -> None:
    """Steps: four running workers; reload with batch 2 (what ``--batch 2`` asks).
    Expected: done, batch 2 in its result; slots 1 and 2 are forked first, slots 3 and 4
    only once the old workers of 1 and 2 were drained; each old worker was drained
    after its own replacement was ready; never more than six workers alive at a fork."""
    old = serving(tree.pool)
    job = run_job(tree, "reload", batch=2)
    assert job.state is JobState.DONE, job.error
    assert job.result["batch"] == 2
    now = serving(tree.pool)
    spawns = {d["worker"]: i for i, d in indexed(recorder, "spawn") if d["generation"] == 2}
    drains = {d["pid"]: i for i, d in indexed(recorder, "drain")}
    readies = {d["pid"]: i for i, d in indexed(recorder, "ready")}
    assert sorted(spawns) == [1, 2, 3, 4]
    for late in (3, 4):
        for early in (1, 2):
            assert drains[old[early][0]] < spawns[late]
    for worker_id, (pid, _) in old.items():
        assert readies[now[worker_id][0]] < drains[pid]
    assert alive_at_forks(recorder, old) <= WORKERS + 2
    assert tree.pool.reload_results == {"ok": 1}


def indexed(recorder: Recorder, name: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, d) for i, (n, d) in enumerate(recorder.events) if n == name]


def alive_at_forks(recorder: Recorder, old: dict[int, tuple[int, int]]) -> int:
    """The most processes alive (old ones not yet exited, plus those forked) at a fork,
    counted from the event record: an ``exit`` event ends a process."""
    alive = {pid for pid, _ in old.values()}
    most = len(alive)
    for name, data in recorder.events:
        if name == "spawn" and data["generation"] == 2:
            alive.add(data["pid"])
            most = max(most, len(alive))
        elif name == "exit":
            alive.discard(data["pid"])
    return most


def test_the_reload_batch_setting_is_the_default_and_batch_overrides_it(
    tree: FakeTree, recorder: Recorder
) -> None:
    """Steps: reload_batch 1 in the settings; reload without a batch; then reload with
    batch 0.
    Expected: the first reload rolls one at a time (batch 1 in its result; the fork of
    slot 2 after the drain of slot 1's old worker); the second is a surge (batch 0; all
    four forks before any is ready)."""
    tree.settings = dataclasses.replace(tree.settings, reload_batch=1)
    first = run_job(tree, "reload")
    assert (first.state, first.result["batch"]) == (JobState.DONE, 1)
    spawns = [i for i, d in indexed(recorder, "spawn") if d["generation"] == 2]
    drains = [i for i, _ in indexed(recorder, "drain")]
    assert drains[0] < spawns[1]
    second = run_job(tree, "reload", batch=0)
    assert (second.state, second.result["batch"]) == (JobState.DONE, 0)
    forks = of_generation(recorder, "spawn", 3)
    assert len(forks) == WORKERS and max(forks) < min(of_generation(recorder, "ready", 3))


def test_recycling_waits_while_a_surge_runs_and_resumes_after(
    tree: FakeTree, processes: FakeProcesses, recorder: Recorder, loop: EventLoop
) -> None:
    """Steps: max_requests 2 (fake heartbeats count one request a second); the new
    workers take 4 s to boot; reload (surge); then run 10 more seconds.
    Expected: no ``recycle`` event while the reload runs although the old workers pass
    their limit; the reload is done; afterwards the new workers are recycled again."""
    tree.pool.policy = dataclasses.replace(POLICY, max_requests=2)
    for worker_id in range(1, WORKERS + 1):
        processes.plan(worker_id, 2, Fate.RUN, after=4.0)
    job = run_job(tree, "reload")
    assert job.state is JobState.DONE, job.error
    assert recorder.named("recycle") == []
    loop.run_until(lambda: False, 10.0)
    assert {d["reason"] for d in recorder.named("recycle")} == {"max_requests"}


def test_reload_batch_must_not_be_negative() -> None:
    """A reload_batch of -1 is refused, naming the value."""
    with pytest.raises(ValueError, match=r"^reload_batch must be >= 0, got -1$"):
        TreeSettings(reload_batch=-1)


def test_a_master_exiting_midway_through_a_surge_aborts_it_and_every_worker_stops(
    tree: FakeTree, processes: FakeProcesses, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: four running workers; their new workers take 3 s to boot; reload (surge);
    the master starts exiting 1 s in; then the pool stops (as the master's exit does).
    Expected: the job failed as aborted, at once (not at the boot timeout); no old
    worker was signalled before the pool stopped; once it stopped, every process, old
    and new, is gone and nothing more is forked; the reload is counted "failed"."""
    old = serving(tree.pool)
    for worker_id in range(1, WORKERS + 1):
        processes.plan(worker_id, 2, Fate.RUN, after=3.0)
    began = clock()
    loop.call_later(1.0, lambda: setattr(tree, "exiting", True))
    job = run_job(tree, "reload")
    assert (job.state, job.error) == (JobState.FAILED, "aborted: the master is exiting")
    assert clock() - began < POLICY.boot_timeout
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert len(processes.by_pid) == 2 * WORKERS
    tree.pool.deactivate()
    assert loop.run_until(lambda: not processes.alive(), 10.0)
    loop.run_until(lambda: False, 5.0)
    assert len(processes.by_pid) == 2 * WORKERS
    assert tree.pool.reload_results == {"failed": 1}
