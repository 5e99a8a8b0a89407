"""Site services for a `Bus`: CherryPy's ``cherrypy.process.plugins``, typed.

Applications written for CherryPy subscribe a handful of standard plugins to
their bus: signal handling, a PID file, daemonizing, dropping privileges,
periodic background work, file-change reloading and per-thread hooks. For
procbus to be a drop-in for wspbus, that code has to run unchanged with
``from procbus import plugins``; this module provides the same classes, with the
same constructor arguments, channel priorities and log messages.

Where CherryPy's behaviour is a trap, procbus does the safer thing:

- `PIDFile` refuses to overwrite the PID file of a live process, replaces a
  stale one, writes atomically, reports an unusable directory as one
  `StartupError` line, and on exit removes the file only while it still holds
  our PID.
- `BackgroundTask` waits on an event, so `BackgroundTask.cancel` takes effect
  at once instead of after the current sleep; a failing function is logged and
  stops the task rather than dying with an unhandled thread exception.
- `SignalHandler.unsubscribe` undoes all of `SignalHandler.subscribe`: the
  previous handlers come back and the channel listeners go away, so it can be
  subscribed again with edited `SignalHandler.handlers`.

The plugins are POSIX-only, as procbus is. `SignalHandler` logs and publishes
from inside the Python signal handler, as CherryPy's does; procbus's own master
loop does not use it, and only records signals in its handler.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import itertools
import logging
import os
import pwd
import re
import signal as _signal
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Final, TypeAlias, TypeVar

from procbus.bus import Bus, Listener
from procbus.errors import ConfigError, StartupError

__all__ = [
    "Autoreloader",
    "BackgroundTask",
    "Daemonizer",
    "DropPrivileges",
    "Monitor",
    "PIDFile",
    "PerpetualTimer",
    "SignalHandler",
    "SimplePlugin",
    "ThreadManager",
]

_logger = logging.getLogger("procbus")

# `Autoreloader` makes the relative ``__file__`` of modules imported before a
# chdir absolute against the directory the process started in (CherryPy #917).
_module_file_base: Final = os.getcwd()

_F = TypeVar("_F", bound=Callable[..., Any])
_HandlerValue: TypeAlias = (
    Callable[[int, types.FrameType | None], Any] | int | _signal.Handlers | None
)


def _priority(value: int) -> Callable[[_F], _F]:
    """Give a listener method the ``priority`` that `Bus.subscribe` reads."""

    def mark(func: _F) -> _F:
        setattr(func, "priority", value)  # noqa: B010 - mypy rejects the attribute form
        return func

    return mark


class SimplePlugin:
    """Plugin base class which auto-subscribes methods for known channels."""

    bus: Bus
    """The bus this plugin subscribes to."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _channel_methods(self) -> Iterable[tuple[str, Listener]]:
        for channel in list(self.bus.listeners):
            method = getattr(self, channel, None)
            if callable(method):
                yield channel, method

    def subscribe(self) -> None:
        """Subscribe each method named after a channel of the bus (``start``...)."""
        for channel, method in self._channel_methods():
            self.bus.subscribe(channel, method)

    def unsubscribe(self) -> None:
        """Unsubscribe each method named after a channel of the bus."""
        for channel, method in self._channel_methods():
            self.bus.unsubscribe(channel, method)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and os.isatty(sys.stdin.fileno())
    except (OSError, ValueError):
        # No real file behind stdin (closed, or replaced by a test runner).
        return False


