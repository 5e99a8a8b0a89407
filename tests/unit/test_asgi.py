"""Unit tests of `procbus.worker.asgi` (ASGI hosting with uvicorn's protocols).

Each test runs ``asgi_worker(...)``'s ``main(ctx)`` in an "app" thread, as a
worker does, with a real `Bus` and a real listening socket on 127.0.0.1:0 that
the test owns (no fork). Every test stops the server as a worker does
(``ctx.stopping``, then ``bus.exit()``), joins the thread, closes the socket,
and checks that no thread is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from procbus import Bus, ChannelFailures, states
from procbus.errors import StartupError
from procbus.worker.apps import WorkerContext, current_context
from procbus.worker.asgi import asgi_worker
from procbus.worker.stopping import DRAIN_PRIORITY, STOP_ACCEPTING_PRIORITY
from tests.helpers import wait_until

BOUND = 10.0
"""Upper bound, in seconds, on anything a test waits for."""


async def answer(send: Any, body: bytes, status: int = 200) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class App:
    """A plain ASGI app with a lifespan; ``/slow`` waits for `release`."""

    def __init__(self, startup: str = "complete") -> None:
        self.startup = startup
        self.entered = threading.Event()
        self.release = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutdowns = 0
        self.context: list[object] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("the app failed")
        if path == "/unavailable":
            await answer(send, b"down", 503)
            return
        if path == "/slow":
            self.entered.set()
            await self.release.wait()
        if path == "/state":
            await answer(send, str(scope["state"].get("pool")).encode())
            return
        self.context.append(current_context())
        await answer(send, b"hello")

    async def _lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        self.loop = asyncio.get_running_loop()
        if self.startup == "fail":
            await send({"type": "lifespan.startup.failed", "message": "no database"})
            return
        scope["state"]["pool"] = "open"
        await send({"type": "lifespan.startup.complete"})
        await receive()
        self.shutdowns += 1
        await send({"type": "lifespan.shutdown.complete"})

    def let_go(self) -> None:
        """Let every ``/slow`` request finish (from any thread; the loop may be gone)."""
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # closed
                self.loop.call_soon_threadsafe(self.release.set)


@dataclass
class Served:
    """An ASGI worker's main(ctx) running in a thread on `listener`."""

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
    """Start ``asgi_worker(app, **options)`` on `listener`, wait until it is ready
    (unless ``ready=False``); stop it at teardown."""
    started: list[Served] = []

    def start(app: Any, ready: bool = True, **options: Any) -> Served:
        ctx = WorkerContext(worker_id=1, generation=3, bus=Bus(), sockets=[listener])
        main = asgi_worker(app, **options)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                main(ctx)
            except BaseException as exc:
                outcome.append(exc)

        served = Served(ctx, listener, threading.Thread(target=run, name="app"), outcome)
        served.thread.start()
        started.append(served)
        if ready:
            wait_until(ctx.ready_event.is_set, BOUND)
        return served

    try:
        yield start
    finally:
        for served in started:
            if served.ctx.bus.state is states.STOPPED:
                served.ctx.bus.start()  # so that exit() publishes stop and exit
            served.stop()


@pytest.mark.parametrize(("http", "loop"), [("auto", "auto"), ("h11", "asyncio")])
def test_requests_are_answered_and_counted(
    serve: Callable[..., Served], http: str, loop: str
) -> None:
    """With httptools on uvloop and with h11 on asyncio's loop alike: every request is
    answered and counted; nothing stays in flight; ``current_context()`` is the
    worker's in the app."""
    app = App()
    served = serve(app, http=http, loop=loop)
    assert served.get("/") == (200, b"hello")
    assert served.get("/") == (200, b"hello")
    counters = served.ctx.counters
    wait_until(lambda: counters["requests"] == 2, BOUND)
    assert (counters["in_flight"], counters["errors"]) == (0, 0)
    assert app.context == [served.ctx, served.ctx]


def test_app_exception_and_5xx_answers_count_as_failed(serve: Callable[..., Served]) -> None:
    served = serve(App())
    assert served.get("/raise")[0] == 500
    assert served.get("/unavailable") == (503, b"down")
    assert served.get("/") == (200, b"hello")
    counters = served.ctx.counters
    wait_until(lambda: counters["requests"] == 3, BOUND)
    assert counters["errors"] == 2


