"""Upgrade: hand the tree over to a freshly executed master, with zero downtime.

The old master (generation g) forks and executes a new one (g+1) with the
same argv. The new master inherits the listening sockets the workers serve
and the name's own (control, events), and two pipes
(``PROCBUS_SUCCESSOR=READY_FD,ALIVE_FD``, see `procbus.master.handover`):

- *ready* (new -> old): ``ready`` once all the new master's workers run,
  ``took-over`` once it serves the name's sockets, or ``failed``;
- *alive* (old -> new): ``go`` when the old master lets the name go; end of
  file when the old master is gone (for any reason: then the name is free
  and the new master also takes the runtime directory's lock).

The old master, step by step, never letting go of anything before the new
one has it:

1. wait for ``ready`` (or the new master's death, or a deadline); on failure
   stop the new master (its workers die with it) and keep serving;
2. drain its own workers; should the new master die meanwhile, start new
   workers again and keep serving;
3. say ``go``, and wait for ``took-over``; should the new master die or fail,
   start new workers again and keep serving;
4. exit. Only the lock changes hands after that.

A failed upgrade's job says why, the old master keeps the name, and the
worker sockets the new master made are removed. While both masters run, both
accept on the same listening sockets: no connection is refused at any point,
and a client of the old master gets its answer from it.

The new master binds its workers' sockets beside the old master's in the
runtime directory (their names carry its generation) and serves the name's
sockets only from ``go`` on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from procbus.errors import StartupError
from procbus.master import handover
from procbus.master.jobs import Job, JobFailed

if TYPE_CHECKING:
    from procbus.master.master import Master

log = logging.getLogger("procbus.master")

READY: Final = b"ready\n"
TOOK_OVER: Final = b"took-over\n"
FAILED: Final = b"failed\n"
GO: Final = b"go\n"
TAKEOVER_LIMIT: Final = 10.0
"""Seconds the old master gives the new one to serve the name after ``go``."""
TAKEOVER_RETRY: Final = 0.05
"""Seconds before the first new attempt at the lock the old master is releasing;
each later attempt waits twice as long, up to `TAKEOVER_RETRY_MAX`."""
TAKEOVER_RETRY_MAX: Final = 2.0


@dataclass
class _Handover:
    """The old master's view of an upgrade in progress."""

    pid: int
    ready_fd: int
    alive_fd: int
    said: bytearray = field(default_factory=bytearray)
    exit_status: int | None = None

    @property
    def ready(self) -> bool:
        return READY in self.said

    @property
    def took_over(self) -> bool:
        return TOOK_OVER in self.said

    @property
    def failed(self) -> bool:
        return FAILED in self.said or self.exit_status is not None


def upgrade_tree(master: Master, job: Job) -> dict[str, Any]:
    """The ``upgrade`` job of the old master."""
    new = _spawn_successor(master)
    job.progress("new master started", pid=new.pid, generation=master.generation + 1)
    previous_hook = master.pool.on_other_child

    def other_child(pid: int, status: int) -> None:
        if pid == new.pid:
            new.exit_status = status
        else:
            previous_hook(pid, status)

    master.pool.on_other_child = other_child
    master.loop.add_reader(new.ready_fd, lambda: _read(master, new))
    try:
        _hand_over(master, job, new)
    except BaseException:
        _abandon(master, new)
        raise
    finally:
        master.loop.remove_reader(new.ready_fd)
        os.close(new.ready_fd)
        master.pool.on_other_child = previous_hook
    # The alive pipe closes when this process exits: the new master's cue for the lock.
    master.upgraded_to = new.pid
    master.request_exit()
    return {"new_master": new.pid, "generation": master.generation + 1}


def _hand_over(master: Master, job: Job, new: _Handover) -> None:
    policy = master.settings.supervision
    limit = policy.boot_timeout + 10
    master.wait_until(lambda: new.ready or new.failed, limit)
    if not new.ready:
        raise JobFailed(
            f"{_fate(new, f'was not ready within {limit:g}s')}; this master keeps serving"
        )
    job.progress("new master ready; draining the old workers", pid=new.pid)
    master.bus.stop()
    drain = policy.graceful_timeout + policy.abort_grace + 5
    master.wait_until(lambda: master.pool.no_children() or new.failed, drain)
    if new.failed:
        raise JobFailed(
            f"{_fate(new, 'failed')} while the old workers drained; "
            "this master keeps serving with new workers"
        )
    job.progress("old workers drained; handing the name over", pid=new.pid)
    with contextlib.suppress(OSError):  # the new master is gone: its status comes on SIGCHLD
        os.write(new.alive_fd, GO)
    master.wait_until(lambda: new.took_over or new.failed, TAKEOVER_LIMIT)
    if not new.took_over:
        raise JobFailed(
            f"{_fate(new, f'did not take the name over within {TAKEOVER_LIMIT:g}s')}; "
            "this master keeps serving with new workers"
        )


