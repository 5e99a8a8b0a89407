"""What the pool should do next: a pure function of the workers, the target and the clock.

The master keeps one `WorkerSlot` per worker id (1..N). A slot holds the
`current` worker process and, while it is being replaced (reload, recycling),
a `replacement`. Workers being drained after they left their slot are kept in
`PoolView.retired` until they are reaped.

`plan()` looks at that picture and returns the `Action` values to carry out
now, plus the time at which it should be asked again; `record_exit()` updates a
slot when one of its workers died (backoff, flapping). Neither makes a system
call: `procbus.master.pool.Pool` turns actions into ``fork`` and ``kill``.
Because the clock is a parameter, every rule here is tested without processes.

Two policies span the whole pool rather than one slot, and live here too:

- a reload is a `Rollout` in the view: `plan()` forks the whole new
  generation beside the old one (the surge) or replaces the slots batch by
  batch, judges the new workers, and rolls back when one of them cannot
  boot; the reload job only starts it and waits;
- a worker that cannot boot before the pool ever came up makes `plan()`
  answer `HALT`: at start nobody is there to fix the app, and forking it
  again would only fail again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from procbus.protocol import BusState, WorkerBusState


class RecycleReason(enum.StrEnum):
    """Why a running worker is replaced although nothing is wrong with it (its limits)."""

    MAX_REQUESTS = "max_requests"
    MAX_AGE = "max_age"
    MAX_RSS = "max_rss"


class WorkerState(enum.StrEnum):
    """Where a worker process is in its life, as the master sees it."""

    BOOTING = "booting"
    """Forked; has not said hello yet."""
    STARTING = "starting"
    """Said hello; its subscription is not proven or its app has not started."""
    RUNNING = "running"
    """Subscribed and serving: a target of publishes."""
    STOPPING = "stopping"
    """Told to drain and exit."""
    EXITED = "exited"
    """Reaped."""


@dataclass(frozen=True)
class Backoff:
    """How fast a slot whose workers keep dying is refilled."""

    initial: float = 0.1
    """Seconds before the first respawn after an early death."""
    factor: float = 2.0
    maximum: float = 10.0
    min_uptime: float = 2.0
    """A worker that dies sooner than this after its fork died early."""
    flap_after: int = 5
    """Consecutive early deaths after which the slot is flapping (no more forks)."""

    def delay(self, early_deaths: int) -> float:
        if early_deaths <= 0:
            return 0.0
        try:
            delay = self.initial * self.factor ** (early_deaths - 1)
        except OverflowError:  # a slot whose forks keep failing counts without bound
            return self.maximum
        return min(self.maximum, delay)


@dataclass(frozen=True)
class Supervision:
    """Deadlines and limits of the pool (seconds unless said otherwise)."""

    timeout: float = 30.0
    """A running worker silent for longer is aborted (SIGABRT), then killed."""
    boot_timeout: float = 60.0
    """A worker not running this long after its fork is killed."""
    graceful_timeout: float = 30.0
    """A draining worker still alive after this is killed."""
    abort_grace: float = 2.0
    """Time between SIGABRT (stack dump) and SIGKILL."""
    max_requests: int = 0
    """Recycle a worker after this many requests (0: never)."""
    max_requests_jitter: int = 0
    """Each worker's limit is max_requests plus up to this many more, at random,
    so that workers started together are not recycled together."""
    max_age: float = 0.0
    """Recycle a worker after this many seconds (0: never)."""
    max_rss: int = 0
    """Bytes: recycle a worker whose RSS is above this in `rss_samples` samples in a
    row (0: never; the master samples only when it is set)."""
    rss_samples: int = 3
    """How many samples in a row a worker's RSS must be above `max_rss`: one sample
    over is a peak, several are a worker that grew."""
    backoff: Backoff = field(default_factory=Backoff)
    halt_at_boot: bool = True
    """Give up (`HALT`: the master exits with status 1) when a worker cannot boot,
    or a slot flaps, before every worker ran once. False: back off and flap, as
    once the pool came up."""

    def __post_init__(self) -> None:
        if self.max_rss < 0:
            raise ValueError(f"max_rss must be >= 0, got {self.max_rss}")
        if self.rss_samples < 1:
            raise ValueError(f"rss_samples must be >= 1, got {self.rss_samples}")


@dataclass(eq=False)
class WorkerProc:
    """One worker process, from fork to reap."""

    id: int
    generation: int
    pid: int
    started_at: float
    state: WorkerState = WorkerState.BOOTING
    subscribed: bool = False
    hello: bool = False
    lifecycle: WorkerBusState | None = None
    """What it said last in a STATE message (its readiness keys on RUNNING)."""
    bus_state: BusState | None = None
    """Its own bus's state, as its last heartbeat said."""
    last_heartbeat: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    stop_deadline: float | None = None
    abort_deadline: float | None = None
    killed: bool = False
    request_jitter: int = 0
    """Added to max_requests for this worker (drawn at fork)."""
    stop_requested: bool = False
    """The master asked it to drain (a worker that stops on its own, or whose
    app fails, still counts as a death of its slot)."""
    ran: bool = False
    """Reached RUNNING at least once."""
    adopted: bool = False
    """Forked by a previous master (``restart --adopt``)."""
    exit_status: int | None = None
    """``os.waitstatus_to_exitcode`` of the reaped process: <0 is a signal."""
    boot_failed: bool = False
    """It exited with the status that says its app could not be imported or started
    (the worker's contract; the pool knows the number, this module does not)."""
    rss: list[int] = field(default_factory=list)
    """Its last RSS samples in bytes, oldest first, at most `Supervision.rss_samples`
    (recorded by the pool while max_rss is set)."""
    recycle: RecycleReason | None = None
    """Why it is being replaced, once its replacement was forked for a limit."""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return self.counters.get("requests", 0)

    @property
    def alive(self) -> bool:
        return self.state is not WorkerState.EXITED

    @property
    def topic(self) -> bytes:
        """What it subscribes to on the master's PUB, and names itself by on ROUTER."""
        return f"w.{self.id}.{self.generation}.".encode()


