"""The master's event loop: one thread, one poller, timers and signals.

Everything the master does happens in callbacks of this loop: messages on
ZeroMQ sockets, readable file descriptors, timers, and signals. Signals are
never handled inside the Python signal handler: the handler is a no-op and the
kernel-level wake-up fd (`signal.set_wakeup_fd`) carries the signal number into
the poller, where the loop dispatches it like any other event. SIGCHLD
therefore reaps children promptly without a polling interval.

The loop is re-entered only from the top: `run_until` may be called by
top-level code (the public `Master` API and the long jobs it runs) but never
from inside a callback, where it raises `RuntimeError`. Callbacks that need to
wait start timers or register completion callbacks instead.

The clock is injected so that timers can be tested without sleeping.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import zmq

Clock = Callable[[], float]
Pollable = zmq.Socket[bytes] | int


@dataclass(eq=False)
class Timer:
    """A callback scheduled at `when` on the loop's clock; `cancel()` it."""

    when: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wake-up fd already carries the signal."""


class EventLoop:
    """A single-threaded poller loop with timers and signal delivery."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._poller = zmq.Poller()
        self._handlers: dict[Any, Callable[[], None]] = {}
        self._priorities: dict[Any, int] = {}
        # (when, order, timer): tuples compare in C, and a timer is pushed
        # for every publish's deadline.
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._depth = 0
        self._stopped = False
        self._forever = False
        self._signal_callback: Callable[[int], None] | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._previous_wakeup_fd: int | None = None
        self._wakeup_r: int | None = None
        self._wakeup_w: int | None = None

    # -- registration ----------------------------------------------------

    def add_reader(
        self, source: Pollable, callback: Callable[[], None], *, priority: int = 0
    ) -> None:
        """Call `callback` whenever `source` (a socket or an fd) is readable.

        When several sources are ready at once, lower `priority` values are
        served first.
        """
        self._handlers[source] = callback
        self._priorities[source] = priority
        self._poller.register(source, zmq.POLLIN)

    def add_writer(
        self, source: Pollable, callback: Callable[[], None], *, priority: int = 0
    ) -> None:
        """Call `callback` whenever `source` can be written to without blocking.

        A source is watched for reading or for writing, not both at once;
        `remove_reader` stops either.
        """
        self._handlers[source] = callback
        self._priorities[source] = priority
        self._poller.register(source, zmq.POLLOUT)

    def remove_reader(self, source: Pollable) -> None:
        self._priorities.pop(source, None)
        if self._handlers.pop(source, None) is not None:
            self._poller.unregister(source)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once, `delay` seconds from now."""
        return self.call_at(self.clock() + delay, callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` every `interval` seconds; the returned timer's
        `cancel()` stops the series."""
        handle = Timer(self.clock() + interval, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            callback()
            if not handle.cancelled:
                self.call_at(self.clock() + interval, tick)

        self.call_at(handle.when, tick)
        return handle

    # -- signals ---------------------------------------------------------

    def install_signals(self, signals: Iterable[int], callback: Callable[[int], None]) -> None:
        """Deliver `signals` to `callback(signum)` from the loop.

        May be called again to add signals (the callback is replaced). The
        previous handlers and wake-up fd are kept and restored by
        `restore_signals`. Must be called from the main thread.
        """
        if self._wakeup_r is None:
            r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._wakeup_r, self._wakeup_w = r, w
            self._previous_wakeup_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            self.add_reader(r, self._drain_signals)
        self._signal_callback = callback
        for signum in signals:
            previous = signal.signal(signum, _ignore_signal)
            self._previous_handlers.setdefault(signum, previous)

    def restore_signals(self) -> None:
        """Put back the handlers and wake-up fd that were there before."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers.clear()
        if self._wakeup_r is not None:
            previous = self._previous_wakeup_fd
            try:
                signal.set_wakeup_fd(previous if previous is not None else -1)
            except (ValueError, OSError):
                # The previous fd was closed meanwhile (by its owner, or a
                # fork); leaving ours installed would point signals at a
                # closed pipe, so fall back to none.
                with contextlib.suppress(ValueError):
                    signal.set_wakeup_fd(-1)
            self.remove_reader(self._wakeup_r)
            os.close(self._wakeup_r)
            if self._wakeup_w is not None:
                os.close(self._wakeup_w)
            self._wakeup_r = self._wakeup_w = None
        self._signal_callback = None

    def signal_fds(self) -> tuple[int, ...]:
        """The wake-up pipe's fds (a forked child must close them)."""
        return tuple(fd for fd in (self._wakeup_r, self._wakeup_w) if fd is not None)

    def _drain_signals(self) -> None:
        assert self._wakeup_r is not None
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        if self._signal_callback is None:
            return
        for signum in data:
            self._signal_callback(signum)

    # -- running ---------------------------------------------------------

    @property
    def in_callback(self) -> bool:
        """True while the loop is dispatching (nested waits are not allowed)."""
        return self._depth > 0

    def stop(self) -> None:
        """Make the current `run_forever` return after this iteration."""
        self._stopped = True

    def run_once(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` seconds for events and dispatch them and due timers."""
        if self._depth:
            raise RuntimeError("the event loop cannot be re-entered from one of its callbacks")
        self._depth += 1
        try:
            self._run_timers()
            wait = self._next_timer_delay(timeout)
            try:
                events = self._poller.poll(
                    None if wait is None else math.ceil(max(0.0, wait) * 1000)
                )
            except zmq.ZMQError as exc:
                if exc.errno != errno.EINTR:
                    raise
                events = []
            if len(events) > 1:
                events.sort(key=lambda event: self._priorities.get(event[0], 0))
            for source, _ in events:
                handler = self._handlers.get(source)
                if handler is not None:
                    handler()
            self._run_timers()
        finally:
            self._depth -= 1

    def run_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop until `predicate()` is true or `timeout` passed.

        Returns the predicate's last value. Only top-level code may call this.
        """
        deadline = None if timeout is None else self.clock() + timeout
        while not predicate():
            if deadline is None:
                self.run_once(None)
                continue
            remaining = deadline - self.clock()
            if remaining <= 0:
                return predicate()
            self.run_once(remaining)
        return True

    def run_forever(self) -> None:
        """Run until `stop()` is called."""
        self._stopped = False
        self._forever = True
        try:
            while not self._stopped:
                self.run_once(None)
        finally:
            # A stop left set would turn every later wait into a busy loop.
            self._forever = self._stopped = False

    def _next_timer_delay(self, timeout: float | None) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if self._stopped and self._forever:
            return 0
        if not self._timers:
            return timeout
        delay = max(0.0, self._timers[0][0] - self.clock())
        return delay if timeout is None else min(delay, timeout)

    def _run_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def close(self) -> None:
        """Restore signals and forget every registration and timer."""
        self.restore_signals()
        for source in list(self._handlers):
            self.remove_reader(source)
        self._timers.clear()
