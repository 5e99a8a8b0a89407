"""The master's RSS and open fds over the soak, per master.

A restart re-executes the master (same pid, next generation) and an upgrade
replaces it (new pid): each (pid, generation) is a master life of its own,
compared only with itself. The master holds fds per connected worker, so a
life's last sample is compared with its first sample taken with as many
children and as many running workers (the soak scales the tree back to its
first size before the end); without one it is not compared, and the report
says so. Samples come from ``status`` (pid, generation,
worker states) and psutil (RSS, fds, children). Growth beyond
`RSS_NOISE` / `FD_NOISE` is reported as growth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import psutil

from fault_soak.tree import Tree

RSS_NOISE: Final = 4 * 1024 * 1024
"""Bytes of RSS growth within one master life that count as noise (allocator, caches)."""
RSS_NOISE_FRACTION: Final = 0.10
FD_NOISE: Final = 2
"""Open fds more than at the baseline that count as noise (a control
connection or a pipe that comes and goes)."""


@dataclass(frozen=True)
class Sample:
    at: float
    rss: int
    fds: int
    children: int
    running: int
    """Workers the master counts as running."""

    @property
    def size(self) -> tuple[int, int]:
        return self.children, self.running

    def to_dict(self, origin: float) -> dict[str, Any]:
        return {
            "at": round(self.at - origin, 2),
            "rss": self.rss,
            "fds": self.fds,
            "children": self.children,
            "running": self.running,
        }


@dataclass
class MasterLife:
    pid: int
    generation: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def first(self) -> Sample:
        return self.samples[0]

    @property
    def last(self) -> Sample:
        return self.samples[-1]

    @property
    def baseline(self) -> Sample | None:
        """The first sample before the last of the same size as the last (None: no such
        sample, this life is not compared)."""
        last = self.last
        return next((s for s in self.samples[:-1] if s.size == last.size), None)

    @property
    def rss_growth(self) -> int | None:
        base = self.baseline
        return None if base is None else self.last.rss - base.rss

    @property
    def fd_growth(self) -> int | None:
        base = self.baseline
        return None if base is None else self.last.fds - base.fds

    @property
    def grew(self) -> bool:
        base, rss, fds = self.baseline, self.rss_growth, self.fd_growth
        if base is None or rss is None or fds is None:
            return False
        return rss > max(RSS_NOISE, int(base.rss * RSS_NOISE_FRACTION)) or fds > FD_NOISE

    def to_dict(self, origin: float) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "generation": self.generation,
            "first": self.first.to_dict(origin),
            "baseline": self.baseline.to_dict(origin) if self.baseline else None,
            "rss_growth": self.rss_growth,
            "fd_growth": self.fd_growth,
            "last": self.last.to_dict(origin),
            "samples": len(self.samples),
            "trend": self.trend(),
            "grew": self.grew,
        }

    def trend(self, points: int = 5) -> list[tuple[float, int, int]]:
        """(seconds since the first sample, RSS, fds) at evenly spaced samples: a step
        (the allocator's high-water mark after a big message) from a steady climb (a leak)."""
        last = len(self.samples) - 1
        picks = sorted({round(i * last / (points - 1)) for i in range(points)}) if last else [0]
        first = self.first.at
        return [
            (round(self.samples[i].at - first, 1), self.samples[i].rss, self.samples[i].fds)
            for i in picks
        ]


class Vitals:
    def __init__(self) -> None:
        self.lives: list[MasterLife] = []

    def sample(self, tree: Tree, at: float) -> None:
        """Sample the master answering now (nothing when none answers)."""
        status = tree.status(2.0)
        if status is None:
            return
        pid, generation = int(status["master"]["pid"]), int(status["master"]["generation"])
        running = sum(1 for w in status["workers"] if w["state"] == "running")
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                rss, fds = proc.memory_info().rss, proc.num_fds()
            sample = Sample(at, rss, fds, len(proc.children()), running)
        except psutil.Error:
            return
        if not self.lives or (self.lives[-1].pid, self.lives[-1].generation) != (pid, generation):
            self.lives.append(MasterLife(pid, generation))
        self.lives[-1].samples.append(sample)
