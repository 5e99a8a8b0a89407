"""``GET /metrics``: the scrape endpoint, served in the master's own loop.

Why here, and not in a thread or a helper process: the master forks, and a
thread holding a lock at fork time is how pre-fork servers deadlock, so the
master has none; a helper process would need supervising, a way to reach the
master (the control socket) and its own hand-over across ``restart`` and
``upgrade``. In the loop, a scrape is one more reader beside the control
socket: a plain non-blocking listening socket, and one non-blocking socket
per connection, served after the workers' and the control sockets
(`PRIORITY`). The listening socket is one of the name's (like the control
socket): it is bound once, kept across ``restart``'s exec and handed to an
``upgrade``'s successor, which serves it once it took the name over, so a
scrape never meets a refused connection nor two masters' figures in turn.

A request runs the ``metrics`` command through the one command path (peer
``http HOST:PORT``, read role; audited like any command), and its answer is
written when the scrape completes: the loop never waits for it.

Whoever can connect may send anything, so everything is bounded
(`HTTPLimits`): the request head's size and the time to send it, the time to
take the response, and the connections at once (a new one past the limit
evicts the oldest that has not sent its request yet, else is refused). Only
``GET`` and ``HEAD`` of ``/metrics`` are served, with ``Connection: close``;
the request line and headers are read just enough to find the path and the
``Accept`` header (OpenMetrics when the scraper asks for it). The endpoint
is unauthenticated: bind it to 127.0.0.1 or a private address (README,
"Security").
"""

from __future__ import annotations

import contextlib
import enum
import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Final

from procbus.commands import Role
from procbus.errors import ConfigError, StartupError
from procbus.master import listeners, sockets
from procbus.master.control import Answer, Commands, Peer
from procbus.master.loop import EventLoop, Timer
from procbus.master.throttle import LogThrottle

log = logging.getLogger("procbus.metrics")

PRIORITY: Final = 3
"""After the workers' sockets (0), the authenticator (1) and the control socket (2)."""
BACKLOG: Final = 64
ACCEPT_PAUSE: Final = 0.5
"""Seconds the endpoint stops accepting when the process is out of descriptors
(the waiting connection would keep the listener readable: a busy loop)."""
_SEND_FLAGS: Final = getattr(socket, "MSG_NOSIGNAL", 0)
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class HTTPLimits:
    """What one client may cost the master."""

    max_request: int = 8192
    """Bytes of a request head (its request line and headers)."""
    head_timeout: float = 5.0
    """Seconds from the connection to the end of its request head."""
    write_timeout: float = 10.0
    """Seconds to take the whole response once it is ready."""
    max_connections: int = 16
    accept_batch: int = 64
    """Connections accepted per loop turn, at most."""


class _Stage(enum.Enum):
    READING = "reading"
    """Waiting for the request head."""
    SCRAPING = "scraping"
    """The scrape runs; nothing is read or written."""
    WRITING = "writing"


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    peer: str
    opened: float
    stage: _Stage = _Stage.READING
    received: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    timer: Timer | None = None
    closed: bool = False


