"""What the master accepts of a worker's tree publish (`admit`): a pure decision.

The master's handling around it (answers, events, in-flight counts, callers that
died) is in tests/component/test_worker_publishes.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from procbus.commands import ErrorCode
from procbus.master.worker_publishes import (
    FORBIDDEN_CHANNELS,
    MAX_IN_FLIGHT,
    Refusal,
    TreeRequest,
    admit,
)
from procbus.publishing import PublishOptions


def body(**changes: Any) -> dict[str, Any]:
    """A TREE_PUBLISH body from worker 3, with `changes`."""
    return {"id": 7, "channel": "cache.clear", "args": ["k"], "kwargs": {}, **changes}


def test_a_well_formed_request_is_admitted_with_its_options() -> None:
    """Steps: a request without timeout or options; one with timeout 2 and every option a
    worker may give. Expected: both admitted; the first with no timeout (the master's
    default applies) and the default options, the second with its own."""
    plain = admit(3, body(), in_flight=0)
    assert plain == TreeRequest(7, "cache.clear", ["k"], {}, None, PublishOptions())
    options = {"require": "any", "to": [1, 2], "include_self": False}
    full = admit(3, body(timeout=2, kwargs={"prefix": "p"}, options=options), in_flight=5)
    assert isinstance(full, TreeRequest)
    assert (full.timeout, full.kwargs) == (2.0, {"prefix": "p"})
    assert full.options == PublishOptions(require="any", to=(1, 2), include_self=False)


@pytest.mark.parametrize("channel", sorted(FORBIDDEN_CHANNELS))
def test_channels_that_stay_with_the_master_are_forbidden_in_one_line(channel: str) -> None:
    """Steps: a request on each of start, stop, exit, graceful, log, main and
    procbus.metrics. Expected: refused as forbidden, one line naming the worker and the
    channel."""
    refusal = admit(3, body(channel=channel), in_flight=0)
    assert isinstance(refusal, Refusal)
    assert refusal.code is ErrorCode.FORBIDDEN
    assert refusal.message.startswith(f"worker 3 cannot publish {channel!r} to the tree: ")
    assert "\n" not in refusal.message


def test_forbidden_channels_are_those_of_the_issue_and_those_that_stay_on_the_master() -> None:
    """The set is exactly the pool's channels, graceful, the master's local ones and the
    reserved scrape channel."""
    expected = {"start", "stop", "exit", "graceful", "log", "main", "procbus.metrics"}
    assert expected == FORBIDDEN_CHANNELS


@pytest.mark.parametrize("timeout", [0, -1, math.inf, math.nan])
def test_a_timeout_that_is_not_finite_and_positive_is_refused_naming_it(timeout: float) -> None:
    refusal = admit(3, body(timeout=timeout), in_flight=0)
    assert refusal == Refusal(
        ErrorCode.BAD_ARGUMENTS,
        f"timeout must be a finite number of seconds > 0, got {timeout!r}",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait": True}, "unknown publish option 'wait' (known: clear, include_self, require, "),
        ({"require": "most"}, 'require must be "all", "any" or a number of workers >= 1, got '),
        ({"to": [0]}, "to must be 1 to 4096 worker ids >= 1 (as 1,3), got [0]"),
        ({"include_self": "no"}, "include_self must be true or false, got 'no'"),
        ({"to": [1], "to_generation": 2}, "to and to_generation exclude each other"),
    ],
)
def test_bad_options_are_refused_in_one_line_naming_the_value(
    options: dict[str, Any], message: str
) -> None:
    refusal = admit(3, body(options=options), in_flight=0)
    assert isinstance(refusal, Refusal)
    assert refusal.code is ErrorCode.BAD_ARGUMENTS
    assert refusal.message.startswith(message)


def test_past_the_limit_in_flight_a_request_is_refused_at_once() -> None:
    """Steps: a request while the worker has MAX_IN_FLIGHT - 1, then MAX_IN_FLIGHT tree
    publishes in flight. Expected: the first admitted, the second refused as unavailable,
    naming the limit."""
    assert isinstance(admit(3, body(), in_flight=MAX_IN_FLIGHT - 1), TreeRequest)
    refusal = admit(3, body(), in_flight=MAX_IN_FLIGHT)
    assert refusal == Refusal(
        ErrorCode.UNAVAILABLE,
        f"worker 3 has {MAX_IN_FLIGHT} tree publishes in flight already (at most "
        f"{MAX_IN_FLIGHT}): publish on 'cache.clear' refused",
    )
