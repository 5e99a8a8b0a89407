"""A graceful stop: the worker answers what its master sent it, then stops.

When the master drains a worker (scale down, reload, recycling, stop), it may
have sent it publishes a moment before, which the worker has not read yet: the
SIGTERM overtakes them. So the master first sends, on the publish socket and
so in order after those publishes, a DRAIN marker addressed to that worker
alone, then the signal. On SIGTERM (or SIGINT) the worker goes on reading its
publish socket until the marker: every publish before it is run by the
listeners and answered; those after it are not addressed to it any more (the
master no longer counts a stopping worker as a target) and are dropped.

A TERM the master did not send (an operator's) has no marker yet: the master
sends one as soon as it hears the worker report ``stopping``. When none comes
within `MARKER_GRACE` (the master is busy or gone), the worker takes no
further publish and stops once those it took are answered. A worker that
never reported running cannot be anyone's target and stops at once. The whole
drain is bounded by the graceful timeout, after which the master kills the
worker anyway. A fast stop (SIGQUIT, the master gone) does not drain at all.

This module only decides (`Drain` is given the clock and what the worker's
loop knows); the loop does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MARKER_GRACE: Final = 1.0
"""Seconds a worker told to stop waits for its master's DRAIN marker."""


@dataclass(frozen=True)
class Drain:
    """A worker's graceful stop in progress (times from the same monotonic clock)."""

    started: float
    graceful_timeout: float
    """The drain gives up this long after it started (the master kills at about then)."""
    marker_grace: float = MARKER_GRACE
    """How long the worker waits for a DRAIN marker (0: it owes nothing)."""

    @property
    def deadline(self) -> float:
        return self.started + self.graceful_timeout

    @property
    def marker_deadline(self) -> float:
        return self.started + min(self.marker_grace, self.graceful_timeout)

    def taking_publishes(self, now: float, *, marked: bool) -> bool:
        """Whether publishes read now may still be owed: until the marker, or until
        the grace for one passed."""
        return not marked and now < self.marker_deadline

    def done(self, now: float, *, marked: bool, unanswered: int, held: int) -> bool:
        """Whether the worker may stop now.

        `marked`: the DRAIN marker was read. `unanswered`: publishes handed to
        the listeners and not answered yet. `held`: publishes read before the
        worker's WELCOME, which says which of them it must answer (they came
        before the marker: the WELCOME is on its way).
        """
        if now >= self.deadline:
            return True
        if marked:
            return unanswered == 0 and held == 0
        return now >= self.marker_deadline and unanswered == 0

    def next_check(self, now: float, *, marked: bool) -> float:
        """When `done` may turn true by the clock alone."""
        if not marked and now < self.marker_deadline:
            return self.marker_deadline
        return self.deadline
