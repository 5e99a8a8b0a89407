"""Test helpers shared by every tier."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def wait_until(predicate: Callable[[], _T], timeout: float = 5.0) -> _T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raise ``AssertionError`` when `timeout` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {predicate!r}")
        time.sleep(0.005)
