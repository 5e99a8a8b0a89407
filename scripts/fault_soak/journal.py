"""What the soak did and what it saw, and the rules that explain a failure.

Every thread of the soak writes here (under one lock): the fault schedule its
faults, the stop keeper its SIGSTOP/SIGCONT and the deaths it saw, the HTTP
clients their failed requests, the publisher its publishes. Once every thread
has ended, the pure functions below decide, for each failed request and each
publish, whether something the soak itself did explains it. The rules are the
ones the report prints (`FAILURE_RULES`, `PUBLISH_RULES`): a failure is only
excused by a SIGKILL or a SIGSTOP of the soak, never by a reload, a restart,
an upgrade, a scale or a flood, which the tree must survive without one.

All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import datetime
import enum
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final


class FaultKind(enum.StrEnum):
    KILL = "kill"
    """SIGKILL a worker."""
    STOP_SHORT = "stop-short"
    """SIGSTOP a worker for less than the tree's timeout, then SIGCONT."""
    STOP_LONG = "stop-long"
    """SIGSTOP a worker for longer than the timeout (the master kills it), then SIGCONT."""
    RELOAD = "reload"
    RESTART = "restart-adopt"
    UPGRADE = "upgrade"
    SCALE = "scale"
    CONTROL_FLOOD = "control-flood"
    """Many requests, good and bad, straight on the control socket."""
    GARBAGE = "garbage"
    """Bad frames on the worker endpoints (replies ROUTER, publish XPUB)."""

    @property
    def is_job(self) -> bool:
        """Run as a ``procbus ctl`` process that waits for the master's job."""
        return self in _JOBS

    @property
    def changes_master(self) -> bool:
        """The master re-executes (restart) or hands over to a new one (upgrade)."""
        return self in (FaultKind.RESTART, FaultKind.UPGRADE)


_JOBS: Final = frozenset({FaultKind.RELOAD, FaultKind.RESTART, FaultKind.UPGRADE, FaultKind.SCALE})


@dataclass(frozen=True)
class Kill:
    pid: int
    at: float
    """Taken just before the signal was sent."""


@dataclass
class Stop:
    pid: int
    start: float
    end: float | None = None
    """When SIGCONT was sent (None: not yet)."""
    died_at: float | None = None
    """When the worker was seen dead, while stopped or just after SIGCONT."""

    def covers(self, start: float, end: float) -> bool:
        """Whether this stop (until SIGCONT, or until death) overlaps [start, end]."""
        until = max(self.end if self.end is not None else end, self.died_at or 0.0)
        return self.start <= end and until >= start


@dataclass
class JobRun:
    """One ``procbus ctl`` job command run by the soak."""

    kind: FaultKind
    command: str
    start: float
    end: float | None = None
    returncode: int | None = None
    outcome: str = ""
    """``done``, or what the command said when it failed."""


class Outcome(enum.StrEnum):
    """What became of one HTTP request."""

    OK = "ok"
    REFUSED = "refused"
    CLOSED = "closed"
    """The connection closed without a response."""
    RESET = "reset"
    TIMEOUT = "timeout"
    HTTP_5XX = "5xx"
    HTTP_OTHER = "status"
    BAD_RESPONSE = "bad-response"
    OS_ERROR = "oserror"


@dataclass(frozen=True)
class RequestFailure:
    start: float
    end: float
    outcome: Outcome
    pid: int | None
    """The worker serving the connection, known from an earlier response on it;
    None on the first request of a connection."""
    error: str


class Cause(enum.StrEnum):
    """Why a request failed, as far as the soak can tell."""

    SOAK_KILL = "soak-kill"
    STOPPED = "stopped-then-killed"
    OTHER = "other"


@dataclass(frozen=True)
class PublishRecord:
    number: int
    start: float
    end: float
    result: dict[str, Any] | None
    """The tree's reply (``ctl publish --json`` form), None when the call failed."""
    error_code: str | None = None
    error: str | None = None


class PublishVerdict(enum.StrEnum):
    ALL_OK = "all-ok"
    """Every target worker answered ok."""
    NOT_OK_EXPLAINED = "not-ok-explained"
    NOT_OK_UNEXPLAINED = "not-ok-unexplained"
    UNANSWERED_MASTER_CHANGE = "unanswered-master-change"
    """No reply from the master while a restart or upgrade of the soak ran."""
    UNANSWERED = "unanswered"


