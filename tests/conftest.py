"""Fixtures shared by every tier.

- `clock` and `loop`: a fake monotonic clock (`tests.helpers.FakeClock`) and an
  `EventLoop` on it, closed after the test: timers fire when the test moves the
  clock (or `tests.helpers.keep_time_moving` does), never by sleeping.
- `short_tmp`: a private directory with a short path (for ``ipc://`` sockets),
  removed after the test.
- `sockets`: a ZeroMQ context of the test's own; every socket made through it is
  closed, and the context terminated, after the test.
- `recorder`, `processes`, `pool`: the events emitted, fake worker processes
  (`tests.component.fakes`), and a real `Pool` of two of them, running, on the
  fake clock, which moves whenever the loop would wait.

Processes are started and reaped by `tests.processes` (real masters, and
`run_to_end` for a command run to completion), not by fixtures here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from tests.component.fakes import FakeProcesses, Recorder, fake_pool
from tests.helpers import FakeClock, Sockets, keep_time_moving
from tests.processes import short_tempdir


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
def short_tmp() -> Iterator[Path]:
    directory = short_tempdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def sockets() -> Iterator[Sockets]:
    made = Sockets()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def processes(loop: EventLoop) -> FakeProcesses:
    return FakeProcesses(loop)


@pytest.fixture
def pool(loop: EventLoop, clock: FakeClock, processes: FakeProcesses, recorder: Recorder) -> Pool:
    """Two running workers (fake processes); from here on, fake time passes (0.05 s per
    timer turn) whenever the loop waits."""
    workers = fake_pool(loop, processes, recorder.emit)
    keep_time_moving(loop, clock, 0.05)
    workers.activate()
    assert loop.run_until(workers.all_running, 5.0)
    return workers
