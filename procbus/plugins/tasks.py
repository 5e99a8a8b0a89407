"""Plugins and helpers that run work on threads while the bus runs.

`PerpetualTimer` and `BackgroundTask` repeat a function on a thread; `Monitor`
runs one between ``start`` and ``stop``, and `Autoreloader` is a `Monitor` that
restarts the bus when a watched file changes. `ThreadManager` runs the
per-thread ``start_thread``/``stop_thread`` hooks.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from procbus.bus import Bus
from procbus.plugins.base import SimplePlugin, _priority

_logger = logging.getLogger("procbus")

# `Autoreloader` makes the relative ``__file__`` of modules imported before a
# chdir absolute against the directory the process started in (CherryPy #917).
_module_file_base: Final = os.getcwd()


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
