"""The process monitor: numbers or None, CPU windows, caching, slow figures."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator

import psutil
import pytest

from procbus.master import stats
from procbus.master.stats import MIN_CPU_WINDOW, ProcessMonitor
from tests.helpers import FakeClock


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening TCP socket of this process (one inet connection)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock
    finally:
        sock.close()


def unused_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def test_own_process_figures_are_numbers(listener: socket.socket) -> None:
    """Steps: a detailed sample of this process, which listens on a TCP socket.
    Expected: RSS, USS, threads, fds and connections are numbers; fds and
    connections agree with psutil's own counts."""
    monitor = ProcessMonitor()
    figures = monitor.sample(os.getpid(), detailed=True)
    assert figures.pid == os.getpid()
    assert isinstance(figures.rss, int) and figures.rss > 0
    assert isinstance(figures.uss, int) and 0 < figures.uss <= figures.rss
    assert isinstance(figures.threads, int) and figures.threads >= 1
    process = psutil.Process()
    assert isinstance(figures.fds, int) and abs(figures.fds - process.num_fds()) <= 2
    assert figures.connections == len(process.net_connections(kind="inet")) >= 1
    assert set(figures.to_dict()) == {
        "pid",
        "cpu_percent",
        "rss",
        "uss",
        "threads",
        "fds",
        "connections",
        "cpu_seconds",
    }
    assert isinstance(figures.cpu_seconds, float) and figures.cpu_seconds > 0


def test_a_plain_sample_leaves_out_the_costly_figures() -> None:
    """Steps: a sample that is not detailed. Expected: USS, fds and connections are None."""
    figures = ProcessMonitor().sample(os.getpid())
    assert figures.rss is not None
    assert (figures.uss, figures.fds, figures.connections) == (None, None, None)


def test_a_process_that_does_not_exist_reports_none() -> None:
    """Steps: sample a pid no process has. Expected: every figure is None."""
    pid = unused_pid()
    figures = ProcessMonitor().sample(pid, detailed=True)
    assert figures.to_dict() == dict.fromkeys(figures.to_dict(), None) | {"pid": pid}


def test_rss_reads_are_fresh_numbers_and_none_for_a_missing_process(clock: FakeClock) -> None:
    """Steps: a monitor whose readings are cached for a long time samples this process;
    the process grows by 64 MiB (touched); ask the RSS of it and of a missing pid, twice.
    Expected: this process's RSS is an int that follows the growth at once (RSS samples
    are not the cached readings), the missing pid's is None."""
    monitor = ProcessMonitor(max_age=3600, clock=clock)
    cached = monitor.sample(os.getpid()).rss
    assert cached is not None
    ballast = b"x" * (64 * 2**20)
    missing = unused_pid()
    first = monitor.rss([os.getpid(), missing])
    assert first[missing] is None
    grown = first[os.getpid()]
    assert isinstance(grown, int) and grown >= cached + 32 * 2**20
    assert monitor.sample(os.getpid()).rss == cached
    del ballast
    assert monitor.rss([missing]) == {missing: None}


def test_cpu_percent_is_none_until_a_window_of_measure_passed(clock: FakeClock) -> None:
    """Steps: watch this process; sample at once; then after MIN_CPU_WINDOW.
    Expected: None first (nothing measured yet), a float >= 0 after."""
    monitor = ProcessMonitor(max_age=0, clock=clock)
    monitor.watch(os.getpid())
    assert monitor.sample(os.getpid()).cpu_percent is None
    clock.now += MIN_CPU_WINDOW
    cpu = monitor.sample(os.getpid()).cpu_percent
    assert isinstance(cpu, float) and cpu >= 0


def test_readings_are_cached_for_max_age(clock: FakeClock) -> None:
    """Steps: sample twice within max_age, then once after it. Expected: the same
    reading twice, a new one after; a detailed request is not served by a plain reading."""
    monitor = ProcessMonitor(max_age=1.0, clock=clock)
    first = monitor.sample(os.getpid())
    assert monitor.sample(os.getpid()) is first
    detailed = monitor.sample(os.getpid(), detailed=True)
    assert detailed is not first and detailed.fds is not None
    assert monitor.sample(os.getpid()) is detailed
    clock.now += 1.0
    assert monitor.sample(os.getpid()) is not detailed


def test_connections_are_recounted_only_every_slow_max_age(clock: FakeClock) -> None:
    """Steps: a detailed sample; open a listening socket; sample again at once and
    after slow_max_age. Expected: the new socket is counted only after slow_max_age;
    fds are counted every time."""
    monitor = ProcessMonitor(max_age=0, slow_max_age=5.0, clock=clock)
    before = monitor.sample(os.getpid(), detailed=True)
    assert before.connections is not None and before.fds is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        clock.now += 1.0
        soon = monitor.sample(os.getpid(), detailed=True)
        assert soon.connections == before.connections
        assert soon.fds == before.fds + 1
        clock.now += 5.0
        later = monitor.sample(os.getpid(), detailed=True)
        assert later.connections == before.connections + 1
    finally:
        sock.close()


def test_keep_only_forgets_the_other_pids(clock: FakeClock) -> None:
    """Steps: sample this process, keep_only another pid, sample again at once.
    Expected: a fresh reading (the cache was dropped with the handle)."""
    monitor = ProcessMonitor(max_age=10, clock=clock)
    first = monitor.sample(os.getpid())
    monitor.keep_only([unused_pid()])
    assert monitor.sample(os.getpid()) is not first


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sock_diag")


@linux_only
def test_sock_diag_and_proc_tables_find_the_same_held_sockets(listener: socket.socket) -> None:
    """Steps: this process listens on TCP, holds a connection both ways and a bound
    UDP6 socket; read the inet inodes from sock_diag and from /proc/net.
    Expected: both list all four sockets."""
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        udp.bind(("::1", 0))
        held = {os.fstat(s.fileno()).st_ino for s in (listener, client, server, udp)}
        assert held <= stats._inet_inodes_from_netlink()
        assert held <= stats._inet_inodes_from_proc()
    finally:
        for sock in (client, server, udp):
            sock.close()


@linux_only
def test_connections_are_counted_without_sock_diag(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: make sock_diag fail (as under a seccomp filter), sample this process.
    Expected: the /proc tables count its listening socket all the same."""

    def refused() -> set[int]:
        raise PermissionError(13, "sock_diag refused")

    monkeypatch.setattr(stats, "_inet_inodes_from_netlink", refused)
    figures = ProcessMonitor().sample(os.getpid(), detailed=True)
    assert figures.connections == len(psutil.Process().net_connections(kind="inet")) >= 1


def test_out_of_file_descriptors_means_no_figures_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """psutil opening /proc fails with EMFILE (the master ran out of descriptors just
    after a fork). Expected: `watch` and `sample_many` raise nothing and report None
    figures, so that a worker forked at that moment is still supervised."""

    def no_descriptors(pid: int) -> psutil.Process:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(stats.psutil, "Process", no_descriptors)
    monitor = ProcessMonitor()
    monitor.watch(os.getpid())
    figures = monitor.sample_many([os.getpid()], detailed=True)[os.getpid()]
    assert (figures.rss, figures.cpu_percent, figures.fds) == (None, None, None)
