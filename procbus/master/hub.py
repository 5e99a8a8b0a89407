"""The hub: the workers' two sockets, their handshake, and everything they say.

The master's XPUB carries publishes (and DRAIN markers) to the workers; its
ROUTER receives what the workers say: HELLO, STATE, HEARTBEAT, REPLY and
TREE_PUBLISH. The
hub reads both, checks every message (size, elements, depth, type; a worker
speaks only for itself: its hello must match what the master forked and its
later messages must come from the identity it said hello with), and hands
each to its owner: the pool (`procbus.master.pool`: hello, state,
heartbeats, subscriptions), the relay (`procbus.master.relay`: replies to
publishes) or `on_tree_publish` (a worker's own publish on the tree,
`procbus.master.worker_publishes`, which answers with `send_to`). It sends
each worker its WELCOME (from which publish on it is a target) and its DRAIN
marker, and tells its `feed` (the retained publishes:
`procbus.master.retainer`) when a worker says hello, is welcomed or is gone.

This is the tree publish's hot path: one ``send`` per publish on the XPUB,
one decode per reply, read to exhaustion before the loop looks elsewhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final, Protocol

import zmq

from procbus import protocol
from procbus.errors import ProtocolError
from procbus.frames import recv_routed
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc
from procbus.master.pool import Pool
from procbus.master.relay import Relay
from procbus.master.throttle import LogThrottle
from procbus.protocol import MsgType

log = logging.getLogger("procbus.master")

WORKER_MESSAGES: Final = frozenset(
    {MsgType.HELLO, MsgType.STATE, MsgType.HEARTBEAT, MsgType.REPLY, MsgType.TREE_PUBLISH}
)
_NOBLOCK: Final = int(zmq.NOBLOCK)
"""As a plain int: pyzmq combines enum flags per call, which shows in profiles."""
_REPLY: Final = MsgType.REPLY
LAST_WORDS: Final = 0.2
"""Seconds the hub waits for the error of a worker that exited unable to boot."""
_BATCH: Final = 1000
"""Messages read from one socket before the loop looks at the others."""
_SUBSCRIBE: Final = b"\x01"


class WorkerFeed(Protocol):
    """What else a new worker is sent before it runs (`procbus.master.retainer.Retainer`)."""

    def hello(self, worker: WorkerProc) -> None:
        """`worker` said hello (its identity is known to the ROUTER now)."""

    def welcome(self, worker: WorkerProc) -> None:
        """`worker`'s WELCOME goes next (what is sent now comes before it)."""

    def gone(self, worker: WorkerProc) -> None: ...


class Hub:
    """Reads and writes the workers' sockets for the master (see the module docstring)."""

    def __init__(
        self, xpub: zmq.Socket[Any], router: zmq.Socket[Any], loop: EventLoop, pool: Pool
    ) -> None:
        self.xpub = xpub
        self.router = router
        self.loop = loop
        self.pool = pool
        self.relay = Relay(xpub, loop)
        self.dropped_messages = 0
        self._drop_log = LogThrottle(log, "dropped worker messages")
        self.on_tree_publish: Callable[[WorkerProc, protocol.Message], None] = (
            lambda worker, message: self._drop(worker.topic, "TREE_PUBLISH: nobody runs it")
        )
        """Given a worker's TREE_PUBLISH (the master sets it)."""
        self.feed: WorkerFeed | None = None

    def on_xpub(self) -> None:
        """Subscriptions: a worker's own topic is the proof that it receives publishes."""
        for _ in range(_BATCH):
            try:
                frame = self.xpub.recv(_NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == _SUBSCRIBE:
                self.pool.subscribed(frame[1:])

    def on_router(self) -> None:
        router = self.router
        for _ in range(_BATCH):
            try:
                identity, frame, count = recv_routed(router, _NOBLOCK)
            except zmq.Again:
                return
            if count != 2:
                self._drop(identity, f"{count} frames (expected 2)")
                continue
            try:
                message = protocol.decode(
                    frame, expect=WORKER_MESSAGES, limits=protocol.WORKER_LIMITS
                )
            except ProtocolError as exc:
                self._drop(identity, str(exc))
                continue
            self._dispatch(identity, message)

    def _drop(self, identity: bytes, reason: str) -> None:
        self.dropped_messages += 1
        self._drop_log.warn("dropped a message from %r: %s", identity[:64], reason)

    def _dispatch(self, identity: bytes, message: protocol.Message) -> None:
        if message.type is MsgType.HELLO:
            worker = self.pool.by_pid.get(message["pid"])
            if (
                worker is None
                or worker.id != message["worker"]
                or worker.generation != message["generation"]
                or identity != worker.topic
                or message["topic"] != worker.topic
            ):
                self._drop(identity, f"hello from an unknown worker (pid {message['pid']})")
                return
            self.pool.hello(worker)
            if self.feed is not None:
                self.feed.hello(worker)
            return
        found = self.pool.by_topic.get(identity)
        if found is None or not found.hello:
            self._drop(identity, f"{message.type.name} from a worker that did not say hello")
            return
        if message.type is _REPLY:  # the most frequent by far
            found.last_heartbeat = self.loop.clock()
            self.relay.on_reply(found, message)
        elif message.type is MsgType.HEARTBEAT:
            self.pool.heartbeat(found, message["counters"], message.get("bus"))
        elif message.type is MsgType.STATE:
            self.pool.worker_state(found, message["state"], message.get("error"))
        else:
            self.on_tree_publish(found, message)

    def await_last_words(self, worker: WorkerProc, limit: float = LAST_WORDS) -> None:
        """Read the workers' messages until `worker`'s error is heard, for at most
        `limit` seconds: a worker that cannot boot says why, then exits, and its exit
        may be seen first (`Pool.last_words`). Blocks the loop that long at most, only
        for a worker that failed to boot without a word yet."""
        deadline = self.loop.clock() + limit
        while not worker.last_error:
            self.on_router()
            left = deadline - self.loop.clock()
            if worker.last_error or left <= 0 or not self.router.poll(math.ceil(left * 1000)):
                return

    def welcome(self, worker: WorkerProc) -> None:
        """Tell a worker whose subscription is proven from which publish on it is a target."""
        if self.feed is not None:
            self.feed.welcome(worker)
        self.send_to(worker, protocol.encode(MsgType.WELCOME, {"next_seq": self.relay.next_seq}))

    def send_to(self, worker: WorkerProc, frame: bytes) -> None:
        """Send `frame` to `worker`'s DEALER (dropped by ZeroMQ if it is gone or was never
        heard)."""
        self.router.send_multipart([worker.topic, frame])

    def drain(self, worker: WorkerProc) -> None:
        """The DRAIN marker, in order with the publishes: answer those, then stop."""
        self.relay.send_drain(worker.topic)

    def worker_gone(self, worker: WorkerProc) -> None:
        if self.feed is not None:
            self.feed.gone(worker)
        self.relay.on_worker_gone(worker)
