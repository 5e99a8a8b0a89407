"""Process figures for status, stats and top, from psutil.

The monitor owns one ``psutil.Process`` handle per pid (CPU percent is measured
between two calls on the same handle, so a handle is primed when a worker is
forked and kept until it is reaped) and reports numbers, or None when a figure
cannot be read (or has not been measured yet): never placeholder strings.

- A CPU percent is measured over at least `MIN_CPU_WINDOW` (over a few
  milliseconds the kernel's clock ticks make it noise); asked sooner, the
  monitor repeats the last figure.
- Readings are cached for `max_age` seconds, so that a burst of status
  requests costs one sample.
- A detailed sample adds open fds, USS and inet connections. The last two are
  costly and change slowly, so they are refreshed for every process together
  at most every `slow_max_age` seconds and repeated in between: USS walks the
  process's page tables (about 1 ms per worker), and counting connections
  means knowing which sockets are inet ones. psutil reads the kernel's whole
  inet tables (``/proc/net/tcp`` and friends) for every process, and on a busy
  host those list every socket in TIME_WAIT too: tens of thousands after a load
  test, 0.1 to 1 s of the master's time per read. On Linux the monitor asks
  sock_diag once per refresh for the sockets some process holds (the kernel
  leaves TIME_WAIT out) and matches each process's socket inodes against them,
  falling back to one read of the ``/proc`` tables where netlink is refused.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import psutil

from procbus.master.sockdiag import dump, inet_request, sock_diag

MIN_CPU_WINDOW: Final = 0.1
"""Seconds, at least, that a CPU percent is measured over."""
SLOW_MAX_AGE: Final = 5.0
"""Seconds USS and connection counts are repeated before they are measured again."""
_INET_TABLES: Final = ("tcp", "tcp6", "udp", "udp6")
"""What psutil's ``kind="inet"`` covers."""

# Linux sock_diag (linux/sock_diag.h, linux/inet_diag.h).
_DIAG_INODE_OFFSET: Final = 68
"""Of ``idiag_inode`` in ``struct inet_diag_msg``."""
_TCP_SYN_RECV, _TCP_TIME_WAIT, _TCP_NEW_SYN_RECV = 3, 6, 12
_ALL_STATES: Final = 0xFFFFFFFF
_TCP_HELD_STATES: Final = _ALL_STATES & ~(
    (1 << _TCP_SYN_RECV) | (1 << _TCP_TIME_WAIT) | (1 << _TCP_NEW_SYN_RECV)
)
_LINUX: Final = sys.platform.startswith("linux")


@dataclass(frozen=True)
class ProcessFigures:
    pid: int
    cpu_percent: float | None
    rss: int | None
    uss: int | None
    threads: int | None
    fds: int | None
    connections: int | None
    cpu_seconds: float | None = None
    """User and system CPU time used since the process started."""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # shallow: every field is a number (asdict deep-copies)


@dataclass
class _Handle:
    process: psutil.Process
    cpu_since: float
    """When the current CPU measuring window opened."""
    cpu_percent: float | None = None
    """The figure of the last window that closed."""
    uss: int | None = None
    connections: int | None = None


@dataclass(frozen=True)
class _Reading:
    at: float
    detailed: bool
    figures: ProcessFigures


