"""The ASGI lifespan protocol of one app, driven by its worker.

An ASGI app learns that its process starts and stops through a ``lifespan``
scope: it receives ``lifespan.startup`` and answers ``lifespan.startup.complete``
(or ``.failed``), and later ``lifespan.shutdown`` and ``lifespan.shutdown.complete``.
In a procbus worker the startup is part of the worker's boot, the shutdown
part of its stop (`procbus.worker.asgi` says when each runs). What counts as what:

- the app raises before it asks for its first message: it does not speak
  lifespan (Django's handler, many plain apps). It is served without one, as
  uvicorn's ``lifespan="auto"`` does;
- ``lifespan.startup.failed``, or an exception after the app received
  ``lifespan.startup`` and before it completed: the app failed to boot
  (`StartupError`, one line; the exception is chained). uvicorn's ``auto``
  mode would take such an exception for "unsupported" and serve an app whose
  startup never finished; procbus does not;
- the app returns without completing the startup: served without lifespan
  (nothing is left to tell it about the shutdown).

`state` is the lifespan state of the ASGI spec: the dict the app fills during
its startup, a shallow copy of which every request's scope gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any

from procbus.errors import StartupError

__all__ = ["Lifespan", "LifespanOutcome"]

log = logging.getLogger("procbus.worker.asgi")

ASGIApp = Any
"""An ASGI 3 callable ``app(scope, receive, send)`` (typed loosely: apps are)."""


class LifespanOutcome(enum.StrEnum):
    """How a lifespan phase ended."""

    COMPLETE = "complete"
    FAILED = "failed"
    """The app sent ``.failed`` or raised."""
    UNSUPPORTED = "unsupported"
    """The app does not speak lifespan (raised before asking, or returned)."""
    TIMED_OUT = "timed out"


class Lifespan:
    """One app's lifespan scope, from `startup` to `shutdown` (on one event loop)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self._inbox: asyncio.Queue[dict[str, Any]] | None = None
        self._asked = False
        self._phase_done: asyncio.Event | None = None
        self._outcome: LifespanOutcome | None = None
        self._message = ""
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        """The startup completed: there is something to shut down."""

    @property
    def running(self) -> bool:
        """Whether the app's lifespan call is still going (its startup completed)."""
        return self._task is not None and not self._task.done()

    async def startup(self) -> LifespanOutcome:
        """Send ``lifespan.startup`` and wait for the app's answer.

        Returns COMPLETE or UNSUPPORTED; raises `StartupError` when the app
        failed to start (the exception it raised, if any, is chained).
        """
        self._inbox = asyncio.Queue()
        self._phase_done = asyncio.Event()
        self._inbox.put_nowait({"type": "lifespan.startup"})
        self._task = asyncio.get_running_loop().create_task(self._main(), name="lifespan")
        await self._phase_done.wait()
        outcome = self._ended()
        if outcome is LifespanOutcome.FAILED:
            if self._error is not None:
                detail = f"{type(self._error).__name__}: {self._error}"
                raise StartupError(f"ASGI lifespan startup raised {detail}") from self._error
            raise StartupError(f"ASGI lifespan startup failed: {self._message or 'no message'}")
        if outcome is LifespanOutcome.UNSUPPORTED:
            log.info("the ASGI app does not use the lifespan protocol: served without it")
        self._started = outcome is LifespanOutcome.COMPLETE
        return outcome

    async def abort(self) -> None:
        """Cancel the app's lifespan call (a stop during its startup); wait until it ended."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def shutdown(self, timeout: float) -> LifespanOutcome:
        """Send ``lifespan.shutdown`` and wait `timeout` seconds at most for the answer.

        Nothing is sent unless the startup completed (and the app still listens).
        A failure or a timeout is logged (and the app's lifespan call
        cancelled on a timeout); nothing is raised: the worker stops anyway.
        """
        if not (self._started and self.running):
            return LifespanOutcome.UNSUPPORTED
        assert self._inbox is not None and self._task is not None
        self._outcome = None
        self._phase_done = asyncio.Event()
        self._inbox.put_nowait({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._phase_done.wait(), max(0.0, timeout))
        except TimeoutError:
            log.warning("ASGI lifespan shutdown not complete after %gs: cancelled", timeout)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            return LifespanOutcome.TIMED_OUT
        outcome = self._ended()
        if outcome is LifespanOutcome.FAILED:
            error = self._error
            if error is not None:
                log.error("ASGI lifespan shutdown raised", exc_info=error)
            else:
                log.error("ASGI lifespan shutdown failed: %s", self._message or "no message")
        return outcome

    # -- the app's side -----------------------------------------------------

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self._asked:
                self._end(LifespanOutcome.UNSUPPORTED)
            else:
                self._error = exc
                self._end(LifespanOutcome.FAILED)
            if not isinstance(exc, Exception):
                raise
        else:
            self._end(LifespanOutcome.UNSUPPORTED)

    async def _receive(self) -> dict[str, Any]:
        assert self._inbox is not None
        self._asked = True
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("lifespan.startup.complete", "lifespan.shutdown.complete"):
            self._end(LifespanOutcome.COMPLETE)
        elif kind in ("lifespan.startup.failed", "lifespan.shutdown.failed"):
            self._message = str(message.get("message", ""))
            self._end(LifespanOutcome.FAILED)
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")

    def _ended(self) -> LifespanOutcome:
        """How the phase that just ended ended."""
        assert self._outcome is not None, "read once the phase ended"
        return self._outcome

    def _end(self, outcome: LifespanOutcome) -> None:
        """The phase under way ended (a later call of the app's ends nothing)."""
        if self._outcome is None:
            self._outcome = outcome
        if self._phase_done is not None:
            self._phase_done.set()
