"""Warnings about bad input, logged at a bounded rate."""

from __future__ import annotations

import logging

import pytest

from procbus.master.throttle import LogThrottle
from tests.helpers import FakeClock


def test_a_burst_logs_the_limit_then_counts_the_rest_in_the_next_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Steps: limit 3 per 10 s, starting at clock 0; 200 warnings at once; at 10 s one
    more.
    Expected: 3 of the burst are logged; the one at 10 s is preceded by one line saying
    197 more were not logged, naming what they were about."""
    clock = FakeClock(start=0.0)
    throttle = LogThrottle(
        logging.getLogger("test.throttle"), "dropped messages", 3, 10.0, clock=clock
    )
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for n in range(200):
            throttle.warn("dropped %d", n)
        assert caplog.messages == ["dropped 0", "dropped 1", "dropped 2"]
        clock.now = 10.0
        throttle.warn("dropped %d", 200)
    assert caplog.messages[3:] == ["197 more dropped messages were not logged", "dropped 200"]


def test_warnings_spread_over_periods_are_all_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Steps: limit 1 per 10 s; one warning every 10 s, five times.
    Expected: all five are logged, and no 'not logged' line."""
    clock = FakeClock(start=0.0)
    throttle = LogThrottle(logging.getLogger("test.throttle"), "things", 1, 10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for n in range(5):
            clock.now = 10.0 * n
            throttle.warn("bad %d", n)
    assert caplog.messages == [f"bad {n}" for n in range(5)]
