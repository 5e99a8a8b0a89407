"""Unit tests of `procbus.worker.wsgi` (WSGI hosting) and the demo app.

Each test runs ``wsgi_worker(...)``'s ``main(ctx)`` in an "app" thread, as a
worker does, with a real `Bus` and a real listening socket on 127.0.0.1:0 that
the test owns (no fork). Every test stops the server, joins the thread, closes
the socket, and checks that no thread is left behind.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from procbus import Bus, states
from procbus.errors import StartupError
from procbus.worker.apps import WorkerContext
from procbus.worker.wsgi import (
    DRAIN_PRIORITY,
    STOP_ACCEPTING_PRIORITY,
    current_context,
    wsgi_worker,
)
from tests.helpers import wait_until

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

BOUND = 10.0
"""Upper bound, in seconds, on anything a test waits for."""


def hello_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise RuntimeError("the app failed")
    if path == "/unavailable":
        start_response("503 Service Unavailable", [("Content-Length", "4")])
        return [b"down"]
    if path == "/raise-in-body":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _failing_body()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _failing_body() -> Iterator[bytes]:
    yield from ()
    raise RuntimeError("the body failed")


@dataclass
class Served:
    """A WSGI worker's main(ctx) running in a thread on `listener`."""

    ctx: WorkerContext
    listener: socket.socket
    thread: threading.Thread
    outcome: list[BaseException] = field(default_factory=list)

    @property
    def port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=BOUND)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        """What a worker does: set ``stopping``, exit the bus, join the app."""
        self.ctx.stopping.set()
        if self.ctx.bus.state is not states.EXITING:
            self.ctx.bus.exit()
        self.thread.join(BOUND)
        assert not self.thread.is_alive(), "main(ctx) did not return"
        assert self.outcome == [], "main(ctx) raised"


@pytest.fixture(autouse=True)
def _leaves_no_thread() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    wait_until(lambda: not [t for t in threading.enumerate() if t not in before], BOUND)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock
    finally:
        sock.close()


@pytest.fixture
def serve(listener: socket.socket) -> Iterator[Callable[..., Served]]:
    """Start ``wsgi_worker(app, **options)`` on `listener`; stop it at teardown."""
    started: list[Served] = []

    def start(app: str | WSGIApplication, **options: Any) -> Served:
        ctx = WorkerContext(worker_id=1, generation=3, bus=Bus(), sockets=[listener])
        main = wsgi_worker(app, **options)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                main(ctx)
            except BaseException as exc:
                outcome.append(exc)

        served = Served(ctx, listener, threading.Thread(target=run, name="app"), outcome)
        served.thread.start()
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()


def test_requests_are_answered_and_counted(serve: Callable[..., Served]) -> None:
    """Two requests on the served socket.

    Both are answered by the app; the worker's counters show two requests,
    none failed and none in flight.
    """
    served = serve(hello_app)
    assert served.get("/") == (200, b"hello")
    assert served.get("/again") == (200, b"hello")
    wait_until(lambda: served.ctx.counters["requests"] == 2, BOUND)
    assert served.ctx.counters["errors"] == 0
    assert served.ctx.counters["in_flight"] == 0


def test_app_exception_answers_500_and_server_keeps_serving(serve: Callable[..., Served]) -> None:
    """An app that raises, then a good request.

    The client gets a 500 (no traceback in the body); the next request is
    answered; both are counted, the first as failed; main(ctx) still runs.
    """
    served = serve(hello_app)
    status, body = served.get("/raise")
    assert status == 500
    assert b"the app failed" not in body
    assert served.get("/") == (200, b"hello")
    wait_until(lambda: served.ctx.counters["requests"] == 2, BOUND)
    assert served.ctx.counters["errors"] == 1
    assert served.thread.is_alive()


def test_app_exception_in_response_body_counts_as_failed(serve: Callable[..., Served]) -> None:
    """An app whose body iterator raises before yielding anything.

    The client gets a 500 and the request counts as failed.
    """
    served = serve(hello_app)
    assert served.get("/raise-in-body")[0] == 500
    wait_until(lambda: served.ctx.counters["errors"] == 1, BOUND)
    assert served.ctx.counters["requests"] == 1


def test_5xx_answer_counts_as_failed(serve: Callable[..., Served]) -> None:
    """An app that answers 503 without raising.

    The client gets the app's 503; the request counts as failed.
    """
    served = serve(hello_app)
    assert served.get("/unavailable") == (503, b"down")
    wait_until(lambda: served.ctx.counters["errors"] == 1, BOUND)


def test_app_named_by_reference_is_imported_and_context_is_current(
    serve: Callable[..., Served],
) -> None:
    """``wsgi_worker("tests.unit.test_wsgi:hello_app")``.

    The app is imported and served; while main(ctx) runs, current_context()
    is its context, and None once it returned.
    """
    served = serve("tests.unit.test_wsgi:hello_app")
    assert served.get("/") == (200, b"hello")
    assert current_context() is served.ctx
    served.stop()
    assert current_context() is None


