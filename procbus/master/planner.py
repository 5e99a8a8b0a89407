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
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from procbus.protocol import WorkerBusState


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
    backoff: Backoff = field(default_factory=Backoff)


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
    bus_state: WorkerBusState | None = None
    """What it said last in a STATE message."""
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
    replace_requested: bool = False
    """Set by reload or recycling: spawn a replacement, then retire `current`."""
    last_error: str | None = None

    def workers(self) -> Iterator[WorkerProc]:
        if self.current is not None:
            yield self.current
        if self.replacement is not None:
            yield self.replacement


@dataclass
class PoolView:
    """The picture `plan` decides from."""

    slots: dict[int, WorkerSlot]
    target: int
    active: bool
    """False once the pool is stopped: every worker drains, none is forked."""
    retired: list[WorkerProc] = field(default_factory=list)
    recycling: bool = True
    """Automatic recycling (max_requests, max_age); paused during a reload."""


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


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    slot: int
    worker: WorkerProc | None = None
    reason: str = ""
    replace: bool = False


@dataclass
class Plan:
    actions: list[Action]
    next_check: float
    """When to plan again if nothing else happens first (``inf``: never)."""


def plan(view: PoolView, now: float, policy: Supervision) -> Plan:
    """Return what to do now and when to look again."""
    actions: list[Action] = []
    wake = math.inf

    def at(when: float) -> None:
        nonlocal wake
        if when > now:
            wake = min(wake, when)

    ids = set(view.slots)
    if view.active:
        ids.update(range(1, view.target + 1))
    for slot_id in sorted(ids):
        slot = view.slots.get(slot_id) or WorkerSlot(slot_id)
        _plan_slot(slot, view, now, policy, actions=actions, at=at)

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
    *,
    actions: list[Action],
    at: Callable[[float], None],
) -> None:
    """The actions for one slot: fill it, promote, renew (reload, recycling, adoption)."""
    wanted = view.active and slot.id <= view.target
    if not wanted:
        for worker in slot.workers():
            if worker.state is not WorkerState.STOPPING:
                reason = "pool stopped" if not view.active else "scaled down"
                actions.append(Action(ActionKind.DRAIN, slot.id, worker, reason))
        return

    current, replacement = slot.current, slot.replacement
    replace_requested = slot.replace_requested
    if current is None and replacement is not None:
        actions.append(Action(ActionKind.PROMOTE, slot.id, replacement, "slot empty"))
        current, replacement = replacement, None
        replace_requested = False  # the replacement is what was requested
    if current is None:
        if slot.flapping:
            return
        if now >= slot.next_spawn_at:
            actions.append(Action(ActionKind.SPAWN, slot.id, reason="slot empty"))
        else:
            at(slot.next_spawn_at)
        return

    if replacement is not None and replacement.state is WorkerState.RUNNING:
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
        recycle = _recycle_reason(current, now, policy) if view.recycling else None
        renew = recycle or ("replace requested" if replace_requested else "")
        if not renew and view.recycling and policy.max_age > 0:
            at(current.started_at + policy.max_age)
    else:
        return
    if renew and not slot.flapping:
        if now >= slot.next_spawn_at:
            actions.append(Action(ActionKind.SPAWN, slot.id, reason=renew, replace=True))
        else:
            at(slot.next_spawn_at)


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


def _recycle_reason(worker: WorkerProc, now: float, policy: Supervision) -> str | None:
    if policy.max_requests > 0 and worker.requests >= request_limit(worker, policy):
        return f"served {worker.requests} requests (max_requests {policy.max_requests})"
    if policy.max_age > 0 and now - worker.started_at >= policy.max_age:
        return f"{now - worker.started_at:.0f}s old (max_age {policy.max_age:g}s)"
    return None


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
