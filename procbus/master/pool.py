"""The pool: carries out the planner's decisions and keeps the worker records.

`procbus.master.planner` decides; this module does: it forks (through a spawn
function the master provides), signals, reaps, and updates each worker's record
from what the worker says (hello, state, heartbeat) and from what the kernel
says (exit status). After anything changes it asks the planner again, and
arms one timer for the planner's next deadline, so the master never polls.

It also counts what the metrics report: recycles by the limit reached
(`Pool.recycles`) and reloads by how they ended (`Pool.reload_results`).
"""

from __future__ import annotations

import collections
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from procbus.master.loop import EventLoop, Timer
from procbus.master.planner import (
    Action,
    ActionKind,
    PoolView,
    Recycled,
    Rollout,
    Supervision,
    WorkerProc,
    WorkerSlot,
    WorkerState,
    plan,
    record_exit,
    request_limit,
    rss_exceeded,
)
from procbus.protocol import BusState, WorkerBusState

log = logging.getLogger("procbus.master")

SpawnFn = Callable[[int, int], int]
"""(worker id, generation) -> pid of the forked worker."""
EmitFn = Callable[..., None]
"""emit(event name, **fields): the master's event stream."""

_ENDING: Final = frozenset(
    {WorkerBusState.STOPPING, WorkerBusState.STOPPED, WorkerBusState.FAILED}
)
"""What a worker says when it stops, whether the master asked or not."""


