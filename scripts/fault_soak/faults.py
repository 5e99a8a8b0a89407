"""The fault schedule: which fault next, on which worker, with what parameters.

Every choice comes from one `random.Random(seed)`: the kinds, the gaps
between faults, the worker index, the stop durations, the scale targets and
the flood contents. Replaying a seed replays that schedule; the tree's answers
(which pids exist, how long a job takes) vary from run to run, so the run
itself is not identical.

Job faults (`FaultKind.is_job`) run as ``procbus ctl`` processes
(`fault_soak.jobs`); while `JobRunner.limit` of them run, the schedule picks
among the other kinds. At most `MAX_STOPPED` workers are stopped at a time,
so that stops never take the whole tree away.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

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
        """Choose and inject one fault."""
        kinds = [k for k in FaultKind if k in self.settings.kinds]
        if self.jobs.busy:
            kinds = [k for k in kinds if not k.is_job]
        if not kinds:
            return
        kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        self._count += 1
        at = time.monotonic()
        detail = self._inject(kind)
        if detail.startswith("skipped"):
            self.journal.event(at, f"{kind} {detail}")
        else:
            self.journal.fault(kind, at, detail)
        if self.verbose:
            print(f"{at - self.journal.origin:+8.2f}s {kind} {detail}", file=sys.stderr)

    def _workers(self) -> list[dict[str, Any]]:
        status = self.tree.status(2.0)
        if status is None:
            return []
        return sorted(
            (w for w in status["workers"] if w["pid"] is not None), key=lambda w: int(w["id"])
        )

    def _inject(self, kind: FaultKind) -> str:
        s = self.settings
        if kind is FaultKind.KILL:
            return self._signal(kind, None)
        if kind is FaultKind.STOP_SHORT:
            return self._signal(kind, self.rng.uniform(0.2, 0.7) * s.timeout)
        if kind is FaultKind.STOP_LONG:
            return self._signal(kind, s.timeout + self.rng.uniform(1.0, 3.0))
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
            n = self.rng.randint(s.scale_min, s.scale_max)
            self.jobs.launch(kind, "scale", str(n))
            return str(n)
        # The contents come from a generator of their own, seeded by one draw: how many
        # draws they take (it depends on the tree) does not shift the rest of the schedule.
        contents = random.Random(self.rng.randrange(2**32))
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

    def _signal(self, kind: FaultKind, hold: float | None) -> str:
        workers = self._workers()
        # Draw before any early return, so that the draws do not depend on the tree.
        index = self.rng.randrange(1_000_000)
        if hold is not None and self.keeper.stopped() >= MAX_STOPPED:
            return "skipped: enough workers stopped already"
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
