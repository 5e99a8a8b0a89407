"""WSGI and ASGI apps for the hosting tests (imported in the workers, after fork).

Each WSGI app has an ASGI twin (``_asgi``) that answers the same, so that one
test runs against either (`tests.cli.hosting.Apps`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from typing import Any

# A slow boot, as a real app's imports: widens the window of an upgrade.
time.sleep(float(os.environ.get("PROCBUS_TEST_IMPORT_DELAY", "0")))

VERSION_FILE = os.environ.get("PROCBUS_TEST_VERSION_FILE")
# Read once, at import: a reload (fresh import in new workers) serves new code.
VERSION = open(VERSION_FILE).read().strip() if VERSION_FILE else "none"  # noqa: SIM115
if VERSION == "broken":
    raise RuntimeError("version file says broken")
if VERSION == "one breaks":
    # The first process to import this version fails to boot, a second later (once the
    # others of its generation run); every other one starts: one bad new worker in a reload.
    try:
        os.close(os.open(f"{VERSION_FILE}.claimed", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        VERSION = "survivor"
    else:
        time.sleep(1.0)
        raise RuntimeError("the first worker of this version breaks")

not_callable = 42


def versioned(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = f"{VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def slow(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Answers after ``?seconds`` (default 1): a request in flight during a stop."""
    seconds = float(environ.get("QUERY_STRING", "").partition("=")[2] or 1)
    time.sleep(seconds)
    body = f"slept {seconds}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


LEAK_STEP = 4 * 2**20
LEAK_CAP = 96 * 2**20
_leaked: list[bytes] = []


def leaky(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Keeps 4 MiB more per request, written (so it counts in the RSS), up to 96 MiB a
    process: a leak for max_rss to recycle, bounded whatever the load."""
    if len(_leaked) * LEAK_STEP < LEAK_CAP:
        _leaked.append(b"\x01" * LEAK_STEP)
    body = f"leaky {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def versioned_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await _answer(send, f"{VERSION} {os.getpid()}".encode())


async def slow_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers after ``?seconds`` (default 1), awaiting: a request in flight during a stop."""
    if scope["type"] != "http":
        return
    seconds = float(scope["query_string"].decode().partition("=")[2] or 1)
    await asyncio.sleep(seconds)
    await _answer(send, f"slept {seconds}".encode())


async def _answer(send: Any, body: bytes, status: int = 200) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
