"""Upgrade: hand the tree over to a freshly executed master, with zero downtime.

The old master (generation g) forks and executes a new one (g+1) with the
same argv. The new master inherits the listening sockets (``PROCBUS_FDS``)
and two pipes (``PROCBUS_SUCCESSOR=READY_FD,ALIVE_FD``):

- *ready*: the new master writes ``ready`` once all its workers run. The old
  one waits for that (or for the new one to die, or a deadline) inside its
  loop. Only then does it drain its own workers and exit; on any failure it
  kills the new master (whose workers die with it) and keeps serving, and
  the job fails with the reason.
- *alive*: the old master holds the write end until it exits; end of file
  tells the new master that the name is free. While both run, both accept
  on the same sockets: no connection is refused at any point.

While the old master lives, the new one keeps its endpoints in a private
subdirectory of the runtime directory (``next-PID``), because the named
directory and its lock are the old master's. When the old master is gone it
takes the lock and binds the control and event endpoints at their usual
paths as well, so that ``procbus ctl`` finds it by name; the workers stay on
the subdirectory's endpoints until the next upgrade or restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from procbus.errors import ConfigError, StartupError
from procbus.master.jobs import Job, JobFailed
from procbus.master.reload import stop_tree

if TYPE_CHECKING:
    from procbus.master.master import Master

log = logging.getLogger("procbus.master")

SUCCESSOR_VARIABLE: Final = "PROCBUS_SUCCESSOR"
GENERATION_VARIABLE: Final = "PROCBUS_GENERATION"
"""The master's generation, carried across ``execv`` (restart) and upgrade."""
WORKER_GENERATIONS_VARIABLE: Final = "PROCBUS_WORKER_GENERATIONS"
"""Worker id -> latest generation (JSON), so that the next master's go on."""
READY: Final = b"ready\n"
TAKEOVER_RETRY: Final = 0.05
"""Seconds between attempts at the lock the old master is releasing."""
TAKEOVER_ATTEMPTS: Final = 200


@dataclass
class _Handover:
    """The old master's view of an upgrade in progress."""

    pid: int
    ready_fd: int
    alive_fd: int
    ready: bool = False
    exit_status: int | None = None
    output: bytearray = field(default_factory=bytearray)


def upgrade_tree(master: Master, job: Job) -> dict[str, Any]:
    """The ``upgrade`` job of the old master."""
    handover = _spawn_successor(master)
    job.progress("new master started", pid=handover.pid, generation=master.generation + 1)
    previous_hook = master.pool.on_other_child

    def other_child(pid: int, status: int) -> None:
        if pid == handover.pid:
            handover.exit_status = status
        else:
            previous_hook(pid, status)

    master.pool.on_other_child = other_child
    master.loop.add_reader(handover.ready_fd, lambda: _read_ready(master, handover))
    limit = master.settings.supervision.boot_timeout + 10
    try:
        master.wait_until(lambda: handover.ready or handover.exit_status is not None, limit)
    finally:
        master.loop.remove_reader(handover.ready_fd)
        os.close(handover.ready_fd)
    if not handover.ready:
        reason = (
            f"the new master (pid {handover.pid}) exited with status {handover.exit_status} "
            "before it was ready"
            if handover.exit_status is not None
            else f"the new master (pid {handover.pid}) was not ready within {limit:g}s"
        )
        _abandon(master, handover)
        # Only now: to the new master, end of file means "the name is yours".
        os.close(handover.alive_fd)
        master.pool.on_other_child = previous_hook
        raise JobFailed(reason + "; this master keeps serving")
    job.progress("new master ready; draining the old workers", pid=handover.pid)
    result = stop_tree(master, job)
    # The alive pipe closes when this process exits: the new master's signal.
    master.upgraded_to = handover.pid
    master.request_exit()
    return {**result, "new_master": handover.pid, "generation": master.generation + 1}


