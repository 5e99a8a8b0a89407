"""Hosting an ASGI 3 app in a worker: uvicorn on the listening sockets of the master.

``asgi_worker(app)`` is a worker app (``main(ctx)``): in the worker, after fork,
it runs an event loop (uvloop where installed) on the worker's app thread and
serves the app there with uvicorn's HTTP protocol (httptools where installed,
else h11) on duplicates of the listening sockets the worker inherited.

Why uvicorn: ``scripts/bench_asgi.py`` measures it against hypercorn in the
same pre-fork setting (see the README's Dependencies): uvicorn serves 4.5x the
requests per second at a lower p99 (hypercorn's HTTP/1 parser is pure
Python), neither stalls on the shared socket, and its protocols are the ones
FastAPI and Starlette users run today. procbus uses uvicorn's ``Config`` and its
protocol classes, not its ``Server``: the server's life is the worker's
(the bus's ``start`` and ``stop``), and its drain is procbus's
(`procbus.worker.stopping`: stop accepting at once while the siblings go on
accepting on the shared socket, ``Connection: close`` on every response,
idle connections closed after a grace, the rest cut at the graceful timeout).

The app's life follows the worker's bus:

- the ASGI lifespan ``startup`` runs as the worker starts, once its bus
  started; the worker counts as running (the master's reload and start wait
  for it) only after ``lifespan.startup.complete``. ``lifespan.startup.failed``
  or an exception there is a boot failure (`procbus.worker.lifespan`);
- then the tree's retained publishes run (`procbus.worker.catchup`: listeners
  subscribed at import, at bus start or in the lifespan startup all exist by
  then; async ones have the loop), and only then does it accept connections.
  One that fails is a boot failure too, after the lifespan ``shutdown`` (the
  app started: what it opened is closed);
- on ``stop``: stop accepting (`STOP_ACCEPTING_PRIORITY`), wait for the
  requests in flight (`DRAIN_PRIORITY`), the app's own ``stop`` listeners
  (default 50), then the lifespan ``shutdown`` (`LIFESPAN_SHUTDOWN_PRIORITY`),
  within what is left of the graceful timeout;
- the event loop ends after the last ``exit`` listener (`LOOP_END_PRIORITY`),
  so that async ``stop`` and ``exit`` listeners still have it; if the app
  stopped the bus itself (no exit follows), right after the lifespan shutdown;
  if nobody stops the bus (``ctx.stopping`` alone), at the graceful timeout.

**Async listeners.** While the loop runs, the worker's bus hands an ``async
def`` listener's coroutine to it (`procbus.worker.awaiter`, the bus's
``awaiter``): the coroutine runs on the app's loop, beside its requests, and
what it returns or raises is that listener's result or error in the tree
publish. It is given up
(cancelled, a ``TimeoutError``) at the publish's deadline. A sync listener
runs on the listener thread as in any worker, and must not touch the loop's
objects except through ``loop.call_soon_threadsafe``.

Each HTTP request is counted in ``ctx.counters`` (failed when the app raises
or answers 5xx); with ``access_log`` each is logged on ``procbus.access`` in the
common log format, as the WSGI host does (`procbus.worker.asgi_requests`).
Request headers reach the app as sent (uvicorn's proxy-headers rewriting is
off: proxy trust is the app's business).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from procbus.errors import StartupError
from procbus.master.sockets import DEFAULT_BACKLOG
from procbus.worker.apps import WorkerApp, WorkerContext, hosting, import_object
from procbus.worker.asgi_requests import RequestAccounting
from procbus.worker.awaiter import LoopAwaiter
from procbus.worker.lifespan import ASGIApp, Lifespan, LifespanOutcome
from procbus.worker.stopping import (
    CUT_GRACE,
    DRAIN_PRIORITY,
    EXIT_MARGIN,
    FRESH_GRACE,
    IDLE_GRACE,
    STOP_ACCEPTING_PRIORITY,
)

__all__ = [
    "LIFESPAN_SHUTDOWN_PRIORITY",
    "LOOP_END_PRIORITY",
    "asgi_worker",
]

log = logging.getLogger("procbus.worker.asgi")

LIFESPAN_SHUTDOWN_PRIORITY: Final = 75
"""Priority of the ``stop`` listener that runs the lifespan shutdown: after the
drain and after the app's own ``stop`` listeners (which may still need what
the lifespan set up)."""
LOOP_END_PRIORITY: Final = 100
"""Priority of the ``exit`` listener that lets the event loop end."""
TICK: Final = 1.0
"""Seconds between the loop's looks at ``ctx.stopping`` (and ``Date`` header updates)."""
DRAIN_TICK: Final = 0.05
"""Seconds between the drain's looks at the connections left."""


