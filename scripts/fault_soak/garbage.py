"""Bad frames for the master's sockets: a control flood, and garbage on the worker endpoints.

The control flood is one burst of requests on a DEALER, straight on the
control socket: good reads (``ping``, ``status``, ...), unknown commands, bad
arguments, wrong field types, bodies that are not msgpack, a wrong protocol
version, a wrong message type, claimed lengths of four billion, msgpack
extension types, bodies nested 300 and 100 000 deep, a 900 KB argument, a
publish with an argument nested 600 deep on a channel nobody listens to
(valid: every worker gets it and answers), envelopes of the wrong shape. The master
must answer every one (with an error for the bad ones). A frame over the
control socket's size limit goes on a socket of its own: ZeroMQ drops that
connection, there is nothing to answer. No frame of the flood may change the
tree: the commands that would (``scale``, ``reload``, ``kill``) carry
arguments the master refuses.

The worker endpoints are the master's ROUTER (``rep``: hello, heartbeats,
state, replies) and XPUB (``pub``): a DEALER sends random bytes, hellos for a
worker that does not exist or in the name of a real one, messages from a
peer that never said hello, malformed replies, deep nesting, extension types,
wrong frame counts and sometimes one frame over the size limit; an XSUB sends
subscriptions to random and worker-like topics, unsubscriptions, and frames
that are neither. The master must drop all of it and go on.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zmq

from procbus import protocol
from procbus.master.control_server import CONTROL_MAX_MESSAGE
from procbus.protocol import MsgType

REPLY_WAIT: Final = 5.0
"""Seconds the flood waits for the master's answers."""
DEEP: Final = 100_000
"""Nesting deeper than msgpack's unpacker takes."""
NESTED: Final = 300
"""Nesting msgpack takes (and a repr would not)."""
FLOOD_CHANNEL: Final = "soak.flood"
"""The channel of the flood's one publish (nothing listens to it)."""

Frames = list[bytes]


def _header(msg_type: int, version: int = protocol.VERSION) -> bytes:
    return bytes((version, msg_type))


