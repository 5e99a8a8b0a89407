"""A worker's graceful stop, its loop driven against a fake master in this process.

The worker (`Worker.serve`) runs on a thread against `FakeMaster`'s sockets;
the test plays the master: it welcomes the worker, publishes, sends the DRAIN
marker and asks the worker to stop as a signal would (`Worker.request_stop`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus.bus import Bus, states
from procbus.protocol import Message, MsgType
from procbus.worker.apps import WorkerContext
from procbus.worker.link import WorkerLink
from procbus.worker.worker import ExitCode, Worker, WorkerSpec
from tests.fake_master import FakeMaster


class Served:
    """A worker serving on a thread, its app's listeners, and the master's view of it."""

    def __init__(self, directory: Path, *, ready: bool = True, **options: Any) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.master = FakeMaster(self.context, directory)
        self.gate = threading.Event()
        """Set to let the 'gated' listener return."""
        self.gated = threading.Event()
        """Set by the 'gated' listener once it runs."""
        app = self._app
        if not ready:
            app = self._unready_app
        spec = WorkerSpec(
            worker_id=1,
            generation=1,
            master_pid=os.getppid(),
            app=app,
            publish_endpoint=self.master.publish_endpoint,
            reply_endpoint=self.master.reply_endpoint,
            heartbeat_interval=0.05,
            **{"graceful_timeout": 10.0, **options},
        )
        self.worker = Worker(spec, Bus())
        self.link = WorkerLink(self.context, 1, 1, spec.publish_endpoint, spec.reply_endpoint)
        self.code: ExitCode | None = None
        self._thread = threading.Thread(target=self._serve, name="worker")

    def _app(self, ctx: WorkerContext) -> None:
        @ctx.bus.subscribe("gated")
        def gated() -> str:
            self.gated.set()
            assert self.gate.wait(10), "the gate was never opened"
            return "passed"

        ctx.bus.subscribe("echo", lambda value: value)
        ctx.stopping.wait()

    def _unready_app(self, ctx: WorkerContext) -> None:
        ctx.stopping.wait()

    _unready_app.reports_ready = True  # type: ignore[attr-defined]

    def _serve(self) -> None:
        self.code = self.worker.serve(self.link)

    def start(self) -> None:
        """Until the worker said hello and that it starts."""
        self._thread.start()
        self.expect(MsgType.HELLO, worker=1, generation=1)
        self.expect(MsgType.STATE, state="starting")

    def start_running(self) -> None:
        """Until the worker runs, is subscribed, and is welcomed at publish 1."""
        self.start()
        self.expect(MsgType.STATE, state="running")
        self.master.wait_subscribed(self.link, nudge=False)
        self.master.welcome(self.link.topic, 1)

    def next(self) -> Message:
        """The worker's next message to the master, heartbeats skipped."""
        while True:
            message = self.master.receive()
            if message.type is not MsgType.HEARTBEAT:
                return message

    def expect(self, msg_type: MsgType, **fields: Any) -> Message:
        message = self.next()
        assert message.type is msg_type, message
        assert {k: message[k] for k in fields} == fields, message
        return message

    def replies_until_stopped(self) -> list[tuple[int, list[Any]]]:
        """Every reply (seq, results) until the worker says it stopped; then it ended."""
        replies = []
        while (message := self.next()).type is MsgType.REPLY:
            replies.append((message["seq"], message["results"]))
        assert (message.type, message["state"]) == (MsgType.STATE, "stopped"), message
        self._thread.join(10)
        assert not self._thread.is_alive()
        return replies

    def close(self) -> None:
        self.gate.set()
        if self._thread.is_alive():
            self.worker.request_stop(signal.SIGQUIT)
            self._thread.join(10)
        if self.worker.bus.state is not states.EXITING:
            self.worker.bus.exit()  # a fast stop leaves the bus as it was
        self.link.close(0)
        self.master.close()
        self.context.term()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    worker = Served(tmp_path)
    try:
        yield worker
    finally:
        worker.close()


def test_term_answers_the_running_and_queued_publishes_up_to_the_marker(
    served: Served,
) -> None:
    """Steps: publish 1 ('gated': its listener blocks) and 2 ('echo', queued behind it);
    once 1 runs, TERM; the master sends the DRAIN marker (last_seq 2) and publish 3;
    then the listener is let go.
    Expected: the worker says it is stopping, answers 1 and 2 (in order, with their
    results), never 3, then stops with exit code OK."""
    served.start_running()
    served.master.publish(1, "gated")
    served.master.publish(2, "echo", "queued")
    assert served.gated.wait(10)
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.master.drain(served.link.topic, 2)
    served.master.publish(3, "echo", "too late")
    served.gate.set()
    assert served.replies_until_stopped() == [(1, ["passed"]), (2, ["queued"])]
    assert served.code is ExitCode.OK


def test_term_without_a_marker_answers_what_came_within_the_grace(served: Served) -> None:
    """Steps: TERM with no DRAIN marker ever (an operator's TERM, a master that does not
    answer); publish 1 right after the worker says it is stopping.
    Expected: publish 1 is answered (it came within the marker grace); the worker then
    stops on its own."""
    served.start_running()
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.master.publish(1, "echo", "in the grace")
    assert served.replies_until_stopped() == [(1, ["in the grace"])]
    assert served.code is ExitCode.OK


def test_quit_during_a_drain_stops_without_answering(served: Served) -> None:
    """Steps: publish 1 ('gated') runs; TERM, then QUIT before the listener returns.
    Expected: the worker stops at once, without answering publish 1."""
    served.start_running()
    served.master.publish(1, "gated")
    assert served.gated.wait(10)
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.worker.request_stop(signal.SIGQUIT)
    assert served.replies_until_stopped() == []
    assert served.code is ExitCode.OK


def test_worker_that_never_ran_stops_at_once_on_term(tmp_path: Path) -> None:
    """Steps: an app that never says it is ready; the marker grace and graceful timeout
    are 60 s; TERM.
    Expected: the worker, nobody's target, stops without waiting for a marker (well
    within the 10 s the test waits for its 'stopped')."""
    served = Served(tmp_path, ready=False, marker_grace=60.0, graceful_timeout=60.0)
    try:
        served.start()
        served.worker.request_stop(signal.SIGTERM)
        served.expect(MsgType.STATE, state="stopping")
        assert served.replies_until_stopped() == []
        assert served.code is ExitCode.OK
    finally:
        served.close()
