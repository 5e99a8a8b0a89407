"""Async listeners on an app's event loop: the bus's ``awaiter`` in an ASGI worker.

`procbus.bus.Bus.run_listeners` calls every listener on the thread that
publishes (the listener thread for the master's publishes, the main thread
for the worker's own ``stop`` and ``exit``). An ``async def`` listener returns
a coroutine there; `LoopAwaiter` hands it to the app's event loop with
``asyncio.run_coroutine_threadsafe`` and waits for its outcome, so that the
coroutine runs beside the app's requests, on the loop whose objects it may
use, and what it returns or raises is the listener's result or error (every
listener still runs, in priority order: the bus's rules hold). The wait ends
at the publish's deadline (`procbus.worker.runner.publish_deadline`), where the
coroutine is cancelled and the listener's error is a ``TimeoutError``, so a
slow coroutine cannot hold the listener thread for ever.

Two things cannot be waited for and are errors instead of deadlocks: a
publish made on the loop's own thread (a request handler calling
``bus.publish``), and one after the loop ended. A worker without an event
loop (WSGI, generic) has `no_event_loop` as its awaiter: an ``async def``
listener there is an error that says so, rather than a coroutine that is
never run and cannot be sent back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable
from typing import Any, NoReturn

from procbus.worker.runner import publish_deadline

__all__ = ["LoopAwaiter", "no_event_loop"]


class LoopAwaiter:
    """The worker bus's ``awaiter`` while the app's loop runs (see the module doc).

    Called on any thread but the loop's: it hands the awaitable to the loop
    and waits for its outcome, until the publish's deadline
    (`procbus.worker.runner.publish_deadline`) if there is one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[concurrent.futures.Future[tuple[Any, BaseException | None]]] = set()

    def __call__(self, awaitable: Awaitable[Any]) -> Any:
        if threading.get_ident() == self._loop_thread:
            _discard(awaitable)
            raise RuntimeError(
                "an async listener was published to from the app's event loop itself, "
                "which cannot wait for it: publish from another thread, or await the "
                "coroutine in the app"
            )
        with self._lock:
            if self._closed:
                _discard(awaitable)
                raise RuntimeError("the ASGI app's event loop has ended: async listener not run")
            future = asyncio.run_coroutine_threadsafe(_outcome_of(awaitable), self._loop)
            self._pending.add(future)
        deadline = publish_deadline()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            value, escaped = future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"async listener still running at the publish's deadline "
                f"({timeout:.3g}s after it began here): cancelled"
            ) from None
        except concurrent.futures.CancelledError:
            raise RuntimeError(
                "the ASGI app's event loop ended before the async listener did"
            ) from None
        finally:
            with self._lock:
                self._pending.discard(future)
        if escaped is not None:
            raise escaped  # SystemExit or KeyboardInterrupt: the worker ends, as for sync ones
        return value

    def close(self) -> None:
        """The loop ends: nothing more is handed to it; whoever waits is told."""
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, set()
        for future in pending:
            future.cancel()


async def _outcome_of(awaitable: Awaitable[Any]) -> tuple[Any, BaseException | None]:
    """Await `awaitable`; ``SystemExit`` and ``KeyboardInterrupt`` come back as values
    (raised on the loop, they would end it)."""
    try:
        return await awaitable, None
    except (SystemExit, KeyboardInterrupt) as exc:
        return None, exc


def _discard(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine never awaited would warn


def no_event_loop(awaitable: Awaitable[Any]) -> NoReturn:
    """The awaiter of a process that runs no event loop for listeners (a WSGI or
    generic worker, the master): the listener's error."""
    _discard(awaitable)
    raise TypeError(
        "an async listener ran in a process without an event loop: async listeners "
        "run in the workers of an ASGI app (on its loop)"
    )
