"""Long commands as jobs: reload, restart, upgrade, scale, stop, start.

A job runs at the top of the master's loop (`Master.submit`), where it may
wait: its waits pump the loop, so the master keeps answering other clients,
reaping children and gathering publishes meanwhile. Jobs run one at a time in
the order asked; asking again for a job of a kind that coalesces (reload)
while one is queued or running returns that job instead of a second one.

Each job is announced on the event stream when it starts and ends, with its
progress in between; a control client that waits for it gets its final
document.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("procbus.master")

RECENT_JOBS = 20


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobFailed(Exception):
    """Raised by a job body: the job ran and did not achieve what it was for."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class JobAborted(Exception):
    """The master is exiting: the job stops where it is."""


@dataclass(eq=False)
class Job:
    id: str
    kind: str
    args: dict[str, Any]
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    waiters: list[Callable[[Job], None]] = field(default_factory=list)
    emit: Callable[..., None] = field(default=lambda event, **data: None, repr=False)

    @property
    def ended(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED)

    def progress(self, message: str, **data: Any) -> None:
        """Report a step on the event stream (and the log)."""
        log.info("job %s: %s", self.id, message)
        self.emit("job_progress", job=self.id, kind=self.kind, message=message, **data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "kind": self.kind,
            "args": self.args,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "result": self.result,
            "error": self.error,
        }


JobBody = Callable[[Job], Any]


class Jobs:
    """The master's job queue and the record of recent jobs."""

    def __init__(self, wake: Callable[[], None], emit: Callable[..., None]) -> None:
        """`wake()` makes the master's loop return to its top, where jobs run."""
        self._wake = wake
        self._queue: collections.deque[tuple[Job, JobBody]] = collections.deque()
        self._emit = emit
        self._numbers = itertools.count(1)
        self._active: list[Job] = []
        self._recent: collections.deque[Job] = collections.deque(maxlen=RECENT_JOBS)

    def start(
        self,
        kind: str,
        body: JobBody,
        args: dict[str, Any] | None = None,
        *,
        coalesce: bool = False,
    ) -> Job:
        """Queue a job; with `coalesce`, join a queued or running job of the same kind."""
        if coalesce:
            for job in self._active:
                if job.kind == kind:
                    log.info("%s asked while job %s is %s: joined it", kind, job.id, job.state)
                    return job
        job = Job(f"{kind}-{next(self._numbers)}", kind, dict(args or {}), emit=self._emit)
        self._active.append(job)
        self._emit("job_queued", job=job.id, kind=kind, args=job.args)
        self._queue.append((job, body))
        self._wake()
        return job

    def run_queued(self, stop: Callable[[], bool]) -> None:
        """Run the queued jobs, in order, until none is left or `stop()` (at the top
        of the loop, where a job may wait)."""
        while self._queue and not stop():
            self.run(*self._queue.popleft())

    def run(self, job: Job, body: JobBody) -> None:
        """Run `job` now (at the top of the loop)."""
        job.state = JobState.RUNNING
        job.started = time.time()
        self._emit("job_started", job=job.id, kind=job.kind)
        try:
            job.result = body(job)
            job.state = JobState.DONE
        except JobFailed as exc:
            job.state, job.error, job.result = JobState.FAILED, str(exc), exc.result
        except JobAborted:
            job.state, job.error = JobState.FAILED, "aborted: the master is exiting"
        except Exception as exc:
            log.exception("job %s failed", job.id)
            job.state, job.error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()
            if job in self._active:
                self._active.remove(job)
            self._recent.append(job)
            level = logging.INFO if job.state is JobState.DONE else logging.ERROR
            log.log(level, "job %s %s%s", job.id, job.state, f": {job.error}" if job.error else "")
            self._emit(
                "job_done", job=job.id, kind=job.kind, state=job.state.value, error=job.error
            )
            waiters, job.waiters = job.waiters, []
            for waiter in waiters:
                waiter(job)

    def record_failure(self, kind: str, error: str) -> Job:
        """Put a job that failed outside the queue on record (a restart whose exec failed)."""
        job = Job(f"{kind}-{next(self._numbers)}", kind, {}, emit=self._emit)
        job.state, job.error = JobState.FAILED, error
        job.started = job.finished = job.created
        self._recent.append(job)
        log.error("job %s %s: %s", job.id, job.state, error)
        self._emit("job_done", job=job.id, kind=kind, state=job.state.value, error=error)
        return job

    def abort_queued(self) -> None:
        """The master is exiting: fail every job that has not started."""
        for job in list(self._active):
            if job.state is JobState.QUEUED:
                self.run(job, _aborted)

    def get(self, job_id: str) -> Job | None:
        for job in itertools.chain(self._active, self._recent):
            if job.id == job_id:
                return job
        return None

    def listing(self) -> list[dict[str, Any]]:
        return [job.to_dict() for job in itertools.chain(self._recent, self._active)]


def _aborted(job: Job) -> None:
    raise JobAborted
