"""The ``/metrics`` endpoint in a loop of its own, with real TCP clients on 127.0.0.1:
what it answers, and what a bad client costs (oversized, slow, garbage, too many
connections, one that never reads): each gets an answer or is dropped, and the next
scrape is served.

The command path is a fake that answers ``metrics`` with a fixed text, at once or
when the test says. The loop runs on a fake clock: deadlines pass when the test
moves it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest

from procbus.master.control import Answer, Commands, Peer
from procbus.master.loop import EventLoop
from procbus.master.metrics_http import HTTPLimits, MetricsHTTP
from tests.helpers import FakeClock

TEXT = "# HELP up Up.\n# TYPE up gauge\nup 1.0\n"
LIMITS = HTTPLimits(max_request=1024, head_timeout=1.0, write_timeout=1.0, max_connections=4)


class FakeCommands:
    """Answers ``metrics`` with `TEXT` (or holds the answers while `hold`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], Peer]] = []
        self.hold = False
        self.held: list[Answer] = []
        self.text = TEXT

    def run(self, name: str, args: list[Any], kwargs: dict[str, Any], peer: Peer) -> Answer:
        self.calls.append((name, kwargs, peer))
        answer = Answer()
        if self.hold:
            self.held.append(answer)
        else:
            self.release(answer)
        return answer

    def release(self, answer: Answer) -> None:
        answer.resolve({"text": self.text, "content_type": "text/plain; version=0.0.4"})


@pytest.fixture
def commands() -> FakeCommands:
    return FakeCommands()


@pytest.fixture
def endpoint(loop: EventLoop, commands: FakeCommands) -> Iterator[MetricsHTTP]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    served = MetricsHTTP(loop, cast(Commands, commands), LIMITS)
    served.listen(listener)
    yield served
    served.close()


def address(endpoint: MetricsHTTP) -> tuple[str, int]:
    assert endpoint.listener is not None
    host, port = endpoint.listener.getsockname()[:2]
    return host, port


def pump(loop: EventLoop, until: Callable[[], bool], limit: float = 5.0) -> None:
    """Run the loop until `until()` (real time `limit` at most)."""
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, "the endpoint did not get there in time"
        loop.run_once(0.01)


class Client:
    """A raw, non-blocking HTTP client: what it sent, and all it received."""

    def __init__(self, endpoint: MetricsHTTP, data: bytes = b"") -> None:
        self.sock = socket.create_connection(address(endpoint), timeout=2)
        self.sock.setblocking(False)
        self.received = b""
        self.closed = False
        if data:
            self.sock.sendall(data)

    def poll(self) -> bool:
        """Read what arrived; True once the server closed the connection."""
        with contextlib.suppress(BlockingIOError):
            while not self.closed:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    self.closed = True
                self.received += chunk
        return self.closed

    def close(self) -> None:
        self.sock.close()

    @property
    def status(self) -> int:
        return int(self.received.split(b" ", 2)[1])


def get(loop: EventLoop, endpoint: MetricsHTTP, request: bytes) -> Client:
    client = Client(endpoint, request)
    pump(loop, client.poll)
    client.close()
    return client


GET = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def test_get_metrics_answers_the_scrape_text_and_closes(
    loop: EventLoop, endpoint: MetricsHTTP, commands: FakeCommands
) -> None:
    """Steps: ``GET /metrics``. Expected: 200 with the command's text, its content type,
    Content-Length and ``Connection: close``; the command ran as a read peer from http."""
    client = get(loop, endpoint, GET)
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert client.status == 200
    assert body == TEXT.encode()
    assert b"Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(TEXT)}".encode() in head
    assert b"Connection: close" in head
    ((name, options, peer),) = commands.calls
    assert (name, options) == ("metrics", {})
    assert peer.role is not None and peer.role.value == "read"
    assert peer.description.startswith("http 127.0.0.1:")
    assert endpoint.connections == {}


def test_accept_openmetrics_asks_for_openmetrics_and_head_gets_no_body(
    loop: EventLoop, endpoint: MetricsHTTP, commands: FakeCommands
) -> None:
    """Steps: ``HEAD /metrics`` with Prometheus's Accept header (and a bare-LF request).
    Expected: the command asked with ``openmetrics``; the headers without the body."""
    request = (
        b"HEAD /metrics?x=1 HTTP/1.0\n"
        b"accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.1\n\n"
    )
    client = get(loop, endpoint, request)
    assert client.status == 200
    assert client.received.endswith(b"\r\n\r\n")
    assert commands.calls[0][1] == {"openmetrics": True}


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\n\r\n", 404),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics SPDY/3\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
        (b"\x00\xff" * 100 + b"\n\n", 400),
    ],
    ids=["post", "root", "http0.9", "not-http", "bad-header", "tls", "binary"],
)
def test_a_request_that_is_not_a_metrics_get_gets_an_error_status(
    loop: EventLoop,
    endpoint: MetricsHTTP,
    commands: FakeCommands,
    request_bytes: bytes,
    status: int,
) -> None:
    """Steps: a wrong method, path, request line or header, TLS or binary garbage.
    Expected: the error status, no scrape; a GET after it is served."""
    assert get(loop, endpoint, request_bytes).status == status
    assert commands.calls == []
    assert get(loop, endpoint, GET).status == 200


