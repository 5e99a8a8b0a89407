"""Process figures for status, stats and top, from psutil.

The monitor owns one ``psutil.Process`` handle per pid (CPU percent is measured
between two calls on the same handle) and reports numbers, or None when a
figure cannot be read: never placeholder strings. Readings are cached for
`max_age` seconds so that a burst of status requests costs one sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class ProcessFigures:
    pid: int
    cpu_percent: float | None
    rss: int | None
    uss: int | None
    threads: int | None
    fds: int | None
    connections: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ProcessMonitor:
    """Samples CPU and memory of the master and its workers."""

    def __init__(self, max_age: float = 1.0) -> None:
        self.max_age = max_age
        self._handles: dict[int, psutil.Process] = {}
        self._cache: dict[tuple[int, bool], tuple[float, ProcessFigures]] = {}

    def watch(self, pid: int) -> None:
        """Start measuring `pid` (primes the CPU counter)."""
        try:
            handle = psutil.Process(pid)
            handle.cpu_percent(None)
        except psutil.Error:
            return
        self._handles[pid] = handle

    def forget(self, pid: int) -> None:
        self._handles.pop(pid, None)
        self._cache.pop((pid, False), None)
        self._cache.pop((pid, True), None)

    def keep_only(self, pids: Iterable[int]) -> None:
        wanted = set(pids)
        for pid in list(self._handles):
            if pid not in wanted:
                self.forget(pid)

    def sample(self, pid: int, detailed: bool = False) -> ProcessFigures:
        """Figures of `pid`; `detailed` adds USS, fds and connections (costlier)."""
        now = time.monotonic()
        cached = self._cache.get((pid, detailed))
        if cached is not None and now - cached[0] < self.max_age:
            return cached[1]
        handle = self._handles.get(pid)
        if handle is None:
            self.watch(pid)
            handle = self._handles.get(pid)
        figures = _read(pid, handle, detailed)
        self._cache[(pid, detailed)] = (now, figures)
        return figures


def _read(pid: int, handle: psutil.Process | None, detailed: bool) -> ProcessFigures:
    if handle is None:
        return ProcessFigures(pid, None, None, None, None, None, None)
    cpu = rss = uss = threads = fds = connections = None
    try:
        with handle.oneshot():
            cpu = handle.cpu_percent(None)
            rss = handle.memory_info().rss
            threads = handle.num_threads()
            if detailed:
                fds = handle.num_fds()
                uss = handle.memory_full_info().uss
                connections = len(handle.net_connections(kind="inet"))
    except psutil.Error:
        pass
    return ProcessFigures(pid, cpu, rss, uss, threads, fds, connections)
