"""An ASGI app whose lifespan and async listeners the tests steer through the environment.

- ``PROCBUS_TEST_GATE``: the lifespan startup waits until this file exists (and says
  it waits with a file ``GATE.PID.waiting``);
- ``PROCBUS_TEST_STARTUP``: ``fail`` sends ``lifespan.startup.failed``, ``raise`` raises
  (or the content of the file ``PROCBUS_TEST_STARTUP_FILE`` names, read at each startup);
- ``PROCBUS_TEST_SHUTDOWN_FILE``: the lifespan shutdown appends "PID shutdown" to it;
- ``PROCBUS_TEST_SHUTDOWN``: ``hang`` makes the shutdown never complete.

Async listeners: ``loop.check`` answers whether it runs on the loop the app's
lifespan runs on, and on which thread; ``listener.fail`` raises; ``listener.sleep``
sleeps its argument in seconds. A sync ``listener.sync`` answers its thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

from procbus import bus

_loop: list[asyncio.AbstractEventLoop] = []


@bus.subscribe("loop.check")
async def loop_check() -> dict[str, Any]:
    return {
        "same_loop": bool(_loop) and asyncio.get_running_loop() is _loop[0],
        "thread": threading.current_thread().name,
        "pid": os.getpid(),
    }


@bus.subscribe("listener.fail")
async def listener_fail() -> None:
    await asyncio.sleep(0)
    raise LookupError("the async listener failed")


@bus.subscribe("listener.sleep")
async def listener_sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@bus.subscribe("listener.sync")
def listener_sync() -> str:
    return threading.current_thread().name


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = f"up {os.getpid()}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    _loop.append(asyncio.get_running_loop())
    gate = os.environ.get("PROCBUS_TEST_GATE")
    if gate:
        Path(f"{gate}.{os.getpid()}.waiting").touch()
    while gate and not Path(gate).exists():
        await asyncio.sleep(0.05)
    startup = os.environ.get("PROCBUS_TEST_STARTUP")
    if "PROCBUS_TEST_STARTUP_FILE" in os.environ:
        startup = Path(os.environ["PROCBUS_TEST_STARTUP_FILE"]).read_text().strip()
    if startup == "fail":
        await send({"type": "lifespan.startup.failed", "message": "the database is down"})
        return
    if startup == "raise":
        raise ConnectionRefusedError("no database at db:5432")
    await send({"type": "lifespan.startup.complete"})
    message = await receive()
    assert message["type"] == "lifespan.shutdown"
    if os.environ.get("PROCBUS_TEST_SHUTDOWN") == "hang":
        await asyncio.Event().wait()
    record = os.environ.get("PROCBUS_TEST_SHUTDOWN_FILE")
    if record:
        with open(record, "a") as stream:
            stream.write(f"{os.getpid()} shutdown\n")
    await send({"type": "lifespan.shutdown.complete"})


def generic(ctx: Any) -> None:
    """A generic (non-HTTP) worker with this module's async listeners: no event loop."""
    ctx.stopping.wait()