class SignalHandler:
    """Turn system signals into publishes on channels named after them.

    `handlers` maps signal names to the listener each signal's channel gets;
    edit it before `subscribe`. The defaults: ``SIGTERM`` exits the bus,
    ``SIGHUP`` runs `handle_SIGHUP` and ``SIGUSR1`` publishes ``graceful``.
    Signals that cannot be handled here (unknown on this platform, or
    `subscribe` called outside the main thread) are skipped.
    """

    signals: ClassVar[Mapping[int, str]] = types.MappingProxyType(
        {int(sig): sig.name for sig in _signal.Signals}
    )
    """A map from signal numbers to names."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.handlers: dict[str, Listener] = {
            "SIGTERM": self.bus.exit,
            "SIGHUP": self.handle_SIGHUP,
            "SIGUSR1": self.bus.graceful,
        }
        """A map from signal names (``"SIGTERM"``) to listeners (``bus.exit``)."""
        self._previous_handlers: dict[int, _HandlerValue] = {}
        self._listeners: list[tuple[str, Listener]] = []
        # A different PID later means the process forked: see `_is_daemonized`.
        self._original_pid = os.getpid()

    def _is_daemonized(self) -> bool:
        """Return whether the process forked since construction and has no tty.

        The tty test alone is not enough: a process run by a CI tool has no
        terminal either.
        """
        return self._original_pid != os.getpid() and not _stdin_is_tty()

    def subscribe(self) -> None:
        """Install a handler for every signal of `handlers`."""
        for sig, listener in self.handlers.items():
            with contextlib.suppress(ValueError):
                self.set_handler(sig, listener)

    def unsubscribe(self) -> None:
        """Restore the handlers `subscribe` replaced, and drop its listeners."""
        unrestored: dict[int, _HandlerValue] = {}
        for signum, previous in self._previous_handlers.items():
            signame = self.signals[signum]
            handler = _signal.SIG_DFL if previous is None else previous
            if previous is None:
                self.bus.log(f"Restoring {signame} handler to SIG_DFL.")
            else:
                self.bus.log(f"Restoring {signame} handler {handler!r}.")
            try:
                ours = _signal.signal(signum, handler)
            except ValueError:
                self.bus.log(
                    f"Unable to restore {signame} handler {handler!r}.",
                    level=logging.ERROR,
                    traceback=True,
                )
                # Kept, so that a later call from the main thread restores it.
                unrestored[signum] = previous
                continue
            if ours != self._handle_signal:
                self.bus.log(
                    f"Restored old {signame} handler {handler!r}, "
                    "but our handler was not registered.",
                    level=logging.WARNING,
                )
        self._previous_handlers = unrestored
        for signame, listener in self._listeners:
            self.bus.unsubscribe(signame, listener)
        self._listeners.clear()

    def set_handler(self, signal: str | int, listener: Listener | None = None) -> None:
        """Handle `signal` (a name or number) by publishing on its channel.

        With a `listener`, subscribe it to that channel (named after the
        signal, ``"SIGTERM"``). Raise ``ValueError`` for a signal this platform
        does not have or that cannot be handled here.
        """
        if isinstance(signal, str):
            value = getattr(_signal, signal, None)
            if not signal.startswith("SIG") or signal.startswith("SIG_"):
                value = None
            if not isinstance(value, int) or value not in self.signals:
                raise ValueError(f"No such signal: {signal!r}")
            signum = int(value)
        else:
            if signal not in self.signals:
                raise ValueError(f"No such signal: {signal!r}")
            signum = int(signal)
        # Aliases (SIGIOT) use the channel of the canonical name (SIGABRT),
        # which is the one `_handle_signal` publishes on.
        signame = self.signals[signum]
        try:
            previous = _signal.signal(signum, self._handle_signal)
        except OSError as exc:
            raise ValueError(f"Cannot handle signal {signame}: {exc.strerror}") from exc
        # Installing twice must not make our own handler the one to restore.
        self._previous_handlers.setdefault(signum, previous)

        if listener is not None:
            self.bus.log(f"Listening for {signame}.")
            self.bus.subscribe(signame, listener)
            if (signame, listener) not in self._listeners:
                self._listeners.append((signame, listener))

    def _handle_signal(self, signum: int, frame: types.FrameType | None = None) -> None:
        """Log the signal and publish on its channel (installed by `set_handler`)."""
        signame = self.signals[signum]
        self.bus.log(f"Caught signal {signame}.")
        self.bus.publish(signame)

    def handle_SIGHUP(self) -> None:
        """Restart if daemonized, else exit.

        A terminal sends SIGHUP to its processes when it closes; a daemon has
        no terminal, so there SIGHUP conventionally means "reload".
        """
        if self._is_daemonized():
            self.bus.log("SIGHUP caught while daemonized. Restarting.")
            self.bus.restart()
        else:
            self.bus.log("SIGHUP caught but not daemonized. Exiting.")
            self.bus.exit()


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


def _describe_dir_error(directory: str, exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return f"directory {directory!r} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{directory!r} is not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"directory {directory!r} is not writable ({exc.strerror})"
    return f"cannot create a file in {directory!r} ({exc.strerror})"


def _log_task_error(bus: Bus | None, message: str) -> None:
    """Log the exception being handled through `bus`, else the ``procbus`` logger."""
    if bus is not None:
        bus.log(message, level=logging.ERROR, traceback=True)
    else:
        _logger.exception("%s", message)


class PerpetualTimer(threading.Timer):
    """A `threading.Timer` that runs its function every `interval` until cancelled.

    Kept for CherryPy compatibility; prefer `BackgroundTask`. A failing function
    is logged (through `bus` when given) and stops the timer.
    """

    def __init__(self, *args: Any, bus: Bus | None = None, **kwargs: Any) -> None:
        self.bus = bus
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        while not self.finished.wait(self.interval):
            try:
                self.function(*self.args, **self.kwargs)
            except Exception:
                _log_task_error(
                    self.bus, f"Error in perpetual timer thread function {self.function!r}."
                )
                return


class BackgroundTask(threading.Thread):
    """A thread that calls `function` every `interval` seconds until cancelled.

    Daemonic by default. `cancel` wakes the wait, so the thread ends as soon as
    a call in progress returns. When `function` raises, the error is logged with
    its traceback (through `bus` when given, else the ``procbus`` logger) and
    the task stops.
    """

    def __init__(
        self,
        interval: float,
        function: Callable[..., object],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        bus: Bus | None = None,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.function = function
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.bus = bus
        self.running = False
        self.daemon = True
        self._cancelled = threading.Event()

    def start(self) -> None:
        self.running = not self._cancelled.is_set()
        super().start()

    def cancel(self) -> None:
        """Stop repeating; a call in progress finishes first."""
        self.running = False
        self._cancelled.set()

    def run(self) -> None:
        try:
            while not self._cancelled.wait(self.interval):
                try:
                    self.function(*self.args, **self.kwargs)
                except Exception:
                    _log_task_error(
                        self.bus, f"Error in background task thread function {self.function!r}."
                    )
                    return
        finally:
            self.running = False


class Monitor(SimplePlugin):
    """Run `callback` every `frequency` seconds in a thread while the bus runs."""

    def __init__(
        self,
        bus: Bus,
        callback: Callable[[], object],
        frequency: float = 60,
        name: str | None = None,
    ) -> None:
        super().__init__(bus)
        self.callback = callback
        self.frequency = frequency
        self.thread: BackgroundTask | None = None
        self.name = name

    @property
    def _thread_name(self) -> str:
        return self.name or type(self).__name__

    @_priority(70)
    def start(self) -> None:
        """Start the callback's thread (nothing when `frequency` is not positive)."""
        if self.frequency <= 0:
            return
        name = self._thread_name
        if self.thread is not None:
            self.bus.log(f"Monitor thread {name!r} already started.")
            return
        self.thread = BackgroundTask(self.frequency, self.callback, bus=self.bus)
        self.thread.name = name
        self.thread.start()
        self.bus.log(f"Started monitor thread {name!r}.")

    def stop(self) -> None:
        """Cancel the callback's thread; join it unless it is daemonic or ourselves."""
        thread, self.thread = self.thread, None
        if thread is None:
            self.bus.log(f"No thread running for {self._thread_name}.")
            return
        # Cancelled even from inside the callback, or it would keep repeating.
        thread.cancel()
        if thread is not threading.current_thread() and not thread.daemon:
            self.bus.log(f"Joining {thread.name!r}")
            thread.join()
        self.bus.log(f"Stopped thread {thread.name!r}.")

    def graceful(self) -> None:
        """Restart the callback's thread."""
        self.stop()
        self.start()