def asgi_worker(
    app: str | ASGIApp,
    *,
    access_log: bool = False,
    graceful_timeout: float = 30.0,
    http: str = "auto",
    loop: str = "auto",
) -> WorkerApp:
    """A worker app serving the ASGI 3 `app` on the worker's listening sockets.

    `app` is the ASGI callable or its ``"module:attribute"`` name, imported in
    the worker (a `StartupError` from there ends the worker). `graceful_timeout`
    bounds the drain and the lifespan shutdown on ``stop``. `http` is uvicorn's
    protocol (``auto``: httptools if installed, else ``h11``) and `loop`
    ``auto`` (uvloop if installed), ``uvloop`` or ``asyncio``.
    """
    if graceful_timeout < 0:
        raise ValueError(f"graceful_timeout must not be negative, got {graceful_timeout}")
    loop_factory = _loop_factory(loop)

    def main(ctx: WorkerContext) -> None:
        if ctx.stopping.is_set():
            return
        with hosting(ctx):
            asgi_app: Any = import_object(app) if isinstance(app, str) else app
            if not callable(asgi_app):
                raise StartupError(f"ASGI app {app!r} is not callable")
            host = UvicornHost(
                asgi_app, ctx, access_log=access_log, graceful_timeout=graceful_timeout, http=http
            )
            listeners: list[tuple[str, Callable[[], None], int]] = [
                ("stop", host.stop_accepting, STOP_ACCEPTING_PRIORITY),
                ("stop", host.wait_drained, DRAIN_PRIORITY),
                ("stop", host.shut_down_lifespan, LIFESPAN_SHUTDOWN_PRIORITY),
                ("exit", host.end_loop, LOOP_END_PRIORITY),
            ]
            for channel, listener, priority in listeners:
                ctx.bus.subscribe(channel, listener, priority)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    runner.run(host.serve())
            finally:
                for channel, listener, _ in listeners:
                    ctx.bus.unsubscribe(channel, listener)

    main.__qualname__ = main.__name__ = f"asgi_worker({app!r})"
    main.reports_ready = True  # type: ignore[attr-defined]
    return main


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop  # noqa: PLC0415 -- optional, and only in ASGI workers
        except ImportError:
            if kind == "uvloop":
                raise StartupError("loop 'uvloop': uvloop is not installed") from None
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    elif kind != "asyncio":
        raise ValueError(f"loop must be auto, uvloop or asyncio, got {kind!r}")
    return asyncio.new_event_loop


# -- the server -----------------------------------------------------------------


