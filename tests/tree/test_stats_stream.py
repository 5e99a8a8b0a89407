"""The stats stream: the master samples its processes only while someone listens.

The event socket is an XPUB: a subscription to exactly ``ev.stats`` starts the
sampling (a ``stats`` event every ``stats_interval``), the last such
subscriber leaving stops it. A watcher of every event (prefix ``ev.``) does
not start it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from procbus import protocol
from procbus.watch import receive_event
from tests.helpers import wait_until
from tests.processes import MasterProcess, running_master

pytestmark = pytest.mark.slow

INTERVAL = 0.2
QUIET = 5 * INTERVAL
"""No stats event for this long: nobody samples."""


class Subscribers:
    """SUB sockets on a master's event stream, tracked and closed at teardown."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[bytes]] = []

    def open(self, master: MasterProcess, topic: bytes) -> zmq.Socket[bytes]:
        socket = self.context.socket(zmq.SUB)
        self.sockets.append(socket)
        socket.linger = 0
        socket.subscribe(topic)
        socket.connect(master.status()["master"]["endpoints"]["events"])
        return socket

    def close(self) -> None:
        for socket in self.sockets:
            socket.close(0)
        self.context.term()


@pytest.fixture
def subscribers() -> Iterator[Subscribers]:
    tracked = Subscribers()
    try:
        yield tracked
    finally:
        tracked.close()


def next_event(socket: zmq.Socket[bytes], name: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        event = receive_event(socket, max(1, int(left * 1000)))
        if event is not None and event["event"] == name:
            return event
    raise AssertionError(f"no {name} event within {timeout}s")


def stats_stop(socket: zmq.Socket[bytes], timeout: float = 10) -> None:
    """Wait until `socket` has seen no stats event for `QUIET` seconds."""
    last = time.monotonic()
    deadline = last + timeout
    while time.monotonic() - last < QUIET:
        assert time.monotonic() < deadline, f"stats events still flow after {timeout}s"
        event = receive_event(socket, 50)
        if event is not None and event["event"] == "stats":
            last = time.monotonic()


def connected(master: MasterProcess, socket: zmq.Socket[bytes]) -> None:
    """Wait until a prefix subscriber receives events (each ping is audited on the stream)."""

    def command_seen() -> bool:
        master.call("ping")
        event = receive_event(socket, 50)
        return event is not None and event["event"] == "command"

    wait_until(command_seen, 10)


def test_stats_are_sampled_only_while_a_stats_subscriber_listens(
    subscribers: Subscribers,
) -> None:
    """Steps: a watcher of every event connects; then a stats subscriber; then it
    leaves; then another one comes.
    Expected: no stats events while only the watcher listens; with the stats
    subscriber, stats events (the ``ctl stats`` document: the master and every
    worker with figures and counters) reach both; after it left they stop; a new
    subscriber starts them again."""
    with running_master(workers=2, stats_interval=INTERVAL) as master:
        watcher = subscribers.open(master, protocol.EVENT_TOPIC)
        connected(master, watcher)
        stats_stop(watcher)

        stats = subscribers.open(master, protocol.STATS_TOPIC)
        sample = next_event(stats, "stats")
        assert sample["master"]["pid"] == master.pid
        assert [w["id"] for w in sample["workers"]] == [1, 2]
        for worker in sample["workers"]:
            assert {"pid", "cpu_percent", "rss", "uss", "threads", "fds", "connections"} <= set(
                worker
            )
            assert worker["counters"]["publishes"] >= 0
        next_event(watcher, "stats")

        stats.close(0)
        stats_stop(watcher)

        again = subscribers.open(master, protocol.STATS_TOPIC)
        next_event(again, "stats")


def test_stats_go_on_until_the_last_stats_subscriber_leaves(subscribers: Subscribers) -> None:
    """Steps: two stats subscribers; the first leaves. Expected: the second keeps
    receiving a stats event about every interval; once it leaves too, a watcher sees
    none."""
    with running_master(workers=1, stats_interval=INTERVAL) as master:
        watcher = subscribers.open(master, protocol.EVENT_TOPIC)
        connected(master, watcher)
        first = subscribers.open(master, protocol.STATS_TOPIC)
        second = subscribers.open(master, protocol.STATS_TOPIC)
        next_event(first, "stats")
        next_event(second, "stats")
        first.close(0)
        started = time.monotonic()
        for _ in range(5):
            next_event(second, "stats", timeout=5)
        assert time.monotonic() - started < 5
        second.close(0)
        stats_stop(watcher)
