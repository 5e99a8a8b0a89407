"""Fixtures shared by every tier.

- `clock` and `loop`: a fake monotonic clock (`tests.helpers.FakeClock`) and an
  `EventLoop` on it, closed after the test: timers fire when the test moves the
  clock (or `tests.helpers.keep_time_moving` does), never by sleeping.
- `sockets`: a ZeroMQ context of the test's own; every socket made through it is
  closed, and the context terminated, after the test.

Processes are started and reaped by `tests.processes` (real masters, and
`run_to_end` for a command run to completion), not by fixtures here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from procbus.master.loop import EventLoop
from tests.helpers import FakeClock, Sockets


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loop(clock: FakeClock) -> Iterator[EventLoop]:
    event_loop = EventLoop(clock)
    try:
        yield event_loop
    finally:
        event_loop.close()


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    try:
        yield made
    finally:
        made.close()