@dataclass(frozen=True)
class Recycled:
    """A worker of a slot reached a limit and was replaced: which, why and when."""

    reason: RecycleReason
    detail: str
    """The limit and the figure that reached it, for people."""
    at: float
    """When its replacement was forked (the pool's clock)."""
    pid: int
    generation: int


@dataclass(eq=False)
class WorkerSlot:
    """A worker id (1..N) and the processes that fill it over time."""

    id: int
    generation: int = 0
    current: WorkerProc | None = None
    replacement: WorkerProc | None = None
    restarts: int = 0
    early_deaths: int = 0
    next_spawn_at: float = 0.0
    flapping: bool = False
    last_error: str | None = None
    boot_failed: bool = False
    """The last of its workers to die unasked could not boot."""
    last_recycle: Recycled | None = None

    def workers(self) -> Iterator[WorkerProc]:
        if self.current is not None:
            yield self.current
        if self.replacement is not None:
            yield self.replacement

    def forgive(self) -> None:
        """Forget its early deaths: fill it again at once (start, scale up, a new rollout)."""
        if self.flapping or self.early_deaths:
            self.flapping = False
            self.early_deaths = 0
            self.next_spawn_at = 0.0


class RolloutOutcome(enum.StrEnum):
    """Where a `Rollout` is."""

    RUNNING = "running"
    DONE = "done"
    """Every slot got its new worker, and every old worker is gone."""
    FAILED = "failed"
    """A new worker could not boot: its batch was rolled back (see `Rollout.failure`)."""


