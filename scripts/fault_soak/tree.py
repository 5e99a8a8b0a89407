"""The soaked tree's processes: start it, find its master, signal, sample, stop, reap.

The tree is ``procbus run`` (the demo app) in a session of its own on a
private runtime directory under /tmp, listening on 127.0.0.1:0. Its session
is what the soak may touch: every signal goes through a pidfd to a process
whose session is the tree's (checked after the pidfd is open, so a reused pid
is never signalled), and the end is TERM to the current master, a bounded
wait, then KILL to whatever of the session is left, each one reported.

The master changes under the soak: ``restart`` re-executes it (same pid, next
generation) and ``upgrade`` replaces it (new pid). The current master is the
one answering ``ping`` on the named control socket. This process becomes a
child subreaper (Linux) so that a master left behind by an upgrade is
reparented here and can be reaped; the session leader (the first master) is
reaped only at the very end, so that its pid, the session id, is not reused
meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil
import zmq

from procbus.client import Client, ControlError

PR_SET_CHILD_SUBREAPER: Final = 36
LISTENING: Final = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
POLL: Final = 0.02
SETTLE_AFTER_MASTER: Final = 3.0
"""Seconds the other processes of the session get to end once the master has
exited (workers follow a dead master within a heartbeat)."""


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants (Linux), so that they can be reaped here."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class TreeStartError(RuntimeError):
    """The tree did not start (its log says why)."""


@dataclass(frozen=True)
class TreeSettings:
    workers: int
    timeout: float
    graceful_timeout: float
    publish_timeout: float
    boot_timeout: float


@dataclass(frozen=True)
class Leftover:
    """A process of the tree's session still alive when it should not be."""

    pid: int
    ppid: int
    status: str
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}, {self.status}): {self.command}"


@dataclass
class StopReport:
    master: int | None
    """The master that was sent TERM (None: no master answered or was known)."""
    master_exited: bool
    seconds: float
    orphans: list[Leftover] = field(default_factory=list)