class ProcessMonitor:
    """Samples CPU, memory, threads, fds and connections of the master and its workers."""

    def __init__(
        self,
        max_age: float = 1.0,
        slow_max_age: float = SLOW_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.slow_max_age = slow_max_age
        self.clock = clock
        self._handles: dict[int, _Handle] = {}
        self._cache: dict[int, _Reading] = {}
        self._slow_at: float | None = None

    def watch(self, pid: int) -> None:
        """Start measuring `pid` (primes the CPU counter)."""
        if pid in self._handles:
            return
        try:
            process = psutil.Process(pid)
            process.cpu_percent(None)
        except (psutil.Error, OSError):  # gone, or out of file descriptors: no figures
            return
        self._handles[pid] = _Handle(process, self.clock())

    def forget(self, pid: int) -> None:
        self._handles.pop(pid, None)
        self._cache.pop(pid, None)

    def keep_only(self, pids: Iterable[int]) -> None:
        wanted = set(pids)
        for pid in [*self._handles, *self._cache]:
            if pid not in wanted:
                self.forget(pid)

    def rss(self, pids: Iterable[int]) -> dict[int, int | None]:
        """The resident set size of each pid now, in bytes (None: it cannot be read).

        Uncached, and nothing else is read (``/proc/PID/statm`` on Linux): these are
        the samples memory-aware recycling decides on, each a measurement of its own.
        """
        found: dict[int, int | None] = {}
        for pid in pids:
            self.watch(pid)
            handle = self._handles.get(pid)
            try:
                found[pid] = handle.process.memory_info().rss if handle is not None else None
            except (psutil.Error, OSError):  # gone, or out of file descriptors
                found[pid] = None
        return found

    def sample(self, pid: int, detailed: bool = False) -> ProcessFigures:
        """Figures of `pid`; `detailed` adds fds, USS and connections (costlier)."""
        return self.sample_many([pid], detailed)[pid]

    def sample_many(
        self, pids: Iterable[int], detailed: bool = False
    ) -> dict[int, ProcessFigures]:
        """Figures of every pid in one pass."""
        now = self.clock()
        found: dict[int, ProcessFigures] = {}
        stale: list[int] = []
        for pid in pids:
            reading = self._cache.get(pid)
            if (
                reading is not None
                and now - reading.at < self.max_age
                and (reading.detailed or not detailed)
            ):
                found[pid] = reading.figures
            else:
                stale.append(pid)
        slow = detailed and (self._slow_at is None or now - self._slow_at >= self.slow_max_age)
        try:
            inet = _inet_inodes() if slow and _LINUX and stale else None
        except OSError:  # out of file descriptors
            inet = None
        if slow and stale:
            self._slow_at = now
        for pid in stale:
            self.watch(pid)
            figures = _read(
                pid, self._handles.get(pid), detailed=detailed, slow=slow, inet=inet, now=now
            )
            self._cache[pid] = _Reading(now, detailed, figures)
            found[pid] = figures
        return found


def _read(
    pid: int,
    handle: _Handle | None,
    *,
    detailed: bool,
    slow: bool,
    inet: set[int] | None,
    now: float,
) -> ProcessFigures:
    if handle is None:
        return ProcessFigures(pid, None, None, None, None, None, None)
    rss = threads = fds = None
    cpu_seconds: float | None = None
    process = handle.process
    try:
        with process.oneshot():
            if now - handle.cpu_since >= MIN_CPU_WINDOW:
                handle.cpu_percent = process.cpu_percent(None)
                handle.cpu_since = now
            rss = process.memory_info().rss
            times = process.cpu_times()
            cpu_seconds = times.user + times.system
            threads = process.num_threads()
            if detailed:
                fds = process.num_fds()
            if slow:
                handle.uss = process.memory_full_info().uss
                handle.connections = (
                    _inet_sockets(pid, inet)
                    if inet is not None
                    else len(process.net_connections(kind="inet"))
                )
    except (psutil.Error, OSError):  # gone, or out of file descriptors: figures missing
        pass
    return ProcessFigures(
        pid,
        handle.cpu_percent,
        rss,
        handle.uss if detailed else None,
        threads,
        fds,
        handle.connections if detailed else None,
        cpu_seconds,
    )


def _inet_inodes() -> set[int]:
    """Inodes of the TCP and UDP sockets (v4 and v6) held open in this network namespace."""
    try:
        return _inet_inodes_from_netlink()
    except OSError:  # no sock_diag here (an old kernel, a seccomp filter)
        return _inet_inodes_from_proc()


def _inet_inodes_from_netlink() -> set[int]:
    """Ask the kernel's sock_diag for every TCP and UDP socket but TIME_WAIT and SYN_RECV.

    Those two are the bulk of a busy host's tables (hundreds of thousands after
    a load test) and no process holds them (their inode is 0); filtered in the
    kernel, they cost nothing, where ``/proc/net/tcp`` prints every one.
    """
    inodes: set[int] = set()
    with sock_diag() as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            for protocol, states in (
                (socket.IPPROTO_TCP, _TCP_HELD_STATES),
                (socket.IPPROTO_UDP, _ALL_STATES),
            ):
                diag.send(inet_request(family, protocol, states))
                for payload in dump(diag):
                    if len(payload) < _DIAG_INODE_OFFSET + 4:
                        raise OSError(0, "sock_diag: short message")
                    inodes.add(struct.unpack_from("=I", payload, _DIAG_INODE_OFFSET)[0])
    inodes.discard(0)
    return inodes


def _inet_inodes_from_proc() -> set[int]:
    """The same from ``/proc/net/{tcp,tcp6,udp,udp6}`` (every socket of the host)."""
    inodes: set[int] = set()
    for table in _INET_TABLES:
        try:
            with open(f"/proc/self/net/{table}", "rb") as handle:
                lines = handle.read().splitlines()[1:]  # under the header
        except OSError:
            continue
        for line in lines:
            fields = line.split(None, 10)
            if len(fields) > 9 and fields[9].isdigit():
                inodes.add(int(fields[9]))
    inodes.discard(0)  # TIME_WAIT and other sockets no process holds
    return inodes


def _inet_sockets(pid: int, inet: set[int]) -> int | None:
    """How many of `pid`'s open fds are sockets listed in `inet`."""
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    sockets: set[int] = set()  # a socket on two fds is one connection
    for name in names:
        try:
            target = os.readlink(f"{directory}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            sockets.add(int(target[8:-1]))
    return len(sockets & inet)