def _read_ready(master: Master, handover: _Handover) -> None:
    try:
        data = os.read(handover.ready_fd, 64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    handover.output += data
    if READY in handover.output:
        handover.ready = True
    if not data:
        # End of file: the new master is gone (its exit status follows on
        # SIGCHLD) or done talking; stop watching a fd that stays readable.
        master.loop.remove_reader(handover.ready_fd)


def _abandon(master: Master, handover: _Handover) -> None:
    """Stop a new master that failed; its workers die with it (parent-death signal)."""
    if handover.exit_status is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(handover.pid, signal.SIGTERM)
    grace = master.settings.supervision.graceful_timeout + 5
    master.wait_until(lambda: handover.exit_status is not None, grace)
    if handover.exit_status is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(handover.pid, signal.SIGKILL)
        master.wait_until(lambda: handover.exit_status is not None, 5)


def _spawn_successor(master: Master) -> _Handover:
    """Fork and execute the new master with the sockets and both pipes."""
    from procbus.master import sockets as sockets_module  # noqa: PLC0415

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(ready_r, False)
    environ = dict(os.environ)
    environ[sockets_module.FDS_VARIABLE] = sockets_module.export_fds(master.sockets)
    environ[GENERATION_VARIABLE] = str(master.generation + 1)
    environ[WORKER_GENERATIONS_VARIABLE] = json.dumps(master.slot_generations())
    environ[SUCCESSOR_VARIABLE] = f"{ready_w},{alive_r}"
    executable, argv = master.bus.exec_args()
    master.bus._extend_pythonpath(environ)
    keep = [ready_w, alive_r, *(sock.fileno() for sock in master.sockets)]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (ready_r, ready_w, alive_r, alive_w):
            os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - replaced by exec at once
        try:
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execve(executable, argv, environ)
        finally:
            os._exit(127)
    os.close(ready_w)
    os.close(alive_r)
    log.info("upgrade: new master pid %d (generation %d)", pid, master.generation + 1)
    return _Handover(pid=pid, ready_fd=ready_r, alive_fd=alive_w)


# -- the new master's side ------------------------------------------------------


class Successor:
    """A new master started by `upgrade`, until it has taken over the name."""

    def __init__(self, ready_fd: int, alive_fd: int) -> None:
        self.ready_fd: int | None = ready_fd
        self.alive_fd: int | None = alive_fd
        self.took_over = False

    @classmethod
    def from_environ(cls, environ: Any) -> Successor | None:
        """The pipes an old master passed in ``PROCBUS_SUCCESSOR`` (removed from `environ`)."""
        text = environ.pop(SUCCESSOR_VARIABLE, None)
        if text is None:
            return None
        parts = text.split(",")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise ConfigError(f"{SUCCESSOR_VARIABLE}={text!r}: expected READY_FD,ALIVE_FD")
        ready_fd, alive_fd = (int(part) for part in parts)
        for fd in (ready_fd, alive_fd):
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise ConfigError(
                    f"{SUCCESSOR_VARIABLE}={text!r}: fd {fd}: {exc.strerror}"
                ) from None
        return cls(ready_fd, alive_fd)

    def announce_ready(self) -> None:
        """Tell the old master that every worker runs (once)."""
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):  # the old master is gone: nothing to tell
            os.write(self.ready_fd, READY)
        os.close(self.ready_fd)
        self.ready_fd = None

    def watch(self, master: Master) -> None:
        """Take over the name when the old master's end of the alive pipe closes."""
        fd = self.alive_fd
        assert fd is not None
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, 64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                return
            master.loop.remove_reader(fd)
            os.close(fd)
            self.alive_fd = None
            self._take_over(master, TAKEOVER_ATTEMPTS)

        master.loop.add_reader(fd, readable)

    def _take_over(self, master: Master, attempts: int) -> None:
        try:
            master.take_over_name()
        except StartupError as exc:
            if attempts <= 0:
                log.error("upgrade: cannot take over the name: %s", exc)
                return
            master.loop.call_later(TAKEOVER_RETRY, lambda: self._take_over(master, attempts - 1))
            return
        self.took_over = True
