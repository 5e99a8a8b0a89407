"""Reloading the tree: the bodies of the long commands that renew workers.

- `reload_tree`: rolling replacement, `batch` workers at a time. Each
  replacement must become ready (booted, app started, subscribed) before the
  worker it replaces is drained, so capacity never drops below N. A
  replacement that fails to boot stops the roll: the replacements of the
  current batch are drained, the old workers keep serving, and the job fails
  with the new worker's error.
- `stop_tree`, `start_tree`, `scale_tree`: the bus transitions and scaling,
  waited for until the pool has settled.

These functions run as jobs (`procbus.master.jobs`), at the top of the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from procbus.master.jobs import Job, JobFailed
from procbus.master.planner import WorkerProc, WorkerSlot, WorkerState

if TYPE_CHECKING:
    from procbus.master.master import Master


def reload_tree(master: Master, job: Job, batch: int = 1) -> dict[str, Any]:
    """Replace every worker, `batch` at a time, never below N running."""
    if batch < 1:
        raise JobFailed(f"batch must be >= 1, got {batch}")
    pool = master.pool
    master.reload_config()
    ids = [slot.id for slot in pool.slots()]
    replaced: list[dict[str, Any]] = []
    pool.view.recycling = False
    try:
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            replaced.extend(_replace_batch(master, job, chunk))
    finally:
        pool.view.recycling = True
        pool.replan()
    return {"replaced": replaced, "workers": len(ids)}


def _replace_batch(master: Master, job: Job, chunk: list[int]) -> list[dict[str, Any]]:
    pool = master.pool
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

    policy = master.settings.supervision
    master.wait_until(lambda: promoted() or failed() is not None, policy.boot_timeout + 5)
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
    master.wait_until(
        lambda: all(not w.alive for w in old_workers),
        policy.graceful_timeout + policy.abort_grace + 5,
    )
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


def stop_tree(master: Master, job: Job) -> dict[str, Any]:
    """Drain and stop every worker; the master stays up (bus STOPPED)."""
    before = len(master.pool.by_pid)
    master.bus.stop()
    master.wait_until(master.pool.no_children, _stop_limit(master))
    return {"stopped": before, "state": master.bus.state.name}


def start_tree(master: Master, job: Job) -> dict[str, Any]:
    """Start the bus again (after stop) and wait for every worker."""
    master.bus.start()
    master.wait_until(master.pool.settled, master.settings.supervision.boot_timeout + 5)
    return _settled_result(master)


def scale_tree(master: Master, job: Job, workers: int) -> dict[str, Any]:
    """Run `workers` workers and wait until the pool has settled."""
    master.scale(workers)
    master.wait_until(
        lambda: master.pool.settled() and not master.pool.view.retired,
        max(master.settings.supervision.boot_timeout, _stop_limit(master)) + 5,
    )
    return _settled_result(master)


def _settled_result(master: Master) -> dict[str, Any]:
    slots = master.pool.slots()
    running = sum(1 for s in slots if s.current and s.current.state is WorkerState.RUNNING)
    flapping = [s.id for s in slots if s.flapping]
    result = {"workers": master.pool.target, "running": running, "flapping": flapping}
    if running < master.pool.target:
        raise JobFailed(
            f"{running} of {master.pool.target} workers running"
            + (f"; flapping: {', '.join(map(str, flapping))}" if flapping else ""),
            result,
        )
    return result


def _stop_limit(master: Master) -> float:
    policy = master.settings.supervision
    return policy.graceful_timeout + policy.abort_grace + 5
