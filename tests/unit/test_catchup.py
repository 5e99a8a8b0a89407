"""A new worker's catch-up (`procbus.worker.catchup`), driven by hand: the I/O thread's
side (RETAINED messages in, publishes to run out, their outcomes back) and the app
thread's (`wait`), without sockets or a listener thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from procbus import protocol
from procbus.bus import ListenerOutcome
from procbus.errors import StartupError
from procbus.protocol import Message, MsgType
from procbus.worker.catchup import CatchUp
from tests.helpers import wait_until


def retained(*publishes: tuple[int, str, object], more: bool = False) -> Message:
    """A RETAINED message carrying publishes (seq, channel, argument)."""
    frames = [
        protocol.PublishTemplate(channel, [value], {}, 5.0).frame(seq)
        for seq, channel, value in publishes
    ]
    return protocol.decode(protocol.encode(MsgType.RETAINED, {"frames": frames, "more": more}))


def ran_ok(catch_up: CatchUp, count: int = 1) -> None:
    for _ in range(count):
        catch_up.ran([ListenerOutcome(lambda value: None, "done", None)])


def remember_flag(value: object) -> None:
    """A listener, for its name in the failure."""


class AppThread:
    """`CatchUp.wait` on a thread of its own, as the app's thread calls it; made once the
    I/O thread was woken (`woken`), as a worker's I/O thread is when the app asks."""

    def __init__(self, catch_up: CatchUp, woken: list[int]) -> None:
        self.error: BaseException | None = None
        self.returned = threading.Event()
        self._thread = threading.Thread(target=self._wait, args=(catch_up,), daemon=True)
        before = len(woken)
        self._thread.start()
        wait_until(lambda: len(woken) > before)

    def _wait(self, catch_up: CatchUp) -> None:
        try:
            catch_up.wait()
        except BaseException as exc:
            self.error = exc
        self.returned.set()

    def ended(self) -> bool:
        self._thread.join(5)
        return self.returned.is_set()


@pytest.fixture
def woken() -> list[int]:
    return []


@pytest.fixture
def catch_up(woken: list[int]) -> Iterator[CatchUp]:
    made = CatchUp(lambda: woken.append(1))
    yield made
    made.abandon()


def channels(messages: list[Message]) -> list[str]:
    return [m["channel"] for m in messages]


def test_nothing_runs_before_the_app_asks_and_the_snapshot_is_complete(
    catch_up: CatchUp, woken: list[int]
) -> None:
    """Steps: the snapshot's first part (a, b) arrives; the app asks (its listeners
    exist: it waits); the last part (c) arrives; a, b, c run one by one.
    Expected: nothing to run before both the request and the whole snapshot; then
    a, b, c in that order; the app's wait returns
    only after the last one ran."""
    catch_up.receive(retained((1, "a", 1), (2, "b", 2), more=True))
    assert catch_up.to_run() == []
    app = AppThread(catch_up, woken)
    assert catch_up.to_run() == []  # the snapshot is not complete
    catch_up.receive(retained((3, "c", 3)))
    assert channels(catch_up.to_run()) == ["a", "b", "c"]
    assert catch_up.to_run() == []
    ran_ok(catch_up, 2)
    assert not app.returned.wait(0.05)
    ran_ok(catch_up)
    assert app.ended() and app.error is None
    assert catch_up.caught_up


def test_a_retained_publish_arriving_during_the_catch_up_runs_after_before_it_ends(
    catch_up: CatchUp, woken: list[int]
) -> None:
    """Steps: the snapshot (a) is complete; the app asks; a runs; d arrives (retained
    by the master meanwhile) before a's outcome; a's outcome comes.
    Expected: d is handed out after a, once each; the app's wait ends only after d
    ran."""
    catch_up.receive(retained((1, "a", 1)))
    app = AppThread(catch_up, woken)
    assert channels(catch_up.to_run()) == ["a"]
    catch_up.receive(retained((7, "d", 4)))
    assert channels(catch_up.to_run()) == ["d"]
    ran_ok(catch_up)
    assert not app.returned.wait(0.05)
    ran_ok(catch_up)
    assert app.ended() and app.error is None


def test_an_empty_snapshot_lets_the_app_go_at_once(catch_up: CatchUp, woken: list[int]) -> None:
    """Steps: an empty snapshot; the app asks.
    Expected: nothing to run; the wait returns."""
    catch_up.receive(retained())
    app = AppThread(catch_up, woken)
    assert catch_up.to_run() == []
    assert app.ended() and app.error is None


def test_a_failing_listener_fails_the_boot_naming_the_channel_and_the_listener(
    catch_up: CatchUp, woken: list[int]
) -> None:
    """Steps: the snapshot holds flags and other; the app asks; flags' listener raises
    ValueError("poisoned\\nflag").
    Expected: the app's wait raises StartupError in one line naming the channel, the
    listener and the error, at once (other's outcome is not waited for)."""
    catch_up.receive(retained((1, "flags", "x"), (2, "other", 1)))
    app = AppThread(catch_up, woken)
    assert channels(catch_up.to_run()) == ["flags", "other"]
    catch_up.ran([ListenerOutcome(remember_flag, None, ValueError("poisoned\nflag"))])
    assert app.ended()
    assert isinstance(app.error, StartupError)
    assert str(app.error) == (
        "retained publish on 'flags' failed in listener "
        "tests.unit.test_catchup.remember_flag: ValueError: poisoned flag"
    )
    ran_ok(catch_up)  # other's outcome, later: nothing changes


def test_a_failure_after_the_catch_up_is_only_logged(
    catch_up: CatchUp, woken: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """Steps: the catch-up ends; then a retained publish arrives (before the WELCOME)
    and its listener fails.
    Expected: it is handed out at once; its failure is logged as an error naming the
    channel; the catch-up stays successful."""
    catch_up.receive(retained())
    app = AppThread(catch_up, woken)
    assert catch_up.to_run() == []
    assert app.ended()
    catch_up.receive(retained((5, "late", 1)))
    assert channels(catch_up.to_run()) == ["late"]
    catch_up.ran([ListenerOutcome(remember_flag, None, KeyError("k"))])
    assert catch_up.caught_up
    assert "retained publish on 'late' failed" in caplog.text


def test_abandon_lets_a_waiting_app_go_without_an_error(
    catch_up: CatchUp, woken: list[int]
) -> None:
    """Steps: the app asks; no snapshot comes (the worker is stopped meanwhile);
    abandon.
    Expected: the wait returns without an error (the app sees that it stops)."""
    app = AppThread(catch_up, woken)
    assert catch_up.to_run() == []
    assert not app.returned.wait(0.05)
    catch_up.abandon()
    assert app.ended() and app.error is None
    assert not catch_up.caught_up


def test_a_frame_that_does_not_decode_fails_the_boot(catch_up: CatchUp, woken: list[int]) -> None:
    """Steps: a RETAINED message whose frame is not a PUBLISH; the app asks.
    Expected: the wait raises StartupError saying a retained publish could not be
    read."""
    message = protocol.decode(
        protocol.encode(MsgType.RETAINED, {"frames": [b"\x01\x02junk"], "more": False})
    )
    catch_up.receive(message)
    app = AppThread(catch_up, woken)
    assert app.ended()
    assert isinstance(app.error, StartupError)
    assert str(app.error).startswith("a retained publish could not be read: ")
