"""When a tree publish is done: its requirement (``require``) against the answers so far.

A publish says what "done" means (`procbus.publishing`): ``"all"`` its
targets, ``"any"`` one of them, or a number N, answering without error. The
relay (`procbus.master.relay`) asks `verdict` after every answer, death or
deadline; once it is `Verdict.MET` or `Verdict.UNMET` the reply goes back to
the caller, and the targets that had not answered are ``pending`` (their
answers go to the event stream).

- ``"all"`` (the default) waits for every target, as a tree publish always
  did: its reply lists every target's outcome and is met when none failed. It
  does not return at the first failure: a caller of ``"all"`` wants to see
  every worker's answer, and it never has pending workers.
- ``"any"`` and N are met as soon as N targets answered without error, and can
  no longer be met as soon as more than ``targets - N`` failed (an error, a
  timeout, a worker lost). N beyond the number of targets cannot be met: the
  reply comes back at once, with the reason.

Pure functions of counts: no clock, no workers.
"""

from __future__ import annotations

import enum

from procbus.publishing import Require


class Verdict(enum.StrEnum):
    """Where a publish's requirement stands."""

    WAITING = "waiting"
    """Neither met nor impossible yet: the gather goes on."""
    MET = "met"
    UNMET = "unmet"
    """Can no longer be met (or, for ``"all"``, every target answered and one failed)."""


def needed(require: Require, targets: int) -> int:
    """Answers without error the requirement asks for, out of `targets`."""
    if require == "all":
        return targets
    if require == "any":
        return 1
    return int(require)


def verdict(require: Require, targets: int, ok: int, failed: int) -> Verdict:
    """The verdict once `ok` targets answered without error and `failed` failed."""
    if require == "all":
        if ok + failed < targets:
            return Verdict.WAITING
        return Verdict.MET if failed == 0 else Verdict.UNMET
    want = needed(require, targets)
    if ok >= want:
        return Verdict.MET
    if targets - failed < want:
        return Verdict.UNMET
    return Verdict.WAITING


def unmet_reason(require: Require, targets: int, ok: int, failed: int) -> str | None:
    """Why the requirement is unmet, in a few words (``the publish has only 2 target
    workers``); None while it is met or waiting."""
    if verdict(require, targets, ok, failed) is not Verdict.UNMET:
        return None
    if require == "all":
        return f"{failed} of {targets} target workers failed"
    want = needed(require, targets)
    if want > targets:
        have = f"only {targets}" if targets else "no"
        noun = "target worker" if targets <= 1 else "target workers"
        return f"the publish has {have} {noun}"
    left = targets - failed
    can = f"at most {left} can answer" if left else "none can answer"
    return f"{failed} of {targets} target workers failed, {can}"
