"""The demo WSGI app, hosted by ``procbus run`` when no app is named.

Each page says which worker answered (id, pid, generation), how many requests
that worker has served, and the last message published on the ``demo.message``
channel, with the ``procbus ctl publish`` command that sets it. Reload and
watch the worker change; publish and watch every worker answer.

- ``/``: the HTML page;
- ``/worker``: ``{"worker", "pid", "generation", "requests"}`` as JSON;
- ``/health``: 200 ``ok``;
- ``/boom``: raises, to show a 500 answer and a worker that goes on.

The ``demo.message`` listener is subscribed on ``procbus.bus`` (the worker's
own bus in a worker) when this module is imported, which happens in the worker
after fork; its return value is the worker's reply to the publish.

Every request is counted in ``demo_requests_total{path}``, a plain
prometheus_client counter of the worker's default registry: with ``--metrics``
(``scripts/demo`` sets it), ``/metrics`` shows it once per worker, with a
``worker`` label, beside procbus's own metrics.
"""

from __future__ import annotations

import html
import json
import os
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter

from procbus.bus import bus
from procbus.worker.apps import current_context

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

__all__ = ["MESSAGE_CHANNEL", "REQUESTS", "DemoError", "app", "last_message"]

MESSAGE_CHANNEL: Final = "demo.message"
PATHS: Final = frozenset({"/", "/worker", "/health", "/boom"})
"""The ``path`` label's values (anything else is ``other``: labels must stay few)."""
REQUESTS: Final = Counter("demo_requests", "Requests the demo app answered.", ["path"])

_lock = threading.Lock()
_last_message: str | None = None


class DemoError(RuntimeError):
    """Raised on purpose by ``/boom``."""


def remember_message(message: object) -> str:
    """``demo.message`` listener: keep `message`, answer what this worker kept."""
    global _last_message
    text = str(message)
    with _lock:
        _last_message = text
    return f"pid {os.getpid()} got {text!r}"


def last_message() -> str | None:
    """The last message this process received on ``demo.message``."""
    with _lock:
        return _last_message


bus.subscribe(MESSAGE_CHANNEL, remember_message)


def worker_info() -> dict[str, int | None]:
    """Who is answering: worker id, pid, generation and requests served so far."""
    ctx = current_context()
    return {
        "worker": ctx.worker_id if ctx is not None else None,
        "pid": os.getpid(),
        "generation": ctx.generation if ctx is not None else None,
        "requests": ctx.counters["requests"] if ctx is not None else None,
    }


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The demo WSGI app."""
    path = environ.get("PATH_INFO") or "/"
    REQUESTS.labels(path if path in PATHS else "other").inc()
    if path == "/boom":
        raise DemoError("boom: this is the demo's deliberate failure")
    if path == "/health":
        return _respond(start_response, "200 OK", "text/plain; charset=utf-8", b"ok")
    if path == "/worker":
        body = json.dumps(worker_info()).encode()
        return _respond(start_response, "200 OK", "application/json", body)
    if path == "/":
        return _respond(start_response, "200 OK", "text/html; charset=utf-8", _page())
    return _respond(start_response, "404 Not Found", "text/plain; charset=utf-8", b"not found")


def _respond(
    start_response: StartResponse, status: str, content_type: str, body: bytes
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


_PAGE: Final = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>procbus demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 42rem; margin: 2rem auto; }}
dt {{ font-weight: bold; }} code, pre {{ background: #f4f4f4; padding: .1rem .3rem; }}
</style></head>
<body>
<h1>procbus demo</h1>
<p>This page was served by</p>
<dl>
<dt>worker</dt><dd>{worker}</dd>
<dt>pid</dt><dd>{pid}</dd>
<dt>generation</dt><dd>{generation}</dd>
<dt>requests served by this worker before this one</dt><dd>{requests}</dd>
<dt>last message on <code>{channel}</code></dt><dd>{message}</dd>
</dl>
<p>Publish a message to every worker, then reload this page:</p>
<pre>procbus ctl publish {channel} "hello, workers"</pre>
<p>Try <code>procbus ctl reload</code> (a new generation answers),
<code>procbus ctl metrics</code> (this page's counter, per worker),
<a href="/worker">/worker</a> (JSON), <a href="/health">/health</a>
and <a href="/boom">/boom</a> (a 500; the worker goes on).</p>
</body>
</html>
"""


def _page() -> bytes:
    info = worker_info()
    message = last_message()
    return _PAGE.format(
        worker=_text(info["worker"]),
        pid=_text(info["pid"]),
        generation=_text(info["generation"]),
        requests=_text(info["requests"]),
        channel=MESSAGE_CHANNEL,
        message="<em>none yet</em>" if message is None else html.escape(message),
    ).encode()


def _text(value: object) -> str:
    return "<em>not in a worker</em>" if value is None else html.escape(str(value))