FAILURE_RULES: Final = (
    "a failed request is 'cut by the soak's SIGKILL' when the worker serving its connection "
    "(the pid of an earlier response on it) was SIGKILLed by the soak before the failure, or, "
    "on a connection with no response yet, when the soak SIGKILLed a worker while the request "
    "was in flight; 'cut by a stop' when that worker (or, with no response yet, any worker) "
    "had been SIGSTOPped by the soak and died while stopped or within "
    "{grace:g} s of its SIGCONT (the master killed it for silence or at the end of a drain), "
    "before the failure; anything else is 'other'"
)
PUBLISH_RULES: Final = (
    "a publish is 'all ok' when the tree's reply says ok; a worker that did not answer ok "
    "is explained only when it is 'lost' or 'timeout' and the soak SIGKILLed that worker during "
    "the publish (or {kill_margin:g} s before it) or had it SIGSTOPped during the publish "
    "('error', a listener that raised, is never explained); "
    "a publish without a reply from the master is excused only while a restart or upgrade "
    "of the soak was running (until {change_margin:g} s after it returned)"
)

KILL_MARGIN: Final = 0.5
"""Seconds before a publish in which a SIGKILL still explains a lost worker
(the master may not have reaped it when the publish was sent)."""
WINDOW_MARGIN: Final = 0.1
"""Seconds of slack around a request for a kill seen on a connection with no pid."""
DEATH_MARGIN: Final = 0.25
"""Seconds by which the stop keeper may notice a death after the clients do."""
CHANGE_MARGIN: Final = 2.0
"""Seconds after a restart or upgrade command returned in which the control
socket may still be moving to the new master."""
STOP_DEATH_GRACE: Final = 1.0
"""Seconds after SIGCONT in which a death still counts as caused by the stop
(an abort the master sent to the stopped worker is delivered on SIGCONT)."""


def failure_cause(failure: RequestFailure, kills: list[Kill], stops: list[Stop]) -> Cause:
    """The cause of one failed request (see `FAILURE_RULES`)."""
    if failure.pid is not None:
        if any(k.pid == failure.pid and k.at <= failure.end for k in kills):
            return Cause.SOAK_KILL
        if any(
            s.pid == failure.pid
            and s.died_at is not None
            and s.start <= failure.end
            and s.died_at <= failure.end + DEATH_MARGIN
            for s in stops
        ):
            return Cause.STOPPED
        return Cause.OTHER
    low, high = failure.start - WINDOW_MARGIN, failure.end
    if any(low <= k.at <= high for k in kills):
        return Cause.SOAK_KILL
    if any(s.died_at is not None and low <= s.died_at <= high + DEATH_MARGIN for s in stops):
        return Cause.STOPPED
    return Cause.OTHER


def worker_problems(record: PublishRecord) -> list[tuple[str, int, str]]:
    """(worker id, pid, status) of every worker that did not answer ok.

    The status of a worker whose listeners raised carries their errors:
    ``error (RuntimeError: boom)``.
    """
    if record.result is None:
        return []
    found = []
    for worker_id, answer in record.result.get("workers", {}).items():
        status = str(answer.get("status"))
        if status in ("ok", "starting"):
            continue
        errors = "; ".join(
            f"{e.get('type')}: {e.get('message')}" for e in answer.get("errors") or []
        )
        if errors:
            status = f"{status} ({errors})"
        found.append((str(worker_id), int(answer.get("pid") or 0), status))
    return found


def unexplained_workers(
    record: PublishRecord, kills: list[Kill], stops: list[Stop]
) -> list[tuple[str, int, str]]:
    """The workers of a not-ok publish that no kill or stop of the soak explains.

    Only ``lost`` and ``timeout`` can be explained: a kill or a stop does not
    make a listener raise.
    """
    return [
        (worker_id, pid, status)
        for worker_id, pid, status in worker_problems(record)
        if status not in ("lost", "timeout")
        or not (
            any(k.pid == pid and record.start - KILL_MARGIN <= k.at <= record.end for k in kills)
            or any(s.pid == pid and s.covers(record.start, record.end) for s in stops)
        )
    ]


