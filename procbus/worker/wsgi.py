"""Hosting a WSGI app in a worker: waitress on the listening sockets of the master.

``wsgi_worker("myapp:app")`` is a worker app (``main(ctx)``): in the worker,
after fork, it imports the WSGI app and serves it with waitress on the
listening sockets the worker inherited, in a pool of `threads` threads, until
the worker's bus publishes ``stop`` (or ``ctx.stopping`` is set).

Why waitress: ``scripts/bench_wsgi.py`` measures waitress against cheroot in a
pre-fork tree. Throughput is mixed (cheroot ahead under saturating keep-alive
load, waitress with one or two connections or a connection per request), but
when new connections arrive now and then, cheroot stalls every other
connection of a worker for up to a second: its event loop blocks in
``accept()``, with a 1 s timeout, on the shared socket whenever a sibling
worker won the connection. Waitress never does. It also serves pre-bound
sockets as a documented feature, TCP and Unix alike, from one event loop and
one thread pool, and installs no signal handlers (neither does cheroot).

A stop drains as `procbus.worker.stopping` describes, in two ``stop``
listeners (stop accepting, then wait for the requests in flight, within
`graceful_timeout`).

Then ``main(ctx)`` returns. The event loop is procbus's, around waitress's
dispatchers, because waitress itself can only stop abruptly.

Each request is counted in ``ctx.counters`` (failed when the app raises or
answers 5xx); an app that raises gets waitress's 500 answer and the worker goes
on. With ``access_log`` each response is logged on ``procbus.access`` in the
common log format. Request headers reach the app as sent: waitress's clearing of
``X-Forwarded-*`` headers from untrusted proxies is turned off, proxy trust is
the app's business.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ThreadedTaskDispatcher, WSGITask

from procbus.errors import StartupError
from procbus.worker import access
from procbus.worker.access import AccessRecord
from procbus.worker.apps import WorkerApp, WorkerContext, current_context, hosting, import_object
from procbus.worker.stopping import (
    CUT_GRACE,
    DRAIN_PRIORITY,
    FRESH_GRACE,
    IDLE_GRACE,
    STOP_ACCEPTING_PRIORITY,
)

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "DRAIN_PRIORITY",
    "STOP_ACCEPTING_PRIORITY",
    "current_context",
    "wsgi_worker",
]

log = logging.getLogger("procbus.worker.wsgi")

POLL_INTERVAL: Final = 0.5
"""Longest time the event loop sleeps before it looks at ``ctx.stopping``."""

_request_thread = threading.local()


def wsgi_worker(
    app: str | WSGIApplication,
    *,
    threads: int = 4,
    access_log: bool = False,
    graceful_timeout: float = 30.0,
) -> WorkerApp:
    """A worker app serving the WSGI `app` on the worker's listening sockets.

    `app` is a WSGI callable or its ``"module:attribute"`` name, imported in
    the worker (a `StartupError` from there ends the worker). `threads` serve
    requests; `graceful_timeout` bounds the drain on ``stop``.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if graceful_timeout < 0:
        raise ValueError(f"graceful_timeout must not be negative, got {graceful_timeout}")

    def main(ctx: WorkerContext) -> None:
        if ctx.stopping.is_set():
            return
        with hosting(ctx):
            wsgi_app = _load_wsgi_app(app)
            counted = RequestAccounting(wsgi_app, ctx, log_access=access_log)
            host = WaitressHost(
                counted, ctx.sockets, threads=threads, graceful_timeout=graceful_timeout
            )
            ctx.bus.subscribe("stop", host.stop_accepting, STOP_ACCEPTING_PRIORITY)
            ctx.bus.subscribe("stop", host.wait_drained, DRAIN_PRIORITY)
            ctx.ready()  # the app is imported and the sockets are served
            try:
                host.serve(ctx.stopping)
            finally:
                ctx.bus.unsubscribe("stop", host.stop_accepting)
                ctx.bus.unsubscribe("stop", host.wait_drained)

    main.__qualname__ = main.__name__ = f"wsgi_worker({app!r})"
    main.reports_ready = True  # type: ignore[attr-defined]
    return main


def _load_wsgi_app(app: str | WSGIApplication) -> WSGIApplication:
    obj: Any = import_object(app) if isinstance(app, str) else app
    if not callable(obj):
        raise StartupError(f"WSGI app {app!r} is not callable (got {type(obj).__name__})")
    wsgi_app: WSGIApplication = obj
    return wsgi_app


# -- the server ---------------------------------------------------------------