class Tree:
    """One ``procbus run`` tree in its own session."""

    def __init__(self, directory: Path, settings: TreeSettings) -> None:
        self.directory = directory
        self.settings = settings
        self.runtime_dir = directory / "rt"
        self.log_path = directory / "master.log"
        self.endpoint = f"ipc://{self.runtime_dir}/ctl"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.context: zmq.Context[Any] = zmq.Context()
        self.last_master: int | None = None

    @property
    def session(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            "-m",
            "procbus",
            "run",
            "--workers",
            str(s.workers),
            "--bind",
            "127.0.0.1:0",
            "--runtime-dir",
            str(self.runtime_dir),
            "--timeout",
            f"{s.timeout:g}",
            "--graceful-timeout",
            f"{s.graceful_timeout:g}",
            "--publish-timeout",
            f"{s.publish_timeout:g}",
            "--boot-timeout",
            f"{s.boot_timeout:g}",
        ]

    def start(self, limit: float) -> None:
        """Start the tree; return once N workers run and one answers HTTP."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.directory,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._read_port, limit):
            raise TreeStartError(f"no 'listening on' line in {self.log_path} within {limit:g}s")

        def running() -> bool:
            status = self.status(2.0)
            workers = status["workers"] if status else []
            return len(workers) == self.settings.workers and all(
                w["state"] == "running" for w in workers
            )

        if not wait_until(running, limit):
            raise TreeStartError(f"the {self.settings.workers} workers did not run in {limit:g}s")

    def _read_port(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise TreeStartError(f"procbus run exited with {self.proc.returncode}; see the log")
        match = LISTENING.search(self.log_path.read_text(errors="replace"))
        if match:
            self.port = int(match[1])
        return match is not None

    # -- the control socket -----------------------------------------------------

    def client(self, timeout: float) -> Client:
        """A client of the current master (own socket: one per thread)."""
        return Client(self.endpoint, timeout, context=self.context)

    def call(self, command: str, *args: Any, timeout: float = 2.0) -> Any:
        """One control call; None when the master does not answer or refuses."""
        try:
            with self.client(timeout) as client:
                return client.call(command, *args, timeout=timeout)
        except ControlError:
            return None

    def command(self, command: str, *args: Any, timeout: float) -> str | None:
        """Run a command and wait for it (a job: until it ends); None when it succeeded,
        else what went wrong."""
        try:
            with self.client(timeout) as client:
                client.call(command, *args, timeout=timeout)
        except ControlError as exc:
            return f"{exc.code.value}: {exc.message}"
        return None

    def ping(self, timeout: float = 1.0) -> tuple[int, int] | None:
        """(pid, generation) of the master answering on the named control socket."""
        pong = self.call("ping", timeout=timeout)
        if not isinstance(pong, dict):
            return None
        self.last_master = int(pong["pid"])
        return self.last_master, int(pong["generation"])

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        status = self.call("status", timeout=timeout)
        return status if isinstance(status, dict) else None

    def ctl_argv(self, *command: str, timeout: float) -> list[str]:
        return [
            sys.executable,
            "-m",
            "procbus",
            "ctl",
            "--ctl",
            self.endpoint,
            "--timeout",
            f"{timeout:g}",
            "--json",
            *command,
        ]

    # -- processes ---------------------------------------------------------------

    def owns(self, pid: int) -> bool:
        """Whether `pid` is a live process of the tree's session."""
        try:
            return os.getsid(pid) == self.session and is_alive(pid)
        except (ProcessLookupError, PermissionError):
            return False

    def open_pidfd(self, pid: int) -> int | None:
        """A pidfd for `pid` if it is a live process of the tree; None otherwise."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        if not self.owns(pid):
            os.close(fd)
            return None
        return fd

    def send(self, pid: int, signum: int) -> bool:
        """Signal a process of the tree; False when it is gone or not the tree's."""
        fd = self.open_pidfd(pid)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signum)
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)
        return True

    def members(self) -> list[Leftover]:
        """The live processes of the tree's session."""
        found = []
        for proc in psutil.process_iter(["pid", "ppid", "status", "cmdline"]):
            try:
                if os.getsid(proc.pid) != self.session:
                    continue
            except (ProcessLookupError, PermissionError):
                continue
            info = proc.info
            if info["status"] == psutil.STATUS_ZOMBIE:
                continue
            command = " ".join(info["cmdline"] or [])
            found.append(Leftover(info["pid"], info["ppid"], str(info["status"]), command[:160]))
        return found

    def strays(self) -> list[Leftover]:
        """Live processes of the session that the current master does not know.

        Meant for a settled tree (no job running): the master and the workers
        its ``status`` lists are known; anything else is a leftover of an
        earlier master or of a failed job.
        """
        status = self.status(5.0)
        if status is None:
            return []
        known = {int(status["master"]["pid"])}
        known.update(int(w["pid"]) for w in status["workers"] if w["pid"] is not None)
        return [p for p in self.members() if p.pid not in known]

    # -- the end -----------------------------------------------------------------

    def stop(self) -> StopReport:
        """TERM the current master, wait, then KILL and report what is left."""
        started = time.monotonic()
        answer = self.ping(2.0)
        master = answer[0] if answer else self.last_master
        exited = False
        if master is not None and self.send(master, signal.SIGTERM):
            limit = self.settings.graceful_timeout + self.settings.timeout + 10
            pid = master
            exited = wait_until(lambda: not is_alive(pid), limit)
        report = StopReport(master, exited, time.monotonic() - started)
        wait_until(lambda: not self.members(), SETTLE_AFTER_MASTER)
        report.orphans = self.members()
        self.kill_all()
        return report

    def kill_all(self) -> None:
        """KILL every process of the session (each through a pidfd), then reap them."""
        if self.proc is None:
            return
        for _ in range(3):
            left = self.members()
            if not left:
                break
            for proc in left:
                self.send(proc.pid, signal.SIGCONT)
                self.send(proc.pid, signal.SIGKILL)
            wait_until(lambda: not self.members(), 5.0)
        self.reap()

    def reap(self) -> None:
        """Reap the session leader and every process of the session reparented here."""
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            adopted = []
            for child in psutil.Process().children():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getsid(child.pid) == self.session:
                        adopted.append(child.pid)
            if not adopted:
                return
            for pid in adopted:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(POLL)

    def close(self) -> None:
        self.context.term()


def wait_readable(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` readable within `timeout` seconds (pidfds: the process ended)."""
    if not fds:
        time.sleep(max(0.0, timeout))
        return []
    readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
    return list(readable)
