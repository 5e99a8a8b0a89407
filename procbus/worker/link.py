"""The worker's end of the tree: SUB for publishes, DEALER for everything else.

The link subscribes to the broadcast topic and then to a topic of its own;
the master's XPUB seeing that second subscription is the proof that this
worker's subscription is in place (ZeroMQ applies a pipe's subscriptions in
order). The master's WELCOME then says from which sequence number on this
worker is a target; publishes numbered before that are dropped unseen, and a
jump in the numbers after it is reported as an error with the next reply.

A socket monitor watches the SUB socket's connection. When it is lost (the
master re-executed, ``restart --adopt``, or died), the publishes sent while
ZeroMQ reconnects never reach this worker, and the new master does not count
it as a target until its subscription is proven again. So the link forgets
its sequence and holds publishes back, as a new worker does, until the WELCOME
the master sends once the subscription is proven says which publish to answer
first: a publish the worker could not see is no gap.

When the master drains this worker it sends a DRAIN marker on the worker's
own topic, after the last publish the worker may be a target of (see
`procbus.worker.drain`): the link notes it (`drain_seq`) and drops every
publish after it.

A targeted publish (see `procbus.protocol`) comes on the broadcast topic like
any other and names its target workers' topics. A worker that is not among
them counts its number (so the sequence has no hole, and the DRAIN marker's
``last_seq`` means the same for every worker) and drops it; it reads only the
frame's head (`protocol.publish_head`), never the arguments. A gap noticed on
such a publish is reported with this worker's next reply: whom the missed
publishes were for, the worker cannot know.
"""

from __future__ import annotations

import enum
import logging
import traceback
from collections.abc import Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from procbus import protocol
from procbus.bus import ListenerOutcome
from procbus.errors import ProtocolError
from procbus.frames import recv_two
from procbus.protocol import BusState, Message, MsgType, WorkerBusState

log = logging.getLogger("procbus.worker")

_FROM_MASTER = frozenset({MsgType.WELCOME, MsgType.TREE_REPLY, MsgType.RETAINED})
_ON_SUB = frozenset({MsgType.PUBLISH, MsgType.DRAIN})
MAX_HELD = 10_000
"""Publishes held back before WELCOME, at most."""
MAX_GAPS = 16
"""Gaps kept for one reply; more are merged into the last one."""


class LinkError(enum.StrEnum):
    """Type names of the errors the link itself puts in a reply (no listener raised them)."""

    SEQUENCE_GAP = "SequenceGap"
    """Publishes numbered before this one never arrived."""
    BACKLOG_FULL = "BacklogFull"
    """Too many publishes already wait for this worker's listeners: this one did not run."""