class MetricsHTTP:
    """The ``/metrics`` endpoint on one listening socket (see the module docstring)."""

    def __init__(
        self, loop: EventLoop, commands: Commands, limits: HTTPLimits | None = None
    ) -> None:
        self.loop = loop
        self.commands = commands
        self.limits = limits or HTTPLimits()
        self.listener: socket.socket | None = None
        self.connections: dict[int, _Connection] = {}
        self.requests = 0
        """Requests answered (any status)."""
        self.refused = 0
        """Connections closed unanswered: over the limit, too slow, evicted."""
        self._throttle = LogThrottle(log, "bad metrics requests")

    def listen(self, sock: socket.socket) -> None:
        """Serve on `sock`, a listening TCP socket (the endpoint owns it from now on)."""
        sock.setblocking(False)
        self.listener = sock
        self.loop.add_reader(sock.fileno(), self._accept, priority=PRIORITY)

    def close(self) -> None:
        """Stop listening and drop every connection."""
        for connection in list(self.connections.values()):
            self._close(connection)
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None

    # -- connections ----------------------------------------------------------------

    def _accept(self) -> None:
        listener = self.listener
        if listener is None:
            return
        for _ in range(self.limits.accept_batch):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._throttle.warn("metrics endpoint cannot accept: %s", exc)
                    self._pause(listener)
                return
            sock.setblocking(False)
            if len(self.connections) >= self.limits.max_connections and not self._evict():
                self.refused += 1
                self._throttle.warn("metrics endpoint: %d connections already", len(self))
                with contextlib.suppress(OSError):
                    sock.send(_response(503, b"too many connections\n"), _SEND_FLAGS)
                sock.close()
                continue
            self._open(sock, address)

    def _open(self, sock: socket.socket, address: object) -> None:
        connection = _Connection(sock, _describe(address), self.loop.clock())
        self.connections[sock.fileno()] = connection
        connection.timer = self.loop.call_later(
            self.limits.head_timeout, lambda: self._expire(connection)
        )
        self.loop.add_reader(sock.fileno(), lambda: self._read(connection), priority=PRIORITY)

    def __len__(self) -> int:
        return len(self.connections)

    def _pause(self, listener: socket.socket) -> None:
        self.loop.remove_reader(listener.fileno())

        def resume() -> None:
            if self.listener is listener:
                self.loop.add_reader(listener.fileno(), self._accept, priority=PRIORITY)

        self.loop.call_later(ACCEPT_PAUSE, resume)

    def _evict(self) -> bool:
        """Close the oldest connection still sending its request; False if none is."""
        waiting = [c for c in self.connections.values() if c.stage is _Stage.READING]
        if not waiting:
            return False
        self.refused += 1
        self._close(min(waiting, key=lambda c: c.opened))
        return True

    def _expire(self, connection: _Connection) -> None:
        if not connection.closed:
            self.refused += 1
            self._throttle.warn(
                "metrics endpoint: %s too slow (%s)", connection.peer, connection.stage.value
            )
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        if connection.timer is not None:
            connection.timer.cancel()
        fd = connection.sock.fileno()
        if fd >= 0:
            self.loop.remove_reader(fd)
            self.connections.pop(fd, None)
        connection.sock.close()

    # -- the request ------------------------------------------------------------------

    def _read(self, connection: _Connection) -> None:
        room = self.limits.max_request - len(connection.received)
        try:
            data = connection.sock.recv(max(room, 0) + 1)
        except BlockingIOError:
            return
        except OSError:
            self._close(connection)
            return
        if not data:  # closed before a whole request
            self._close(connection)
            return
        connection.received += data
        end = connection.received.find(b"\r\n\r\n")
        if end < 0:
            end = connection.received.find(b"\n\n")
        if end < 0 or end > self.limits.max_request:
            if len(connection.received) > self.limits.max_request:
                self._bad(connection, 431, "request head too large")
            return
        head = bytes(connection.received[:end]).decode("latin-1")
        self._handle(connection, head)

    def _handle(self, connection: _Connection, head: str) -> None:
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._bad(connection, 400, "not an HTTP/1 request line")
            return
        method, target, _version = parts
        accept = ""
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                self._bad(connection, 400, "malformed header line")
                return
            if name.lower() == "accept":
                accept = value.strip()
        if method not in ("GET", "HEAD"):
            self._reply(connection, 405, b"only GET and HEAD\n", extra="Allow: GET, HEAD\r\n")
            return
        if target.partition("?")[0] != "/metrics":
            self._reply(connection, 404, b"see /metrics\n")
            return
        connection.stage = _Stage.SCRAPING
        if connection.timer is not None:
            connection.timer.cancel()
        self.loop.remove_reader(connection.sock.fileno())
        options = {"openmetrics": True} if wants_openmetrics(accept) else {}
        answer = self.commands.run(
            "metrics", [], options, Peer(Role.READ, f"http {connection.peer}")
        )
        answer.then(lambda done: self._answered(connection, done, head_only=method == "HEAD"))

    def _answered(self, connection: _Connection, answer: Answer, *, head_only: bool) -> None:
        if connection.closed:
            return
        if not answer.ok or not isinstance(answer.result, dict):
            message = answer.error[1] if answer.error else "no metrics"
            self._reply(connection, 503, f"{message}\n".encode())
            return
        body = str(answer.result["text"]).encode()
        content_type = str(answer.result["content_type"])
        self._reply(connection, 200, body, content_type=content_type, head_only=head_only)

    def _bad(self, connection: _Connection, status: int, reason: str) -> None:
        self._throttle.warn("bad metrics request from %s: %s", connection.peer, reason)
        self._reply(connection, status, f"{reason}\n".encode())

    # -- the response -----------------------------------------------------------------

    def _reply(
        self,
        connection: _Connection,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
        extra: str = "",
    ) -> None:
        self.requests += 1
        response = _response(status, body, content_type, extra)
        if head_only:
            response = response[: len(response) - len(body)]
        connection.stage = _Stage.WRITING
        connection.out = memoryview(response)
        if connection.timer is not None:
            connection.timer.cancel()
        connection.timer = self.loop.call_later(
            self.limits.write_timeout, lambda: self._expire(connection)
        )
        self._write(connection)
        if not connection.closed:
            self.loop.add_writer(
                connection.sock.fileno(), lambda: self._write(connection), priority=PRIORITY
            )

    def _write(self, connection: _Connection) -> None:
        out = connection.out
        if out is None or connection.closed:
            return
        try:
            sent = connection.sock.send(out, _SEND_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self._close(connection)
            return
        connection.out = out = out[sent:]
        if not out:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_WR)
            self._close(connection)


