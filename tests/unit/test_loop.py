"""The master's event loop: timers on an injected clock, readers, signals, re-entry.

The loop still polls for real, so every test arranges for the poll timeout to be
zero or for the awaited fd to be readable already: the fake clock is moved
before `run_once`, never waited for.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from procbus.master.loop import EventLoop
from tests.helpers import FakeClock, keep_time_moving


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def current_wakeup_fd() -> int:
    fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(fd)
    return fd


# -- timers --------------------------------------------------------------------


def test_timers_fire_in_due_order_and_ties_in_scheduling_order(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: schedule timers at +3, +1, +2 and a second one at +1 (in that order); move
    the clock 5 s; run once.
    Expected: they ran in the order +1, second +1, +2, +3.
    """
    fired: list[str] = []
    loop.call_later(3.0, lambda: fired.append("3"))
    loop.call_later(1.0, lambda: fired.append("1a"))
    loop.call_at(clock() + 2.0, lambda: fired.append("2"))
    loop.call_later(1.0, lambda: fired.append("1b"))
    clock.advance(5.0)
    loop.run_once(0)
    assert fired == ["1a", "1b", "2", "3"]


def test_timer_fires_once_when_due_and_not_before(loop: EventLoop, clock: FakeClock) -> None:
    """Steps: schedule a timer in 2 s; run at +1.9, at +2, at +10.
    Expected: not fired at +1.9; fired once at +2; not again later.
    """
    fired: list[float] = []
    loop.call_later(2.0, lambda: fired.append(clock()))
    clock.advance(1.9)
    loop.run_once(0)
    assert fired == []
    clock.now = 1002.0
    loop.run_once(0)
    assert fired == [1002.0]
    clock.advance(8.0)
    loop.run_once(0)
    assert fired == [1002.0]


def test_cancelled_timer_does_not_fire(loop: EventLoop, clock: FakeClock) -> None:
    """Steps: schedule two timers in 1 s; cancel the first; move past them; run once.
    Expected: only the second one fired.
    """
    fired: list[str] = []
    first = loop.call_later(1.0, lambda: fired.append("first"))
    loop.call_later(1.0, lambda: fired.append("second"))
    first.cancel()
    clock.advance(1.0)
    loop.run_once(0)
    assert fired == ["second"]


