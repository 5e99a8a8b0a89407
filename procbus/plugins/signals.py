"""`SignalHandler`: system signals turned into publishes on the bus.

Unlike the other plugins it is not a `SimplePlugin`: it replaces signal
handlers, keeps the previous ones so that `SignalHandler.unsubscribe` can
restore them, and can install them only from the main thread. That state and
those rules are its own, so it lives alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal as _signal
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeAlias

from procbus.bus import Bus, Listener

_HandlerValue: TypeAlias = (
    Callable[[int, types.FrameType | None], Any] | int | _signal.Handlers | None
)


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