def test_lifespan_state_reaches_requests_and_shutdown_runs_on_stop(
    serve: Callable[..., Served],
) -> None:
    app = App()
    served = serve(app)
    assert served.get("/state") == (200, b"open")
    served.ctx.bus.start()
    served.stop()
    assert app.shutdowns == 1


def test_lifespan_startup_failure_raises_from_main_and_never_says_ready(
    serve: Callable[..., Served],
) -> None:
    served = serve(App(startup="fail"), ready=False)
    served.thread.join(BOUND)
    assert [str(e) for e in served.outcome] == ["ASGI lifespan startup failed: no database"]
    assert isinstance(served.outcome[0], StartupError)
    assert not served.ctx.ready_event.is_set()


class SlowClient:
    """A GET in a thread; `result` gets (status, connection header, body) or the error."""

    def __init__(self, served: Served, path: str) -> None:
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._get, args=(served, path))
        self.thread.start()

    def _get(self, served: Served, path: str) -> None:
        conn = served.connect()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            self.result.append(
                (response.status, response.getheader("connection"), response.read())
            )
        except (OSError, http.client.HTTPException) as exc:
            self.result.append(exc)
        finally:
            conn.close()


def test_stop_drains_in_flight_request_says_close_and_accepts_no_new_connection(
    serve: Callable[..., Served],
) -> None:
    """Steps: a keep-alive connection used once; a slow request in flight; bus.exit().
    A test listener between the stop-accepting and drain priorities connects anew,
    takes that connection from the listening socket itself (proof that the server did
    not accept it), and lets the app finish.
    Expected: the slow request completes with 200 and 'Connection: close'; the idle
    keep-alive connection is closed; bus.exit() returns long before the graceful
    timeout (30 s); the lifespan shut down."""
    app = App()
    served = serve(app, graceful_timeout=3 * BOUND)
    bus = served.ctx.bus
    bus.start()
    idle = served.connect()
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"hello"
    slow = SlowClient(served, "/slow")
    seen: dict[str, bool] = {}

    def probe() -> None:
        with socket.create_connection(("127.0.0.1", served.port), timeout=BOUND):
            served.listener.settimeout(BOUND)
            accepted, _ = served.listener.accept()
            accepted.close()
            seen["taken_by_test"] = True
        app.let_go()

    try:
        wait_until(app.entered.is_set, BOUND)
        bus.subscribe("stop", probe, (STOP_ACCEPTING_PRIORITY + DRAIN_PRIORITY) // 2)
        started = time.monotonic()
        bus.exit()
        exit_took = time.monotonic() - started
        served.thread.join(BOUND)
        assert idle.sock is not None
        idle.sock.settimeout(BOUND)
        idle_closed = idle.sock.recv(1) == b""
    finally:
        app.let_go()
        slow.thread.join(BOUND)
        idle.close()
    assert seen == {"taken_by_test": True}
    assert slow.result == [(200, "close", b"hello")]
    assert idle_closed
    assert exit_took < BOUND  # well within the graceful timeout
    assert app.shutdowns == 1


def test_graceful_timeout_cuts_requests_still_running(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """``graceful_timeout=0.3``, a request that never ends by itself, then bus.exit():
    exit returns; the client gets no answer; a warning says what was cut; nothing
    stays in flight."""
    app = App()
    served = serve(app, graceful_timeout=0.3)
    slow = SlowClient(served, "/slow")
    try:
        wait_until(app.entered.is_set, BOUND)
        started = time.monotonic()
        served.ctx.bus.exit()
        exit_took = time.monotonic() - started
        slow.thread.join(BOUND)
    finally:
        app.let_go()
        slow.thread.join(BOUND)
    assert exit_took < BOUND  # the app lets go only in `finally`: it was cut
    assert len(slow.result) == 1 and isinstance(slow.result[0], Exception)
    assert any("cutting 1 connection" in r.getMessage() for r in caplog.records)
    assert served.ctx.counters["in_flight"] == 0


def test_stopping_event_alone_ends_main_by_the_graceful_timeout(
    serve: Callable[..., Served],
) -> None:
    """Only ``ctx.stopping`` is set, nothing is published: main(ctx) returns once the
    graceful timeout (0.3 s) passed, the lifespan shut down."""
    app = App()
    served = serve(app, graceful_timeout=0.3)
    served.ctx.stopping.set()
    served.thread.join(0.3 + 2)
    assert not served.thread.is_alive()
    assert app.shutdowns == 1


def test_main_returns_at_once_when_already_stopping(listener: socket.socket) -> None:
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[listener])
    ctx.stopping.set()
    asgi_worker("no.such.module:app")(ctx)
    assert ctx.bus.listeners["stop"] == set()
    assert listener.fileno() != -1


def test_worker_without_sockets_fails_to_start() -> None:
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[])
    with pytest.raises(StartupError, match="listening socket"):
        asgi_worker(App())(ctx)


