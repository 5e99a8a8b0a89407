"""The options of a tree publish: what each caller may say, and the one-line refusals."""

from __future__ import annotations

from typing import Any

import pytest

from procbus.publishing import DEFAULT, MAX_TARGETS, OPTION_NAMES, PublishOptions


def test_defaults_wait_for_every_worker_and_put_nothing_on_the_wire() -> None:
    assert PublishOptions() == DEFAULT
    assert (DEFAULT.require, DEFAULT.to, DEFAULT.retain, DEFAULT.include_self) == (
        "all",
        None,
        False,
        True,
    )
    assert DEFAULT.wire() == {}
    assert not DEFAULT.targeted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"require": "any"}, PublishOptions(require="any")),
        ({"require": "2"}, PublishOptions(require=2)),
        ({"require": 3}, PublishOptions(require=3)),
        ({"to": "1,3"}, PublishOptions(to=(1, 3))),
        ({"to": " 4 , 2 ,4"}, PublishOptions(to=(4, 2))),
        ({"to": [2]}, PublishOptions(to=(2,))),
        ({"to_generation": 5}, PublishOptions(to_generation=5)),
        ({"retain": True}, PublishOptions(retain=True)),
        ({"retain": True, "clear": True}, PublishOptions(retain=True, clear=True)),
    ],
)
def test_parse_takes_what_ctl_and_the_wire_send(
    raw: dict[str, Any], expected: PublishOptions
) -> None:
    options = PublishOptions.parse(raw)
    assert options == expected
    assert PublishOptions.parse(options.wire()) == options


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"require": "most"},
            'require must be "all", "any" or a number of workers >= 1, got \'most\'',
        ),
        ({"require": 0}, "got 0"),
        ({"require": -1}, "got -1"),
        ({"require": True}, "got True"),
        ({"require": 1.5}, "got 1.5"),
        ({"to": ""}, "to must be 1 to"),
        ({"to": "1,x"}, "got '1,x'"),
        ({"to": "0"}, "got '0'"),
        ({"to": []}, "got []"),
        ({"to": [1, "2"]}, "got [1, '2']"),
        ({"to": [True]}, "got [True]"),
        ({"to": list(range(1, MAX_TARGETS + 2))}, "..."),
        ({"to": {"1": 1}}, "got {'1': 1}"),
        ({"to_generation": 0}, "to_generation must be a generation >= 1, got 0"),
        ({"to_generation": "2"}, "got '2'"),
        ({"retain": "yes"}, "retain must be true or false, got 'yes'"),
        ({"to": "1", "to_generation": 1}, "to and to_generation exclude each other"),
        ({"retain": True, "to": "1"}, "a retained publish goes to every worker"),
        ({"clear": True}, "clear drops a retained publish: it needs retain"),
        ({"include_self": False}, "unknown publish option 'include_self'"),
        ({"deadline": 3}, "unknown publish option 'deadline' (known: clear, require"),
    ],
)
def test_bad_options_are_one_line_naming_the_value(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PublishOptions.parse(raw)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text and len(text) < 200


def test_a_worker_may_also_say_include_self() -> None:
    allowed = OPTION_NAMES | {"include_self"}
    options = PublishOptions.parse({"include_self": False, "require": "any"}, allowed=allowed)
    assert options == PublishOptions(require="any", include_self=False)
    assert options.wire() == {"require": "any", "include_self": False}