def publish_verdict(
    record: PublishRecord, kills: list[Kill], stops: list[Stop], jobs: list[JobRun]
) -> PublishVerdict:
    """The verdict on one publish (see `PUBLISH_RULES`)."""
    if record.result is None:
        changing = any(
            job.kind.changes_master
            and job.start <= record.end
            and (job.end is None or job.end + CHANGE_MARGIN >= record.start)
            for job in jobs
        )
        return PublishVerdict.UNANSWERED_MASTER_CHANGE if changing else PublishVerdict.UNANSWERED
    if record.result.get("ok") is True:
        return PublishVerdict.ALL_OK
    if record.result.get("master_errors") or unexplained_workers(record, kills, stops):
        return PublishVerdict.NOT_OK_UNEXPLAINED
    if not worker_problems(record):  # not ok, yet no worker failed: nothing explains it
        return PublishVerdict.NOT_OK_UNEXPLAINED
    return PublishVerdict.NOT_OK_EXPLAINED


@dataclass
class Journal:
    """The shared record of one soak; every method may be called from any thread."""

    origin: float
    """When the load started: times in the report are relative to it."""
    wall_origin: float = field(default_factory=time.time)
    """The wall-clock time of `origin` (the master's log is in wall-clock time)."""
    kills: list[Kill] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    jobs: list[JobRun] = field(default_factory=list)
    faults: Counter[FaultKind] = field(default_factory=Counter)
    skipped: Counter[FaultKind] = field(default_factory=Counter)
    """Faults drawn but not injected (too many jobs or stops, no worker, ...)."""
    timeline: list[tuple[float, str]] = field(default_factory=list)
    """(time, what happened), for the context of an unexplained failure."""
    notes: list[str] = field(default_factory=list)
    """Things that went wrong in the soak's own machinery or in a fault."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fault(self, kind: FaultKind, at: float, detail: str) -> None:
        with self._lock:
            self.faults[kind] += 1
            self.timeline.append((at, f"{kind} {detail}".rstrip()))

    def skip(self, kind: FaultKind, at: float, why: str) -> None:
        with self._lock:
            self.skipped[kind] += 1
            self.timeline.append((at, f"{kind} {why}"))

    def event(self, at: float, text: str) -> None:
        with self._lock:
            self.timeline.append((at, text))

    def note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def kill(self, pid: int, at: float) -> None:
        with self._lock:
            self.kills.append(Kill(pid, at))

    def stop(self, pid: int, at: float) -> Stop:
        record = Stop(pid, at)
        with self._lock:
            self.stops.append(record)
        return record

    def resumed(self, record: Stop, at: float) -> None:
        with self._lock:
            record.end = at

    def died(self, record: Stop, at: float) -> None:
        with self._lock:
            if record.died_at is None:
                record.died_at = at
                if record.end is None:  # died stopped: the stop ends with it
                    record.end = at
                self.timeline.append((at, f"stopped worker {record.pid} died"))

    def job(self, run: JobRun) -> None:
        with self._lock:
            self.jobs.append(run)

    def job_done(self, run: JobRun, at: float, returncode: int, outcome: str) -> None:
        with self._lock:
            run.end, run.returncode, run.outcome = at, returncode, outcome
            self.timeline.append((at, f"{run.kind} returned {returncode}: {outcome}"))

    def stamp(self, at: float) -> str:
        """`at` as seconds since the origin and as the wall-clock time of the master's log."""
        wall = datetime.datetime.fromtimestamp(self.wall_origin + at - self.origin)
        return f"{at - self.origin:+.2f}s {wall:%H:%M:%S.%f}"[:-3]

    def around(self, start: float, end: float, margin: float = 2.0) -> list[str]:
        """The timeline from `margin` seconds before `start` to `margin` after `end`,
        after the job commands that were already running then."""
        with self._lock:
            entries = sorted(self.timeline)
            jobs = list(self.jobs)
        lines = [
            f"(running since {self.stamp(job.start)}: {job.kind} {job.command})"
            for job in jobs
            if job.start < start - margin and (job.end is None or job.end >= start - margin)
        ]
        lines.extend(
            f"{self.stamp(at)} {text}"
            for at, text in entries
            if start - margin <= at <= end + margin
        )
        return lines