def test_serves_tcp_and_unix_sockets_together(listener: socket.socket) -> None:
    with tempfile.TemporaryDirectory(prefix="pb-") as directory:
        path = os.path.join(directory, "web.sock")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.bind(path)
        unix.listen(4)
        ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[listener, unix])
        thread = threading.Thread(target=asgi_worker(App()), args=(ctx,), name="app")
        thread.start()
        try:
            wait_until(ctx.ready_event.is_set, BOUND)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
                client.sendall(b"GET / HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := client.recv(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello")
            conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"hello"
            conn.close()
        finally:
            ctx.stopping.set()
            ctx.bus.exit()
            thread.join(BOUND)
            unix.close()


def test_access_log_lines_in_common_log_format(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="procbus.access")
    served = serve(App(), access_log=True)
    assert served.get("/hello?x=1") == (200, b"hello")
    assert served.get("/raise")[0] == 500

    def lines() -> list[str] | None:
        found = [r.getMessage() for r in caplog.records if r.name == "procbus.access"]
        return found if len(found) >= 2 else None

    logged = sorted(line.split("] ", 1)[1] for line in wait_until(lines, BOUND))
    assert logged == ['"GET /hello?x=1 HTTP/1.1" 200 5', '"GET /raise HTTP/1.1" 500 -']


# -- async listeners ----------------------------------------------------------------


def test_async_listener_runs_on_the_apps_loop_and_its_outcome_is_the_listeners(
    serve: Callable[..., Served],
) -> None:
    """Steps: async listeners subscribed on the worker's bus (one answering, one
    raising) and a sync one; publish from the test thread. Expected: the async ones
    ran on the app's loop (the lifespan's), their result and error are the listeners'
    outcomes in priority order; the sync one ran on the calling thread."""
    app = App()
    served = serve(app)
    bus = served.ctx.bus

    async def on_loop(n: int) -> tuple[bool, int]:
        await asyncio.sleep(0)
        return asyncio.get_running_loop() is app.loop, n * 2

    async def failing(n: int) -> None:
        raise LookupError(f"no {n}")

    bus.subscribe("ch", on_loop, 1)
    bus.subscribe("ch", failing, 2)
    bus.subscribe("ch", lambda n: threading.current_thread().name, 3)
    outcomes = bus.run_listeners("ch", 21)
    assert [o.result for o in outcomes] == [(True, 42), None, threading.current_thread().name]
    assert isinstance(outcomes[1].error, LookupError)
    with pytest.raises(ChannelFailures, match="no 1"):
        bus.publish("ch", 1)


def test_async_listener_published_from_the_loop_itself_is_an_error_not_a_deadlock(
    serve: Callable[..., Served],
) -> None:
    app = App()
    served = serve(app)
    bus = served.ctx.bus

    async def listener() -> str:
        return "never"

    bus.subscribe("ch", listener)
    assert app.loop is not None
    done = asyncio.run_coroutine_threadsafe(_publish_on_loop(bus), app.loop).result(BOUND)
    assert len(done) == 1 and "from the app's event loop itself" in str(done[0].error)


async def _publish_on_loop(bus: Bus) -> Any:
    return bus.run_listeners("ch")


def test_async_listener_after_the_loop_ended_is_an_error(listener: socket.socket) -> None:
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[listener])
    thread = threading.Thread(target=asgi_worker(App()), args=(ctx,), name="app")
    thread.start()
    wait_until(ctx.ready_event.is_set, BOUND)
    awaiter = ctx.bus.awaiter
    ctx.stopping.set()
    ctx.bus.exit()
    thread.join(BOUND)
    assert ctx.bus.awaiter is None and awaiter is not None

    async def late() -> None: ...

    with pytest.raises(RuntimeError, match="has ended"):
        awaiter(late())
