"""The master's RSS and open fds over the soak, per master.

A restart re-executes the master (same pid, next generation) and an upgrade
replaces it (new pid): each (pid, generation) is a master life of its own,
compared only with itself, from its first sample (taken within a second of
the soak seeing it answer) to its last. Growth within a life beyond
`RSS_NOISE` / `FD_NOISE` is reported as growth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from fault_soak.tree import Tree

RSS_NOISE: Final = 4 * 1024 * 1024
"""Bytes of RSS growth within one master life that count as noise (allocator, caches)."""
RSS_NOISE_FRACTION: Final = 0.10
FD_NOISE: Final = 2
"""Open fds more than at the first sample that count as noise (a control
connection or a pipe that comes and goes)."""


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int
    fds: int


@dataclass
class MasterLife:
    pid: int
    generation: int
    first: Sample
    last: Sample
    samples: int = 1

    @property
    def rss_growth(self) -> int:
        return self.last.rss - self.first.rss

    @property
    def fd_growth(self) -> int:
        return self.last.fds - self.first.fds

    @property
    def grew(self) -> bool:
        rss_noise = max(RSS_NOISE, int(self.first.rss * RSS_NOISE_FRACTION))
        return self.rss_growth > rss_noise or self.fd_growth > FD_NOISE

    def to_dict(self, origin: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "generation": self.generation,
            "first": {"at": self.first.at - origin, "rss": self.first.rss, "fds": self.first.fds},
            "last": {"at": self.last.at - origin, "rss": self.last.rss, "fds": self.last.fds},
            "samples": self.samples,
            "grew": self.grew,
        }


class Vitals:
    def __init__(self) -> None:
        self.lives: list[MasterLife] = []

    def sample(self, tree: Tree, at: float) -> None:
        """Sample the master answering now (nothing when none answers)."""
        answer = tree.ping(1.0)
        if answer is None:
            return
        pid, generation = answer
        figures = tree.vitals(pid)
        if figures is None:
            return
        sample = Sample(at, *figures)
        for life in self.lives:
            if (life.pid, life.generation) == (pid, generation):
                life.last = sample
                life.samples += 1
                return
        self.lives.append(MasterLife(pid, generation, sample, sample))