class Autoreloader(Monitor):
    """Restart the process (`Bus.restart`) when a watched file changes.

    Watched are the files of the imported modules whose name matches `match`
    (a regular expression; ``r"^(?!procbus).+"`` leaves procbus out) and the
    paths added to `files`. The first scan of a file records its mtime; a later
    scan that finds another mtime, or no file, restarts. A file missing at its
    first scan is not watched.
    """

    def __init__(self, bus: Bus, frequency: float = 1, match: str = ".*") -> None:
        self.mtimes: dict[str, float | None] = {}
        self.files: set[str] = set()
        self.match = match
        super().__init__(bus, self.run, frequency)

    @_priority(70)
    def start(self) -> None:
        """Start polling, with a fresh baseline unless already running."""
        if self.thread is None:
            self.mtimes = {}
        super().start()

    def sysfiles(self) -> set[str]:
        """Return the files of the imported modules whose name matches `match`."""
        pattern = re.compile(self.match)
        files = set()
        for name, module in list(sys.modules.items()):
            if pattern.match(name):
                filename = self._file_for_module(module)
                if filename:
                    files.add(filename)
        return files

    @classmethod
    def _file_for_module(cls, module: object) -> str | None:
        """Return the file to watch for `module`: its zip archive or its source."""
        return cls._archive_for_zip_module(module) or cls._file_for_file_module(module)

    @staticmethod
    def _archive_for_zip_module(module: object) -> str | None:
        """Return the archive a module was zip-imported from, else None."""
        archive = getattr(getattr(module, "__loader__", None), "archive", None)
        return archive if isinstance(archive, str) else None

    @classmethod
    def _file_for_file_module(cls, module: object) -> str | None:
        """Return the absolute ``__file__`` of `module`, else None."""
        filename = getattr(module, "__file__", None)
        return cls._make_absolute(filename) if isinstance(filename, str) and filename else None

    @staticmethod
    def _make_absolute(filename: str) -> str:
        """Make `filename` absolute against the start directory, not the current one."""
        if os.path.isabs(filename):
            return filename
        return os.path.normpath(os.path.join(_module_file_base, filename))

    def run(self) -> None:
        """Scan the watched files once; restart the bus at the first change."""
        for name in self.sysfiles() | self.files:
            filename = name[:-1] if name.endswith(".pyc") else name
            if filename in self.mtimes and self.mtimes[filename] is None:
                continue  # no such file at the first scan (a module without source)
            try:
                mtime: float | None = os.stat(filename).st_mtime
            except OSError:
                mtime = None
            if filename not in self.mtimes:
                self.mtimes[filename] = mtime
            elif mtime != self.mtimes[filename]:
                self.bus.log(f"Restarting because {filename} changed.")
                if self.thread is not None:
                    self.thread.cancel()
                self.bus.restart()
                return