class SlowApp:
    """Answers ``/slow`` only once released; says when such a request is in."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/slow":
            self.entered.set()
            self.release.wait(BOUND)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]


Outcome = tuple[int, bytes] | OSError | http.client.HTTPException


def get_in_thread(served: Served, path: str) -> tuple[threading.Thread, list[Outcome]]:
    """Start ``GET path`` in a thread; the list gets (status, body) or the error."""
    result: list[Outcome] = []

    def get() -> None:
        try:
            result.append(served.get(path))
        except (OSError, http.client.HTTPException) as exc:
            result.append(exc)

    thread = threading.Thread(target=get, name="client")
    thread.start()
    return thread, result


def late_connection_probe(
    served: Served, app: SlowApp, slow_result: list[Outcome], seen: dict[str, Any]
) -> Callable[[], None]:
    """A stop listener: connect and send a request, take the connection from
    the listening socket (so the server did not accept it), note whether the
    slow request is still open, then release the app.

    It runs inside bus.exit() and must not raise (the bus would end the
    process), so it records what it saw in `seen`.
    """

    def probe() -> None:
        try:
            late = socket.create_connection(("127.0.0.1", served.port), timeout=BOUND)
            late.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            served.listener.settimeout(BOUND)
            taken, _ = served.listener.accept()
            seen["taken_by_test"] = True
            seen["slow_open"] = not slow_result
            taken.close()
            late.close()
        except BaseException as exc:
            seen["error"] = exc
        finally:
            app.release.set()

    return probe


def test_stop_drains_in_flight_request_and_accepts_no_new_connection(
    serve: Callable[..., Served],
) -> None:
    """A slow request in flight and an idle keep-alive connection, then bus.exit().

    Steps: start the bus; open a keep-alive connection and use it once; start
    a slow request and wait until the app has it; publish stop (bus.exit()). A
    test listener between the stop-accepting and drain priorities connects
    anew, takes that connection from the listening socket itself (proof that
    the server did not accept it), sees the slow request still open, then lets
    the app finish.
    Expected: the slow request completes with 200; the idle keep-alive
    connection is closed; bus.exit() returns, and main(ctx) too, long before
    the graceful timeout.
    """
    app = SlowApp()
    served = serve(app)
    bus = served.ctx.bus
    bus.start()
    idle = served.connect()
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"done"
    client, slow_result = get_in_thread(served, "/slow")
    seen: dict[str, Any] = {}
    try:
        wait_until(app.entered.is_set, BOUND)
        priority = (STOP_ACCEPTING_PRIORITY + DRAIN_PRIORITY) // 2
        bus.subscribe("stop", late_connection_probe(served, app, slow_result, seen), priority)
        started = time.monotonic()
        bus.exit()
        exit_took = time.monotonic() - started
        served.thread.join(BOUND)
        assert idle.sock is not None
        idle_closed = idle.sock.recv(1) == b""
    finally:
        app.release.set()
        client.join(BOUND)
        idle.close()
    assert seen == {"taken_by_test": True, "slow_open": True}
    assert slow_result == [(200, b"done")]
    assert not served.thread.is_alive()
    assert exit_took < BOUND
    assert idle_closed


def test_graceful_timeout_cuts_requests_still_running(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """``graceful_timeout=0.2``, a request that outlasts it, then bus.exit().

    bus.exit() returns although the app holds the request until the test ends
    (so the request was cut, not waited for); the client's
    connection is closed without an answer; a warning says what was cut.
    """
    app = SlowApp()
    served = serve(app, graceful_timeout=0.2)
    client, result = get_in_thread(served, "/slow")
    try:
        wait_until(app.entered.is_set, BOUND)
        started = time.monotonic()
        served.ctx.bus.exit()
        exit_took = time.monotonic() - started
        client.join(BOUND)
    finally:
        app.release.set()
        client.join(BOUND)
    assert exit_took < BOUND  # the app lets go only in `finally`: it was cut
    assert len(result) == 1
    assert isinstance(result[0], (OSError, http.client.HTTPException))
    assert any("cutting 1 connection" in r.getMessage() for r in caplog.records)


def test_stopping_event_alone_stops_the_server(serve: Callable[..., Served]) -> None:
    """Only ``ctx.stopping`` is set; nothing is published.

    main(ctx) returns.
    """
    served = serve(hello_app)
    assert served.get("/") == (200, b"hello")
    served.ctx.stopping.set()
    served.thread.join(BOUND)
    assert not served.thread.is_alive()


def test_main_returns_at_once_when_already_stopping(listener: socket.socket) -> None:
    """main(ctx) called with ``ctx.stopping`` already set.

    It returns without importing the app (a bad reference is not an error),
    subscribes nothing and leaves the listening socket open.
    """
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[listener])
    ctx.stopping.set()
    wsgi_worker("no.such.module:app")(ctx)
    assert listener.fileno() != -1
    assert ctx.bus.listeners["stop"] == set()


def test_worker_without_sockets_fails_to_start() -> None:
    """main(ctx) for a context with no listening socket raises StartupError."""
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[])
    with pytest.raises(StartupError, match="listening socket"):
        wsgi_worker(hello_app)(ctx)


def test_serves_tcp_and_unix_sockets_together(listener: socket.socket) -> None:
    """One worker given a TCP and a Unix listening socket.

    Both answer; stopping closes neither of the caller's sockets.
    """
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "s")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unix.bind(path)
            unix.listen(4)
            ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[listener, unix])
            thread = threading.Thread(target=wsgi_worker(hello_app), args=(ctx,), name="app")
            served = Served(ctx, listener, thread)
            thread.start()
            try:
                assert served.get("/") == (200, b"hello")
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.settimeout(BOUND)
                try:
                    client.connect(path)
                    client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    answer = b""
                    while chunk := client.recv(4096):
                        answer += chunk
                finally:
                    client.close()
                assert answer.startswith(b"HTTP/1.0 200 OK")
                assert answer.endswith(b"hello")
            finally:
                served.stop()
            assert listener.fileno() != -1
            assert unix.fileno() != -1
        finally:
            unix.close()


ACCESS_LINE = re.compile(
    r"^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] "
    r'"(?P<request>[^"\\]*(?:\\.[^"\\]*)*)" (?P<status>\d{3}) (?P<bytes>\d+|-)$'
)


def test_access_log_lines_in_common_log_format(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """``access_log=True``; a good request, a failing one, a quote in the path.

    Each response gives one ``procbus.access`` line in the common log format
    with the status and body size the client got; the quote is escaped.
    """
    caplog.set_level(logging.INFO, logger="procbus.access")
    served = serve(hello_app, access_log=True)
    assert served.get("/hello?x=1") == (200, b"hello")
    assert served.get("/raise")[0] == 500
    assert served.get('/a"b')[0] == 200

    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "procbus.access"]

    # A line is written when its response is closed, after the request was counted.
    lines = wait_until(lambda: access_lines() if len(access_lines()) >= 3 else None, BOUND)
    matches = [ACCESS_LINE.match(line) for line in lines]
    assert all(matches), lines
    # Sorted: a line is written when its response is closed, which may come
    # after the client read the response and sent the next request.
    assert sorted((m["request"], m["status"], m["bytes"]) for m in matches if m) == [
        ('GET /a\\"b HTTP/1.1', "200", "5"),
        ("GET /hello?x=1 HTTP/1.1", "200", "5"),
        ("GET /raise HTTP/1.1", "500", "-"),
    ]


def test_no_access_log_unless_asked(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """``access_log`` left at False: a request logs nothing on ``procbus.access``."""
    caplog.set_level(logging.INFO, logger="procbus.access")
    served = serve(hello_app)
    assert served.get("/") == (200, b"hello")
    wait_until(lambda: served.ctx.counters["requests"] == 1, BOUND)
    assert [r for r in caplog.records if r.name == "procbus.access"] == []


def test_demo_app_reports_worker_health_and_failure(serve: Callable[..., Served]) -> None:
    """The demo app (``procbus.demo:app``) served by a WSGI worker.

    ``/worker`` gives {"worker", "pid", "generation", "requests"} of the
    serving worker; ``/health`` is 200 "ok"; ``/boom`` is a 500 and the worker
    goes on; the page shows the last ``demo.message`` published on the
    process's bus.
    """
    from procbus import bus as process_bus
    from procbus.demo import MESSAGE_CHANNEL, remember_message

    served = serve("procbus.demo:app")
    process_bus.subscribe(MESSAGE_CHANNEL, remember_message)  # as on import
    try:
        assert served.get("/health") == (200, b"ok")
        wait_until(lambda: served.ctx.counters["requests"] == 1, BOUND)
        status, body = served.get("/worker")
        assert status == 200
        assert json.loads(body) == {
            "worker": 1,
            "pid": os.getpid(),
            "generation": 3,
            "requests": 1,
        }
        assert served.get("/boom")[0] == 500
        replies = process_bus.publish(MESSAGE_CHANNEL, "hello <workers>")
        assert replies == [f"pid {os.getpid()} got 'hello <workers>'"]
        status, page = served.get("/")
        assert status == 200
        assert b"hello &lt;workers&gt;" in page
        assert b"procbus ctl publish demo.message" in page
    finally:
        process_bus.unsubscribe(MESSAGE_CHANNEL, remember_message)
