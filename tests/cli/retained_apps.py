"""WSGI and ASGI apps for the retained-publish tests (imported in the workers, after fork).

Each answers ``FLAGS PID``: FLAGS is what this worker's ``feature.flags``
listener was last given, ``unset`` until then. So a worker's very first
answer shows whether the retained publish ran before it served. The listener
refuses the value ``fail`` (a retained publish that makes a new worker's boot
fail).

The WSGI app's listener is subscribed at import; the ASGI app's (an ``async
def`` one, run on the app's loop) only in its lifespan startup, the latest
point a listener may appear before the worker serves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from procbus import bus, tree

# A slow boot (a real app's imports): a publish can be retained while a worker starts.
time.sleep(float(os.environ.get("PROCBUS_TEST_IMPORT_DELAY", "0")))

flags = "unset"
SHUTDOWN_FILE = os.environ.get("PROCBUS_TEST_SHUTDOWN_FILE")
"""The ASGI app appends its pid there on its lifespan shutdown."""


def set_flags(value: str) -> str:
    """``feature.flags``: remember `value` (``fail``: refuse it)."""
    global flags
    if value == "fail":
        raise RuntimeError("these flags make no sense")
    flags = value
    return f"{os.getpid()} has {value}"


async def set_flags_async(value: str) -> str:
    return set_flags(value)


def flagged(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """``GET /`` answers ``FLAGS PID``; ``GET /set/VALUE`` makes this worker publish
    feature.flags VALUE, retained, to the tree (`procbus.tree`) and answers
    ``set PID``."""
    path = environ.get("PATH_INFO", "/")
    if path.startswith("/set/"):
        reply = tree.publish("feature.flags", path.removeprefix("/set/"), retain=True)
        reply.raise_for_failures()
        body = f"set {os.getpid()}".encode()
    else:
        body = f"{flags} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def flagged_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                bus.subscribe("feature.flags", set_flags_async)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if SHUTDOWN_FILE:
                    with open(SHUTDOWN_FILE, "a") as shutdowns:
                        shutdowns.write(f"{os.getpid()}\n")
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        body = f"{flags} {os.getpid()}".encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


if os.environ.get("PROCBUS_TEST_INTERFACE", "wsgi") == "wsgi":
    bus.subscribe("feature.flags", set_flags)


def flags_worker(ctx: Any) -> None:
    """A generic worker app (``--worker``): its ``feature.flags`` listener is the one
    subscribed at import."""
    ctx.stopping.wait()