def describe_status(status: int) -> str:
    """``exit 3`` or ``killed by SIGKILL`` from an ``os.waitstatus_to_exitcode`` value."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit {status}"


class Pool:
    """The master's worker processes and slots."""

    def __init__(
        self,
        loop: EventLoop,
        *,
        policy: Supervision,
        spawn: SpawnFn,
        emit: EmitFn,
        target: int,
        kill: Callable[[int, int], None] = os.kill,
        waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid,
        boot_failed_status: int | None = None,
    ) -> None:
        self.loop = loop
        self.policy = policy
        self._spawn = spawn
        self._emit = emit
        self._kill = kill
        self._waitpid = waitpid
        self._boot_failed_status = boot_failed_status
        """The exit status of a worker whose app could not boot (`WorkerProc.boot_failed`)."""
        self.view = PoolView(slots={}, target=target, active=False)
        self.by_pid: dict[int, WorkerProc] = {}
        self.by_topic: dict[bytes, WorkerProc] = {}
        self._timer: Timer | None = None
        self._planning = False
        self.stop_signal = signal.SIGTERM
        """What draining workers are sent: SIGTERM (graceful) or SIGQUIT (fast)."""
        self.on_ready: Callable[[WorkerProc], None] = lambda worker: None
        self.on_gone: Callable[[WorkerProc], None] = lambda worker: None
        self.on_drain: Callable[[WorkerProc], None] = lambda worker: None
        """Called when a running worker stops being a target of publishes to drain
        (the master tells it which publishes it still owes), before it is signalled."""
        self.last_words: Callable[[WorkerProc], None] = lambda worker: None
        """Called for a worker that exited as unable to boot before its error was heard:
        its FAILED state left before it exited, but may still be on its way (the
        master's hub reads what arrived); the pool then records the exit."""
        self.on_halt: Callable[[str], None] = lambda reason: None
        """Called once when the planner gives up (`HALT`: a worker could not boot before
        the pool ever came up), with why; the pool forks nothing more."""
        self._other_children: dict[int, Callable[[int], None]] = {}
        self.generations: dict[int, int] = {}
        """Worker id -> last generation a previous master used (restart, upgrade):
        a new slot goes on from there, so generations never repeat."""
        self.recycles: collections.Counter[str] = collections.Counter()
        """Workers replaced for reaching a limit, by `RecycleReason` value."""
        self.reload_results: collections.Counter[str] = collections.Counter()
        """Reloads, by how they ended (counted by the reload job: `jobs.workers.ReloadResult`)."""

    # -- what the rest of the master reads --------------------------------

    @property
    def target(self) -> int:
        return self.view.target

    @property
    def active(self) -> bool:
        return self.view.active

    def slots(self) -> list[WorkerSlot]:
        return [self.view.slots[i] for i in sorted(self.view.slots) if i <= self.view.target]

    def current_workers(self) -> Iterator[WorkerProc]:
        for slot in self.slots():
            if slot.current is not None:
                yield slot.current

    def publish_targets(self) -> tuple[list[WorkerProc], list[WorkerProc]]:
        """(workers a publish waits for, current workers not yet subscribed)."""
        targets, starting = [], []
        slots, target = self.view.slots, self.view.target
        # Once per publish: the loop of `current_workers` without its generator.
        for index in sorted(slots):
            if index > target:
                break
            worker = slots[index].current
            if worker is None:
                continue
            if worker.state is WorkerState.RUNNING:
                targets.append(worker)
            elif worker.state in (WorkerState.BOOTING, WorkerState.STARTING):
                starting.append(worker)
        return targets, starting

    def all_running(self) -> bool:
        """Every wanted slot has a running current worker and nothing is in transit."""
        slots = self.slots()
        return len(slots) == self.view.target and all(
            s.current is not None
            and s.current.state is WorkerState.RUNNING
            and s.replacement is None
            for s in slots
        )

    def settled(self) -> bool:
        """Nothing left to wait for: each slot is running or flapping, or the pool gave up."""
        if self.view.halted is not None:
            return True
        slots = self.slots()
        return len(slots) == self.view.target and all(
            s.flapping or (s.current is not None and s.current.state is WorkerState.RUNNING)
            for s in slots
        )

    def no_children(self) -> bool:
        return not self.by_pid

    def slot(self, worker_id: int) -> WorkerSlot | None:
        return self.view.slots.get(worker_id)

    # -- what the master asks ---------------------------------------------

    def activate(self) -> None:
        self.view.active = True
        self.stop_signal = signal.SIGTERM
        for slot in self.view.slots.values():
            slot.forgive()
        self.replan()

    def deactivate(self, fast: bool = False) -> None:
        """Drain every worker (SIGTERM), or end them at once (SIGQUIT) if `fast`."""
        self.view.active = False
        self.stop_signal = signal.SIGQUIT if fast else signal.SIGTERM
        self.replan()

    def scale(self, target: int) -> None:
        if target < 0:
            raise ValueError(f"worker count must be >= 0, got {target}")
        grow = target > self.view.target
        self.view.target = target
        if grow:
            for slot in self.slots():
                slot.forgive()
        self.replan()

    def start_rollout(self, batch: int) -> Rollout:
        """Start replacing every worker, all at once (`batch` 0, the surge) or `batch` at
        a time (the planner carries it out: see `Rollout`); the rollout says when it is
        done or failed, and why."""
        if self.view.rollout is not None:
            raise RuntimeError("a rollout is already running")
        rollout = Rollout(tuple(slot.id for slot in self.slots()), batch)
        self.view.rollout = rollout
        self.replan()
        return rollout

    def end_rollout(self) -> None:
        """Stop advancing the rollout in progress (its job was aborted): replacements
        already forked are promoted once they run, no new batch starts."""
        if self.view.rollout is not None:
            self.view.rollout = None
            self.replan()

    def signal_current(self, worker_id: int, signum: int) -> WorkerProc:
        """Send `signum` to the current worker of slot `worker_id`; `LookupError` if none."""
        slot = self.slot(worker_id)
        if slot is None or slot.current is None or worker_id > self.target:
            raise LookupError(f"no worker {worker_id}")
        self.signal(slot.current, signum)
        return slot.current

    def signal(self, worker: WorkerProc, signum: int) -> None:
        try:
            self._kill(worker.pid, signum)
        except ProcessLookupError:
            self._vanished(worker)

    def _vanished(self, worker: WorkerProc) -> None:
        """`worker`'s process does not exist, not even as a zombie to reap: forget it as
        if it had died, or the pool would wait for it (and signal its pid) forever."""
        if self.by_pid.get(worker.pid) is not worker:
            return
        del self.by_pid[worker.pid]
        log.warning("worker %d (pid %d) is gone, not reaped here", worker.id, worker.pid)
        worker.last_error = worker.last_error or "the process is gone (not a child of this master)"
        self._exited(worker, -signal.SIGKILL)
        self.replan()

    def watch_child(self, pid: int, exited: Callable[[int], None]) -> None:
        """Call `exited(status)` when `pid`, a child that is not a worker, is reaped."""
        self._other_children[pid] = exited

    def forget_child(self, pid: int) -> None:
        self._other_children.pop(pid, None)

    # -- planning ---------------------------------------------------------

    def replan(self) -> None:
        """Ask the planner what to do, do it, and arm the next deadline."""
        if self._planning:
            return
        self._planning = True
        try:
            for _ in range(100):
                result = plan(self.view, self.loop.clock(), self.policy)
                if not result.actions:
                    break
                for action in result.actions:
                    self._execute(action)
        finally:
            self._planning = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if result.next_check != float("inf"):
            self._timer = self.loop.call_at(result.next_check, self.replan)

    def _execute(self, action: Action) -> None:
        now = self.loop.clock()
        slot = self.view.slots.get(action.slot)
        worker = action.worker
        if action.kind is ActionKind.SPAWN:
            if slot is None:
                slot = self.view.slots[action.slot] = WorkerSlot(
                    action.slot, generation=self.generations.get(action.slot, 0)
                )
            if action.recycle is not None and slot.current is not None:
                self._recycling(slot, slot.current, action)
            self._fork(slot, action.replace, action.reason)
        elif action.kind is ActionKind.PROMOTE:
            assert slot is not None and worker is not None
            old = slot.current
            slot.current, slot.replacement = worker, None
            self._emit("promote", worker=worker.id, pid=worker.pid, generation=worker.generation)
            if old is not None:
                self._retire(old, "replaced")
        elif action.kind is ActionKind.DRAIN:
            assert worker is not None
            if slot is not None and slot.current is worker:
                slot.current = None
            if slot is not None and slot.replacement is worker:
                slot.replacement = None
            self._retire(worker, action.reason)
        elif action.kind is ActionKind.ABORT:
            assert worker is not None
            worker.abort_deadline = now + self.policy.abort_grace
            worker.last_error = action.reason
            log.error("worker %d (pid %d): %s; aborting", worker.id, worker.pid, action.reason)
            self._emit("timeout", worker=worker.id, pid=worker.pid, reason=action.reason)
            self.signal(worker, signal.SIGABRT)
        elif action.kind is ActionKind.KILL:
            assert worker is not None
            worker.killed = True
            log.warning("worker %d (pid %d): %s; killing", worker.id, worker.pid, action.reason)
            self._emit("kill", worker=worker.id, pid=worker.pid, reason=action.reason)
            self.signal(worker, signal.SIGKILL)
        elif action.kind is ActionKind.HALT:
            self.view.halted = action.reason
            log.error("%s; stopping", action.reason)
            self._emit("halt", worker=action.slot, reason=action.reason)
            self.on_halt(action.reason)

    def _recycling(self, slot: WorkerSlot, worker: WorkerProc, action: Action) -> None:
        """`worker` reached a limit: its replacement is forked next (and it drains once
        that one runs). Counted once per worker, however many forks its replacement takes."""
        assert action.recycle is not None
        if worker.recycle is not None:
            return
        worker.recycle = action.recycle
        slot.last_recycle = Recycled(
            action.recycle, action.reason, self.loop.clock(), worker.pid, worker.generation
        )
        self.recycles[action.recycle.value] += 1
        log.info("worker %d (pid %d) is recycled: %s", worker.id, worker.pid, action.reason)
        self._emit(
            "recycle",
            worker=worker.id,
            pid=worker.pid,
            generation=worker.generation,
            reason=action.recycle.value,
            detail=action.reason,
        )

    def _fork(self, slot: WorkerSlot, replace: bool, reason: str) -> None:
        slot.generation += 1
        try:
            pid = self._spawn(slot.id, slot.generation)
        except OSError as exc:
            log.error("cannot fork worker %d: %s", slot.id, exc)
            slot.early_deaths += 1
            slot.next_spawn_at = self.loop.clock() + self.policy.backoff.delay(slot.early_deaths)
            return
        worker = WorkerProc(slot.id, slot.generation, pid, self.loop.clock())
        if self.policy.max_requests_jitter > 0:
            worker.request_jitter = random.randint(0, self.policy.max_requests_jitter)
        self.by_pid[pid] = worker
        # Known from the fork on: the subscription may arrive before the hello.
        self.by_topic[worker.topic] = worker
        if replace:
            slot.replacement = worker
        else:
            slot.current = worker
        self._emit("spawn", worker=slot.id, pid=pid, generation=slot.generation, reason=reason)

    def adopt(self, worker_id: int, generation: int, pid: int) -> WorkerProc | None:
        """Take over a live worker a previous master forked (``restart --adopt``).

        It counts as starting until its subscription reaches this master's
        XPUB again (ZeroMQ reconnects it) and it is heard on this master's
        ROUTER: a WELCOME sent before its DEALER reconnected would be dropped,
        and the worker, which forgot its sequence when its connection was
        lost, would wait for one forever. It already said hello and runs.

        A worker that died meanwhile (before the exec, or since) is not
        adopted: its slot is filled again. Returns the worker, or None.
        """
        try:
            done, _ = self._waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            log.warning("worker %d (pid %d) died before it could be adopted", worker_id, pid)
            self.generations[worker_id] = max(self.generations.get(worker_id, 0), generation)
            return None
        slot = self.view.slots.get(worker_id)
        if slot is None:
            slot = self.view.slots[worker_id] = WorkerSlot(worker_id)
        slot.generation = max(slot.generation, generation)
        worker = WorkerProc(worker_id, generation, pid, self.loop.clock())
        worker.state = WorkerState.STARTING
        worker.hello = True
        worker.adopted = True
        worker.last_heartbeat = self.loop.clock()
        self.by_pid[pid] = worker
        self.by_topic[worker.topic] = worker
        slot.current = worker
        self._emit("adopt", worker=worker_id, pid=pid, generation=generation)
        return worker

    def _retire(self, worker: WorkerProc, reason: str) -> None:
        """Drain `worker`: SIGTERM now (after its DRAIN marker, if it is a target of
        publishes: see `on_drain`), SIGKILL after the graceful timeout."""
        if worker not in self.view.retired:
            self.view.retired.append(worker)
        if worker.stop_requested or not worker.alive:
            return
        worker.stop_requested = True
        if worker.state is WorkerState.RUNNING and self.stop_signal == signal.SIGTERM:
            self.on_drain(worker)
        worker.state = WorkerState.STOPPING
        worker.stop_deadline = self.loop.clock() + self.policy.graceful_timeout
        self._emit("drain", worker=worker.id, pid=worker.pid, reason=reason)
        self.signal(worker, self.stop_signal)

    # -- what the workers and the kernel say --------------------------------

    def reap(self) -> None:
        """Collect every child that exited (SIGCHLD, or any time)."""
        gone: list[tuple[WorkerProc, int]] = []
        while True:
            try:
                pid, status = self._waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            worker = self.by_pid.get(pid)
            if worker is None:
                exited = self._other_children.pop(pid, None)
                if exited is not None:
                    exited(code)
                continue
            gone.append((worker, code))
        for worker, code in gone:
            if code == self._boot_failed_status and not (
                worker.last_error or worker.stop_requested
            ):
                # Before the pool forgets it: its hello may not even have been read.
                self.last_words(worker)
        for worker, code in gone:
            del self.by_pid[worker.pid]
            self._exited(worker, code)
        if gone:
            self.replan()

    def _exited(self, worker: WorkerProc, code: int) -> None:
        worker.exit_status = code
        worker.boot_failed = code == self._boot_failed_status
        worker.state = WorkerState.EXITED
        self.by_topic.pop(worker.topic, None)
        if worker in self.view.retired:
            self.view.retired.remove(worker)
        slot = self.view.slots.get(worker.id)
        expected = worker.stop_requested
        if slot is not None:
            record_exit(slot, worker, self.loop.clock(), self.policy)
        how = describe_status(code)
        level = logging.INFO if expected else logging.WARNING
        log.log(
            level,
            "worker %d (pid %d) %s%s",
            worker.id,
            worker.pid,
            how,
            "" if expected else f" unexpectedly; {worker.last_error or 'no error reported'}",
        )
        self._emit(
            "exit",
            worker=worker.id,
            pid=worker.pid,
            generation=worker.generation,
            status=code,
            how=how,
            expected=expected,
            error=worker.last_error,
        )
        if slot is not None and slot.flapping and not expected:
            log.error(
                "worker %d is flapping: %d early deaths in a row; not respawning",
                slot.id,
                slot.early_deaths,
            )
            self._emit(
                "flapping", worker=slot.id, early_deaths=slot.early_deaths, error=slot.last_error
            )
        self.on_gone(worker)

    def hello(self, worker: WorkerProc) -> None:
        worker.hello = True
        worker.last_heartbeat = self.loop.clock()
        if worker.state is WorkerState.BOOTING:
            worker.state = WorkerState.STARTING

    def subscribed(self, topic: bytes) -> None:
        worker = self.by_topic.get(topic)
        if worker is None:
            return
        worker.subscribed = True
        self._maybe_ready(worker)

    def worker_state(self, worker: WorkerProc, state: WorkerBusState, error: str | None) -> None:
        worker.lifecycle = state
        worker.last_heartbeat = self.loop.clock()
        if error:
            worker.last_error = error
            slot = self.view.slots.get(worker.id)
            if slot is not None:
                slot.last_error = error
        self._emit("state", worker=worker.id, pid=worker.pid, state=state.value, error=error)
        if state is WorkerBusState.RUNNING:
            self._maybe_ready(worker)
        elif state in _ENDING and worker.state is not WorkerState.STOPPING:
            # The worker stops on its own (a signal from someone else, its app ended).
            if state is WorkerBusState.STOPPING and worker.state is WorkerState.RUNNING:
                self.on_drain(worker)  # it drains: it answers what it was sent
            worker.state = WorkerState.STOPPING
            worker.stop_deadline = self.loop.clock() + self.policy.graceful_timeout
            self.replan()

    def heartbeat(
        self, worker: WorkerProc, counters: dict[str, Any], bus: BusState | None = None
    ) -> None:
        worker.last_heartbeat = self.loop.clock()
        worker.counters = {k: v for k, v in counters.items() if isinstance(v, int)}
        if bus is not None and bus is not worker.bus_state:
            worker.bus_state = bus
            self._emit("bus_state", worker=worker.id, pid=worker.pid, bus_state=bus.value)
        if worker.adopted and worker.lifecycle is None:
            # An adopted worker's first heartbeat here: it runs, and a WELCOME
            # reaches it now.
            worker.lifecycle = WorkerBusState.RUNNING
            self._maybe_ready(worker)
        limit = request_limit(worker, self.policy)
        if limit and worker.requests >= limit and worker.state is WorkerState.RUNNING:
            self.replan()

    def record_rss(self, samples: Mapping[WorkerProc, int | None]) -> None:
        """One RSS sample of each worker (None: it could not be read, no sample); the
        planner decides on the last `rss_samples` of them (`planner.rss_exceeded`)."""
        keep = self.policy.rss_samples
        over = False
        for worker, rss in samples.items():
            if rss is None or not worker.alive:
                continue
            worker.rss.append(rss)
            del worker.rss[:-keep]
            over = over or (
                worker.state is WorkerState.RUNNING and rss_exceeded(worker, self.policy)
            )
        if over:
            self.replan()

    def _maybe_ready(self, worker: WorkerProc) -> None:
        if (
            worker.state in (WorkerState.BOOTING, WorkerState.STARTING)
            and worker.subscribed
            and worker.lifecycle is WorkerBusState.RUNNING
        ):
            worker.state = WorkerState.RUNNING
            worker.ran = True
            worker.last_heartbeat = self.loop.clock()
            self.view.booted = self.view.booted or self.all_running()
            self.on_ready(worker)
            self._emit("ready", worker=worker.id, pid=worker.pid, generation=worker.generation)
            self.replan()
