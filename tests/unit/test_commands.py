"""The command table's checks: one-line errors naming the bad value, never huge."""

from __future__ import annotations

import signal

import pytest

from procbus.commands import CommandError, ErrorCode, check_request, parse_signal


def test_a_huge_bad_argument_is_echoed_short() -> None:
    with pytest.raises(CommandError) as caught:
        check_request("ping", ["x" * 1_000_000], {})
    assert caught.value.code == ErrorCode.BAD_ARGUMENTS
    assert len(str(caught.value)) < 200
    assert "unexpected argument 'xxx" in str(caught.value)


@pytest.mark.parametrize(
    ("command", "args", "kwargs", "code", "names"),
    [
        ("frobnicate", [], {}, ErrorCode.UNKNOWN_COMMAND, "'frobnicate'"),
        (42, [], {}, ErrorCode.UNKNOWN_COMMAND, "42"),
        ("scale", [], {}, ErrorCode.BAD_ARGUMENTS, "missing argument N"),
        ("scale", ["four"], {}, ErrorCode.BAD_ARGUMENTS, "'four'"),
        ("scale", [-1], {}, ErrorCode.BAD_ARGUMENTS, "-1"),
        ("reload", [], {"batch": -1}, ErrorCode.BAD_ARGUMENTS, "-1"),
        ("status", [], {"nope": 1}, ErrorCode.BAD_ARGUMENTS, "'nope'"),
        ("publish", "x", {}, ErrorCode.BAD_ARGUMENTS, "'x'"),
    ],
)
def test_bad_requests_name_the_value(
    command: object, args: object, kwargs: object, code: ErrorCode, names: str
) -> None:
    with pytest.raises(CommandError) as caught:
        check_request(command, args, kwargs)
    assert caught.value.code == code
    assert names in str(caught.value)
    assert "\n" not in str(caught.value)


def test_signals_by_name_or_number() -> None:
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("15") == signal.SIGTERM
    with pytest.raises(CommandError, match="'NOPE'"):
        parse_signal("NOPE")