class ThreadManager(SimplePlugin):
    """Run ``start_thread`` and ``stop_thread`` listeners once per thread.

    Threads you create publish ``acquire_thread`` when they start and
    ``release_thread`` when they end. Where threads are not yours (a server
    reusing its own), publish only ``acquire_thread`` at the start of each
    request; ``stop`` (and ``graceful``) release every thread seen.
    """

    def __init__(self, bus: Bus) -> None:
        self.threads: dict[int, int] = {}
        """A map of {thread ident: index number}; indexes are never reused."""
        super().__init__(bus)
        self._lock = threading.Lock()
        self._indexes = itertools.count(1)
        for channel in ("acquire_thread", "start_thread", "release_thread", "stop_thread"):
            self.bus.listeners.setdefault(channel, set())

    def acquire_thread(self) -> None:
        """Publish ``start_thread`` with this thread's index, the first time only."""
        ident = threading.get_ident()
        with self._lock:
            if ident in self.threads:
                return
            # Not the ident itself: some platforms reuse thread idents.
            index = self.threads[ident] = next(self._indexes)
        self.bus.publish("start_thread", index)

    def release_thread(self) -> None:
        """Publish ``stop_thread`` with this thread's index, if it was acquired."""
        with self._lock:
            index = self.threads.pop(threading.get_ident(), None)
        if index is not None:
            self.bus.publish("stop_thread", index)

    def stop(self) -> None:
        """Release all threads: publish ``stop_thread`` for each."""
        with self._lock:
            indexes = list(self.threads.values())
            self.threads.clear()
        for index in indexes:
            self.bus.publish("stop_thread", index)

    graceful = stop