def listener_name(listener: object) -> str:
    """A readable name for a listener: ``module.qualname`` where there is one."""
    qualname = getattr(listener, "__qualname__", None)
    if qualname is None:
        return repr(listener)
    module = getattr(listener, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def error_record(exc: BaseException, listener: str) -> dict[str, str]:
    """The wire form of an exception raised by a listener."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "listener": listener,
        "traceback": "".join(traceback.format_exception(exc)),
    }


def _link_error(kind: LinkError, message: str) -> dict[str, str]:
    return {"type": kind.value, "message": message, "listener": "", "traceback": ""}


def _beyond_limits(frame: bytes) -> str | None:
    """Why the master would refuse the REPLY `frame`, or None if it would not."""
    problem = protocol.beyond_limits(frame, protocol.WORKER_LIMITS)
    if problem is None:
        return None
    if len(frame) > protocol.MAX_MESSAGE_SIZE - 64:
        return f"reply of {len(frame)} bytes exceeds the limit of {protocol.MAX_MESSAGE_SIZE}"
    return f"reply holds more than the master accepts from a worker: {problem}"


class WorkerLink:
    """The sockets a worker talks to its master on."""

    def __init__(
        self,
        context: zmq.Context[Any],
        worker_id: int,
        generation: int,
        publish_endpoint: str,
        reply_endpoint: str,
    ) -> None:
        self.worker_id = worker_id
        self.generation = generation
        self.topic = f"w.{worker_id}.{generation}.".encode()
        self.next_seq: int | None = None
        """Set by WELCOME: the first publish this worker must answer."""
        self._gaps: dict[int, list[tuple[int, int]]] = {}
        """Publish number -> the numbers missed before it (first, last), told with its reply."""
        self._missed: list[tuple[int, int]] = []
        """Gaps seen since this worker's last publish: for the next one it is a target of."""
        self._held: list[tuple[int, Message | None]] = []
        """Before WELCOME: (number, publish) in arrival order; None for a publish that
        names other workers (its number still counts)."""
        self.drain_seq: int | None = None
        """Set by the master's DRAIN marker: the last publish it sent before it."""
        self._taking = True
        """False after the marker (or `stop_taking_publishes`): publishes are dropped."""

        self.sub = context.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.rcvhwm = 0
        self.sub.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_SIZE)
        self.sub.subscribe(protocol.BROADCAST_TOPIC)
        self.sub.subscribe(self.topic)
        # Watched from before the first connection: no loss goes unseen.
        self.monitor = self.sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.monitor.linger = 0
        self.sub.connect(publish_endpoint)

        self.dealer = context.socket(zmq.DEALER)
        self.dealer.linger = 1000
        self.dealer.sndhwm = 0
        # What the master sends before it runs (retained publishes, its WELCOME) waits
        # here while the app loads: a full pipe would make the master's ROUTER drop them.
        self.dealer.rcvhwm = 0
        self.dealer.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_SIZE)
        self.dealer.routing_id = self.topic
        self.dealer.connect(reply_endpoint)

    def close(self, linger: int | None = None) -> None:
        self.sub.disable_monitor()
        self.monitor.close(0)
        self.sub.close(0)
        self.dealer.close(linger)

    # -- sending -----------------------------------------------------------

    def send(self, msg_type: MsgType, body: dict[str, Any]) -> None:
        self.dealer.send(protocol.encode(msg_type, body))

    def send_frame(self, frame: bytes) -> None:
        """Send a message encoded already (a tree publish, encoded by its caller)."""
        self.dealer.send(frame)

    def hello(self, pid: int) -> None:
        self.send(
            MsgType.HELLO,
            {
                "worker": self.worker_id,
                "generation": self.generation,
                "pid": pid,
                "topic": self.topic,
            },
        )

    def state(self, state: WorkerBusState, error: str | None = None) -> None:
        self.send(MsgType.STATE, {"state": state, "error": error})

    def heartbeat(self, counters: dict[str, int], bus: BusState) -> None:
        """Alive, with these counters, its bus in state `bus`."""
        self.send(MsgType.HEARTBEAT, {"counters": counters, "bus": bus})

    def reply(self, seq: int, outcomes: Sequence[ListenerOutcome]) -> None:
        """Answer publish `seq` with each listener's result or error.

        A result msgpack cannot carry becomes an error of its listener; a
        reply the master would refuse (too large for the wire, or holding more
        than `protocol.WORKER_LIMITS`) becomes one error for the whole publish,
        so that the master shows why instead of a timeout.
        """
        errors = self._link_errors(seq)
        results = [outcome.result for outcome in outcomes]
        for outcome in outcomes:
            if outcome.error is not None:
                errors.append(error_record(outcome.error, listener_name(outcome.listener)))
        try:
            frame = protocol.encode_reply(seq, results, errors)
        except TypeError:
            # Rare: find the results msgpack cannot carry, one by one.
            for index, outcome in enumerate(outcomes):
                try:
                    protocol.pack(outcome.result)
                except TypeError as exc:
                    name = listener_name(outcome.listener)
                    results[index] = None
                    message = f"result of listener {name} is not serializable: {exc}"
                    errors.append(error_record(TypeError(message), name))
            frame = protocol.encode_reply(seq, results, errors)
        problem = _beyond_limits(frame)
        if problem is not None:
            frame = protocol.encode(
                MsgType.REPLY,
                {
                    "seq": seq,
                    "results": [None] * len(results),
                    "errors": [error_record(ValueError(problem), "")],
                },
            )
        self.dealer.send(frame)

    def refuse(self, seq: int, reason: str) -> None:
        """Answer publish `seq`, whose listeners did not run, with a BacklogFull error."""
        errors = self._link_errors(seq)
        errors.append(_link_error(LinkError.BACKLOG_FULL, reason))
        body = {"seq": seq, "results": [], "errors": errors}
        self.dealer.send(protocol.encode(MsgType.REPLY, body))

    def _link_errors(self, seq: int) -> list[dict[str, str]]:
        gaps = self._gaps.pop(seq, None) if self._gaps else None
        if gaps is None:
            return []
        missed = ", ".join(
            f"{first}" if first == last else f"{first}-{last}" for first, last in gaps
        )
        return [_link_error(LinkError.SEQUENCE_GAP, f"missed publishes {missed} before {seq}")]

    # -- receiving ---------------------------------------------------------

    def receive_publish(self, flags: int = 0) -> Message | None:
        """Read one message from SUB: the publish to handle now, or None.

        With ``flags=zmq.NOBLOCK``, raises ``zmq.Again`` when none is waiting.

        Before WELCOME, publishes are held back (a publish may overtake the
        WELCOME, which travels on the other socket); `take_held` returns
        those that turn out to be addressed to this worker. A DRAIN marker
        sets `drain_seq`; the publishes after it are dropped.
        """
        topic, frame, count = recv_two(self.sub, flags)
        if count != 2:
            log.warning("dropped a publish of %d frames (expected 2)", count)
            return None
        head = protocol.publish_head(frame)
        if head is not None and self.topic not in head.to:
            self._not_a_target(head.seq)
            return None
        try:
            message = protocol.decode(frame, expect=_ON_SUB)
        except ProtocolError as exc:
            log.warning("dropped a malformed publish: %s", exc)
            return None
        if message.type is MsgType.DRAIN:
            self._drain_marker(topic, message["last_seq"])
            return None
        targets = message.get("to")
        if targets is not None and self.topic not in targets:
            self._not_a_target(message["seq"])
            return None
        if not self._taking:
            return None
        if self.next_seq is None:
            if len(self._held) < MAX_HELD:
                self._held.append((message["seq"], message))
            return None
        return message if self._sequence(message["seq"], target=True) else None

    def _not_a_target(self, seq: int) -> None:
        """Count publish `seq`, which names other workers, in the sequence."""
        if not self._taking:
            return
        if self.next_seq is None:
            if len(self._held) < MAX_HELD:
                self._held.append((seq, None))
            return
        self._sequence(seq, target=False)

    def _drain_marker(self, topic: bytes, last_seq: int) -> None:
        if topic != self.topic:
            log.warning("dropped a DRAIN marker for topic %r", topic[:64])
            return
        if self.drain_seq is not None:
            return
        self.drain_seq = last_seq
        if self._taking and self.next_seq is not None and self.next_seq <= last_seq:
            log.error("missed publishes %d..%d before the drain marker", self.next_seq, last_seq)
        self._taking = False

    def stop_taking_publishes(self) -> None:
        """Drop every publish read from now on (a stop that saw no DRAIN marker)."""
        self._taking = False

    @property
    def held(self) -> int:
        """Publishes held back until a WELCOME says which to answer (those that name
        other workers are not owed: they are not counted)."""
        return sum(message is not None for _, message in self._held)

    def take_held(self) -> list[Message]:
        """After WELCOME: the held-back publishes this worker must answer."""
        held, self._held = self._held, []
        return [
            message
            for seq, message in held
            if self._sequence(seq, target=message is not None) and message is not None
        ]

    def _sequence(self, seq: int, *, target: bool) -> bool:
        """Count publish `seq` (gap detection); False if it was already counted or is
        before this worker's WELCOME. A gap goes with the reply to the next publish
        this worker is a `target` of."""
        assert self.next_seq is not None
        if seq < self.next_seq:
            return False
        if seq > self.next_seq:
            if len(self._missed) < MAX_GAPS:
                self._missed.append((self.next_seq, seq - 1))
            else:
                self._missed[-1] = (self._missed[-1][0], seq - 1)
            log.error("missed publishes %d..%d", self.next_seq, seq - 1)
        self.next_seq = seq + 1
        if target and self._missed:
            self._gaps[seq], self._missed = self._missed, []
        return True

    def receive_command(self, flags: int = 0) -> Message | None:
        """Read one message from the master on DEALER (a WELCOME, a TREE_REPLY, or
        RETAINED publishes: see `procbus.worker.catchup`).

        With ``flags=zmq.NOBLOCK``, raises ``zmq.Again`` when none is waiting.
        A WELCOME sets the sequence only while the link has none (a new
        worker, or one whose connection to the master was lost).
        """
        frame = self.dealer.recv(flags)
        try:
            message = protocol.decode(frame, expect=_FROM_MASTER)
        except ProtocolError as exc:
            log.warning("dropped a malformed message from the master: %s", exc)
            return None
        if message.type is MsgType.WELCOME:
            # A lost connection is always seen before the WELCOME that follows
            # it (the monitor event is queued before ZeroMQ even reconnects).
            self.watch_connection()
            if self.next_seq is None:
                self.next_seq = message["next_seq"]
        return message

    def watch_connection(self) -> None:
        """Read the SUB socket's monitor events (when `monitor` is readable).

        When the connection to the master's publish endpoint was lost, forget
        the sequence: publishes are held back until the next WELCOME.
        """
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED and self.next_seq is not None:
                log.info(
                    "worker %d lost its connection to %s; waiting for a new WELCOME",
                    self.worker_id,
                    event["endpoint"].decode(errors="replace"),
                )
                self.next_seq = None
