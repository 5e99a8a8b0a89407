"""Stand-ins for the processes and the master around the parts a component test drives.

`FakeProcesses` plays the kernel and the workers for a real `Pool`: its
``spawn``, ``kill`` and ``waitpid`` are the pool's, a "worker" is a pid that
says hello, subscribes and runs (or fails, or hangs) on the pool's fake clock,
exits when it is signalled, and is reaped through a SIGCHLD-like turn of the
loop. `FakeTree` is the `procbus.master.jobs.tree.Tree` a job body sees.
`Recorder` keeps every event emitted.
"""

from __future__ import annotations

import collections
import enum
import itertools
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from procbus.bus import Bus
from procbus.master.jobs import JobAborted
from procbus.master.loop import EventLoop
from procbus.master.planner import Backoff, Supervision, WorkerState
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings
from procbus.protocol import WorkerBusState

FIRST_PID: Final = 10_000_000
"""Above any Linux pid_max (at most 2**22): no real process has a fake worker's pid,
so psutil finds none and a stray signal could reach nobody."""
BOOT: Final = 0.1
"""Fake seconds from a fork to a worker running (or failing)."""
HEARTBEAT: Final = 1.0
"""Fake seconds between the heartbeats of a running fake worker."""
POLICY: Final = Supervision(
    timeout=30.0,
    boot_timeout=5.0,
    graceful_timeout=2.0,
    abort_grace=1.0,
    backoff=Backoff(initial=0.5, min_uptime=1.0),
)
"""Deadlines short enough that a job waiting for them ends after few loop turns."""


class Fate(enum.Enum):
    """What a forked fake worker does."""

    RUN = "run"
    """Says hello, subscribes and runs (heartbeating); exits when signalled."""
    CRASH = "crash"
    """Says hello, reports that its app failed, and exits 3."""
    HANG = "hang"
    """Says nothing; only a signal ends it."""


@dataclass
class FakeProcess:
    worker_id: int
    generation: int
    pid: int
    fate: Fate
    alive: bool = True


