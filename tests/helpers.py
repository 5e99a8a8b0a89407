"""Test helpers shared by every tier: waiting on a condition, time that tests move, and
ZeroMQ sockets that are always closed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

if TYPE_CHECKING:
    from procbus.master.loop import EventLoop

_T = TypeVar("_T")


def wait_until(predicate: Callable[[], _T], timeout: float = 5.0) -> _T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raise ``AssertionError`` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate!r}")
        time.sleep(0.005)


class FakeClock:
    """A monotonic clock (for `EventLoop`, `LogThrottle`, `ProcessMonitor`...) that moves
    only when the test moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def keep_time_moving(loop: EventLoop, clock: FakeClock, step: float) -> None:
    """A timer that is always due and moves the fake clock `step` each time it fires
    (twice per `EventLoop.run_once`): time passes without the poll ever waiting, so a
    `run_until` with a timeout ends after that much fake time, in a few milliseconds.
    It runs until the loop is closed."""

    def tick() -> None:
        clock.advance(step)
        loop.call_at(clock(), tick)

    loop.call_at(clock(), tick)


class Sockets:
    """A ZeroMQ context of a test's own and every socket made in it (``linger`` 0), all
    closed by `close` so that terminating the context cannot hang."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self._made: list[zmq.Socket[bytes]] = []

    def socket(self, kind: int, **options: Any) -> zmq.Socket[bytes]:
        """A new socket of `kind` (``zmq.ROUTER``...), with `options` set (``identity=...``)."""
        sock: zmq.Socket[bytes] = self.context.socket(kind)
        sock.linger = 0
        for name, value in options.items():
            setattr(sock, name, value)
        self._made.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._made:
            sock.close(0)
        self._made.clear()
        self.context.term()