class WaitressHost:
    """waitress's dispatchers on duplicates of `sockets`, driven by `serve`.

    Only the thread in `serve` touches the socket map; `stop_accepting` and
    `wait_drained` may be called from any thread and wake it.
    """

    def __init__(
        self,
        app: WSGIApplication,
        sockets: Sequence[socket.socket],
        *,
        threads: int,
        graceful_timeout: float,
    ) -> None:
        if not sockets:
            raise StartupError("a WSGI worker needs at least one listening socket")
        self.graceful_timeout = graceful_timeout
        self._map: dict[int, Any] = {}
        self._dispatcher = ThreadedTaskDispatcher()
        self._servers: list[BaseWSGIServer] = []
        self._stop_requested = threading.Event()
        self._not_accepting = threading.Event()
        self._done = threading.Event()
        self._deadline: float | None = None
        self._triggers_lock = threading.Lock()
        self._triggers_closed = False
        try:
            for sock in sockets:
                # A duplicate, so that closing it stops this worker only. No
                # listen() (``_start=False``): the backlog is the master's.
                own = sock.dup()
                try:
                    server = create_server(
                        app,
                        map=self._map,
                        _start=False,
                        _dispatcher=self._dispatcher,
                        sockets=[own],
                        clear_untrusted_proxy_headers=False,
                    )
                except BaseException:
                    own.close()
                    raise
                assert isinstance(server, BaseWSGIServer)  # one socket: no MultiSocketServer
                server.accepting = True
                server.channel_class = self._channel_class()
                self._servers.append(server)
        except BaseException:
            self._close_everything()
            raise
        self._dispatcher.set_thread_count(threads)

    def _channel_class(self) -> type[HTTPChannel]:
        """Connections whose responses say ``Connection: close`` once a drain began.

        A keep-alive client then opens its next connection to another worker
        instead of sending its next request into a connection this worker is
        about to close (a request that would be lost: the classic keep-alive
        race).
        """
        host = self

        class DrainingTask(WSGITask):
            def build_response_header(self) -> Any:
                if host.draining:
                    request: Any = self.request
                    request.headers["CONNECTION"] = "close"
                return super().build_response_header()

        class DrainingChannel(HTTPChannel):
            task_class = DrainingTask

        return DrainingChannel

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    # -- any thread ----------------------------------------------------------

    def stop_accepting(self) -> None:
        """Stop accepting now; return once no listening socket is polled."""
        self._stop_requested.set()
        self._wake()
        if not self._not_accepting.wait(max(self.graceful_timeout, POLL_INTERVAL) + CUT_GRACE):
            log.warning("WSGI server did not stop accepting in time")

    def wait_drained(self) -> None:
        """Stop accepting; return once every connection is closed.

        Called from a request of this server (an app that stops its own
        worker), it does not wait: it would wait for itself.
        """
        self._stop_requested.set()
        self._wake()
        if getattr(_request_thread, "active", False):
            return
        if not self._done.wait(self.graceful_timeout + 2 * CUT_GRACE + POLL_INTERVAL):
            log.warning("WSGI server did not drain in time")

    def _wake(self) -> None:
        with self._triggers_lock:
            if self._triggers_closed:
                return
            trigger: Any = self._servers[0].trigger
            with contextlib.suppress(OSError):
                trigger.pull_trigger()

    # -- the loop thread -------------------------------------------------------

    def serve(self, stopping: threading.Event) -> None:
        """Serve until drained after a stop request or `stopping`."""
        try:
            while True:
                if self._deadline is None and (self._stop_requested.is_set() or stopping.is_set()):
                    self._close_listeners()
                if self._deadline is not None:
                    busy = self._close_idle_channels()
                    if not busy:
                        break
                    if time.monotonic() >= self._deadline:
                        log.warning(
                            "graceful timeout (%gs): cutting %d connection(s) still busy",
                            self.graceful_timeout,
                            busy,
                        )
                        break
                wasyncore.loop(timeout=POLL_INTERVAL, use_poll=True, map=self._map, count=1)
        finally:
            self._close_everything()
            self._not_accepting.set()
            self._done.set()

    def _close_listeners(self) -> None:
        self._deadline = time.monotonic() + self.graceful_timeout
        for server in self._servers:
            # The dispatcher's close, not the server's: the server's also
            # closes the trigger that request threads still pull.
            _close_dispatcher(server)
        self._not_accepting.set()
        log.debug("WSGI server stopped accepting; draining")

    def _close_idle_channels(self) -> int:
        """Close every connection with nothing in flight; return how many remain."""
        busy = 0
        for channel in list(self._map.values()):
            if not isinstance(channel, HTTPChannel):
                continue
            c: Any = channel
            # Request threads only remove requests, under this lock, once
            # their whole answer is in the output buffer.
            with c.requests_lock:
                idle = not c.requests and c.request is None and not c.total_outbufs_len
            # A quiet connection may still have a request on its way: one
            # accepted just before the stop whose request has not arrived, or
            # a keep-alive one whose client sends its next request right
            # after the last answer. Closing it would lose that request, so
            # it gets a grace to arrive (and is answered with "close").
            fresh = c.last_activity == c.creation_time
            grace = min(FRESH_GRACE if fresh else IDLE_GRACE, self.graceful_timeout)
            if time.time() - c.last_activity < grace:
                idle = False
            if idle:
                channel.handle_close()
            else:
                busy += 1
        return busy

    def _close_everything(self) -> None:
        for obj in list(self._map.values()):
            if isinstance(obj, HTTPChannel):
                obj.handle_close()
        for server in self._servers:
            _close_dispatcher(server)
        # Returns as soon as the threads are out; threads still in the app
        # after a cut get CUT_GRACE seconds, then are left behind (daemons).
        # Their connections are closed, so they no longer pull the triggers.
        self._dispatcher.shutdown(timeout=CUT_GRACE)
        with self._triggers_lock:
            self._triggers_closed = True
            for server in self._servers:
                trigger: Any = server.trigger
                with contextlib.suppress(OSError):
                    trigger.close()
        self._map.clear()