def _fate(new: _Handover, otherwise: str) -> str:
    if new.exit_status is not None:
        return f"the new master (pid {new.pid}) exited with status {new.exit_status}"
    if FAILED in new.said:
        return f"the new master (pid {new.pid}) could not take the name over"
    return f"the new master (pid {new.pid}) {otherwise}"


def _read(master: Master, new: _Handover) -> None:
    try:
        data = os.read(new.ready_fd, 64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    new.said += data
    if not data:
        # End of file: the new master is gone (its exit status follows on
        # SIGCHLD) or done talking; stop watching a fd that stays readable.
        master.loop.remove_reader(new.ready_fd)


def _abandon(master: Master, new: _Handover) -> None:
    """The upgrade failed: stop the new master (its workers die with it), remove the
    worker sockets it made, and serve on, with new workers if the old ones drained."""
    if new.exit_status is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(new.pid, signal.SIGTERM)
        grace = master.settings.supervision.graceful_timeout + 5
        with contextlib.suppress(Exception):
            master.wait_until(lambda: new.exit_status is not None, grace)
        if new.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(new.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                master.wait_until(lambda: new.exit_status is not None, 5)
    # Only now: to the new master, end of file means "the name is yours".
    with contextlib.suppress(OSError):
        os.close(new.alive_fd)
    master.runtime.remove_tree_sockets(master.generation + 1)
    if not master.pool.active and not master.exiting:
        log.error("upgrade failed after the old workers drained: starting new ones")
        master.bus.start()


def _spawn_successor(master: Master) -> _Handover:
    """Fork and execute the new master with the sockets and both pipes."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(ready_r, False)
    environ = dict(os.environ)
    keep = handover.export(
        environ,
        generation=master.generation + 1,
        worker_generations=master.slot_generations(),
        target=(master.pool.target, master.settings.workers),
        control_fds=master.name_fds(),
        listening_fds=[sock.fileno() for sock in master.sockets],
        successor=(ready_w, alive_r),
    )
    executable, argv = master.bus.exec_args()
    master.bus._extend_pythonpath(environ)
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
        self.has_lock = False

    def announce_ready(self) -> None:
        """Tell the old master that every worker runs (once)."""
        self._say(READY)

    def _say(self, what: bytes, last: bool = False) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):  # the old master is gone: nothing to tell
            os.write(self.ready_fd, what)
        if last:
            os.close(self.ready_fd)
            self.ready_fd = None

    def watch(self, master: Master) -> None:
        """Take the name over on ``go`` (or when the old master is gone), then the lock."""
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
            if not self.took_over:
                self._take_over(master)
            if data:
                return  # "go": the old master exits next (end of file)
            master.loop.remove_reader(fd)
            os.close(fd)
            self.alive_fd = None
            self._take_lock(master, TAKEOVER_RETRY)

        master.loop.add_reader(fd, readable)

    def _take_over(self, master: Master) -> None:
        try:
            master.take_over_name()
        except (StartupError, OSError) as exc:
            log.error("upgrade: cannot serve the name: %s", exc)
            self._say(FAILED, last=True)
            master.exit_code = 1
            master.request_exit(fast=True)
            return
        self.took_over = True
        self._say(TOOK_OVER, last=True)

    def _take_lock(self, master: Master, wait: float) -> None:
        """Until it works: the old master may take a while to exit (its last workers)."""
        if not self.took_over or master.exiting:
            return
        try:
            master.take_name_lock()
        except StartupError as exc:
            if wait >= TAKEOVER_RETRY_MAX:
                log.warning("upgrade: still waiting for the runtime directory's lock: %s", exc)
            later = min(wait * 2, TAKEOVER_RETRY_MAX)
            master.loop.call_later(wait, lambda: self._take_lock(master, later))
            return
        self.has_lock = True


__all__ = ["Successor", "handover", "upgrade_tree"]
