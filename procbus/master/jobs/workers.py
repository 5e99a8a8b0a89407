"""Reloading the tree: the bodies of the long commands that renew workers.

- `reload_tree`: the surge (the whole new generation at once, the default)
  or a rolling replacement, `batch` workers at a time. Each new worker must
  become ready (booted, app started, subscribed) before the worker it
  replaces is drained, so capacity never drops below N. A new worker that
  fails to boot stops the reload: in a surge every new worker is drained and
  every old one serves on untouched; in a roll the replacements of the
  current batch are. The job fails with the new worker's error. The planner
  decides all of it (a `Rollout` in its view); the job starts it and reports
  how it went.
- `stop_tree`, `start_tree`, `scale_tree`: the bus transitions and scaling,
  waited for until the pool has settled.

These functions run as jobs (`procbus.master.jobs`), at the top of the loop,
and see the tree only through the `Tree` protocol.
"""

from __future__ import annotations

import enum
import logging
from typing import Any, Final

from procbus.master.jobs.queue import Job, JobFailed
from procbus.master.jobs.tree import Tree
from procbus.master.planner import (
    Rollout,
    RolloutFailure,
    RolloutFault,
    RolloutOutcome,
    WorkerState,
)
from procbus.master.settings import boot_limit, stop_limit

log = logging.getLogger("procbus.master")


class ReloadResult(enum.StrEnum):
    """How a reload ended: the keys of `Pool.reload_results`."""

    OK = "ok"
    """Every worker was replaced."""
    ROLLED_BACK = "rolled_back"
    """A new worker could not boot: the surge (or the batch) was rolled back, the old
    workers serve."""
    FAILED = "failed"
    """It stopped otherwise: the configuration could not be read, no batch was done
    in time, or the master is exiting."""


_RESULTS: Final = {
    RolloutOutcome.DONE: ReloadResult.OK,
    RolloutOutcome.FAILED: ReloadResult.ROLLED_BACK,
    RolloutOutcome.RUNNING: ReloadResult.FAILED,
}


def reload_tree(tree: Tree, job: Job, batch: int | None = None) -> dict[str, Any]:
    """Replace every worker, all at once (`batch` 0, the surge) or `batch` at a time,
    never below N running; `batch` None: the ``reload_batch`` setting (as re-read).

    The planner carries the reload out (`procbus.master.planner.Rollout`):
    this body re-reads the configuration, starts it, reports each batch done,
    and turns its outcome into the job's result or failure. Every reload is
    counted in the pool's `reload_results` by how it ended (`ReloadResult`).
    """
    if batch is not None and batch < 0:
        raise JobFailed(f"batch must be >= 0 (0: the surge), got {batch}")
    result = ReloadResult.FAILED
    try:
        tree.reload_config()
        size = tree.settings.reload_batch if batch is None else batch
        rollout = tree.pool.start_rollout(size)
        try:
            return _follow(tree, job, rollout)
        finally:
            tree.pool.end_rollout()
            result = _RESULTS[rollout.outcome]
    finally:
        tree.pool.reload_results[result.value] += 1


def _follow(tree: Tree, job: Job, rollout: Rollout) -> dict[str, Any]:
    """Report each batch of `rollout` done; return its result or raise its failure."""
    policy, batch = tree.settings.supervision, rollout.batch_size
    replaced: list[dict[str, Any]] = []
    limit = boot_limit(policy) + stop_limit(policy)  # the pool enforces a batch's deadlines
    while True:
        reported = len(replaced)
        tree.wait_until(
            lambda: (
                len(rollout.replaced) > len(replaced)
                or rollout.outcome is not RolloutOutcome.RUNNING
            ),
            limit,
        )
        for new in rollout.replaced[reported:]:
            job.progress(
                f"worker {new.id} replaced (generation {new.generation}, pid {new.pid})",
                worker=new.id,
                pid=new.pid,
                generation=new.generation,
            )
            replaced.append({"worker": new.id, "pid": new.pid, "generation": new.generation})
        if rollout.outcome is RolloutOutcome.DONE:
            return {"replaced": replaced, "workers": len(rollout.slots), "batch": batch}
        if rollout.failure is not None:
            raise _rollout_failed(rollout.failure, policy.boot_timeout)
        if len(replaced) == reported:
            raise JobFailed(f"reload stopped: no batch was done within {limit:g}s")


def _rollout_failed(failure: RolloutFailure, boot_timeout: float) -> JobFailed:
    """The job's error for a rollout the planner stopped (the old workers serve on)."""
    what = {
        RolloutFault.NOT_STARTED: "could not be started",
        RolloutFault.NOT_READY: f"was not ready within {boot_timeout:g}s",
        RolloutFault.DIED: "failed to boot",
    }[failure.fault]
    message = f"reload stopped: the replacement of worker {failure.slot} {what}"
    return JobFailed(
        f"{message}: {failure.error}" if failure.error else message,
        {"failed_worker": failure.slot, "error": failure.error},
    )


def stop_tree(tree: Tree, job: Job) -> dict[str, Any]:
    """Drain and stop every worker; the master stays up (bus STOPPED)."""
    before = len(tree.pool.by_pid)
    tree.bus.stop()
    tree.wait_until(tree.pool.no_children, stop_limit(tree.settings.supervision))
    return {"stopped": before, "state": tree.bus.state.name}


def start_tree(tree: Tree, job: Job) -> dict[str, Any]:
    """Start the bus again (after stop) and wait for every worker."""
    tree.bus.start()
    tree.wait_until(tree.pool.settled, boot_limit(tree.settings.supervision))
    return _settled_result(tree)


def scale_tree(tree: Tree, job: Job, workers: int) -> dict[str, Any]:
    """Run `workers` workers and wait until the pool has settled."""
    log.info("scaling from %d to %d workers", tree.pool.target, workers)
    tree.emit("scale", before=tree.pool.target, after=workers)
    tree.pool.scale(workers)
    policy = tree.settings.supervision
    tree.wait_until(
        lambda: tree.pool.settled() and not tree.pool.view.retired,
        max(boot_limit(policy), stop_limit(policy)),
    )
    return _settled_result(tree)


def _settled_result(tree: Tree) -> dict[str, Any]:
    slots = tree.pool.slots()
    running = sum(1 for s in slots if s.current and s.current.state is WorkerState.RUNNING)
    flapping = [s.id for s in slots if s.flapping]
    result = {"workers": tree.pool.target, "running": running, "flapping": flapping}
    if running < tree.pool.target:
        raise JobFailed(
            f"{running} of {tree.pool.target} workers running"
            + (f"; flapping: {', '.join(map(str, flapping))}" if flapping else ""),
            result,
        )
    return result
