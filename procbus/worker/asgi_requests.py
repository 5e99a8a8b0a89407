"""Counting and logging an ASGI worker's requests, and ``Connection: close`` in a drain.

`RequestAccounting` wraps the app as an ASGI middleware: every HTTP request is
counted in ``ctx.counters`` (``requests``, ``in_flight``, and ``errors`` when the
app raised, never answered or answered 5xx), logged on ``procbus.access`` in the
common log format when ``access_log`` is on (the same line as a WSGI worker's,
`procbus.worker.access`), and, while its host drains, answered with
``Connection: close`` so that a keep-alive client opens its next connection to
another worker. WebSocket and lifespan scopes pass through uncounted.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from procbus.worker import access
from procbus.worker.access import AccessRecord
from procbus.worker.apps import WorkerContext
from procbus.worker.lifespan import ASGIApp

__all__ = ["Draining", "RequestAccounting", "common_log_line"]


class Draining(Protocol):
    """What the middleware reads of its host."""

    @property
    def draining(self) -> bool:
        """Whether the host drains: every response says ``Connection: close``."""
        ...


class RequestAccounting:
    """ASGI middleware: count each HTTP request in the worker's counters, log it,
    and say ``Connection: close`` while the host drains.

    On every request's path, so kept lean: without ``access_log`` it only
    follows the status (a request failed when the app raised, never answered,
    or answered 5xx).
    """

    def __init__(
        self, app: ASGIApp, ctx: WorkerContext, host: Draining, *, log_access: bool
    ) -> None:
        self.app = app
        self.ctx = ctx
        self.host = host
        self.log_access = log_access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.log_access:
            await self._logged(scope, receive, send)
            return
        host = self.host
        counters = self.ctx.counters
        status = 0

        def counting_send(message: dict[str, Any]) -> Awaitable[None]:
            # Not a coroutine function: it hands back send's awaitable, one
            # coroutine less per message on the hot path.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if host.draining:
                    message = _closing(message)
            result: Awaitable[None] = send(message)
            return result

        counters.request_started()
        failed = True
        try:
            await self.app(scope, receive, counting_send)
            failed = not 0 < status < 500
        finally:
            counters.request_finished(failed)

    async def _logged(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        host = self.host
        record = AccessRecord(started=time.time())

        async def recording_send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                record.status = message["status"]
                if host.draining:
                    message = _closing(message)
            elif kind == "http.response.body":
                record.sent += len(message.get("body", b""))
            await send(message)

        self.ctx.request_started()
        try:
            await self.app(scope, receive, recording_send)
        except BaseException:
            record.raised = True
            raise
        finally:
            self.ctx.request_finished(failed=record.failed)
            access.access_logger.info("%s", common_log_line(scope, record))


def _closing(start: dict[str, Any]) -> dict[str, Any]:
    """`start` (an ``http.response.start``) saying ``Connection: close``."""
    return {**start, "headers": [*start.get("headers", ()), (b"connection", b"close")]}


def common_log_line(scope: dict[str, Any], record: AccessRecord) -> str:
    """The access log's line for the request `scope` (see `procbus.worker.access`)."""
    path = scope.get("raw_path") or scope.get("path", "").encode()
    target = path.decode("latin-1")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    line = f"{scope.get('method', '-')} {target} HTTP/{scope.get('http_version', '1.1')}"
    client: Sequence[Any] | None = scope.get("client")
    return access.common_log_line(
        record, remote_addr=client[0] if client else None, remote_user=None, request_line=line
    )
