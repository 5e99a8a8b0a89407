"""How a tree behaves: the settings a `Master` is given, and the margins it waits with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from procbus.master.planner import SURGE, Supervision

WAIT_MARGIN: Final = 5.0
"""Seconds a job waits beyond a deadline the pool enforces itself (the pool acts
at the deadline; the margin is for what it did to be seen)."""


@dataclass(frozen=True)
class TreeSettings:
    """How the tree behaves (all durations in seconds)."""

    workers: int = 2
    heartbeat_interval: float = 1.0
    publish_timeout: float = 30.0
    supervision: Supervision = field(default_factory=Supervision)
    stats_interval: float = 1.0
    """Seconds between ``stats`` events, sampled only while someone subscribes."""
    metrics_timeout: float = 2.0
    """Seconds a metrics scrape waits for the workers' answers (the late are left out)."""
    reload_batch: int = SURGE
    """Workers a reload replaces at a time when not told (0: the surge, every one at
    once; see `procbus.master.planner.Rollout`)."""

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.reload_batch < 0:
            raise ValueError(f"reload_batch must be >= 0, got {self.reload_batch}")
        for name in ("stats_interval", "metrics_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def stop_limit(policy: Supervision) -> float:
    """How long draining workers may take, at most, before the pool has killed them."""
    return policy.graceful_timeout + policy.abort_grace + WAIT_MARGIN


def boot_limit(policy: Supervision) -> float:
    """How long a new worker may take, at most, before the pool has killed it."""
    return policy.boot_timeout + WAIT_MARGIN