def test_call_every_repeats_each_interval_until_cancelled(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: call_every(1 s); run at +0.5, +1, +2, +3; cancel; run at +4 and +5.
    Expected: 0 calls at +0.5, then one more call per interval (1, 2, 3); none after
    the cancel.
    """
    calls: list[float] = []
    series = loop.call_every(1.0, lambda: calls.append(clock()))
    clock.advance(0.5)
    loop.run_once(0)
    assert calls == []
    for expected in ([1001.0], [1001.0, 1002.0], [1001.0, 1002.0, 1003.0]):
        clock.now = expected[-1]
        loop.run_once(0)
        assert calls == expected
    series.cancel()
    for later in (1004.0, 1005.0):
        clock.now = later
        loop.run_once(0)
    assert calls == [1001.0, 1002.0, 1003.0]


def test_call_every_stops_when_cancelled_from_its_own_callback(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: call_every(1 s) whose callback cancels the series on its second call; run at
    +1, +2, +3.
    Expected: exactly two calls.
    """
    calls: list[float] = []

    def callback() -> None:
        calls.append(clock())
        if len(calls) == 2:
            series.cancel()

    series = loop.call_every(1.0, callback)
    for _ in range(3):
        clock.advance(1.0)
        loop.run_once(0)
    assert calls == [1001.0, 1002.0]


# -- run_until and re-entry ----------------------------------------------------


def test_run_until_returns_false_when_the_timeout_passes(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: keep the fake clock moving 0.5 s per timer; run_until a predicate that stays
    false, timeout 3 s.
    Expected: False, returned once 3 s of fake time passed (clock at exactly +3).
    """
    keep_time_moving(loop, clock, 0.5)
    assert loop.run_until(lambda: False, timeout=3.0) is False
    assert clock() == 1003.0


def test_run_until_returns_true_as_soon_as_the_predicate_holds(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: keep the fake clock moving 0.5 s per timer; a timer at +2 sets a flag;
    run_until the flag, timeout 60 s.
    Expected: True, with the clock far before the timeout (at most +3).
    """
    done: list[bool] = []
    loop.call_later(2.0, lambda: done.append(True))
    keep_time_moving(loop, clock, 0.5)
    assert loop.run_until(lambda: bool(done), timeout=60.0) is True
    assert 1002.0 <= clock() <= 1003.0


def test_run_until_with_a_true_predicate_returns_true_without_dispatching(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: schedule a due timer; run_until a predicate that is already true.
    Expected: True, and the timer did not run.
    """
    fired: list[bool] = []
    loop.call_later(0.0, lambda: fired.append(True))
    assert loop.run_until(lambda: True, timeout=1.0) is True
    assert fired == []


def test_reentering_the_loop_from_a_callback_raises(loop: EventLoop, clock: FakeClock) -> None:
    """Steps: a due timer calls run_once, then run_until, from inside the loop and records
    what they raise and whether `in_callback` was true; run once; afterwards run once more.
    Expected: both nested calls raised RuntimeError; in_callback was true inside and is
    false after; the loop still runs timers afterwards.
    """
    seen: list[object] = []

    def nested() -> None:
        seen.append(loop.in_callback)
        for call in (lambda: loop.run_once(0), lambda: loop.run_until(lambda: False, 1.0)):
            try:
                call()
            except RuntimeError as exc:
                seen.append(str(exc))

    loop.call_later(0.0, nested)
    loop.run_once(0)
    message = "the event loop cannot be re-entered from one of its callbacks"
    assert seen == [True, message, message]
    assert not loop.in_callback

    later: list[bool] = []
    loop.call_later(0.0, lambda: later.append(True))
    loop.run_once(0)
    assert later == [True]


def test_run_once_after_run_forever_returned_waits_for_its_timeout(
    loop: EventLoop, pipe: tuple[int, int]
) -> None:
    """Steps: register a reader on an empty pipe (a poller with nothing registered never
    waits); a due timer calls stop(); run_forever (returns); then run_once(0.05), timed on
    the real clock.
    Expected: run_forever returned; the later run_once blocked about 50 ms rather than
    returning at once (a stale stop would make every later wait a busy loop).
    """
    loop.add_reader(pipe[0], lambda: None)
    loop.call_later(0.0, loop.stop)
    loop.run_forever()
    started = time.monotonic()
    loop.run_once(0.05)
    assert time.monotonic() - started >= 0.04


# -- readers -------------------------------------------------------------------


def test_reader_is_called_when_its_fd_is_readable(loop: EventLoop, pipe: tuple[int, int]) -> None:
    """Steps: add_reader on a pipe's read end; run once (nothing written); write a byte;
    run once; remove the reader; write again; run once.
    Expected: no call while empty; one call (which reads the byte) once written; no call
    after remove_reader.
    """
    r, w = pipe
    got: list[bytes] = []
    loop.add_reader(r, lambda: got.append(os.read(r, 16)))
    loop.run_once(0)
    assert got == []
    os.write(w, b"x")
    loop.run_once(5.0)
    assert got == [b"x"]
    loop.remove_reader(r)
    os.write(w, b"y")
    loop.run_once(0)
    assert got == [b"x"]


# -- signals -------------------------------------------------------------------


@pytest.fixture
def saved_signal_state() -> Iterator[None]:
    """Put SIGUSR1's handler and the wake-up fd back whatever the test did.

    Request it after any fixture whose fd the test makes the wake-up fd, so that it is
    restored before that fd is closed.
    """
    handler = signal.getsignal(signal.SIGUSR1)
    wakeup = current_wakeup_fd()
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, handler)
        signal.set_wakeup_fd(wakeup)


@pytest.mark.usefixtures("saved_signal_state")
def test_signal_is_delivered_to_the_callback_through_the_loop(loop: EventLoop) -> None:
    """Steps: install_signals([SIGUSR1]); send SIGUSR1 to this process; run once.
    Expected: the callback got SIGUSR1 from the loop (not from the signal handler: nothing
    before run_once).
    """
    received: list[int] = []
    loop.install_signals([signal.SIGUSR1], received.append)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert received == []
    loop.run_once(5.0)
    assert received == [signal.SIGUSR1]


@pytest.mark.parametrize("undo", ["restore_signals", "close"])
def test_restoring_signals_puts_back_previous_handler_and_wakeup_fd(
    pipe: tuple[int, int], saved_signal_state: None, loop: EventLoop, undo: str
) -> None:
    """Steps: install a handler of our own for SIGUSR1 and our own wake-up fd; then
    install_signals([SIGUSR1]); then restore_signals() (or close()).
    Expected: while installed, neither is ours and the loop exposes its two pipe fds;
    after the undo, SIGUSR1's handler and the wake-up fd are ours again and the loop has
    no signal fds left.
    """

    def ours(signum: int, frame: FrameType | None) -> None:
        """A previous handler."""

    _, w = pipe
    os.set_blocking(w, False)
    signal.signal(signal.SIGUSR1, ours)
    signal.set_wakeup_fd(w)

    loop.install_signals([signal.SIGUSR1], lambda signum: None)
    assert signal.getsignal(signal.SIGUSR1) is not ours
    assert current_wakeup_fd() not in (w, -1)
    assert len(loop.signal_fds()) == 2

    getattr(loop, undo)()
    assert signal.getsignal(signal.SIGUSR1) is ours
    assert current_wakeup_fd() == w
    assert loop.signal_fds() == ()


def test_close_forgets_timers_and_readers(
    loop: EventLoop, clock: FakeClock, pipe: tuple[int, int]
) -> None:
    """Steps: schedule a timer and a reader on a readable pipe; close the loop; move past
    the timer; run once.
    Expected: neither the timer nor the reader ran.
    """
    r, w = pipe
    fired: list[str] = []
    loop.call_later(1.0, lambda: fired.append("timer"))
    loop.add_reader(r, lambda: fired.append("reader"))
    os.write(w, b"x")
    loop.close()
    clock.advance(2.0)
    loop.run_once(0)
    assert fired == []
