"""`procbus.worker.lifespan`: what an app's lifespan answers, and how it counts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from procbus.errors import StartupError
from procbus.worker.lifespan import Lifespan, LifespanOutcome


class Recorded:
    """A lifespan app whose behaviour each test sets; it records what it received."""

    def __init__(self, startup: str = "complete", shutdown: str = "complete") -> None:
        self.startup = startup
        self.shutdown = shutdown
        self.received: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        assert scope["asgi"]["version"] == "3.0"
        message = await receive()
        self.received.append(message["type"])
        if self.startup == "raise":
            raise RuntimeError("cannot connect")
        if self.startup == "fail":
            await send({"type": "lifespan.startup.failed", "message": "no config"})
            return
        if self.startup == "return":
            return
        scope["state"]["pool"] = "open"
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        self.received.append(message["type"])
        if self.shutdown == "hang":
            await asyncio.Event().wait()
        if self.shutdown == "raise":
            raise RuntimeError("close failed")
        await send({"type": "lifespan.shutdown.complete"})


def test_startup_and_shutdown_complete_and_state_is_kept() -> None:
    app = Recorded()

    async def life() -> tuple[LifespanOutcome, LifespanOutcome, dict[str, Any]]:
        lifespan = Lifespan(app)
        started = await lifespan.startup()
        state = dict(lifespan.state)
        return started, await lifespan.shutdown(5), state

    started, stopped, state = asyncio.run(life())
    assert (started, stopped) == (LifespanOutcome.COMPLETE, LifespanOutcome.COMPLETE)
    assert state == {"pool": "open"}
    assert app.received == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("fail", "ASGI lifespan startup failed: no config"),
        ("raise", "ASGI lifespan startup raised RuntimeError: cannot connect"),
    ],
)
def test_startup_failed_or_raising_after_receiving_is_a_startup_error(
    behaviour: str, message: str
) -> None:
    async def life() -> None:
        await Lifespan(Recorded(startup=behaviour)).startup()

    with pytest.raises(StartupError) as info:
        asyncio.run(life())
    assert str(info.value) == message
    assert (info.value.__cause__ is not None) == (behaviour == "raise")


def test_app_raising_before_it_asks_does_not_speak_lifespan(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Steps: an app that raises at once on a lifespan scope (as Django's does).
    Expected: startup says UNSUPPORTED and logs it; shutdown does nothing."""

    async def http_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise ValueError("only http")

    async def life() -> tuple[LifespanOutcome, LifespanOutcome]:
        lifespan = Lifespan(http_only)
        return await lifespan.startup(), await lifespan.shutdown(5)

    caplog.set_level(logging.INFO, logger="procbus.worker.asgi")
    assert asyncio.run(life()) == (LifespanOutcome.UNSUPPORTED, LifespanOutcome.UNSUPPORTED)
    assert any("does not use the lifespan protocol" in r.getMessage() for r in caplog.records)


def test_app_returning_without_completing_is_served_without_lifespan() -> None:
    async def life() -> LifespanOutcome:
        return await Lifespan(Recorded(startup="return")).startup()

    assert asyncio.run(life()) is LifespanOutcome.UNSUPPORTED


def test_shutdown_that_hangs_is_cancelled_at_its_timeout(caplog: pytest.LogCaptureFixture) -> None:
    app = Recorded(shutdown="hang")

    async def life() -> tuple[LifespanOutcome, bool]:
        lifespan = Lifespan(app)
        await lifespan.startup()
        outcome = await lifespan.shutdown(0.1)
        return outcome, lifespan.running

    assert asyncio.run(life()) == (LifespanOutcome.TIMED_OUT, False)
    assert any("not complete after 0.1s" in r.getMessage() for r in caplog.records)


def test_shutdown_raising_is_logged_as_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def life() -> LifespanOutcome:
        lifespan = Lifespan(Recorded(shutdown="raise"))
        await lifespan.startup()
        return await lifespan.shutdown(5)

    assert asyncio.run(life()) is LifespanOutcome.FAILED
    assert any("lifespan shutdown raised" in r.getMessage() for r in caplog.records)