def _pack(obj: Any) -> bytes:
    """msgpack, without procbus's checks (the point is to send what they refuse)."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _request(body: dict[str, Any]) -> bytes:
    return _header(MsgType.CONTROL_REQUEST) + _pack(body)


def _deep_args(request_id: str, command: str, depth: int, first: str | None = None) -> bytes:
    """A request whose ``args`` end with a list nested `depth` deep, after `first` if given
    (built by hand: packb refuses such depths)."""
    head = _pack({"id": request_id, "command": command})
    deep = b"\x91" * depth + b"\xc0"
    args = deep if first is None else b"\x92" + _pack(first) + deep
    # One more pair in the map: fixmap 0x82 -> 0x83.
    fixmap = bytes((head[0] + 1,))
    return _header(MsgType.CONTROL_REQUEST) + fixmap + head[1:] + _pack("args") + args


def control_items(rng: random.Random, count: int, tag: str) -> list[Frames]:
    """`count` flood messages (multipart frames for a DEALER), drawn with `rng`."""
    makers: list[Callable[[str], Frames]] = [
        lambda i: [_request({"id": i, "command": rng.choice(_READS)})],
        lambda i: [_request({"id": i, "command": rng.choice(_READS)})],
        lambda i: [_request({"id": i, "command": f"soak-unknown-{rng.randrange(1000)}"})],
        lambda i: [_request({"id": i, "command": "scale", "args": [rng.choice(_BAD_COUNTS)]})],
        lambda i: [_request({"id": i, "command": "reload", "kwargs": {"batch": 0}})],
        lambda i: [_request({"id": i, "command": "kill", "args": [1], "kwargs": {"signal": "X"}})],
        lambda i: [_request({"id": i, "command": "publish", "args": []})],
        lambda i: [_request({"id": i, "command": "ping", "extra": True})],
        lambda i: [_request({"id": i, "command": 7})],
        lambda i: [_request({"id": 5, "command": "ping"})],
        lambda i: [_request({"id": i, "command": "status", "args": {"not": "a list"}})],
        lambda i: [_header(MsgType.CONTROL_REQUEST) + rng.randbytes(rng.randrange(1, 64))],
        lambda i: [_header(MsgType.CONTROL_REQUEST, version=99) + _request({"id": i})[2:]],
        lambda i: [_header(MsgType.CONTROL_REPLY) + _request({"id": i, "ok": True})[2:]],
        lambda i: [_header(MsgType.CONTROL_REQUEST) + _pack([1, 2, 3])],
        lambda i: [_header(MsgType.CONTROL_REQUEST) + b"\xdf\xff\xff\xff\xff"],
        lambda i: [_header(MsgType.CONTROL_REQUEST) + b"\xdd\xff\xff\xff\xff\x00"],
        lambda i: [
            _header(MsgType.CONTROL_REQUEST)
            + _pack({"id": i, "command": msgpack.ExtType(5, b"x")})
        ],
        lambda i: [b""],
        lambda i: [b"\x01"],
        lambda i: [rng.randbytes(rng.randrange(1, 256))],
        lambda i: [b"", _request({"id": i, "command": "ping"})],
        lambda i: [b"x", _request({"id": i, "command": "ping"})],
        lambda i: [b"a", b"b", _request({"id": i, "command": "ping"})],
        lambda i: [_deep_args(i, "ping", NESTED)],
        lambda i: [_deep_args(i, "ping", DEEP)],
        lambda i: [_deep_args(i, "status", DEEP)],
    ]
    items = [rng.choice(makers)(f"{tag}-{n}") for n in range(count)]
    # Once per flood each: a big argument, and a publish too deep to repack.
    items.append([_request({"id": f"{tag}-big", "command": "ping", "args": ["x" * 900_000]})])
    items.append([_deep_args(f"{tag}-deep-publish", "publish", 600, FLOOD_CHANNEL)])
    return items


_READS: Final = ("ping", "status", "stats", "jobs", "version")
_BAD_COUNTS: Final[tuple[object, ...]] = ("x", -1, 2.5, None, [], True)


@dataclass
class FloodResult:
    sent: int = 0
    answered: int = 0
    unsent: int = 0
    """Refused by our own socket's high-water mark."""
    oversize: int = 0
    """Frames over the size limit (no answer possible)."""
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"{self.sent} sent, {self.answered} answered in {self.seconds:.2f}s"
            f"{f', {self.unsent} unsent' if self.unsent else ''}"
            f"{f', {self.oversize} oversize' if self.oversize else ''}"
        )


def control_flood(
    context: zmq.Context[Any], endpoint: str, rng: random.Random, count: int, tag: str
) -> FloodResult:
    """Send one flood on the control socket; count the answers (bounded wait)."""
    result = FloodResult()
    started = time.monotonic()
    items = control_items(rng, count, tag)
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.sndhwm = len(items) + 10
    dealer.rcvhwm = len(items) + 10
    try:
        dealer.connect(endpoint)
        for frames in items:
            try:
                dealer.send_multipart(frames, zmq.NOBLOCK)
                result.sent += 1
            except zmq.Again:
                result.unsent += 1
        if rng.random() < 0.5:
            result.oversize += _oversize(context, endpoint, CONTROL_MAX_MESSAGE + 4096)
        deadline = time.monotonic() + REPLY_WAIT
        while result.answered < result.sent:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dealer.poll(int(remaining * 1000) + 1):
                break
            dealer.recv_multipart()
            result.answered += 1
    finally:
        dealer.close(0)
    result.seconds = time.monotonic() - started
    return result


