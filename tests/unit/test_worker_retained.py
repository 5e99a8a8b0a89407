"""A new worker's catch-up on the retained publishes, its loop driven against a fake master
in this process (`tests.served`): they run once the app's listeners exist, in publish
order, before the worker says it runs; one retained while it starts runs too, once;
a failing listener is a boot failure."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procbus import protocol
from procbus.protocol import MsgType
from procbus.worker.apps import WorkerContext
from procbus.worker.worker import ExitCode
from tests.served import Served


def publish(seq: int, channel: str, *args: Any) -> bytes:
    return protocol.PublishTemplate(channel, list(args), {}, 5.0).frame(seq)


class FlagsApp:
    """A hosted app's shape: subscribes its listeners, says it is ready (which runs the
    retained publishes first), then 'serves': what its listeners had seen by then is
    what its first request would see."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []
        self.at_serving: list[tuple[str, Any]] | None = None
        self.serving = threading.Event()
        """Set once `at_serving` is (the worker may say it runs a moment before)."""
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()
        self.reports_ready = True

    def __call__(self, ctx: WorkerContext) -> None:
        def flags(value: Any) -> None:
            if value == "poison":
                raise ValueError("poisoned flag")
            self.blocked.set()
            assert self.gate.wait(10)
            self.seen.append(("flags", value))

        ctx.bus.subscribe("flags", flags)
        ctx.bus.subscribe("limits", lambda value: self.seen.append(("limits", value)))
        ctx.ready()
        self.at_serving = list(self.seen)
        self.serving.set()
        ctx.stopping.wait()


@pytest.fixture
def app() -> FlagsApp:
    return FlagsApp()


@pytest.fixture
def served(tmp_path: Path, app: FlagsApp) -> Iterator[Served]:
    worker = Served(tmp_path, app=app)
    try:
        yield worker
    finally:
        worker.close()


def test_retained_publishes_run_in_publish_order_before_the_worker_runs(
    served: Served, app: FlagsApp
) -> None:
    """Steps: the snapshot holds limits 3 (seq 1), flags "on" (seq 2) and an unknown
    channel (seq 3); the worker is welcomed at 4 and sent publish 4 on limits.
    Expected: by the time the app serves, its listeners saw limits 3 then flags "on";
    it said running only then; nothing was sent back for them: the first reply is
    publish 4's."""
    snapshot = [publish(1, "limits", 3), publish(2, "flags", "on"), publish(3, "nobody", 1)]
    served.start(snapshot)
    served.expect(MsgType.STATE, state="running")
    assert app.serving.wait(10)
    assert app.at_serving == [("limits", 3), ("flags", "on")]
    served.master.wait_subscribed(served.link, nudge=False)
    served.master.welcome(served.link.topic, 4)
    served.master.publish(4, "limits", 5)
    served.expect(MsgType.REPLY, seq=4, results=[None])
    assert app.seen[-1] == ("limits", 5)


def test_a_publish_retained_while_the_worker_starts_runs_once_before_it_runs(
    served: Served, app: FlagsApp
) -> None:
    """Steps: the snapshot holds flags "old" (seq 1), whose listener waits; meanwhile
    the master retains flags "new" (seq 5): RETAINED to this worker, and on SUB as it
    goes to every worker; the listener goes on. The worker is welcomed at 6, then
    sent publish 6 (limits).
    Expected: the app serves with "old" then "new" seen; the SUB copy of 5 never runs
    (after the WELCOME only publish 6 is answered, and flags ran twice in all)."""
    app.gate.clear()
    served.start([publish(1, "flags", "old")])
    assert app.blocked.wait(10)
    served.master.wait_subscribed(served.link, nudge=False)
    served.master.retained(served.link.topic, [publish(5, "flags", "new")])
    served.master.publish(5, "flags", "new")
    app.gate.set()
    served.expect(MsgType.STATE, state="running")
    assert app.serving.wait(10)
    assert app.at_serving == [("flags", "old"), ("flags", "new")]
    served.master.welcome(served.link.topic, 6)
    served.master.publish(6, "limits", 1)
    served.expect(MsgType.REPLY, seq=6)
    assert app.seen == [("flags", "old"), ("flags", "new"), ("limits", 1)]


def test_a_failing_retained_listener_is_a_boot_failure_naming_channel_and_listener(
    served: Served,
) -> None:
    """Steps: the snapshot holds flags "poison"; its listener raises.
    Expected: the worker reports failed with one line naming the channel, the listener
    and the error, never running, and exits BOOT_FAILED."""
    served.start([publish(1, "flags", "poison")])
    failed = served.expect(MsgType.STATE, state="failed")
    assert failed["error"].startswith("boot: retained publish on 'flags' failed in listener ")
    assert failed["error"].endswith(".flags: ValueError: poisoned flag")
    assert "\n" not in failed["error"]
    served.join()
    assert served.code is ExitCode.BOOT_FAILED


def test_a_worker_app_that_does_not_report_ready_runs_after_its_catch_up(
    tmp_path: Path,
) -> None:
    """Steps: a plain worker app (no ``reports_ready``); a listener on flags exists
    before it starts (subscribed at import, or at bus start); the snapshot holds flags
    "on".
    Expected: when the app's main is called, the listener has run; the worker says it
    runs."""
    seen: list[Any] = []
    at_start: list[list[Any]] = []
    started = threading.Event()

    def main(ctx: WorkerContext) -> None:
        at_start.append(list(seen))
        started.set()
        ctx.stopping.wait()

    served = Served(tmp_path, app=main)
    try:
        served.worker.bus.subscribe("flags", seen.append)
        served.start([publish(1, "flags", "on")])
        served.expect(MsgType.STATE, state="running")
        assert started.wait(10)
        assert at_start == [["on"]]
    finally:
        served.close()


def test_a_worker_stopped_while_it_waits_for_its_snapshot_stops(tmp_path: Path) -> None:
    """Steps: the app says it is ready; no snapshot comes; TERM.
    Expected: the worker stops (stopping, then stopped, exit OK) without having said it
    runs, and its app returned."""
    app = FlagsApp()
    served = Served(tmp_path, app=app)
    try:
        served.start(snapshot=None)
        served.worker.request_stop(signal.SIGTERM)
        served.expect(MsgType.STATE, state="stopping")
        assert served.replies_until_stopped() == []
        assert served.code is ExitCode.OK
        assert app.at_serving == []
    finally:
        served.close()