def _close_dispatcher(server: BaseWSGIServer) -> None:
    """Stop polling `server`'s listening socket and close it (idempotent)."""
    server.accepting = False
    if getattr(server, "socket", None) is not None:
        wasyncore.dispatcher.close(server)


# -- counting and logging requests ----------------------------------------------


class RequestAccounting:
    """WSGI middleware: count each request in the worker's counters, log it.

    A request is finished when its response body is closed (or when the app
    raised); it failed when the app raised or the status is 5xx.
    """

    def __init__(self, app: WSGIApplication, ctx: WorkerContext, *, log_access: bool) -> None:
        self.app = app
        self.ctx = ctx
        self.log_access = log_access

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        self.ctx.request_started()
        _request_thread.active = True
        record = AccessRecord(started=time.time())

        def recording_start_response(
            status: str,
            headers: list[tuple[str, str]],
            exc_info: OptExcInfo | None = None,
        ) -> Callable[[bytes], object]:
            record.status = _status_code(status)
            write = start_response(status, headers, exc_info)

            def counting_write(data: bytes) -> object:
                record.sent += len(data)
                return write(data)

            return counting_write

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            record.raised = True
            self._finish(environ, record)
            raise
        wrapper = _SizedBody if hasattr(body, "__len__") else _Body
        return wrapper(body, record, lambda: self._finish(environ, record))

    def _finish(self, environ: WSGIEnvironment, record: AccessRecord) -> None:
        _request_thread.active = False
        self.ctx.request_finished(failed=record.failed)
        if self.log_access:
            access.access_logger.info("%s", common_log_line(environ, record))


class _Body:
    """The app's response body, counted; `close` finishes the request once."""

    def __init__(self, body: Iterable[bytes], record: AccessRecord, finish: Callable[[], None]):
        self._body = body
        self._record = record
        self._finish: Callable[[], None] | None = finish

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._body:
                self._record.sent += len(chunk)
                yield chunk
        except Exception:
            self._record.raised = True
            raise

    def close(self) -> None:
        finish, self._finish = self._finish, None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        except Exception:
            self._record.raised = True
            raise
        finally:
            if finish is not None:
                finish()


class _SizedBody(_Body):
    """Keeps ``len()`` of a sized body: waitress uses it for Content-Length."""

    def __len__(self) -> int:
        return len(self._body)  # type: ignore[arg-type]


def common_log_line(environ: WSGIEnvironment, record: AccessRecord) -> str:
    """The access log's line for the request `environ` (see `procbus.worker.access`)."""
    target = environ.get("REQUEST_URI") or (
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
    )  # fmt: skip
    line = f"{environ.get('REQUEST_METHOD', '-')} {target} {environ.get('SERVER_PROTOCOL', '-')}"
    return access.common_log_line(
        record,
        remote_addr=environ.get("REMOTE_ADDR"),
        remote_user=environ.get("REMOTE_USER"),
        request_line=line,
    )


def _status_code(status: str) -> int:
    """``"404 Not Found"`` -> 404 (0 for a status line that has no number)."""
    code = status.split(" ", 1)[0]
    return int(code) if code.isdigit() else 0