def _response(
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra: str = "",
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def wants_openmetrics(accept: str) -> bool:
    """Whether an ``Accept`` header names OpenMetrics (as prometheus_client reads it)."""
    return any(
        part.split(";")[0].strip().lower() == "application/openmetrics-text"
        for part in accept.split(",")
    )


def _describe(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)[:80]


# -- the listening socket ----------------------------------------------------------------


def metrics_listener(address: str, inherited: int | None) -> socket.socket:
    """The listening socket for `address` (HOST:PORT): the one a previous master handed
    over when it listens there (`inherited`), else a new one; `StartupError` if it
    cannot be bound."""
    try:
        wanted = sockets.parse_address(address)
    except ConfigError as exc:
        raise StartupError(f"metrics: {exc}") from None
    if inherited is not None:
        sock = listeners.adopt(inherited)
        if _listens_at(sock, wanted):
            sock.set_inheritable(False)
            return sock
        sock.close()
    try:
        (sock,) = sockets.bind([wanted], BACKLOG)
    except ConfigError as exc:
        raise StartupError(f"metrics: {exc}") from None
    sock.set_inheritable(False)
    return sock


def _listens_at(sock: socket.socket, wanted: sockets.Address) -> bool:
    """Whether `sock` is bound where `wanted` says (any port, if it says 0)."""
    try:
        bound = sockets.bound_address(sock)
        found = socket.getaddrinfo(wanted.host, None, type=socket.SOCK_STREAM)
    except (OSError, ValueError):
        return False
    if bound.host is None or wanted.port not in (0, bound.port):
        return False
    for *_, sockaddr in found:
        with contextlib.suppress(ValueError):
            host = str(sockaddr[0]).partition("%")[0]
            if ipaddress.ip_address(host) == ipaddress.ip_address(bound.host):
                return True
    return False


def metrics_url(sock: socket.socket) -> str:
    """``http://HOST:PORT/metrics`` of a listening socket."""
    return f"http://{sockets.describe(sock)}/metrics"
