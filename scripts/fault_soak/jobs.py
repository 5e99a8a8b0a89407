"""The soak's long commands: ``procbus ctl reload|restart --adopt|upgrade|scale N``.

Each runs as a ``procbus ctl --json`` process, as an operator would run it,
and waits for the master's job to end; the schedule goes on meanwhile. At most
`limit` run at once (the master queues the second behind the first), so
that the queue stays short. Every process is the soak's own child, bounded by
its ``--timeout`` and killed (by its Popen handle) past it.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass

from fault_soak.journal import FaultKind, JobRun, Journal
from fault_soak.tree import Tree

EXIT_MARGIN = 10.0
"""Seconds past its own --timeout before a ctl process is killed."""


@dataclass
class _Running:
    run: JobRun
    proc: subprocess.Popen[bytes]
    deadline: float


class JobRunner:
    def __init__(self, tree: Tree, journal: Journal, timeout: float, limit: int = 2) -> None:
        self.tree = tree
        self.journal = journal
        self.timeout = timeout
        self.limit = limit
        self._running: list[_Running] = []

    @property
    def busy(self) -> bool:
        return len(self._running) >= self.limit

    @property
    def running(self) -> list[FaultKind]:
        return [r.run.kind for r in self._running]

    def launch(self, kind: FaultKind, *command: str) -> JobRun:
        run = JobRun(kind, " ".join(command), time.monotonic())
        # stderr: the one line a failed command prints (stdout, the JSON document, is not read).
        proc = subprocess.Popen(
            self.tree.ctl_argv(*command, timeout=self.timeout),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.journal.job(run)
        self._running.append(_Running(run, proc, run.start + self.timeout + EXIT_MARGIN))
        return run

    def poll(self) -> None:
        """Record the commands that ended; kill those past their deadline."""
        now = time.monotonic()
        for running in list(self._running):
            code = running.proc.poll()
            if code is None and now >= running.deadline:
                running.proc.kill()
                code = running.proc.wait()
                self._finish(running, code, f"killed after {now - running.run.start:.0f}s")
            elif code is not None:
                self._finish(running, code, None)

    def _finish(self, running: _Running, code: int, outcome: str | None) -> None:
        self._running.remove(running)
        _, error = running.proc.communicate()
        lines = error.decode(errors="replace").strip().splitlines()
        if outcome is None:
            outcome = "done" if code == 0 else (lines[-1] if lines else f"exit {code}")
        self.journal.job_done(running.run, time.monotonic(), code, outcome[:300])

    def wait_all(self, limit: float) -> None:
        """Wait up to `limit` seconds for every command; kill the rest."""
        deadline = time.monotonic() + limit
        while self._running and time.monotonic() < deadline:
            self.poll()
            time.sleep(0.05)
        for running in list(self._running):
            with contextlib.suppress(ProcessLookupError):
                running.proc.kill()
            self._finish(running, running.proc.wait(), "killed: the soak ended first")