class RolloutFault(enum.StrEnum):
    """How the new worker of a slot failed its rollout."""

    NOT_STARTED = "not started"
    """No process could be forked for it within the boot timeout (or its slot flapped)."""
    DIED = "died"
    """It died before its batch was promoted."""
    NOT_READY = "not ready"
    """It was alive but not running at its boot deadline (or its slot flapped)."""


@dataclass(frozen=True)
class RolloutFailure:
    """Why a rollout stopped: the slot whose new worker failed, how, and its last error."""

    slot: int
    fault: RolloutFault
    error: str | None


SURGE: Final = 0
"""The batch size of a `Rollout` (and the ``reload_batch`` setting) that means the surge:
every slot at once, the old workers drained together once all the new ones run."""


@dataclass(eq=False)
class Rollout:
    """A replacement of the pool's workers (a reload): the surge, or `batch_size` at a time.

    `plan()` advances it while it is the view's `rollout`.

    The surge (`batch_size` `SURGE`, the default of ``reload``) forks a new
    worker beside the current one of every slot at once, so that a reload
    takes one start-up time of the app whatever N is. A new worker that runs
    waits beside its old one; once every new worker runs, all are promoted
    together and the old ones drain. Holding them is what makes a failure
    roll back the WHOLE reload: until then no old worker was signalled, so
    the new ones (running or not) are drained and the old ones serve on as
    if nothing happened. (Promoting each new worker as soon as it runs would
    not shorten the reload, whose end is the last new worker's start, and
    would leave the tree half old, half new after a failure.) The cost is
    memory: up to 2N workers for the app's start-up time.

    A rolling reload (`batch_size` >= 1) does that for `batch_size` slots at a
    time, but promotes each new worker once it runs (the old one is retired
    then, so that never fewer than N workers run), and starts the next batch
    once the old workers of this one are gone: at most N + `batch_size`
    workers, N / `batch_size` start-up times. A failure drains the batch's
    new workers still booting; the slots done keep their new workers.

    Either way the first new process seen in a slot is the one judged: if it
    dies, its slot flaps, or it is not running at its boot deadline, the
    rollout fails. Once it is done or failed, `plan()` takes it out of the
    view (recycling resumes) and whoever started it reads the outcome here.
    """

    slots: tuple[int, ...]
    """The slot ids to replace, in order."""
    batch_size: int = SURGE
    outcome: RolloutOutcome = RolloutOutcome.RUNNING
    failure: RolloutFailure | None = None
    replaced: list[WorkerProc] = field(default_factory=list)
    """The new workers of every batch finished, in order (they ran; their old ones are gone)."""
    next_index: int = 0
    """Where the next batch starts in `slots`."""
    batch: dict[int, WorkerProc | None] = field(default_factory=dict)
    """The batch in progress: slot id -> the worker it replaces (None: the slot was empty)."""
    new: dict[int, WorkerProc] = field(default_factory=dict)
    """Slot id of the batch -> its new worker (the first new process seen in the slot)."""
    batch_started_at: float = 0.0
    ready: bool = False
    """The surge only: every new worker runs, so they are promoted (until then they wait
    beside the old ones)."""
    promoted: bool = False
    """Every new worker of the batch runs in its slot: waiting for the old ones to be gone."""

    def __post_init__(self) -> None:
        if self.batch_size < 0:
            raise ValueError(f"batch must be >= 0 (0: the surge), got {self.batch_size}")

    @property
    def surge(self) -> bool:
        return self.batch_size == SURGE


@dataclass
class PoolView:
    """The picture `plan` decides from."""

    slots: dict[int, WorkerSlot]
    target: int
    active: bool
    """False once the pool is stopped: every worker drains, none is forked."""
    retired: list[WorkerProc] = field(default_factory=list)
    rollout: Rollout | None = None
    """The rolling reload in progress, if any; automatic recycling (max_requests,
    max_age, max_rss) is paused meanwhile."""
    booted: bool = False
    """Every wanted worker ran at the same time once (the tree came up)."""
    halted: str | None = None
    """Why the pool gave up (`HALT`): it forks nothing more."""

    @property
    def recycling(self) -> bool:
        """Whether workers are recycled (max_requests, max_age, max_rss): not during a
        rollout."""
        return self.rollout is None


