"""What the master counts of its tree publishes, for ``procbus_publishes_total`` and
``procbus_publish_duration_seconds``.

The relay counts here when a publish's reply goes back: one outcome per worker
answer (``ok``, ``error``, ``timeout``, ``lost``; a worker that was not yet a
target is not an answer) and the publish's duration, from its send to the
tree's answer. A target still ``pending`` then (the publish's requirement was
met, or could no longer be met, without it) is counted once its outcome is
known (`PublishMeter.answered`): each target is counted once, by what became
of the publish in it. These are plain numbers, not prometheus_client objects: the master
keeps no metric registry (its own metrics are read from its state when a
scrape asks, `procbus.master.metrics`), and the relay's hot path pays one
dictionary update per worker and one bisection per publish.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

DURATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds in seconds (``+Inf`` is implied). A tree publish to idle workers
answers in well under a millisecond; a listener's own work, up to the publish
deadline, is what fills the upper buckets."""


@dataclass
class Histogram:
    """Cumulative-at-read bucket counts, their sum and count (a Prometheus histogram)."""

    bounds: Sequence[float] = DURATION_BUCKETS
    counts: list[int] = field(default_factory=list)
    """Per bucket, not cumulative; the last one is ``+Inf``."""
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds) or not all(map(math.isfinite, self.bounds)):
            raise ValueError(f"bucket bounds must be finite and ascending, got {self.bounds!r}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) for every bucket, ``+Inf`` last."""
        running, found = 0, []
        for bound, count in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += count
            found.append((bound, running))
        return found


@dataclass
class PublishMeter:
    """Outcomes of every worker answer, and durations of every publish."""

    outcomes: Counter[str] = field(default_factory=Counter)
    durations: Histogram = field(default_factory=Histogram)

    def replied(self, seconds: float) -> None:
        """A publish's reply went back `seconds` after it was sent."""
        self.durations.observe(seconds)

    def answered(self, outcome: str) -> None:
        """One target's outcome of a publish (ok, error, timeout, lost), when it is
        known: before or after the publish's reply went back."""
        self.outcomes[outcome] += 1
