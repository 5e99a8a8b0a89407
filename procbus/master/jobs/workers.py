"""Reloading the tree: the bodies of the long commands that renew workers.

- `reload_tree`: rolling replacement, `batch` workers at a time. Each
  replacement must become ready (booted, app started, subscribed) before the
  worker it replaces is drained, so capacity never drops below N. A
  replacement that fails to boot stops the roll: the replacements of the
  current batch are drained, the old workers keep serving, and the job fails
  with the new worker's error.
- `stop_tree`, `start_tree`, `scale_tree`: the bus transitions and scaling,
  waited for until the pool has settled.

These functions run as jobs (`procbus.master.jobs`), at the top of the loop,
and see the tree only through the `Tree` protocol.
"""

from __future__ import annotations

import logging
from typing import Any

from procbus.master.jobs.queue import Job, JobFailed
from procbus.master.jobs.tree import Tree
from procbus.master.planner import WorkerProc, WorkerSlot, WorkerState
from procbus.master.settings import boot_limit, stop_limit

log = logging.getLogger("procbus.master")


def reload_tree(tree: Tree, job: Job, batch: int = 1) -> dict[str, Any]:
    """Replace every worker, `batch` at a time, never below N running."""
    if batch < 1:
        raise JobFailed(f"batch must be >= 1, got {batch}")
    pool = tree.pool
    tree.reload_config()
    ids = [slot.id for slot in pool.slots()]
    replaced: list[dict[str, Any]] = []
    pool.view.recycling = False
    try:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            replaced.extend(_replace_batch(tree, job, chunk))
    finally:
        pool.view.recycling = True
        pool.replan()
    return {"replaced": replaced, "workers": len(ids)}


def _replace_batch(tree: Tree, job: Job, chunk: list[int]) -> list[dict[str, Any]]:
    pool = tree.pool
    slots: dict[int, WorkerSlot] = {}
    olds: dict[int, WorkerProc | None] = {}
    news: dict[int, WorkerProc] = {}
    for worker_id in chunk:
        slot = pool.slot(worker_id)
        if slot is None:
            continue
        slots[worker_id] = slot
        olds[worker_id] = slot.current
        if slot.current is None:
            pool.scale(pool.target)  # an empty slot is simply refilled with new code
        else:
            pool.replace(worker_id)

    def new_worker(worker_id: int) -> WorkerProc | None:
        # The first new process seen is the one judged: if it dies, the roll
        # fails even though the pool would fork another after its backoff.
        slot = slots[worker_id]
        if worker_id not in news:
            for candidate in (slot.replacement, slot.current):
                if candidate is not None and candidate is not olds[worker_id]:
                    news[worker_id] = candidate
                    break
        return news.get(worker_id)

    def failed() -> int | None:
        for worker_id, slot in slots.items():
            new = new_worker(worker_id)
            if (new is not None and not new.alive) or slot.flapping:
                return worker_id
        return None

    def promoted() -> bool:
        for worker_id, slot in slots.items():
            new = new_worker(worker_id)
            if new is None or slot.current is not new or new.state is not WorkerState.RUNNING:
                return False
        return True

    policy = tree.settings.supervision
    tree.wait_until(lambda: promoted() or failed() is not None, boot_limit(policy))
    bad = failed()
    if bad is not None or not promoted():
        for worker_id in slots:
            pool.cancel_replace(worker_id)
        culprit = (
            bad
            if bad is not None
            else next(
                (i for i in slots if not (news.get(i) and news[i].state is WorkerState.RUNNING)),
                chunk[0],
            )
        )
        new = news.get(culprit)
        reason = (new.last_error if new else None) or slots[culprit].last_error
        if new is None:
            what = "could not be started"
        elif new.alive:
            what = f"was not ready within {policy.boot_timeout:g}s"
        else:
            what = "failed to boot"
        message = f"reload stopped: the replacement of worker {culprit} {what}"
        raise JobFailed(
            f"{message}: {reason}" if reason else message,
            {"failed_worker": culprit, "error": reason},
        )

    # The old workers were retired at promotion: wait until they are reaped.
    old_workers = [w for w in olds.values() if w is not None]
    tree.wait_until(lambda: all(not w.alive for w in old_workers), stop_limit(policy))
    done = []
    for worker_id, new in sorted(news.items()):
        slots[worker_id].replace_requested = False
        job.progress(
            f"worker {worker_id} replaced (generation {new.generation}, pid {new.pid})",
            worker=worker_id,
            pid=new.pid,
            generation=new.generation,
        )
        done.append({"worker": worker_id, "pid": new.pid, "generation": new.generation})
    return done


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