class ActionKind(enum.Enum):
    SPAWN = "spawn"
    """Fork a worker for the slot (as its current worker, or its replacement)."""
    PROMOTE = "promote"
    """The replacement runs: it becomes current; the old current is retired."""
    DRAIN = "drain"
    """Ask a worker to finish its work and exit (SIGTERM)."""
    ABORT = "abort"
    """A hung worker: SIGABRT so that it dumps its stack, SIGKILL later."""
    KILL = "kill"
    """SIGKILL."""
    HALT = "halt"
    """Give up: a worker could not boot before the pool ever came up (`reason` says
    which and why); the master exits with status 1."""


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    slot: int
    worker: WorkerProc | None = None
    reason: str = ""
    replace: bool = False
    recycle: RecycleReason | None = None
    """A SPAWN that replaces the current worker because it reached this limit."""


@dataclass
class Plan:
    actions: list[Action]
    next_check: float
    """When to plan again if nothing else happens first (``inf``: never)."""


def plan(view: PoolView, now: float, policy: Supervision) -> Plan:
    """Return what to do now and when to look again.

    As it goes it advances the view's rollout (see `Rollout`), the planner's
    own record; the processes it leaves to the actions.
    """
    actions: list[Action] = []
    wake = math.inf

    def at(when: float) -> None:
        nonlocal wake
        if when > now:
            wake = min(wake, when)

    if view.rollout is not None:
        _advance_rollout(view.rollout, view, now, policy, actions=actions, at=at)
    abandoned = {a.worker for a in actions if a.kind is ActionKind.DRAIN}
    halt = _halt(view, policy)
    if halt is not None:
        actions.append(halt)
    ids = set(view.slots)
    if view.active:
        ids.update(range(1, view.target + 1))
    for slot_id in sorted(ids):
        slot = view.slots.get(slot_id) or WorkerSlot(slot_id)
        _plan_slot(slot, view, now, policy, abandoned, actions=actions, at=at)
    if halt is not None or view.halted is not None:
        actions = [a for a in actions if a.kind is not ActionKind.SPAWN]

    for slot in view.slots.values():
        for worker in slot.workers():
            _deadlines(worker, slot.id, now, policy, actions=actions, at=at)
    for worker in view.retired:
        if worker.state is not WorkerState.STOPPING and worker.alive:
            actions.append(Action(ActionKind.DRAIN, worker.id, worker, "retired"))
        _deadlines(worker, worker.id, now, policy, actions=actions, at=at)
    return Plan(actions, wake)


def _plan_slot(
    slot: WorkerSlot,
    view: PoolView,
    now: float,
    policy: Supervision,
    abandoned: set[WorkerProc | None],
    *,
    actions: list[Action],
    at: Callable[[float], None],
) -> None:
    """The actions for one slot: fill it, promote, renew (reload, recycling, adoption).

    `abandoned`: workers a rollback drains in this plan (not to be promoted)."""
    wanted = view.active and slot.id <= view.target
    if not wanted:
        for worker in slot.workers():
            if worker.state is not WorkerState.STOPPING:
                reason = "pool stopped" if not view.active else "scaled down"
                actions.append(Action(ActionKind.DRAIN, slot.id, worker, reason))
        return

    current, replacement = slot.current, slot.replacement
    if replacement is not None and replacement in abandoned:
        replacement = None
    limit: RecycleReason | None = None
    if current is None and replacement is not None:
        actions.append(Action(ActionKind.PROMOTE, slot.id, replacement, "slot empty"))
        current, replacement = replacement, None
    if current is None:
        if slot.flapping:
            return
        if now >= slot.next_spawn_at:
            actions.append(Action(ActionKind.SPAWN, slot.id, reason="slot empty"))
        else:
            at(slot.next_spawn_at)
        return

    if replacement is not None and replacement.state is WorkerState.RUNNING:
        if not _held(view, slot):
            actions.append(Action(ActionKind.PROMOTE, slot.id, replacement, "replacement ready"))
        return
    if replacement is not None:
        return  # the replacement is on its way
    if _adoption_failed(current, now, policy):
        # It may still serve requests: replace it as a reload would, not kill it.
        renew = "adopted worker did not reconnect"
    elif current.adopted and current.state is not WorkerState.RUNNING:
        at(current.started_at + policy.boot_timeout)
        return
    elif current.state is WorkerState.RUNNING:
        recycle = _recycle(current, now, policy) if view.recycling else None
        if recycle is not None:
            limit, renew = recycle
        else:
            renew = "replace requested" if _rolling(view, slot) else ""
        if not renew and view.recycling and policy.max_age > 0:
            at(current.started_at + policy.max_age)
    else:
        return
    if renew and not slot.flapping:
        if now >= slot.next_spawn_at:
            actions.append(
                Action(ActionKind.SPAWN, slot.id, reason=renew, replace=True, recycle=limit)
            )
        else:
            at(slot.next_spawn_at)


