"""Plugins that change the process itself on ``start``.

`DropPrivileges` switches user, group and umask, `Daemonizer` detaches from
the terminal and `PIDFile` records the PID. They share the channel priorities
that order them (daemonize 65, PID file 70, privileges 77) and the POSIX
calls they make, and none of them starts a thread. `MasterPIDFile` is the PID
file of a procbus master (``procbus run --pidfile``), which follows the
master's hand-over to a successor.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from procbus.bus import Bus
from procbus.errors import ConfigError, StartupError
from procbus.plugins.base import SimplePlugin, _priority

if TYPE_CHECKING:
    from procbus.master.events import EventStream
    from procbus.master.lineage import Lineage


def _user_name(uid: int) -> str | int:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid


def _group_name(gid: int) -> str | int:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return gid


class DropPrivileges(SimplePlugin):
    """Switch to another user, group and umask on ``start``.

    The switch happens once (`finalized`): starting on a low port as root,
    then running as an unprivileged user, is the common use, hence a priority
    (77) just after the servers' start.
    """

    def __init__(
        self,
        bus: Bus,
        umask: int | None = None,
        uid: int | str | None = None,
        gid: int | str | None = None,
    ) -> None:
        super().__init__(bus)
        self.finalized = False
        self.uid = uid
        self.gid = gid
        self.umask = umask

    @property
    def uid(self) -> int | None:
        """The uid to run as; set it to a number or a user name."""
        return self._uid

    @uid.setter
    def uid(self, val: int | str | None) -> None:
        if isinstance(val, str):
            try:
                val = pwd.getpwnam(val).pw_uid
            except KeyError:
                raise ConfigError(f"unknown user name {val!r}") from None
        self._uid = val

    @property
    def gid(self) -> int | None:
        """The gid to run as; set it to a number or a group name."""
        return self._gid

    @gid.setter
    def gid(self, val: int | str | None) -> None:
        if isinstance(val, str):
            try:
                val = grp.getgrnam(val).gr_gid
            except KeyError:
                raise ConfigError(f"unknown group name {val!r}") from None
        self._gid = val

    @property
    def umask(self) -> int | None:
        """The umask for new files and directories, usually octal (``0o022``)."""
        return self._umask

    @umask.setter
    def umask(self, val: int | None) -> None:
        self._umask = val

    @staticmethod
    def _current_ids() -> tuple[str | int, str | int]:
        return _user_name(os.getuid()), _group_name(os.getgid())

    @_priority(77)
    def start(self) -> None:
        """Set gid (dropping supplementary groups), then uid, then umask."""
        if self.finalized:
            if not (self.uid is None and self.gid is None):
                self.bus.log("Already running as uid: {!r} gid: {!r}".format(*self._current_ids()))
        elif self.uid is None and self.gid is None:
            self.bus.log("uid/gid not set", level=logging.WARNING)
        else:
            self.bus.log("Started as uid: {!r} gid: {!r}".format(*self._current_ids()))
            if self.gid is not None:
                os.setgid(self.gid)
                os.setgroups([])
            if self.uid is not None:
                os.setuid(self.uid)
            self.bus.log("Running as uid: {!r} gid: {!r}".format(*self._current_ids()))

        if self.finalized:
            if self.umask is not None:
                self.bus.log(f"umask already set to: {self.umask:03o}")
        elif self.umask is None:
            self.bus.log("umask not set", level=logging.WARNING)
        else:
            old_umask = os.umask(self.umask)
            self.bus.log(f"umask old: {old_umask:03o}, new: {self.umask:03o}")

        self.finalized = True


class Daemonizer(SimplePlugin):
    """Detach the process from its terminal and parent on ``start``.

    Subscribe it with ``Daemonizer(bus).subscribe()``. The original process
    exits with status 0 as soon as the first fork succeeds, so its exit status
    says nothing about whether the daemon went on to start.
    """

    def __init__(
        self,
        bus: Bus,
        stdin: str = "/dev/null",
        stdout: str = "/dev/null",
        stderr: str = "/dev/null",
    ) -> None:
        super().__init__(bus)
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.finalized = False

    @_priority(65)
    def start(self) -> None:
        """Daemonize, once: before the PID file (70) and privilege drop (77)."""
        if self.finalized:
            self.bus.log("Already daemonized.")
            return
        # Only the forking thread survives a fork; the others just vanish.
        if threading.active_count() != 1:
            self.bus.log(
                f"There are {threading.enumerate()!r} active threads. "
                "Daemonizing now may cause strange failures.",
                level=logging.WARNING,
            )
        self.daemonize(self.stdin, self.stdout, self.stderr, self.bus.log)
        self.finalized = True

    @staticmethod
    def daemonize(
        stdin: str = "/dev/null",
        stdout: str = "/dev/null",
        stderr: str = "/dev/null",
        logger: Callable[[str], object] = lambda msg: None,
    ) -> None:
        """Double-fork into a new session, set umask 0 and redirect stdio.

        The second fork makes sure the daemon is not a session leader, so it
        can never acquire a controlling terminal. stdout and stderr are opened
        for appending, created with mode 0o644 if missing.
        """
        sys.stdout.flush()
        sys.stderr.flush()

        for attempt, message in enumerate(("Forking once.", "Forking twice."), start=1):
            try:
                pid = os.fork()
            except OSError as exc:
                sys.exit(f"{sys.argv[0]}: fork #{attempt} failed: ({exc.errno}) {exc.strerror}\n")
            if pid > 0:
                logger(message)
                os._exit(0)
            if attempt == 1:
                os.setsid()

        os.umask(0)
        for fd, path, flags in (
            (0, stdin, os.O_RDONLY),
            (1, stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
            (2, stderr, os.O_WRONLY | os.O_APPEND | os.O_CREAT),
        ):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)

        logger(f"Daemonized to PID: {os.getpid()}")


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    return True


class PIDFile(SimplePlugin):
    """Maintain a PID file: written on ``start``, removed on ``exit``."""

    def __init__(self, bus: Bus, pidfile: str | os.PathLike[str]) -> None:
        super().__init__(bus)
        self.pidfile = pidfile
        self.finalized = False

    @property
    def _path(self) -> str:
        return os.fspath(self.pidfile)

    def _read_pid(self) -> tuple[int | None, str | None]:
        """Return (pid, text) of the existing file: (None, None) when absent.

        The pid is None when the text is not a positive number.
        """
        path = self._path
        try:
            with open(path, "rb") as file:
                text = file.read(64).decode("ascii", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as exc:
            raise StartupError(f"cannot read pidfile {path!r}: {exc.strerror}") from None
        stripped = text.strip()
        if re.fullmatch(r"[0-9]+", stripped) and int(stripped) > 0:
            return int(stripped), text
        return None, text

    @_priority(70)
    def start(self) -> None:
        """Write our PID, unless the file belongs to another live process.

        Raise `StartupError` when another live process holds the file, or when
        it cannot be written.
        """
        pid = os.getpid()
        path = self._path
        if self.finalized:
            self.bus.log(f"PID {pid!r} already written to {path!r}.")
            return
        existing, text = self._read_pid()
        if existing is not None and existing != pid:
            if _pid_is_alive(existing):
                raise StartupError(
                    f"pidfile {path!r} belongs to running process {existing}; "
                    "is another instance running?"
                )
            self.bus.log(f"Replacing stale PID file {path!r} (PID {existing} is not running).")
        elif existing is None and text is not None:
            self.bus.log(f"Replacing PID file {path!r} holding no PID ({text!r}).")
        self._write(f"{pid}\n")
        self.bus.log(f"PID {pid!r} written to {path!r}.")
        self.finalized = True

    def _write(self, content: str) -> None:
        """Write `content` to a temporary file beside the PID file, then rename it."""
        path = self._path
        directory = os.path.dirname(path) or os.curdir
        try:
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
            )
        except OSError as exc:
            raise StartupError(
                f"cannot write pidfile {path!r}: {_describe_dir_error(directory, exc)}"
            ) from None
        try:
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(content)
                os.fchmod(file.fileno(), 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StartupError(f"cannot write pidfile {path!r}: {exc.strerror}") from None

    def exit(self) -> None:
        """Remove the PID file if it still holds our PID; never raise."""
        path = self._path
        try:
            existing, text = self._read_pid()
            if text is None:
                return
            if existing != os.getpid():
                self.bus.log(
                    f"PID file {path!r} holds {text!r}, not our PID {os.getpid()}; leaving it.",
                    level=logging.WARNING,
                )
                return
            os.remove(path)
        except (OSError, StartupError) as exc:
            self.bus.log(f"Could not remove PID file {path!r}: {exc}", level=logging.WARNING)
            return
        self.finalized = False
        self.bus.log(f"PID file removed: {path!r}.")


class NamedMaster(Protocol):
    """What `MasterPIDFile` reads of the master (`procbus.master.Master` is one)."""

    @property
    def bus(self) -> Bus: ...

    @property
    def lineage(self) -> Lineage:
        """Whether the master is a successor still waiting to take the name over."""

    @property
    def event_stream(self) -> EventStream:
        """Where the ``takeover`` event comes from."""


class MasterPIDFile(PIDFile):
    """The PID file of a procbus master: the pid of the master that serves the name.

    A master writes it when the plugin is subscribed, before its bus starts:
    a live instance is refused (`StartupError`, one line) before anything is
    bound or any worker forked, whereas a failing ``start`` listener would
    tear the bus down and log its traceback. A new master started by
    ``upgrade`` writes it when it takes the name over (its ``takeover``
    event): until then the old master's pid is in it, and rightly so. Either
    way it then follows the bus as a `PIDFile` does (removed on ``exit``);
    until it is written, it is not on the bus at all, so that the ``exit``
    of a master that never wrote it leaves it alone.
    """

    def __init__(self, master: NamedMaster, pidfile: str | os.PathLike[str]) -> None:
        super().__init__(master.bus, pidfile)
        self.master = master

    def subscribe(self) -> None:
        """Write the file and join the bus, or (a successor) wait for the takeover."""
        if self.master.lineage.successor is None:
            self._take()
        elif self._observe not in self.master.event_stream.observers:
            self.master.event_stream.observers.append(self._observe)

    def unsubscribe(self) -> None:
        super().unsubscribe()
        observers = self.master.event_stream.observers
        if self._observe in observers:
            observers.remove(self._observe)

    def _take(self) -> None:
        self.start()
        super().subscribe()

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        if event == "takeover":
            self._take()


def _describe_dir_error(directory: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"directory {directory!r} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{directory!r} is not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"directory {directory!r} is not writable ({exc.strerror})"
    return f"cannot create a file in {directory!r} ({exc.strerror})"
