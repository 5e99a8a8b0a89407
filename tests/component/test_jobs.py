"""Jobs: the queue (coalescing, abort, the record, the documents) and the reload job's
decisions, over a real pool of fake processes on a fake clock.

The reload job is judged by what an operator sees: the job's end state, its
error and result, which processes were signalled, and which workers serve
afterwards. How the job gets there (the job itself or the planner) is free.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest

from procbus.master.jobs import Job, JobAborted, JobFailed, Jobs, JobState
from procbus.master.jobs.bodies import job_body
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerState
from procbus.master.pool import Pool
from tests.component.fakes import POLICY, FakeProcesses, FakeTree, Fate, Recorder
from tests.helpers import FakeClock


def queue(recorder: Recorder) -> tuple[Jobs, list[int]]:
    """A job queue, and how often it asked the loop to wake up."""
    wakes: list[int] = []
    return Jobs(lambda: wakes.append(1), recorder.emit), wakes


def returns(value: Any) -> Any:
    return lambda job: value


# -- the queue -------------------------------------------------------------------


def test_a_coalescing_job_asked_again_while_queued_or_running_is_joined(
    recorder: Recorder,
) -> None:
    """Steps: queue a coalescing reload; ask again while it is queued; run the queue, the
    body asking once more while it runs; then ask once the job ended.
    Expected: the first two asks and the one from inside give the same job, queued once
    (one job_queued event, one wake-up); the last ask makes a new job."""
    jobs, wakes = queue(recorder)
    joined: list[Job] = []

    def body(job: Job) -> str:
        joined.append(jobs.start("reload", returns("again"), coalesce=True))
        return "replaced"

    first = jobs.start("reload", body, {"batch": 1}, coalesce=True)
    assert jobs.start("reload", returns("second"), coalesce=True) is first
    assert first.state is JobState.QUEUED
    jobs.run_queued(stop=lambda: False)
    assert joined == [first]
    assert (first.state, first.result) == (JobState.DONE, "replaced")
    assert len(recorder.named("job_queued")) == 1
    assert wakes == [1]
    later = jobs.start("reload", returns("later"), coalesce=True)
    assert later is not first and later.state is JobState.QUEUED


def test_jobs_that_do_not_coalesce_each_run_in_the_order_asked(recorder: Recorder) -> None:
    """Steps: queue scale 3, scale 4 and a coalescing reload; run the queue.
    Expected: three jobs, numbered in order, run in that order, each done."""
    jobs, _ = queue(recorder)
    ran: list[str] = []

    def body(name: str) -> Any:
        return lambda job: ran.append(name)

    three = jobs.start("scale", body("scale 3"), {"workers": 3})
    four = jobs.start("scale", body("scale 4"), {"workers": 4})
    reload = jobs.start("reload", body("reload"), coalesce=True)
    assert len({three.id, four.id, reload.id}) == 3
    jobs.run_queued(stop=lambda: False)
    assert ran == ["scale 3", "scale 4", "reload"]
    assert [j["job"] for j in jobs.listing()] == [three.id, four.id, reload.id]
    assert {j["state"] for j in jobs.listing()} == {"done"}


def test_run_queued_stops_between_jobs_when_told(recorder: Recorder) -> None:
    """Steps: queue two jobs; run the queue with a stop that becomes true after the first.
    Expected: the first ran, the second is still queued."""
    jobs, _ = queue(recorder)
    first = jobs.start("scale", returns(1))
    second = jobs.start("scale", returns(2))
    jobs.run_queued(stop=lambda: first.ended)
    assert first.state is JobState.DONE
    assert second.state is JobState.QUEUED


def test_exiting_master_fails_every_queued_job_and_tells_its_waiters(
    recorder: Recorder,
) -> None:
    """Steps: a job ran; two more are queued, one with a waiter; abort the queued ones.
    Expected: both queued jobs failed, 'aborted: the master is exiting', their bodies
    never ran; the waiter got its job; the finished job is untouched."""
    jobs, _ = queue(recorder)
    done = jobs.start("scale", returns("ok"))
    jobs.run_queued(stop=lambda: False)
    ran: list[str] = []
    queued = [jobs.start(kind, lambda job: ran.append("ran")) for kind in ("stop", "start")]
    told: list[Job] = []
    queued[0].waiters.append(told.append)
    jobs.abort_queued()
    assert ran == []
    for job in queued:
        assert job.state is JobState.FAILED
        assert job.error == "aborted: the master is exiting"
    assert told == [queued[0]]
    assert (done.state, done.result) == (JobState.DONE, "ok")
    assert [d["state"] for d in recorder.named("job_done")] == ["done", "failed", "failed"]


def test_a_job_whose_body_sees_the_master_exiting_fails_as_aborted(recorder: Recorder) -> None:
    """Steps: run a job whose body raises JobAborted (its wait saw the master exit).
    Expected: the job failed, 'aborted: the master is exiting'."""
    jobs, _ = queue(recorder)

    def body(job: Job) -> None:
        raise JobAborted

    job = jobs.start("reload", body, coalesce=True)
    jobs.run_queued(stop=lambda: False)
    assert (job.state, job.error) == (JobState.FAILED, "aborted: the master is exiting")


def test_a_failure_outside_the_queue_is_put_on_record(recorder: Recorder) -> None:
    """Steps: run one job, then record a restart whose exec failed.
    Expected: the record is a failed job of its own number (after the first), listed,
    with its error, announced by a job_done event; nothing was queued."""
    jobs, wakes = queue(recorder)
    first = jobs.start("scale", returns(None))
    jobs.run_queued(stop=lambda: False)
    error = "execv /usr/bin/python3: No such file"
    failed = jobs.record_failure("restart", error)
    assert failed.id == "restart-2" and first.id == "scale-1"
    assert (failed.state, failed.error) == (JobState.FAILED, error)
    assert jobs.get(failed.id) is failed
    assert jobs.listing()[-1]["job"] == failed.id
    assert recorder.named("job_done")[-1] == {
        "job": failed.id,
        "kind": "restart",
        "state": "failed",
        "error": error,
    }
    assert wakes == [1]


def test_job_documents_say_what_ran_how_it_ended_and_when(recorder: Recorder) -> None:
    """Steps: run three jobs: one that returns, one that raises JobFailed with a result, one
    with a bug (ValueError); one of them reports progress.
    Expected: each document has the job's id, kind, args, state, times (created <= started
    <= finished), result and error: none for the first, the message and result for the
    second, the exception's type and text for the third; the progress went out as an
    event naming the job."""
    jobs, _ = queue(recorder)

    def failing(job: Job) -> None:
        job.progress("halfway", step=1)
        raise JobFailed("2 of 3 workers running", {"running": 2})

    def buggy(job: Job) -> None:
        raise ValueError("bad value 7")

    ok = jobs.start("scale", returns({"workers": 3}), {"workers": 3})
    failed = jobs.start("scale", failing, {"workers": 4})
    bug = jobs.start("reload", buggy, {"batch": 1}, coalesce=True)
    jobs.run_queued(stop=lambda: False)
    documents = {d["job"]: d for d in jobs.listing()}
    assert set(documents[ok.id]) == {
        "job", "kind", "args", "state", "created", "started", "finished", "result", "error",
    }  # fmt: skip
    for job in (ok, failed, bug):
        doc = documents[job.id]
        assert doc == job.to_dict()
        assert doc["created"] <= doc["started"] <= doc["finished"]
    assert documents[ok.id] | {"created": 0, "started": 0, "finished": 0} == {
        "job": ok.id, "kind": "scale", "args": {"workers": 3}, "state": "done",
        "created": 0, "started": 0, "finished": 0, "result": {"workers": 3}, "error": None,
    }  # fmt: skip
    assert (documents[failed.id]["state"], documents[failed.id]["error"]) == (
        "failed",
        "2 of 3 workers running",
    )
    assert documents[failed.id]["result"] == {"running": 2}
    assert documents[bug.id]["error"] == "ValueError: bad value 7"
    assert recorder.named("job_progress") == [
        {"job": failed.id, "kind": "scale", "message": "halfway", "step": 1}
    ]


# -- the reload job ----------------------------------------------------------------


@pytest.fixture
def tree(pool: Pool, loop: EventLoop, recorder: Recorder) -> FakeTree:
    return FakeTree(pool, loop, recorder)


def run_job(tree: FakeTree, kind: str, **args: Any) -> Job:
    """Run the job of command `kind` as the master would, to its end."""
    jobs = Jobs(lambda: None, tree.emit)
    job = jobs.start(kind, job_body(tree, kind, args), args)
    jobs.run_queued(stop=lambda: False)
    assert job.ended
    return job


def serving(pool: Pool) -> dict[int, tuple[int, int]]:
    """Worker id -> (pid, generation) of each current worker that runs."""
    return {
        w.id: (w.pid, w.generation)
        for w in pool.current_workers()
        if w.state is WorkerState.RUNNING
    }


def test_reload_replaces_every_worker_and_never_runs_below_n(
    tree: FakeTree, processes: FakeProcesses, recorder: Recorder
) -> None:
    """Steps: two running workers (generation 1); reload, batch 1.
    Expected: the job is done and names both replacements (generation 2); each old
    worker was sent SIGTERM only, once, after its replacement was ready, and at each
    SIGTERM two other workers were serving; the new workers serve; one reload is
    counted, "ok"."""
    old = serving(tree.pool)
    job = run_job(tree, "reload", batch=1)
    assert job.state is JobState.DONE, job.error
    now = serving(tree.pool)
    assert {i: g for i, (_, g) in now.items()} == {1: 2, 2: 2}
    assert job.result["replaced"] == [
        {"worker": i, "pid": now[i][0], "generation": 2} for i in (1, 2)
    ]
    for worker_id, (pid, _) in old.items():
        assert processes.signalled(pid) == [signal.SIGTERM]
        names = [(name, data.get("pid")) for name, data in recorder.events]
        assert names.index(("ready", now[worker_id][0])) < names.index(("drain", pid))
    assert processes.serving_at_stop == [2, 2]
    assert sorted(processes.alive()) == sorted(pid for pid, _ in now.values())
    assert tree.pool.reload_results == {"ok": 1}


def test_a_replacement_that_crashes_stops_the_reload_and_the_old_workers_keep_serving(
    tree: FakeTree, processes: FakeProcesses, loop: EventLoop
) -> None:
    """Steps: two running workers; the replacement of worker 1 will fail at boot ('app:
    boom'); reload, batch 1; then let 30 more seconds pass.
    Expected: the job failed, naming worker 1 and the replacement's error, its result
    naming the failed worker; no old worker was signalled; worker 2 was not touched;
    the old workers still serve, also 30 s later; the reload is counted "rolled_back"."""
    old = serving(tree.pool)
    processes.plan(1, 2, Fate.CRASH)
    job = run_job(tree, "reload", batch=1)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert "worker 1" in job.error and "app: boom in generation 2" in job.error
    assert job.result["failed_worker"] == 1
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert [p.generation for p in processes.by_pid.values() if p.worker_id == 2] == [1]
    assert serving(tree.pool) == old
    loop.run_until(lambda: False, 30.0)
    assert serving(tree.pool) == old
    assert tree.pool.reload_results == {"rolled_back": 1}


def test_a_replacement_that_never_gets_ready_is_given_up_and_the_old_worker_kept(
    tree: FakeTree, processes: FakeProcesses
) -> None:
    """Steps: two running workers; the replacement of worker 1 will never say anything;
    reload.
    Expected: the job failed, naming worker 1; the silent replacement was signalled and
    is gone; the old workers were not signalled and still serve."""
    old = serving(tree.pool)
    processes.plan(1, 2, Fate.HANG)
    job = run_job(tree, "reload", batch=1)
    assert job.state is JobState.FAILED
    assert job.error is not None and "worker 1" in job.error
    (hung,) = [p for p in processes.by_pid.values() if (p.worker_id, p.generation) == (1, 2)]
    assert processes.signalled(hung.pid) and not hung.alive
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert serving(tree.pool) == old


def test_a_failed_batch_drains_its_other_replacements(
    tree: FakeTree, processes: FakeProcesses
) -> None:
    """Steps: two running workers; reload with batch 2, the replacement of worker 1
    failing at boot before that of worker 2 is ready.
    Expected: the job failed, naming worker 1; worker 2's replacement was drained
    (SIGTERM) before it served; both old workers serve on, never signalled."""
    old = serving(tree.pool)
    processes.plan(1, 2, Fate.CRASH, after=0.05)
    processes.plan(2, 2, Fate.RUN, after=1.0)
    job = run_job(tree, "reload", batch=2)
    assert job.state is JobState.FAILED
    assert job.error is not None and "worker 1" in job.error
    (other,) = [p for p in processes.by_pid.values() if (p.worker_id, p.generation) == (2, 2)]
    assert processes.signalled(other.pid) == [signal.SIGTERM]
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert serving(tree.pool) == old


def test_a_configuration_that_fails_to_load_aborts_the_reload_before_any_fork(
    tree: FakeTree, processes: FakeProcesses
) -> None:
    """Steps: two running workers; reload with a configuration that fails to load.
    Expected: the job failed with the configuration's error; nothing was forked or
    signalled; the reload is counted "failed"."""
    forked = len(processes.by_pid)

    def broken() -> None:
        raise JobFailed("config: workers must be >= 0, got -1")

    tree.reload_config = broken
    job = run_job(tree, "reload", batch=1)
    assert (job.state, job.error) == (JobState.FAILED, "config: workers must be >= 0, got -1")
    assert len(processes.by_pid) == forked
    assert processes.signals == []
    assert tree.pool.reload_results == {"failed": 1}


def test_a_master_exiting_during_a_reload_ends_the_job_as_aborted(
    tree: FakeTree, processes: FakeProcesses, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: two running workers; the replacement of worker 1 hangs; the master starts
    exiting 1 s into the reload.
    Expected: the job failed as aborted (it did not wait for the boot timeout); the old
    workers were not signalled by the job; the reload is counted "failed"."""
    old = serving(tree.pool)
    processes.plan(1, 2, Fate.HANG)
    began = clock()
    loop.call_later(1.0, lambda: setattr(tree, "exiting", True))
    job = run_job(tree, "reload", batch=1)
    assert (job.state, job.error) == (JobState.FAILED, "aborted: the master is exiting")
    assert clock() - began < POLICY.boot_timeout
    for pid, _ in old.values():
        assert processes.signalled(pid) == []
    assert tree.pool.reload_results == {"failed": 1}