class UvicornHost:
    """uvicorn's protocols on duplicates of ``ctx.sockets``, on one event loop.

    `serve` runs on the loop (the app thread); `stop_accepting`, `wait_drained`,
    `shut_down_lifespan` and `end_loop` are ``stop``/``exit`` listeners, called
    on another thread: they hand their work to the loop and wait, bounded.
    """

    def __init__(
        self,
        app: ASGIApp,
        ctx: WorkerContext,
        *,
        access_log: bool,
        graceful_timeout: float,
        http: str = "auto",
    ) -> None:
        import uvicorn  # noqa: PLC0415 -- only ASGI workers pay for it
        from uvicorn.server import ServerState  # noqa: PLC0415

        if not ctx.sockets:
            raise StartupError("an ASGI worker needs at least one listening socket")
        self.ctx = ctx
        self.graceful_timeout = graceful_timeout
        self.draining = False
        """Set when the drain began: every response says ``Connection: close``."""
        self.lifespan = Lifespan(app)
        self.config = uvicorn.Config(
            RequestAccounting(app, ctx, self, log_access=access_log),
            http=http,
            interface="asgi3",
            lifespan="off",  # procbus drives it (`Lifespan`)
            log_config=None,
            access_log=False,  # procbus.access instead
            proxy_headers=False,
            backlog=DEFAULT_BACKLOG,
        )
        self.config.load()
        self.state = ServerState()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._end: asyncio.Event | None = None
        self._servers: list[asyncio.Server] = []
        self._lifespan_task: asyncio.Task[LifespanOutcome] | None = None
        self._stop_requested = False
        self._deadline: float | None = None
        """`time.monotonic` at which the drain (and the lifespan shutdown) give up."""
        # Nothing is served until `_listen`: nothing to stop accepting or to drain.
        self._not_accepting = threading.Event()
        self._not_accepting.set()
        self._drained = threading.Event()
        self._drained.set()
        self._finished = threading.Event()
        self._calls_lock = threading.Lock()

    # -- on the loop -------------------------------------------------------------

    async def serve(self) -> None:
        """The whole life: lifespan startup, serve, drain, wait for the end."""
        loop = asyncio.get_running_loop()
        awaiter = LoopAwaiter(loop)
        self._wake = asyncio.Event()
        self._end = asyncio.Event()
        self._loop_thread = threading.get_ident()
        with self._calls_lock:
            self._loop = loop
        bus = self.ctx.bus
        previous, bus.awaiter = bus.awaiter, awaiter
        try:
            await self._start_lifespan()
            if not self._stopping():
                await self._apply_retained()
            if not self._stopping():
                await self._listen(loop)
                self.ctx.ready()
                await self._serve_until_stopped()
            await self._drain(loop)
            # The bus's stop listeners run the lifespan shutdown and its last exit
            # listener ends the loop (async listeners have it until then). When
            # nobody stops the bus (``ctx.stopping`` alone), the loop ends at the
            # deadline, with the lifespan shut down.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end.wait(), self._remaining())
            await self._lifespan_shutdown()
        finally:
            with self._calls_lock:
                self._loop = None
            if bus.awaiter is awaiter:
                bus.awaiter = previous
            awaiter.close()
            for server in self._servers:
                server.close()
            for connection in list(self.state.connections):
                connection.transport.abort()
            self._not_accepting.set()
            self._drained.set()
            self._finished.set()

    async def _apply_retained(self) -> None:
        """The tree's retained publishes (`WorkerContext.apply_retained`), off the loop: an
        async retained listener runs on it meanwhile. When one fails (a boot failure), the
        app's lifespan, which started, is shut down first (within `graceful_timeout`)."""
        try:
            await asyncio.to_thread(self.ctx.apply_retained)
        except StartupError:
            self._deadline = time.monotonic() + self.graceful_timeout
            await self._lifespan_shutdown()
            raise

    async def _start_lifespan(self) -> None:
        """The lifespan startup, given up if the worker is stopped meanwhile."""
        assert self._wake is not None
        startup = asyncio.ensure_future(self.lifespan.startup())
        stop = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({startup, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if startup.done():
            startup.result()  # a failure raises: the worker failed to boot
            return
        log.info("stopped during the ASGI lifespan startup: startup cancelled")
        startup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await startup
        await self.lifespan.abort()

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        protocol_class: Any = self.config.http_protocol_class
        protocol = functools.partial(
            protocol_class,
            config=self.config,
            server_state=self.state,
            app_state=self.lifespan.state,
            _loop=loop,
        )
        self._update_default_headers()
        self._not_accepting.clear()
        self._drained.clear()
        for sock in self.ctx.sockets:
            # A duplicate, so that closing it stops this worker only. asyncio
            # calls listen() again with the master's own backlog: no change.
            own = sock.dup()
            try:
                server: asyncio.Server
                if own.family == socket.AF_UNIX:
                    server = await loop.create_unix_server(
                        protocol, sock=own, backlog=DEFAULT_BACKLOG
                    )
                else:
                    server = await loop.create_server(protocol, sock=own, backlog=DEFAULT_BACKLOG)
            except BaseException:
                own.close()
                raise
            self._servers.append(server)

    def _stopping(self) -> bool:
        return self._stop_requested or self.ctx.stopping.is_set()

    async def _serve_until_stopped(self) -> None:
        assert self._wake is not None
        while not self._stopping():
            self._update_default_headers()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)

    def _update_default_headers(self) -> None:
        date = email.utils.formatdate(usegmt=True).encode()
        self.state.default_headers = [(b"date", date), *self.config.encoded_headers]

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop accepting; close connections as they go quiet; cut the rest at the deadline."""
        self.draining = True
        started = time.monotonic()
        self._deadline = started + self.graceful_timeout
        if self.ctx.stop_deadline is not None:  # the master kills then
            self._deadline = max(
                started, min(self._deadline, self.ctx.stop_deadline - EXIT_MARGIN)
            )
        for server in self._servers:
            server.close()
        self._not_accepting.set()
        log.debug("ASGI server stopped accepting; draining")
        for connection in list(self.state.connections):
            if not _idle(connection):
                connection.shutdown()  # answers with "Connection: close", then closes
        while self.state.connections or self.state.tasks:
            now = time.monotonic()
            if now >= self._deadline:
                await self._cut()
                break
            for connection in list(self.state.connections):
                if not _idle(connection):
                    continue
                fresh = getattr(connection, "cycle", True) is None
                grace = min(FRESH_GRACE if fresh else IDLE_GRACE, self.graceful_timeout)
                if now - started >= grace:
                    connection.shutdown()
            await asyncio.sleep(DRAIN_TICK)
        self._drained.set()

    async def _cut(self) -> None:
        log.warning(
            "graceful timeout (%gs): cutting %d connection(s) and %d request(s) still busy",
            self.graceful_timeout,
            len(self.state.connections),
            len(self.state.tasks),
        )
        for connection in list(self.state.connections):
            connection.transport.abort()
        tasks = list(self.state.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CUT_GRACE)

    def _remaining(self) -> float:
        """Seconds left until the drain's deadline (0 before a drain began)."""
        return max(0.0, (self._deadline or 0.0) - time.monotonic())

    async def _lifespan_shutdown(self) -> None:
        """The lifespan shutdown, once, whoever asks first (the stop listener, or the end)."""
        task = self._lifespan_task
        if task is None:
            task = self._lifespan_task = asyncio.create_task(
                self.lifespan.shutdown(self._remaining())
            )
        await task

    async def _shut_down(self) -> None:
        if self._deadline is None:
            return  # no drain yet (a stop during the startup): `serve` shuts down after it
        await self._lifespan_shutdown()
        assert self._end is not None
        if not self.ctx.stopping.is_set():
            self._end.set()  # the app stopped the bus itself: no exit follows

    # -- stop and exit listeners (another thread) ----------------------------------

    def _call_soon(self, callback: Callable[[], object]) -> bool:
        """Run `callback` on the loop; False when the loop is not (or no longer) there."""
        with self._calls_lock:
            loop = self._loop
            if loop is None:
                return False
            loop.call_soon_threadsafe(callback)
            return True

    def _request_stop(self) -> None:
        self._stop_requested = True
        self._call_soon(lambda: self._wake.set() if self._wake is not None else None)

    def stop_accepting(self) -> None:
        """Stop accepting now; return once no listening socket is served."""
        self._request_stop()
        if not self._not_accepting.wait(self.graceful_timeout + CUT_GRACE):
            log.warning("ASGI server did not stop accepting in time")

    def wait_drained(self) -> None:
        """Stop accepting; return once every connection is closed (or cut)."""
        self._request_stop()
        if threading.get_ident() == self._loop_thread:
            return  # from the app's own loop: it would wait for itself
        if not self._drained.wait(self.graceful_timeout + 2 * CUT_GRACE + DRAIN_TICK):
            log.warning("ASGI server did not drain in time")

    def shut_down_lifespan(self) -> None:
        """Run the lifespan shutdown on the loop, within what is left of the graceful timeout."""
        with self._calls_lock:
            loop = self._loop
            if loop is None or threading.get_ident() == self._loop_thread:
                return
            future = asyncio.run_coroutine_threadsafe(self._shut_down(), loop)
        try:
            future.result(self._remaining() + CUT_GRACE)
        except (TimeoutError, concurrent.futures.CancelledError):
            log.warning("ASGI lifespan shutdown did not end in time")

    def end_loop(self) -> None:
        """The last ``exit`` listener: let the loop end; return once it did."""
        if self._call_soon(lambda: self._end.set() if self._end is not None else None):
            self._finished.wait(CUT_GRACE)


def _idle(connection: Any) -> bool:
    """Whether `connection` has nothing in flight (a WebSocket never is)."""
    if not hasattr(connection, "cycle"):
        return False
    cycle = connection.cycle
    return cycle is None or bool(cycle.response_complete)
