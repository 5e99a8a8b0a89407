"""A worker's own tree publish through its I/O loop, against a fake master in this process.

The worker (`Worker.serve`) runs on a thread against `FakeMaster`'s sockets; its
app publishes to the tree when the test asks it to (`procbus.tree.publish` on the
app thread); the test plays the master: it reads the TREE_PUBLISH on its ROUTER and
answers with a TREE_REPLY, or does not.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import protocol, tree
from procbus.bus import Bus, states
from procbus.master.relay import TreeReply, WorkerResult, WorkerStatus
from procbus.protocol import Message, MsgType
from procbus.worker.apps import WorkerContext
from procbus.worker.link import WorkerLink
from procbus.worker.worker import Worker, WorkerSpec
from tests.fake_master import FakeMaster


class Publishing:
    """A worker whose app publishes each channel put in `asks`; outcomes in `outcomes`."""

    def __init__(self, directory: Path) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.master = FakeMaster(self.context, directory)
        self.asks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.outcomes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        spec = WorkerSpec(
            worker_id=1,
            generation=1,
            master_pid=os.getppid(),
            app=self._app,
            publish_endpoint=self.master.publish_endpoint,
            reply_endpoint=self.master.reply_endpoint,
            heartbeat_interval=0.05,
            publish_timeout=7.0,
            marker_grace=0.1,
        )
        self.worker = Worker(spec, Bus())
        self.link = WorkerLink(self.context, 1, 1, spec.publish_endpoint, spec.reply_endpoint)
        self._thread = threading.Thread(target=self.worker.serve, args=(self.link,))

    def _app(self, ctx: WorkerContext) -> None:
        while not ctx.stopping.is_set():
            try:
                channel = self.asks.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                self.outcomes.put(tree.publish(channel, "k"))
            except Exception as exc:
                self.outcomes.put(exc)

    def start(self) -> None:
        self._thread.start()
        self.expect(MsgType.HELLO)
        self.master.retained(self.link.topic, [])  # the retained publishes: none
        self.expect(MsgType.STATE)
        self.expect(MsgType.STATE)  # running

    def expect(self, msg_type: MsgType) -> Message:
        """The worker's next message to the master, heartbeats skipped."""
        while (message := self.master.receive()).type is MsgType.HEARTBEAT:
            pass
        assert message.type is msg_type, message
        return message

    def answer(self, request: Message, reply: TreeReply) -> None:
        body = {"id": request["id"], "reply": reply.to_dict()}
        frame = protocol.encode(MsgType.TREE_REPLY, body)
        self.master.router.send_multipart([self.link.topic, frame])

    def close(self) -> None:
        if self._thread.is_alive():
            self.worker.request_stop(signal.SIGQUIT)
            self._thread.join(10)
        if self.worker.bus.state is not states.EXITING:
            self.worker.bus.exit()
        self.link.close(0)
        self.master.close()
        self.context.term()


@pytest.fixture
def publishing(tmp_path: Path) -> Iterator[Publishing]:
    made = Publishing(tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_the_apps_publish_leaves_on_the_dealer_and_its_reply_comes_back(
    publishing: Publishing,
) -> None:
    """Steps: the worker runs; its app publishes 'cache.clear'; the master answers.
    Expected: the master reads a TREE_PUBLISH with the channel, the argument and the
    worker's default timeout (its spec's publish_timeout); the app gets the master's
    reply."""
    publishing.start()
    publishing.asks.put("cache.clear")
    request = publishing.expect(MsgType.TREE_PUBLISH)
    assert (request["channel"], request["args"], request["timeout"]) == ("cache.clear", ["k"], 7.0)
    reply = TreeReply("cache.clear", 3)
    reply.workers[1] = WorkerResult(1, os.getpid(), 1, WorkerStatus.OK, [True])
    publishing.answer(request, reply)
    got = publishing.outcomes.get(timeout=5)
    assert isinstance(got, TreeReply) and got.to_dict() == reply.to_dict()


def test_a_publish_waiting_when_the_worker_stops_fails_with_the_reason(
    publishing: Publishing,
) -> None:
    """Steps: the worker runs; its app publishes; the master never answers; the worker
    is asked to stop (TERM).
    Expected: the app's publish raises RuntimeError saying the worker is stopping, long
    before its 7 s timeout; the worker stops."""
    publishing.start()
    publishing.asks.put("cache.clear")
    publishing.expect(MsgType.TREE_PUBLISH)
    publishing.worker.request_stop(signal.SIGTERM)
    got = publishing.outcomes.get(timeout=5)
    assert isinstance(got, RuntimeError)
    assert str(got) == "worker 1 is stopping: its tree publishes get no answer any more"