def _oversize(context: zmq.Context[Any], endpoint: str, size: int) -> int:
    """One frame of `size` bytes on a socket of its own; the peer drops the connection."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 500
    try:
        sock.connect(endpoint)
        sock.send(_header(MsgType.CONTROL_REQUEST) + b"\x00" * size, zmq.NOBLOCK)
        return 1
    except zmq.Again:
        return 0
    finally:
        sock.close()


@dataclass
class GarbageResult:
    router: int = 0
    xpub: int = 0
    oversize: int = 0

    def __str__(self) -> str:
        big = f", {self.oversize} oversize" if self.oversize else ""
        return f"{self.router} frames on rep, {self.xpub} on pub{big}"


def worker_items(rng: random.Random, workers: list[dict[str, Any]], count: int) -> list[Frames]:
    """`count` bad messages for the master's ROUTER, drawn with `rng`."""

    def packed(msg_type: int, body: Any) -> bytes:
        return _header(msg_type) + _pack(body)

    def impostor(_: int) -> Frames:
        # In the name of a real worker, from a peer that is not it.
        if not workers:
            return [rng.randbytes(16)]
        w = rng.choice(workers)
        topic = f"w.{w['id']}.{w['generation']}.".encode()
        body = {"worker": w["id"], "generation": w["generation"], "pid": w["pid"], "topic": topic}
        return [packed(MsgType.HELLO, body)]

    makers: list[Callable[[int], Frames]] = [
        lambda n: [rng.randbytes(rng.randrange(0, 128))],
        lambda n: [
            packed(MsgType.HELLO, {"worker": 999, "generation": 1, "pid": 1, "topic": b"w"})
        ],
        impostor,
        lambda n: [packed(MsgType.HEARTBEAT, {"counters": {"requests": n}})],
        lambda n: [packed(MsgType.STATE, {"state": "running"})],
        lambda n: [packed(MsgType.STATE, {"state": "no-such-state", "error": None})],
        lambda n: [packed(MsgType.REPLY, {"seq": n, "results": [], "errors": []})],
        lambda n: [packed(MsgType.REPLY, {"seq": n, "results": [], "errors": [{"type": 1}]})],
        lambda n: [packed(MsgType.PUBLISH, {"seq": n})],
        lambda n: [_header(MsgType.HEARTBEAT) + rng.randbytes(32)],
        lambda n: [_header(MsgType.HEARTBEAT, version=0) + _pack({"counters": {}})],
        lambda n: [_header(MsgType.REPLY) + b"\x91" * DEEP + b"\xc0"],
        lambda n: [_header(MsgType.STATE) + _pack({"state": msgpack.ExtType(1, b"")})],
        lambda n: [b""],
        lambda n: [b"a", b"b"],
        lambda n: [packed(MsgType.HEARTBEAT, {"counters": {}}), b"extra"],
    ]
    return [rng.choice(makers)(n) for n in range(count)]


def subscription_items(rng: random.Random, count: int) -> list[bytes]:
    """`count` frames for an XSUB: (un)subscriptions and frames that are neither."""
    makers: list[Callable[[], bytes]] = [
        lambda: b"\x01" + rng.randbytes(rng.randrange(0, 32)),
        lambda: b"\x01w." + str(rng.randrange(1, 99)).encode() + b".1.",
        lambda: b"\x00" + rng.randbytes(rng.randrange(0, 32)),
        lambda: b"\x02" + rng.randbytes(rng.randrange(0, 64)),
        lambda: b"",
    ]
    return [rng.choice(makers)() for _ in range(count)]


def worker_garbage(
    context: zmq.Context[Any],
    endpoints: dict[str, str],
    workers: list[dict[str, Any]],
    rng: random.Random,
    count: int,
) -> GarbageResult:
    """Send garbage to the master's worker endpoints (``replies`` and ``publish``)."""
    result = GarbageResult()
    dealer = context.socket(zmq.DEALER)
    xsub = context.socket(zmq.XSUB)
    for sock in (dealer, xsub):
        sock.linger = 500  # let the frames leave; the context's end waits at most this
        sock.sndhwm = count + 10
    try:
        dealer.connect(endpoints["replies"])
        xsub.connect(endpoints["publish"])
        for frames in worker_items(rng, workers, count):
            try:
                dealer.send_multipart(frames, zmq.NOBLOCK)
                result.router += 1
            except zmq.Again:
                break
        for frame in subscription_items(rng, count):
            try:
                xsub.send(frame, zmq.NOBLOCK)
                result.xpub += 1
            except zmq.Again:
                break
        if rng.random() < 0.3:
            result.oversize += _oversize(
                context, endpoints["replies"], protocol.MAX_MESSAGE_SIZE + 4096
            )
    finally:
        dealer.close()
        xsub.close()
    return result