def _rolling(view: PoolView, slot: WorkerSlot) -> bool:
    """Whether the rollout wants a new worker forked for `slot` now: the slot is in
    its batch and no new process was seen in it yet."""
    rollout = view.rollout
    return rollout is not None and slot.id in rollout.batch and slot.id not in rollout.new


def _held(view: PoolView, slot: WorkerSlot) -> bool:
    """Whether `slot`'s running replacement waits beside its old worker: a surge in
    which not every new worker runs yet."""
    rollout = view.rollout
    return rollout is not None and rollout.surge and not rollout.ready and slot.id in rollout.batch


def _advance_rollout(
    rollout: Rollout,
    view: PoolView,
    now: float,
    policy: Supervision,
    *,
    actions: list[Action],
    at: Callable[[float], None],
) -> None:
    """Move `rollout` on: start batches, judge their new workers, finish or roll back.

    What `plan` changes: the rollout's own record, the backoff of the slots a
    new batch takes (forgiven), and the view's `rollout` once it ended.
    """
    while True:
        if not rollout.batch:
            if rollout.next_index >= len(rollout.slots):
                rollout.outcome = RolloutOutcome.DONE
                view.rollout = None
                return
            _start_batch(rollout, view, now)
            continue
        if not rollout.promoted:
            failure = _batch_failure(rollout, view, now, policy, at)
            if failure is not None:
                _roll_back(rollout, view, failure, actions)
                return
            if rollout.surge and not rollout.ready:
                rollout.ready = all(
                    slot_id not in view.slots
                    or (
                        (new := rollout.new.get(slot_id)) is not None
                        and new.state is WorkerState.RUNNING
                    )
                    for slot_id in rollout.batch
                )
            rollout.promoted = all(
                (slot := view.slots.get(slot_id)) is None
                or (
                    (new := rollout.new.get(slot_id)) is not None
                    and slot.current is new
                    and new.state is WorkerState.RUNNING
                )
                for slot_id in rollout.batch
            )
            if not rollout.promoted:
                return
        # Their replacements run: the old workers were retired at promotion.
        if any(old is not None and old.alive for old in rollout.batch.values()):
            return
        rollout.replaced.extend(rollout.new[i] for i in sorted(rollout.batch) if i in rollout.new)
        rollout.batch, rollout.new, rollout.promoted = {}, {}, False


def _start_batch(rollout: Rollout, view: PoolView, now: float) -> None:
    """The next `batch_size` slots of `rollout` (those still in the pool) are the batch:
    all of them in a surge."""
    size = len(rollout.slots) if rollout.surge else rollout.batch_size
    ids = rollout.slots[rollout.next_index : rollout.next_index + size]
    rollout.next_index += len(ids)
    rollout.batch_started_at = now
    for slot_id in ids:
        slot = view.slots.get(slot_id)
        if slot is None or slot_id > view.target:
            continue
        slot.forgive()  # a flapping slot is filled again, with the new code
        rollout.batch[slot_id] = slot.current


