"""Apps that publish to the tree from a worker (imported in the workers, after fork).

``GET /publish?channel=C&key=K[&include_self=0]`` publishes ``C`` with ``K`` to the
tree (`procbus.tree.publish`, or ``await procbus.tree.apublish`` in the ASGI twin)
and answers the tree's reply as JSON, with the answering worker's id: ``{"worker",
"ok", "reply"}``; a refusal is a 400 with ``{"worker", "error", "code", "message"}``.

Listeners on every worker's bus:

- ``cache.clear(key)``: answers ``{"worker", "pid", "key"}``;
- ``relay()``: publishes ``cache.clear`` to the tree with itself included (it cannot:
  a listener would wait for itself), ``arelay()`` the same as an async listener
  (ASGI workers only);
- ``relay.others()``: publishes ``cache.clear`` leaving itself out, and answers the
  ids of the workers that answered.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from procbus import bus, tree
from procbus.errors import TreePublishError
from procbus.worker.apps import current_context


def _worker_id() -> int | None:
    ctx = current_context()
    return ctx.worker_id if ctx is not None else None


@bus.subscribe("cache.clear")
def clear(key: str) -> dict[str, Any]:
    return {"worker": _worker_id(), "pid": os.getpid(), "key": key}


@bus.subscribe("relay")
def relay() -> bool:
    return tree.publish("cache.clear", "from a listener").ok


@bus.subscribe("arelay")
async def arelay() -> bool:
    return (await tree.apublish("cache.clear", "from an async listener")).ok


@bus.subscribe("relay.others")
def relay_others() -> list[int]:
    reply = tree.publish("cache.clear", "from a listener", include_self=False)
    return sorted(w for w, result in reply.workers.items() if result.status.value == "ok")


def _query(raw: str) -> tuple[str, str, dict[str, Any]]:
    query = {k: v[0] for k, v in parse_qs(raw).items()}
    options: dict[str, Any] = {"timeout": 10}
    if query.get("include_self") == "0":
        options["include_self"] = False
    return query.get("channel", "cache.clear"), query.get("key", ""), options


def _answer(reply: tree.TreeReply) -> tuple[int, bytes]:
    body = {"worker": _worker_id(), "ok": reply.ok, "reply": reply.to_dict()}
    return 200, json.dumps(body).encode()


def _refused(exc: TreePublishError) -> tuple[int, bytes]:
    body = {"worker": _worker_id(), "error": type(exc).__name__, "code": exc.code}
    return 400, json.dumps({**body, "message": str(exc)}).encode()


def publisher(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """The WSGI app (see the module docstring)."""
    if environ.get("PATH_INFO") != "/publish":
        status, body = 404, b"not found"
    else:
        channel, key, options = _query(environ.get("QUERY_STRING", ""))
        try:
            status, body = _answer(tree.publish(channel, key, **options))
        except TreePublishError as exc:
            status, body = _refused(exc)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(f"{status} {'OK' if status == 200 else 'Error'}", headers)
    return [body]


async def publisher_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI twin: the same, awaiting the publish."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/publish":
        status, body = 404, b"not found"
    else:
        channel, key, options = _query(scope["query_string"].decode())
        try:
            status, body = _answer(await tree.apublish(channel, key, **options))
        except TreePublishError as exc:
            status, body = _refused(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
