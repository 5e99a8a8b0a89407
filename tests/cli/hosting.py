"""`procbus run` as a subprocess, and a bounded HTTP load against it."""

from __future__ import annotations

import contextlib
import http.client
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tests.helpers import wait_until
from tests.processes import MasterProcess, short_tempdir, supervised

TEST_OPTIONS = ("--heartbeat-interval", "0.2", "--graceful-timeout", "5", "--boot-timeout", "10")


@dataclass(frozen=True)
class Apps:
    """The apps a hosting test serves, all of one interface.

    `demo` are the arguments naming an app that serves what the demo does
    (``/worker`` as JSON with the pid, ``/health``, ``/boom``, ``/``): none for
    the WSGI demo itself, the ASGI example for ASGI.
    """

    interface: str
    demo: tuple[str, ...]
    versioned: str
    """Answers "VERSION PID", VERSION read from $PROCBUS_TEST_VERSION_FILE at import."""
    slow: str
    """Answers after ``?seconds=S``."""


WSGI_APPS: Final = Apps("wsgi", (), "tests.cli.apps:versioned", "tests.cli.apps:slow")
ASGI_APPS: Final = Apps(
    "asgi", ("examples.asgi_app:app",), "tests.cli.apps:versioned_asgi", "tests.cli.apps:slow_asgi"
)
each_interface: Final = pytest.mark.parametrize(
    "apps", [WSGI_APPS, ASGI_APPS], ids=lambda apps: apps.interface
)
"""Run the test once with WSGI apps (waitress), once with ASGI apps (uvicorn)."""


class RunProcess(MasterProcess):
    """``procbus run`` in its own session; `port` is the first TCP port it listens on."""

    def port(self, timeout: float = 15.0) -> int:
        def found() -> int | None:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            return int(match.group(1)) if match else None

        return wait_until(found, timeout)

    def get(self, path: str = "/worker", timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port(), timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@contextlib.contextmanager
def running(
    *args: str,
    workers: int | None = 2,
    wait: bool = True,
    env: dict[str, str] | None = None,
    directory_mode: int | None = None,
) -> Iterator[RunProcess]:
    """``procbus run ARGS`` on a private runtime directory; always stopped and reaped.

    `directory_mode`: the mode of the temporary directory that holds the
    runtime directory (0700 unless given: 0711 lets other uids enter it).
    """
    directory = short_tempdir()
    if directory_mode is not None:
        directory.chmod(directory_mode)
    argv = [sys.executable, "-m", "procbus", "run", "--runtime-dir", str(directory / "rt")]
    if workers is not None:  # None: from the config file
        argv += ["--workers", str(workers)]
    argv += [*TEST_OPTIONS, *args]
    proc = RunProcess(argv, directory / "rt", directory / "run.log", env)
    with supervised(proc, directory, workers if wait else None) as started:
        yield started


@dataclass
class Load:
    """Clients sending requests in a loop until stopped; every outcome counted."""

    port: int
    clients: int = 4
    path: str = "/worker"
    keep_alive: bool = False
    """One connection per client for all its requests (else one per request)."""
    limit: float = 60.0
    """No load runs longer than this, whatever happens."""
    bodies: set[bytes] = field(default_factory=set)
    """The first word of every response body."""
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _client(self) -> None:
        deadline = time.monotonic() + self.limit
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.request("GET", self.path)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with self._lock:
                        self.failures.append(repr(exc))
                    conn.close()
                    conn = None
                    continue
                if not self.keep_alive or response.will_close:
                    conn.close()
                    conn = None
                self._record(response.status, body)
        finally:
            if conn is not None:
                conn.close()

    def _record(self, status: int, body: bytes) -> None:
        with self._lock:
            if status != 200:
                self.failures.append(f"HTTP {status}")
                return
            self.ok += 1
            match = re.search(rb'"pid": ?(\d+)', body) or re.fullmatch(rb"\S+ (\d+)", body)
            if match:
                self.pids.add(int(match.group(1)))
            self.bodies.add(body.split()[0] if body.split() else b"")

    def wait_for(self, requests: int, timeout: float = 10.0) -> None:
        start = self.ok
        wait_until(lambda: self.ok >= start + requests, timeout)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def lines(text: str) -> Sequence[str]:
    return [line for line in text.splitlines() if line.strip()]