def _batch_failure(
    rollout: Rollout,
    view: PoolView,
    now: float,
    policy: Supervision,
    at: Callable[[float], None],
) -> RolloutFailure | None:
    """The first slot of the batch whose new worker failed, or None (and when to look)."""
    for slot_id in sorted(rollout.batch):
        old, slot = rollout.batch[slot_id], view.slots.get(slot_id)
        if slot is None:
            continue
        new = rollout.new.get(slot_id)
        if new is None:
            # The first new process seen is the one judged: if it dies, the
            # rollout fails although the slot would fork another after its backoff.
            for candidate in (slot.replacement, slot.current):
                if candidate is not None and candidate is not old:
                    new = rollout.new[slot_id] = candidate
                    break
        if new is not None and not new.alive:
            fault = RolloutFault.DIED
        elif slot.flapping:
            fault = RolloutFault.NOT_STARTED if new is None else RolloutFault.NOT_READY
        elif new is None or new.state is not WorkerState.RUNNING:
            since = rollout.batch_started_at if new is None else new.started_at
            if now < since + policy.boot_timeout:
                at(since + policy.boot_timeout)
                continue
            fault = RolloutFault.NOT_STARTED if new is None else RolloutFault.NOT_READY
        else:
            continue
        error = (new.last_error if new is not None else None) or slot.last_error
        return RolloutFailure(slot_id, fault, error)
    return None


def _roll_back(
    rollout: Rollout, view: PoolView, failure: RolloutFailure, actions: list[Action]
) -> None:
    """Drain the batch's new workers that did not replace their old ones yet (the old
    ones keep serving) and end `rollout` as failed.

    In a surge that is every new worker beside an old one, running or not: the
    whole reload is undone. In a rolling reload a new worker already running is
    promoted as usual: its slot has the new code, as the slots of the batches
    done have."""
    for slot_id in sorted(rollout.batch):
        slot = view.slots.get(slot_id)
        replacement = slot.replacement if slot is not None else None
        if replacement is not None and (
            rollout.surge or replacement.state is not WorkerState.RUNNING
        ):
            actions.append(Action(ActionKind.DRAIN, slot_id, replacement, "replacement abandoned"))
    rollout.outcome, rollout.failure = RolloutOutcome.FAILED, failure
    view.rollout = None


def _halt(view: PoolView, policy: Supervision) -> Action | None:
    """`HALT` if a wanted slot's worker could not boot, or the slot flaps, before the
    pool ever came up (and the policy says to give up then)."""
    if not policy.halt_at_boot or view.booted or view.halted is not None or not view.active:
        return None
    for slot_id in sorted(view.slots):
        slot = view.slots[slot_id]
        if slot_id <= view.target and (slot.boot_failed or slot.flapping):
            error = (slot.last_error or "no error reported").removeprefix("boot: ")
            return Action(
                ActionKind.HALT, slot_id, reason=f"worker {slot_id} could not boot: {error}"
            )
    return None


def request_limit(worker: WorkerProc, policy: Supervision) -> int:
    """How many requests `worker` serves before it is recycled (0: no limit)."""
    if policy.max_requests <= 0:
        return 0
    return policy.max_requests + worker.request_jitter


def _adoption_failed(worker: WorkerProc, now: float, policy: Supervision) -> bool:
    """An adopted worker that did not reconnect to this master within the boot timeout."""
    return (
        worker.adopted
        and worker.state is not WorkerState.RUNNING
        and worker.state is not WorkerState.STOPPING
        and now >= worker.started_at + policy.boot_timeout
    )


