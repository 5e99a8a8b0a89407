"""A real worker (`Worker.serve`) on a thread of this process, against a fake master.

The test plays the master (`tests.fake_master.FakeMaster`): it reads what the
worker says, sends it its retained publishes, welcomes it, publishes, sends the
DRAIN marker, and asks it to stop as a signal would (`Worker.request_stop`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import zmq

from procbus.bus import Bus, states
from procbus.protocol import Message, MsgType
from procbus.worker.apps import WorkerApp, WorkerContext
from procbus.worker.link import WorkerLink
from procbus.worker.worker import ExitCode, Worker, WorkerSpec
from tests.fake_master import FakeMaster


class Served:
    """A worker serving on a thread, its app's listeners, and the master's view of it.

    By default its app subscribes 'gated' (blocks until `gate` is set) and 'echo';
    `app` replaces it, `ready=False` makes it one that never says it is ready.
    """

    def __init__(
        self,
        directory: Path,
        *,
        ready: bool = True,
        app: WorkerApp | None = None,
        **options: Any,
    ) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.master = FakeMaster(self.context, directory)
        self.gate = threading.Event()
        """Set to let the 'gated' listener return."""
        self.gated = threading.Event()
        """Set by the 'gated' listener once it runs."""
        if app is None:
            app = self._app if ready else self._unready_app
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

    def start(self, snapshot: Sequence[bytes] | None = ()) -> None:
        """Until the worker said hello and that it starts; then the master sends it the
        retained publishes' `snapshot` (PUBLISH frames; None: the test sends it)."""
        self._thread.start()
        self.expect(MsgType.HELLO, worker=1, generation=1)
        if snapshot is not None:
            self.master.retained(self.link.topic, list(snapshot))
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
        self.join()
        return replies

    def join(self) -> None:
        """Until the worker's thread ended."""
        self._thread.join(10)
        assert not self._thread.is_alive()

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
