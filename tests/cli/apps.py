"""WSGI apps for the hosting tests (imported in the workers, after fork)."""

from __future__ import annotations

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
