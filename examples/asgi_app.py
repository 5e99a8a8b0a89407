"""An ASGI app on procbus: Starlette, a lifespan, and an async bus listener.

    pip install procbus starlette
    cd examples && procbus run asgi_app:app --workers 2
    curl http://127.0.0.1:8000/worker               # which worker answered
    curl http://127.0.0.1:8000/items/42             # cached per worker
    curl -X DELETE http://127.0.0.1:8000/items/42   # one worker tells every worker to drop it
    procbus ctl publish cache.clear                 # every worker drops its cache and says so

Each worker imports this module after fork and serves ``app`` with uvicorn.
The lifespan's startup runs before the worker counts as running (a reload
waits for it; raising there is a boot failure: the master backs off, and at
start stops with the error), its shutdown when the worker stops, after its
requests in flight.

``cache.clear`` is an ``async def`` listener on the worker's bus: procbus runs
it on the app's event loop, beside the requests, so it may await what the
app awaits and touch the app's objects without a lock. Its return value (or
exception) is this worker's answer in the tree publish::

    $ procbus ctl publish cache.clear
    cache.clear (seq 1): master []
    WORKER  PID    STATUS  RESULT
    1       20048  ok      [{'worker': 1, 'pid': 20048, 'dropped': 3}]
    2       20051  ok      [{'worker': 2, 'pid': 20051, 'dropped': 1}]

``DELETE /items/{key}`` is the same publish made by the worker that serves the
request (``await procbus.tree.apublish``: the master runs it as its own tree
publish, this worker included, and the request awaits every worker's answer
without blocking the event loop)::

    $ curl -X DELETE http://127.0.0.1:8000/items/42
    {"ok":true,"workers":{"1":[{"worker":1,"pid":20048,"dropped":1}],
                          "2":[{"worker":2,"pid":20051,"dropped":0}]}}
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from procbus import bus, tree
from procbus.worker.apps import current_context

CACHE: dict[str, Any] = {}
"""What this worker computed, until ``cache.clear`` is published."""


@bus.subscribe("cache.clear")
async def clear_cache(prefix: str = "") -> dict[str, Any]:
    """Drop the cached entries (those starting with `prefix`); answer how many."""
    dropped = [key for key in CACHE if key.startswith(prefix)]
    for key in dropped:
        del CACHE[key]
    await asyncio.sleep(0)  # a real app might await its backing store here
    return {"worker": _worker_id(), "pid": os.getpid(), "dropped": len(dropped)}


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    # Startup: open pools, warm caches... The worker serves only after this.
    yield {"loop": id(asyncio.get_running_loop())}
    # Shutdown: after the last request in flight, within graceful_timeout.
    CACHE.clear()


async def page(request: Request) -> Response:
    return HTMLResponse(
        f"<!doctype html><title>procbus ASGI example</title><h1>procbus ASGI example</h1>"
        f"<p>served by worker {_worker_id()} (pid {os.getpid()}), "
        f"{len(CACHE)} entries cached; <code>procbus ctl publish cache.clear</code> drops them</p>"
    )


async def worker(request: Request) -> JSONResponse:
    ctx = current_context()
    return JSONResponse(
        {
            "worker": _worker_id(),
            "pid": os.getpid(),
            "generation": ctx.generation if ctx is not None else None,
            "requests": ctx.counters["requests"] if ctx is not None else None,
            "cached": len(CACHE),
        }
    )


async def item(request: Request) -> JSONResponse:
    key = request.path_params["key"]
    if key not in CACHE:
        await asyncio.sleep(0.001)  # "compute" it
        CACHE[key] = {"key": key, "computed_by": os.getpid()}
    return JSONResponse(CACHE[key])


async def invalidate(request: Request) -> JSONResponse:
    """Drop an item from every worker's cache: a tree publish from this worker."""
    reply = await tree.apublish("cache.clear", request.path_params["key"], timeout=5)
    workers = {wid: result.results for wid, result in reply.workers.items()}
    return JSONResponse({"ok": reply.ok, "workers": workers}, status_code=200 if reply.ok else 502)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom: this is the example's deliberate failure")


def _worker_id() -> int | None:
    ctx = current_context()
    return ctx.worker_id if ctx is not None else None


app = Starlette(
    routes=[
        Route("/", page),
        Route("/worker", worker),
        Route("/items/{key}", item),
        Route("/items/{key}", invalidate, methods=["DELETE"]),
        Route("/health", health),
        Route("/boom", boom),
    ],
    lifespan=lifespan,
)
