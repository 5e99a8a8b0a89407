"""The requirement of a tree publish: when it is met, when it can no longer be met."""

from __future__ import annotations

import pytest

from procbus.master.quorum import Verdict, needed, unmet_reason, verdict
from procbus.publishing import Require

MET, UNMET, WAITING = Verdict.MET, Verdict.UNMET, Verdict.WAITING


@pytest.mark.parametrize(
    ("require", "targets", "ok", "failed", "expected"),
    [
        # all: every target answers; met only if none failed, never decided early.
        ("all", 4, 3, 0, WAITING),
        ("all", 4, 0, 3, WAITING),
        ("all", 4, 4, 0, MET),
        ("all", 4, 3, 1, UNMET),
        ("all", 0, 0, 0, MET),
        # any: the first answer without error.
        ("any", 4, 0, 0, WAITING),
        ("any", 4, 1, 0, MET),
        ("any", 4, 0, 3, WAITING),
        ("any", 4, 0, 4, UNMET),
        ("any", 0, 0, 0, UNMET),
        # N: N answers without error; impossible once more than targets - N failed.
        (3, 4, 2, 0, WAITING),
        (3, 4, 3, 0, MET),
        (3, 4, 2, 1, WAITING),
        (3, 4, 1, 2, UNMET),
        (3, 4, 3, 1, MET),
        (5, 4, 0, 0, UNMET),
        (1, 1, 1, 0, MET),
    ],
)
def test_verdict_follows_the_requirement(
    require: Require, targets: int, ok: int, failed: int, expected: Verdict
) -> None:
    """Steps: the verdict for answers so far. Expected: the table's verdict."""
    assert verdict(require, targets, ok, failed) is expected


def test_needed_answers_per_requirement() -> None:
    """all needs every target, any one, N itself (even beyond the targets)."""
    assert [needed(r, 4) for r in ("all", "any", 2, 9)] == [4, 1, 2, 9]


@pytest.mark.parametrize(
    ("require", "targets", "ok", "failed", "reason"),
    [
        (5, 4, 0, 0, "the publish has only 4 target workers"),
        ("any", 0, 0, 0, "the publish has no target worker"),
        (3, 4, 1, 2, "2 of 4 target workers failed, at most 2 can answer"),
        ("any", 2, 0, 2, "2 of 2 target workers failed, none can answer"),
        ("all", 4, 3, 1, "1 of 4 target workers failed"),
    ],
)
def test_unmet_reason_says_why_in_one_line(
    require: Require, targets: int, ok: int, failed: int, reason: str
) -> None:
    assert unmet_reason(require, targets, ok, failed) == reason


def test_no_reason_while_met_or_waiting() -> None:
    assert unmet_reason(3, 4, 3, 0) is None
    assert unmet_reason(3, 4, 2, 0) is None