def test_an_oversized_request_head_gets_431_without_reading_it_all(
    loop: EventLoop, endpoint: MetricsHTTP
) -> None:
    """Steps: a request line and 100 KiB of headers (the limit is 1 KiB). Expected: 431
    and the connection closed; the next GET is served."""
    client = Client(endpoint)
    client.sock.setblocking(True)
    with contextlib.suppress(OSError):  # the server may close before all is sent
        client.sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: " + b"a" * 100_000)
    client.sock.setblocking(False)
    pump(loop, client.poll)
    client.close()
    assert client.received.startswith(b"HTTP/1.1 431 ")
    assert get(loop, endpoint, GET).status == 200


def test_a_client_that_never_finishes_its_request_is_dropped_at_the_head_deadline(
    loop: EventLoop, endpoint: MetricsHTTP, clock: FakeClock
) -> None:
    """Steps: a client sends half a request and waits; the clock passes the head
    deadline. Expected: the connection is closed unanswered and counted; a GET is served."""
    slow = Client(endpoint, b"GET /metr")
    pump(loop, lambda: len(endpoint.connections) == 1)
    loop.run_once(0.05)  # the half request is read
    clock.advance(LIMITS.head_timeout + 0.1)
    pump(loop, slow.poll)
    slow.close()
    assert slow.received == b""
    assert endpoint.refused == 1
    assert get(loop, endpoint, GET).status == 200


def test_connections_past_the_limit_evict_idle_ones_and_a_scrape_is_still_served(
    loop: EventLoop, endpoint: MetricsHTTP
) -> None:
    """Steps: 12 connections that send nothing (the limit is 4), then a GET. Expected:
    never more than 4 connections open; the idle ones are closed, oldest first; the GET
    is answered 200."""
    idle = [Client(endpoint) for _ in range(12)]
    pump(loop, lambda: sum(client.poll() for client in idle) >= 8)
    assert len(endpoint.connections) <= LIMITS.max_connections
    assert get(loop, endpoint, GET).status == 200
    for client in idle:
        client.close()


def test_when_every_connection_waits_for_a_scrape_a_new_one_gets_503(
    loop: EventLoop, endpoint: MetricsHTTP, commands: FakeCommands
) -> None:
    """Steps: 4 GETs whose scrapes are held (the limit is 4), then a fifth. Expected:
    the fifth gets 503 at once; once the scrapes answer, the four get 200."""
    commands.hold = True
    waiting = [Client(endpoint, GET) for _ in range(4)]
    pump(loop, lambda: len(commands.held) == 4)
    assert get(loop, endpoint, GET).status == 503
    for answer in commands.held:
        commands.release(answer)
    pump(loop, lambda: all(client.poll() for client in waiting))
    assert [client.status for client in waiting] == [200] * 4
    for client in waiting:
        client.close()


def test_a_client_that_does_not_read_its_response_is_dropped_at_the_write_deadline(
    loop: EventLoop, endpoint: MetricsHTTP, commands: FakeCommands, clock: FakeClock
) -> None:
    """Steps: a GET whose response (32 MiB) is more than the socket buffers hold, from a
    client that never reads; the clock passes the write deadline. Expected: the
    connection is dropped; a GET after it is served."""
    commands.text = "x" * (32 << 20)
    stuck = Client(endpoint, GET)
    pump(loop, lambda: bool(commands.calls))
    loop.run_once(0.05)
    assert len(endpoint.connections) == 1
    clock.advance(LIMITS.write_timeout + 0.1)
    pump(loop, lambda: not endpoint.connections)
    stuck.close()
    commands.text = TEXT
    assert get(loop, endpoint, GET).status == 200


def test_a_scrape_answered_after_its_client_left_is_dropped_quietly(
    loop: EventLoop, endpoint: MetricsHTTP, commands: FakeCommands
) -> None:
    """Steps: a GET whose scrape is held; the endpoint is closed (the master stops);
    the scrape then answers. Expected: nothing is written, nothing raises."""
    commands.hold = True
    client = Client(endpoint, GET)
    pump(loop, lambda: bool(commands.held))
    endpoint.close()
    commands.release(commands.held[0])
    pump(loop, client.poll)
    client.close()
    assert client.received == b""