@dataclass
class Recorder:
    """Every event emitted (``emit(name, **fields)``), in order."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def emit(self, event: str, **data: Any) -> None:
        self.events.append((event, data))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [data for name, data in self.events if name == event]

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class FakeProcesses:
    """The kernel and the workers, as the pool sees them (see the module docstring)."""

    def __init__(self, loop: EventLoop, boot: float = BOOT) -> None:
        self.loop = loop
        self.boot = boot
        self.pool: Pool | None = None
        """The pool the workers talk to (`attach`)."""
        self.by_pid: dict[int, FakeProcess] = {}
        self.fates: dict[tuple[int, int], tuple[Fate, float]] = {}
        """(worker id, generation) -> what its process does, after how many seconds."""
        self.signals: list[tuple[int, int]] = []
        """(pid, signal number) of every signal sent, in order."""
        self.serving_at_stop: list[int] = []
        """At each SIGTERM, how many workers were running and not asked to stop."""
        self._exited: collections.deque[tuple[int, int]] = collections.deque()
        self._pids = itertools.count(FIRST_PID)

    def attach(self, pool: Pool) -> None:
        self.pool = pool

    def plan(self, worker_id: int, generation: int, fate: Fate, after: float = BOOT) -> None:
        """The process forked for (`worker_id`, `generation`) will meet `fate` after `after`."""
        self.fates[worker_id, generation] = (fate, after)

    def alive(self) -> list[int]:
        return [pid for pid, proc in self.by_pid.items() if proc.alive]

    def signalled(self, pid: int) -> list[int]:
        return [signum for target, signum in self.signals if target == pid]

    # -- the pool's spawn, kill and waitpid ---------------------------------

    def spawn(self, worker_id: int, generation: int) -> int:
        pid = next(self._pids)
        fate, after = self.fates.get((worker_id, generation), (Fate.RUN, self.boot))
        self.by_pid[pid] = FakeProcess(worker_id, generation, pid, fate)
        if fate is not Fate.HANG:
            self.loop.call_later(after, lambda: self._boot(pid))
        return pid

    def kill(self, pid: int, signum: int) -> None:
        proc = self.by_pid.get(pid)
        if proc is None or not proc.alive:
            raise ProcessLookupError(pid)
        self.signals.append((pid, signum))
        if signum == signal.SIGTERM:
            self.serving_at_stop.append(self._serving())
            self.exit(pid, 0)
        elif signum in (signal.SIGQUIT, signal.SIGKILL, signal.SIGABRT):
            self.exit(pid, -signum)

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        if pid == -1:
            if self._exited:
                return self._exited.popleft()
            if self.alive():
                return 0, 0
            raise ChildProcessError(pid)
        for index, (exited, status) in enumerate(self._exited):
            if exited == pid:
                del self._exited[index]
                return exited, status
        proc = self.by_pid.get(pid)
        if proc is None or not proc.alive:
            raise ChildProcessError(pid)
        return 0, 0

    # -- what the fake workers do -------------------------------------------

    def exit(self, pid: int, code: int) -> None:
        """`pid` ends with exit `code` (negative: killed by signal -`code`); the pool hears
        of it on the loop's next turn, as it would on SIGCHLD."""
        proc = self.by_pid[pid]
        if not proc.alive:
            return
        proc.alive = False
        self._exited.append((pid, code << 8 if code >= 0 else -code))
        self.loop.call_later(0, self._sigchld)

    def _sigchld(self) -> None:
        if self.pool is not None:
            self.pool.reap()

    def _boot(self, pid: int) -> None:
        proc = self.by_pid[pid]
        worker = self.pool.by_pid.get(pid) if self.pool is not None else None
        if not proc.alive or worker is None or self.pool is None:
            return
        self.pool.hello(worker)
        if proc.fate is Fate.CRASH:
            self.pool.worker_state(
                worker, WorkerBusState.FAILED, f"app: boom in generation {proc.generation}"
            )
            self.exit(pid, 3)
            return
        self.pool.subscribed(worker.topic)
        self.pool.worker_state(worker, WorkerBusState.RUNNING, None)
        self.loop.call_later(HEARTBEAT, lambda: self._heartbeat(pid))

    def _heartbeat(self, pid: int) -> None:
        worker = self.pool.by_pid.get(pid) if self.pool is not None else None
        if self.pool is None or worker is None or not self.by_pid[pid].alive:
            return
        self.pool.heartbeat(worker, {"requests": worker.requests + 1})
        self.loop.call_later(HEARTBEAT, lambda: self._heartbeat(pid))

    def _serving(self) -> int:
        if self.pool is None:
            return 0
        return sum(
            1
            for worker in self.pool.by_pid.values()
            if worker.state is WorkerState.RUNNING and not worker.stop_requested
        )


def fake_pool(
    loop: EventLoop,
    processes: FakeProcesses,
    emit: Callable[..., None],
    target: int = 2,
    policy: Supervision = POLICY,
    *,
    boot_failed_status: int | None = None,
) -> Pool:
    """A real `Pool` whose processes are `processes`."""
    pool = Pool(
        loop,
        policy=policy,
        spawn=processes.spawn,
        emit=emit,
        target=target,
        kill=processes.kill,
        waitpid=processes.waitpid,
        boot_failed_status=boot_failed_status,
    )
    processes.attach(pool)
    return pool


@dataclass
class FakeTree:
    """The `Tree` a job body sees, over a real pool of fake processes.

    The bodies of reload, scale, stop and start use no lineage; restart and
    upgrade (which do) are proven on real processes (tests/tree, tests/cli).
    """

    pool: Pool
    loop: EventLoop
    recorder: Recorder
    settings: TreeSettings = field(default_factory=lambda: TreeSettings(supervision=POLICY))
    bus: Bus = field(default_factory=Bus)
    lineage: Any = None
    reload_config: Callable[[], None] = lambda: None
    exiting: bool = False

    def emit(self, event: str, **data: Any) -> None:
        self.recorder.emit(event, **data)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        self.loop.run_until(lambda: predicate() or self.exiting, timeout)
        if self.exiting:
            raise JobAborted
        return predicate()