def rss_exceeded(worker: WorkerProc, policy: Supervision) -> bool:
    """Whether `worker`'s last `rss_samples` RSS samples are all above max_rss."""
    samples = policy.rss_samples
    return (
        policy.max_rss > 0
        and len(worker.rss) >= samples
        and min(worker.rss[-samples:]) > policy.max_rss
    )


def _recycle(
    worker: WorkerProc, now: float, policy: Supervision
) -> tuple[RecycleReason, str] | None:
    """The limit `worker` reached, and what it is at, or None."""
    if policy.max_requests > 0 and worker.requests >= request_limit(worker, policy):
        detail = f"served {worker.requests} requests (max_requests {policy.max_requests})"
        return RecycleReason.MAX_REQUESTS, detail
    if policy.max_age > 0 and now - worker.started_at >= policy.max_age:
        detail = f"{now - worker.started_at:.0f}s old (max_age {policy.max_age:g}s)"
        return RecycleReason.MAX_AGE, detail
    if rss_exceeded(worker, policy):
        detail = (
            f"RSS {_mib(worker.rss[-1])} above max_rss {_mib(policy.max_rss)} "
            f"in {policy.rss_samples} samples in a row"
        )
        return RecycleReason.MAX_RSS, detail
    return None


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f}M"


def _deadlines(
    worker: WorkerProc,
    slot_id: int,
    now: float,
    policy: Supervision,
    *,
    actions: list[Action],
    at: Callable[[float], None],
) -> None:
    """Stop escalation, heartbeat and boot timeouts of one live worker."""
    if not worker.alive or worker.killed:
        return
    if worker.abort_deadline is not None:
        if now >= worker.abort_deadline:
            actions.append(Action(ActionKind.KILL, slot_id, worker, "did not die after SIGABRT"))
        else:
            at(worker.abort_deadline)
        return
    if worker.state is WorkerState.STOPPING:
        if worker.stop_deadline is not None:
            if now >= worker.stop_deadline:
                actions.append(
                    Action(ActionKind.KILL, slot_id, worker, "graceful timeout expired")
                )
            else:
                at(worker.stop_deadline)
        return
    if worker.state is WorkerState.RUNNING:
        beat = worker.last_heartbeat if worker.last_heartbeat is not None else worker.started_at
        if now >= beat + policy.timeout:
            reason = f"no heartbeat for {now - beat:.1f}s (timeout {policy.timeout:g}s)"
            actions.append(Action(ActionKind.ABORT, slot_id, worker, reason))
        else:
            at(beat + policy.timeout)
        return
    if worker.adopted:
        return  # not killed at its boot deadline: replaced (see plan)
    boot_deadline = worker.started_at + policy.boot_timeout
    if now >= boot_deadline:
        reason = f"not running {policy.boot_timeout:g}s after fork"
        actions.append(Action(ActionKind.KILL, slot_id, worker, reason))
    else:
        at(boot_deadline)


def record_exit(slot: WorkerSlot, worker: WorkerProc, now: float, policy: Supervision) -> None:
    """Update `slot` after `worker`, one of its processes, was reaped.

    A worker that was not asked to stop and dies before `min_uptime` (or before
    it ever ran) counts as an early death: the slot waits longer before each
    respawn and, after `flap_after` in a row, is marked flapping and left empty.
    """
    if slot.current is worker:
        slot.current = None
    elif slot.replacement is worker:
        slot.replacement = None
    else:
        return
    if worker.stop_requested:
        return
    slot.restarts += 1
    slot.boot_failed = worker.boot_failed
    if worker.last_error:
        slot.last_error = worker.last_error
    lived = now - worker.started_at
    early = lived < policy.backoff.min_uptime or not worker.ran
    if early:
        slot.early_deaths += 1
        if slot.early_deaths >= policy.backoff.flap_after:
            slot.flapping = True
        slot.next_spawn_at = now + policy.backoff.delay(slot.early_deaths)
    else:
        slot.early_deaths = 0
        slot.next_spawn_at = now
