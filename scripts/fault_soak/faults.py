"""The fault schedule: which fault next, on which worker, with what parameters.

Every choice comes from one `random.Random(seed)`: the kinds, the gaps
between faults, the worker index, the stop durations, the scale targets and
the seeds of the flood contents. Replaying a seed replays that schedule; the
tree's answers (which pids exist, how long a job takes, hence which faults
are skipped) vary from run to run, so the run itself is not identical.

Job faults (`FaultKind.is_job`) run as ``procbus ctl`` processes
(`fault_soak.jobs`); while `JobRunner.limit` of them run, another one is
skipped. At most `MAX_STOPPED` workers are stopped at a time, so that stops
never take the whole tree away.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fault_soak.garbage import control_flood, worker_garbage
from fault_soak.jobs import JobRunner
from fault_soak.journal import FaultKind, Journal
from fault_soak.signals import StopKeeper, kill_worker
from fault_soak.tree import Tree

WEIGHTS: Final[Mapping[FaultKind, int]] = {
    FaultKind.KILL: 3,
    FaultKind.STOP_SHORT: 2,
    FaultKind.STOP_LONG: 1,
    FaultKind.RELOAD: 2,
    FaultKind.RESTART: 1,
    FaultKind.UPGRADE: 1,
    FaultKind.SCALE: 2,
    FaultKind.CONTROL_FLOOD: 2,
    FaultKind.GARBAGE: 2,
}
MAX_STOPPED: Final = 2
HEALTH_TIMEOUT: Final = 5.0
"""Seconds the master has to answer ``ping`` after a flood or garbage."""


@dataclass(frozen=True)
class _Draws:
    """The draws of one fault, taken whatever its kind."""

    worker: int
    """Index (modulo the number of workers, by id) of the worker to signal."""
    fraction: float
    """Where in its range a stop's duration falls."""
    scale: int
    contents: int
    """Seed of the flood's or garbage's contents (how many draws they take
    depends on the tree)."""


@dataclass(frozen=True)
class ScheduleSettings:
    kinds: frozenset[FaultKind]
    min_gap: float
    max_gap: float
    timeout: float
    """The tree's worker timeout: short stops stay under it, long ones go over."""
    scale_min: int
    scale_max: int
    flood: int
    """Messages per control flood (and per garbage burst on each worker socket)."""


class Schedule:
    def __init__(
        self,
        *,
        tree: Tree,
        journal: Journal,
        keeper: StopKeeper,
        jobs: JobRunner,
        seed: int,
        settings: ScheduleSettings,
        verbose: bool,
    ) -> None:
        self.tree = tree
        self.journal = journal
        self.keeper = keeper
        self.jobs = jobs
        self.rng = random.Random(seed)
        self.settings = settings
        self.verbose = verbose
        self.unresponsive = 0
        """Times the master did not answer ping after a flood or garbage."""
        self._count = 0

    def gap(self) -> float:
        return self.rng.uniform(self.settings.min_gap, self.settings.max_gap)

    def inject(self) -> None:
        """Choose and inject one fault.

        Every fault takes the same draws from the generator whatever it is and
        whatever the tree does (`_Draws`), so that a seed replays the same kinds
        with the same parameters; only the skips (a job command while
        `JobRunner.limit` run, a stop while `MAX_STOPPED` are stopped, a worker
        gone) depend on the run.
        """
        kinds = [k for k in FaultKind if k in self.settings.kinds]
        if not kinds:
            return
        kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        draws = _Draws(
            worker=self.rng.randrange(1_000_000),
            fraction=self.rng.random(),
            scale=self.rng.randint(self.settings.scale_min, self.settings.scale_max),
            contents=self.rng.randrange(2**32),
        )
        self._count += 1
        at = time.monotonic()
        detail = self._inject(kind, draws)
        if detail.startswith("skipped"):
            self.journal.skip(kind, at, detail)
        else:
            self.journal.fault(kind, at, detail)
        if self.verbose:
            print(f"{at - self.journal.origin:+8.2f}s {kind} {detail}", file=sys.stderr)

    def _inject(self, kind: FaultKind, draws: _Draws) -> str:
        s = self.settings
        if kind.is_job and self.jobs.busy:
            return f"skipped: {len(self.jobs.running)} job commands run already"
        if kind is FaultKind.KILL:
            return self._signal(draws.worker, None)
        if kind is FaultKind.STOP_SHORT:
            return self._signal(draws.worker, (0.2 + 0.5 * draws.fraction) * s.timeout)
        if kind is FaultKind.STOP_LONG:
            return self._signal(draws.worker, s.timeout + 1.0 + 2.0 * draws.fraction)
        if kind is FaultKind.RELOAD:
            self.jobs.launch(kind, "reload")
            return ""
        if kind is FaultKind.RESTART:
            self.jobs.launch(kind, "restart", "--adopt")
            return ""
        if kind is FaultKind.UPGRADE:
            self.jobs.launch(kind, "upgrade")
            return ""
        if kind is FaultKind.SCALE:
            self.jobs.launch(kind, "scale", str(draws.scale))
            return str(draws.scale)
        contents = random.Random(draws.contents)
        if kind is FaultKind.CONTROL_FLOOD:
            tag = f"flood{self._count}"
            result = control_flood(self.tree.context, self.tree.endpoint, contents, s.flood, tag)
            return f"{result}{self._health(kind)}"
        status = self.tree.status(2.0)
        if status is None:
            return "skipped: no status from the master"
        garbage = worker_garbage(
            self.tree.context, status["master"]["endpoints"], status["workers"], contents, s.flood
        )
        return f"{garbage}{self._health(kind)}"

    def _signal(self, index: int, hold: float | None) -> str:
        if hold is not None and self.keeper.stopped() >= MAX_STOPPED:
            return "skipped: enough workers stopped already"
        status = self.tree.status(2.0)
        if status is None:
            return "skipped: no status from the master"
        workers = sorted(
            (w for w in status["workers"] if w["pid"] is not None), key=lambda w: int(w["id"])
        )
        if not workers:
            return "skipped: no worker"
        worker = workers[index % len(workers)]
        pid = int(worker["pid"])
        if hold is None:
            done = kill_worker(self.tree, self.journal, pid)
            what = f"worker {worker['id']} pid {pid}"
        else:
            done = self.keeper.hold(pid, hold)
            what = f"worker {worker['id']} pid {pid} for {hold:.2f}s"
        return what if done else f"skipped: {what} was gone"

    def _health(self, kind: FaultKind) -> str:
        if self.tree.ping(HEALTH_TIMEOUT) is not None:
            return ""
        if any(k.changes_master for k in self.jobs.running):
            return "; no ping answer (a restart or upgrade runs)"
        self.unresponsive += 1
        at = time.monotonic() - self.journal.origin
        self.journal.note(f"{at:+.2f}s: no ping answer within {HEALTH_TIMEOUT:g}s after {kind}")
        return "; NO PING ANSWER"
