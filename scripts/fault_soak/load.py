"""HTTP load: keep-alive clients that know which worker serves their connection.

Each client is a thread with one ``http.client`` connection to 127.0.0.1,
asking ``GET /worker`` of the demo app over and over; the JSON answer names the
worker's pid. The pid of a connection is known from its first response on;
a response with ``Connection: close`` (a draining worker) ends it, and the
next request opens a new connection, whose worker is unknown again until it
answers. A failed request is recorded with the pid of its connection (see
`journal.failure_cause` for what that explains); the client then opens a new
connection after `FAILURE_PAUSE`, as a retrying client would. Nothing is
retried: every request counts once.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from typing import Final

from fault_soak.journal import Outcome, RequestFailure

ROUTE: Final = "/worker"
FAILURE_PAUSE: Final = 0.01
MAX_FAILURES: Final = 100_000
"""Failures kept per client (beyond: counted only)."""


class BadStatus(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status


def classify(exc: Exception) -> Outcome:
    if isinstance(exc, BadStatus):
        return Outcome.HTTP_5XX if exc.status >= 500 else Outcome.HTTP_OTHER
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.REFUSED
    if isinstance(exc, http.client.RemoteDisconnected):  # before reset: it is a subclass
        return Outcome.CLOSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Outcome.RESET
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, http.client.HTTPException | ValueError | KeyError | TypeError):
        return Outcome.BAD_RESPONSE
    return Outcome.OS_ERROR


class Client:
    """One keep-alive client thread."""

    def __init__(self, port: int, timeout: float, stopping: threading.Event, index: int) -> None:
        self.port = port
        self.timeout = timeout
        self.stopping = stopping
        self.ok = 0
        self.failed = 0
        self.connections = 0
        self.failures: list[RequestFailure] = []
        self.pids: Counter[int] = Counter()
        self.thread = threading.Thread(target=self._run, name=f"client-{index}", daemon=True)

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        pid: int | None = None
        while not self.stopping.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                pid = None
                self.connections += 1
            elif conn.sock is None:  # the last response said Connection: close
                pid = None
                self.connections += 1
            start = time.monotonic()
            try:
                conn.request("GET", ROUTE)
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    raise BadStatus(response.status, response.reason)
                answered = int(json.loads(body)["pid"])
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
                self.failed += 1
                if len(self.failures) < MAX_FAILURES:
                    error = f"{type(exc).__name__}: {exc}"[:200]
                    self.failures.append(
                        RequestFailure(start, time.monotonic(), classify(exc), pid, error)
                    )
                conn.close()
                conn = None
                self.stopping.wait(FAILURE_PAUSE)
                continue
            self.ok += 1
            self.pids[answered] += 1
            pid = answered
        if conn is not None:
            conn.close()


class Load:
    """`clients` keep-alive clients on `port`, from `start` until `stop`."""

    def __init__(self, port: int, clients: int, timeout: float) -> None:
        self.timeout = timeout
        self.stopping = threading.Event()
        self.clients = [Client(port, timeout, self.stopping, i) for i in range(clients)]

    def start(self) -> None:
        for client in self.clients:
            client.thread.start()

    def stop(self) -> bool:
        """Stop the clients; False if one is still stuck in a request after its timeout."""
        self.stopping.set()
        deadline = time.monotonic() + self.timeout + 2
        for client in self.clients:
            client.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(client.thread.is_alive() for client in self.clients)

    @property
    def ok(self) -> int:
        return sum(c.ok for c in self.clients)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.clients)

    @property
    def connections(self) -> int:
        return sum(c.connections for c in self.clients)

    def failures(self) -> list[RequestFailure]:
        return sorted((f for c in self.clients for f in c.failures), key=lambda f: f.start)

    def workers_seen(self) -> int:
        seen: set[int] = set()
        for client in self.clients:
            seen.update(client.pids)
        return len(seen)
