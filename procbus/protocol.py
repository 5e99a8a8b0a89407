"""The wire: every message that crosses a socket in a procbus tree.

A message is one frame: a two-byte header (protocol version, message type)
followed by a msgpack body, a map whose fields depend on the type. This module
is pure: it encodes and decodes bytes and knows nothing of sockets. Every
decoded message is validated against its type's schema before anyone uses it;
anything else raises `ProtocolError`, which receivers log and drop (or answer,
on the control socket). Nothing is ever unpickled or evaluated, msgpack
extension types are refused, and sizes are capped.

Who sends what::

    master PUB  -> worker SUB      PUBLISH (topic frame b"*" first; a targeted one
                                   names its workers in ``to``: see below)
    master PUB  -> one worker SUB  DRAIN (topic frame: that worker's own topic)
    worker DEALER -> master ROUTER HELLO, STATE, HEARTBEAT, REPLY, TREE_PUBLISH
    master ROUTER -> worker DEALER WELCOME, RETAINED, TREE_REPLY (see below)
    client DEALER -> master ROUTER CONTROL_REQUEST, answered by CONTROL_REPLY
    master XPUB -> watchers SUB    EVENT (topic frame: b"ev." and the event name)

A targeted publish (``publish(..., to=[1, 3])``) still goes out once, on the
broadcast topic, with the topics of its target workers in the optional field
``to``: every worker counts it in its sequence (gap detection, WELCOME's
``next_seq`` and the DRAIN marker's ``last_seq`` stay one sequence for the
whole tree) and only its targets run it. Sending it on the targets' own topics
instead would leave a hole in every other worker's sequence, a false gap.
`PublishTemplate` puts ``to`` right after ``seq``, so that `publish_head` reads
both without decoding the arguments: a worker that is no target pays for a few
bytes, not for the body. A publish without ``to`` is the same frame as before
the field existed.

A publish can start in a worker too (`procbus.tree`): the worker sends a
TREE_PUBLISH (a number of its own, the channel, arguments, timeout and
options), the master runs it as its own tree publish and answers with a
TREE_REPLY holding the same number and either the tree's reply (as
``TreeReply.to_dict`` gives it) or an error ``{code, message}``.

RETAINED takes the retained publishes (`procbus.master.retained`) to a new
worker before it runs: PUBLISH frames as the workers got them, in publish
order, several to a message; ``more`` says that the first snapshot goes on in
the next message. The worker decodes each frame as it decodes one from SUB.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from procbus.errors import ProtocolError

VERSION: Final = 1
MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
"""Bytes; receivers also set ``zmq.MAXMSGSIZE`` to this so ZeroMQ refuses
larger frames before they are read."""

BROADCAST_TOPIC: Final = b"*"
"""The SUB topic every publish is sent under."""
EVENT_TOPIC: Final = b"ev."
"""The topic of an event is this prefix and the event's name."""
STATS_TOPIC: Final = EVENT_TOPIC + b"stats"
"""The periodic stats samples; the master samples only while some watcher
subscribes to exactly this topic."""


class MsgType(enum.IntEnum):
    """The closed set of message types."""

    PUBLISH = 1
    REPLY = 2
    HELLO = 3
    WELCOME = 4
    HEARTBEAT = 5
    STATE = 6
    CONTROL_REQUEST = 7
    CONTROL_REPLY = 8
    EVENT = 9
    DRAIN = 10
    """Sent to one worker, in order with the publishes, when the master drains it:
    ``last_seq`` is the last publish sent before; those after are not for it."""
    TREE_PUBLISH = 11
    """A worker asks the master to publish on the whole tree (`procbus.tree`)."""
    TREE_REPLY = 12
    """The master's answer to one TREE_PUBLISH: the tree's reply, or an error."""
    RETAINED = 16
    """Retained publishes for a worker that is not a target yet (its PUBLISH frames)."""


class WorkerBusState(enum.StrEnum):
    """Where a worker is in its life, as its STATE messages say (the wire carries the
    value): the master's readiness keys on RUNNING. Its bus's own state is a `BusState`."""

    STARTING = "starting"
    """Said hello; loading the app and starting its bus."""
    RUNNING = "running"
    """The app serves: the worker may become a target of publishes."""
    STOPPING = "stopping"
    """Draining: it answers what it was sent, then stops."""
    STOPPED = "stopped"
    """Its bus stopped; the process exits next."""
    FAILED = "failed"
    """The app could not boot, returned or raised (`error` says which); it exits next."""


class BusState(enum.StrEnum):
    """A worker's own bus state, by the name of its `procbus.bus.states` member.

    Every HEARTBEAT carries it (field ``bus``), and a worker sends one at once when
    its bus moves: ``status`` shows it as ``bus_state``. It is not `WorkerBusState`:
    a worker drains its publishes while its bus is still STARTED, and its bus is
    STOPPING while the stop listeners wait for the requests in flight.
    """

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    STOPPING = "STOPPING"
    EXITING = "EXITING"


_Types = type | tuple[type, ...]
_NUMBER: Final = (int, float)
_OPTIONAL_STR: Final = (str, type(None))

# Per message type: field -> (accepted types, required). Fields not listed are
# refused, so a typo on either side fails loudly instead of being ignored.
_SCHEMAS: Final[dict[MsgType, dict[str, tuple[_Types, bool]]]] = {
    MsgType.PUBLISH: {
        "seq": (int, True),
        "channel": (str, True),
        "args": (list, True),
        "kwargs": (dict, True),
        "timeout": (_NUMBER, True),
        "to": (list, False),
    },
    MsgType.REPLY: {
        "seq": (int, True),
        "results": (list, True),
        "errors": (list, True),
    },
    MsgType.HELLO: {
        "worker": (int, True),
        "generation": (int, True),
        "pid": (int, True),
        "topic": (bytes, True),
    },
    MsgType.WELCOME: {"next_seq": (int, True)},
    MsgType.HEARTBEAT: {"counters": (dict, True), "bus": (str, False)},
    MsgType.STATE: {"state": (str, True), "error": (_OPTIONAL_STR, False)},
    MsgType.CONTROL_REQUEST: {
        "id": (str, True),
        "command": (str, True),
        "args": (list, False),
        "kwargs": (dict, False),
        "wait": (bool, False),
        "timeout": (_NUMBER, False),
    },
    MsgType.CONTROL_REPLY: {
        "id": (str, True),
        "ok": (bool, True),
        "result": (object, False),
        "error": (dict, False),
    },
    MsgType.EVENT: {"event": (str, True), "time": (_NUMBER, True), "data": (dict, True)},
    MsgType.DRAIN: {"last_seq": (int, True)},
    MsgType.TREE_PUBLISH: {
        "id": (int, True),
        "channel": (str, True),
        "args": (list, True),
        "kwargs": (dict, True),
        "timeout": (_NUMBER, False),
        "options": (dict, False),
    },
    MsgType.TREE_REPLY: {"id": (int, True), "reply": (dict, False), "error": (dict, False)},
    MsgType.RETAINED: {"frames": (list, True), "more": (bool, True)},
}

_ERROR_FIELDS: Final = ("type", "message", "listener", "traceback")


class Message:
    """A decoded, validated message.

    A plain class, not a dataclass: one is made per message on the hot paths (a
    frozen dataclass's ``__init__`` costs three times as much), and ``procbus
    ctl`` imports this module (`dataclasses`, with ``inspect``, would be a tenth
    of its start-up).
    """

    __slots__ = ("body", "type")

    def __init__(self, type: MsgType, body: dict[str, Any]) -> None:
        self.type: Final = type
        self.body: Final = body

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self.type is other.type and self.body == other.body

    __hash__ = None  # type: ignore[assignment]  # the body is a dict

    def __repr__(self) -> str:
        return f"Message(type={self.type!r}, body={self.body!r})"

    def __getitem__(self, field: str) -> Any:
        return self.body[field]

    def get(self, field: str, default: Any = None) -> Any:
        return self.body.get(field, default)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


_TIMESTAMP_EXT: Final = -1
"""The extension type msgpack decodes itself (into ``msgpack.Timestamp``)
before any ``ext_hook`` could see it; no ``timestamp=`` option refuses it."""


def _refused_ext_error(data: bytes, limits: Limits) -> ProtocolError:
    """The error for a body that holds an extension with a payload.

    `unpack` has msgpack refuse such a body (``max_ext_len=0``), and msgpack's
    error names only a length. This cold path decodes the body again with
    payloads allowed, to name a type it holds: the first extension other than
    a Timestamp reaches `_refuse_ext`; if none does, the body held a Timestamp.
    """
    timestamp = ProtocolError(f"msgpack extension type {_TIMESTAMP_EXT} is not allowed")
    budget = _Budget(limits)
    try:
        msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            list_hook=budget,
            object_hook=budget,
        )
    except ProtocolError as exc:
        return exc
    except Exception:  # a Timestamp of a bad length, or a fault after the Timestamp
        return timestamp
    return timestamp


def pack(obj: Any) -> bytes:
    """Encode `obj` as msgpack; raise ``TypeError`` if it is not serializable."""
    try:
        return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{type(obj).__name__} value is not serializable: {exc}") from exc


class Limits(NamedTuple):
    """How much a decoded message may hold, whatever its size in bytes.

    msgpack is compact: one byte is an empty map, which costs about 64 bytes
    of memory once decoded. So every receiver bounds what it decodes, not only
    the frame size: `elements` counts every container plus every item and
    key/value pair in it (a byte of input can cost at most one element), and
    `depth` bounds nesting (the master's own code, and a caller's, may walk a
    value recursively). A frame that exceeds either raises `ProtocolError`.
    """

    elements: int
    depth: int


CONTROL_LIMITS: Final = Limits(elements=1 << 16, depth=32)
"""A control request (at most 1 MiB) from a peer that may mean harm."""
WORKER_LIMITS: Final = Limits(elements=1 << 18, depth=64)
"""What workers send the master (a buggy app, not a malicious one)."""
DEFAULT_LIMITS: Final = Limits(elements=1 << 20, depth=64)
"""Everything else: what a master sends its workers and clients."""


class _Budget:
    """msgpack's list and object hook: counts what a message holds against `Limits`."""

    __slots__ = ("containers", "left", "limit")

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.elements
        self.left = limits.elements
        self.containers = 0

    def __call__(self, container: Any) -> Any:
        # Called for every array and map, once its items are in.
        self.containers += 1
        self.left -= 1 + len(container)
        if self.left < 0:
            raise ProtocolError(f"message holds more than {self.limit} elements")
        return container


def unpack(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode one msgpack object; raise `ProtocolError` on anything malformed or too big."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    count = _Budget(limits)
    try:
        # max_ext_len=0: msgpack itself refuses every extension with a payload, the
        # Timestamp it would otherwise decode without asking ext_hook included, at no
        # cost per object. ext_hook still refuses the empty ones.
        if _within_limits(data, limits):
            # Most messages (every publish and reply of the hot path): too short to
            # exceed either bound, decoded without a hook call per container.
            return msgpack.unpackb(
                data, raw=False, strict_map_key=False, ext_hook=_refuse_ext, max_ext_len=0
            )
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            ext_hook=_refuse_ext,
            list_hook=count,
            object_hook=count,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except ValueError as exc:
        if "max_ext_len" in str(exc):
            raise _refused_ext_error(data, limits) from None
        raise ProtocolError(f"malformed msgpack body: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # msgpack raises many types for bad input
        raise ProtocolError(f"malformed msgpack body: {type(exc).__name__}: {exc}") from exc
    # Nesting is at most the number of containers: walk only when it could be too deep.
    if count.containers > limits.depth and nesting(value) > limits.depth:
        raise ProtocolError(f"message is nested more than {limits.depth} levels deep")
    return value


_CONTAINER_BYTES: Final = bytes([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
_NOT_CONTAINER_BYTES: Final = bytes(set(range(256)) - set(_CONTAINER_BYTES))
"""msgpack's map and array headers; any other byte is deleted when counting
them (a string's bytes may look like headers too: the count is an upper bound)."""


_SHORT: Final = 4096
"""Bytes up to which `unpack` counts container headers before decoding: beyond,
the count would cost more than the hooks it might save."""


def _within_limits(data: bytes, limits: Limits, short: int = _SHORT) -> bool:
    """Whether `data` cannot exceed `limits`, judged from its bytes alone.

    `Limits.elements` counts each container once for itself and once as an item
    of its parent, every other value once as an item: at most the number of
    values (each at least a byte) plus the number of containers (each a map or
    array header byte). Nesting needs a header per level. Header bytes are
    counted with any byte that looks like one (inside a string too): an upper
    bound, so a frame judged within limits is.
    """
    if len(data) > short:
        return False
    headers = len(data.translate(None, _NOT_CONTAINER_BYTES))
    return headers <= limits.depth and len(data) + headers <= limits.elements


def beyond_limits(frame: bytes, limits: Limits) -> str | None:
    """Why a receiver bounded by `limits` would refuse the encoded `frame`, or None.

    For a sender that must not emit what its peer drops unanswered (a reply, a
    worker's tree publish, the master's answer to it). Most frames are small
    and hold few containers: they are not decoded again (`_within_limits`).
    """
    if len(frame) > MAX_MESSAGE_SIZE - 64:
        return f"{len(frame)} bytes exceed the limit of {MAX_MESSAGE_SIZE}"
    if _within_limits(frame[2:], limits, short=MAX_MESSAGE_SIZE):
        return None
    try:
        unpack(frame[2:], limits)
    except ProtocolError as exc:
        return str(exc)
    return None


def nesting(value: Any) -> int:
    """How deeply containers nest in `value` (0 for a scalar); iterative, no recursion.

    Level by level, and only the containers of a level are looked into: the
    master runs this on worker replies that hold many containers, so a
    scalar costs one ``isinstance`` and no stack entry.
    """
    depth = 0
    level: list[Any] = [value]
    while containers := [item for item in level if isinstance(item, _CONTAINERS)]:
        depth += 1
        level = []
        for item in containers:
            level.extend(item)  # a sequence's items, a map's keys
            if isinstance(item, dict):
                level.extend(item.values())
    return depth


_CONTAINERS: Final = (dict, list, tuple)


def encode(msg_type: MsgType, body: Mapping[str, Any]) -> bytes:
    """Encode a message; raise ``TypeError`` if the body is not serializable.

    The body is validated as the receiver would, so a sender cannot emit what
    its peer would refuse.
    """
    validate(msg_type, body)
    return bytes((VERSION, msg_type)) + pack(dict(body))


def encode_reply(seq: int, results: list[Any], errors: list[dict[str, str]]) -> bytes:
    """A REPLY, from parts whose types its one sender (`procbus.worker.link`) makes
    sure of: not validated again on the worker's hot path (see `encode`). Raises
    ``TypeError`` if a result is not serializable."""
    return _REPLY_HEADER + pack({"seq": seq, "results": results, "errors": errors})


class PublishTemplate:
    """A PUBLISH encoded once, without its sequence number.

    The arguments are packed (and checked) when the template is made, before
    the master runs its own listeners; `frame(seq)` then only prepends the
    number (and the targets of a targeted publish), so the sequence is
    allocated at the moment of sending.
    """

    __slots__ = ("_rest", "channel")

    def __init__(
        self, channel: str, args: list[Any], kwargs: dict[str, Any], timeout: float
    ) -> None:
        body = {"channel": channel, "args": args, "kwargs": kwargs, "timeout": timeout}
        if not (
            type(channel) is str
            and type(args) is list
            and type(kwargs) is dict
            and type(timeout) in (float, int)
        ):  # the schema check says what is wrong (and with what words)
            validate(MsgType.PUBLISH, {"seq": 0, **body})
        self.channel = channel
        # A msgpack map is its header (one byte for up to 15 pairs) followed by
        # its key/value pairs: keep the pairs, the seq pair goes in front.
        self._rest: bytes = pack(body)[1:]

    def frame(self, seq: int, to: Sequence[bytes] | None = None) -> bytes:
        """The frame of publish `seq`; with `to`, for those worker topics only."""
        if to is None:
            return _PUBLISH_HEADER + _SEQ_KEY + pack(seq) + self._rest
        return _TARGETED_HEADER + _SEQ_KEY + pack(seq) + _TO_KEY + pack(list(to)) + self._rest


_REPLY_HEADER: Final = bytes((VERSION, MsgType.REPLY))
_PUBLISH_HEADER: Final = bytes((VERSION, MsgType.PUBLISH, 0x85))  # fixmap of 5 pairs
_TARGETED_HEADER: Final = bytes((VERSION, MsgType.PUBLISH, 0x86))  # 6 pairs: to as well
_SEQ_KEY: Final[bytes] = msgpack.packb("seq")
_TO_KEY: Final[bytes] = msgpack.packb("to")
_HEAD_PREFIX: Final = _TARGETED_HEADER + _SEQ_KEY
_UINT_WIDTHS: Final = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
"""msgpack's unsigned integers: marker byte -> bytes that follow it."""
HEAD_PEEK: Final = 4096
"""Bytes of targets `publish_head` reads at most (a few hundred topics)."""


class PublishHead(NamedTuple):
    """The number and the targets of a targeted publish, read before its body."""

    seq: int
    to: list[Any]
    """The target workers' topics (bytes, as the master sends them)."""


def publish_head(frame: bytes) -> PublishHead | None:
    """The number and targets of a targeted PUBLISH, without decoding its arguments.

    Only a frame laid out as `PublishTemplate` lays out a targeted publish
    (``seq`` then ``to`` first in the map, the targets within `HEAD_PEEK`
    bytes) gets a head; for anything else (a broadcast, a frame cut short or
    malformed) this returns None and the caller decodes the whole frame, which
    judges it. A broadcast costs a prefix comparison here.
    """
    if not frame.startswith(_HEAD_PREFIX):
        return None
    at = len(_HEAD_PREFIX)
    marker = frame[at] if len(frame) > at else 0xC1
    if marker < 0x80:  # a positive fixint
        seq, at = marker, at + 1
    elif marker in _UINT_WIDTHS:
        end = at + 1 + _UINT_WIDTHS[marker]
        seq, at = int.from_bytes(frame[at + 1 : end], "big"), end
    else:
        return None
    if frame[at : at + len(_TO_KEY)] != _TO_KEY:
        return None
    at += len(_TO_KEY)
    unpacker = msgpack.Unpacker(raw=False, ext_hook=_refuse_ext, max_ext_len=0)
    unpacker.feed(frame[at : at + HEAD_PEEK])
    try:
        to = unpacker.unpack()
    except Exception:  # cut short, malformed: decode() says why
        return None
    return PublishHead(seq, to) if isinstance(to, list) else None


def decode(
    frame: bytes, expect: frozenset[MsgType] | None = None, limits: Limits = DEFAULT_LIMITS
) -> Message:
    """Decode and validate one frame; raise `ProtocolError` if it is malformed.

    With `expect`, a message of any other type is refused too; `limits` bound
    what the body may hold (see `Limits`).
    """
    if len(frame) < 2:
        raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the header")
    version, raw_type = frame[0], frame[1]
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (expected {VERSION})")
    msg_type = _BY_VALUE.get(raw_type)
    if msg_type is None:
        raise ProtocolError(f"unknown message type {raw_type}")
    if expect is not None and msg_type not in expect:
        raise ProtocolError(f"unexpected message type {msg_type.name}")
    body = unpack(frame[2:], limits)
    if not isinstance(body, dict):
        raise ProtocolError(f"{msg_type.name} body must be a map, got {type(body).__name__}")
    if msg_type is not MsgType.REPLY or not _plain_reply(body):
        validate(msg_type, body)
    if msg_type is MsgType.STATE:
        body["state"] = WorkerBusState(body["state"])
    elif msg_type is MsgType.HEARTBEAT and "bus" in body:
        body["bus"] = BusState(body["bus"])
    return Message(msg_type, body)


def _plain_reply(body: dict[str, Any]) -> bool:
    """Whether `body` is a REPLY without errors, as a worker sends it for almost every
    publish: the master's hot path checks that in a few comparisons, and leaves
    anything else to `validate` (which says what is wrong)."""
    return (
        len(body) == 3
        and type(body.get("seq")) is int
        and type(body.get("results")) is list
        and body.get("errors") == []
    )


def validate(msg_type: MsgType, body: Mapping[str, Any]) -> None:
    """Check `body` against the schema of `msg_type`; raise `ProtocolError`."""
    fields, checks = _COMPILED[msg_type]
    if not fields.issuperset(body):
        unknown = next(field for field in body if field not in fields)
        raise ProtocolError(f"{msg_type.name} has unknown field {unknown!r}")
    for field, types, required, refuses_bool in checks:
        if field not in body:
            if required:
                raise ProtocolError(f"{msg_type.name} is missing field {field!r}")
            continue
        value = body[field]
        # bool is an int subclass; a bool where a number is expected is an error.
        if not isinstance(value, types) or (refuses_bool and isinstance(value, bool)):
            raise ProtocolError(
                f"{msg_type.name} field {field!r} must be {_names(types)}, "
                f"got {type(value).__name__}"
            )
    if msg_type is MsgType.REPLY:
        for error in body["errors"]:
            check_error(error)
    elif msg_type is MsgType.STATE and body["state"] not in _BUS_STATES:
        raise ProtocolError(
            f"STATE field 'state' must be one of {', '.join(_BUS_STATES)}, got {body['state']!r}"
        )
    elif msg_type is MsgType.RETAINED:
        for frame in body["frames"]:
            if not isinstance(frame, bytes):
                raise ProtocolError(
                    f"RETAINED field 'frames' must hold frames (bytes), got {type(frame).__name__}"
                )
    elif msg_type is MsgType.HEARTBEAT and body.get("bus", BusState.STARTED) not in _BUS_NAMES:
        raise ProtocolError(
            f"HEARTBEAT field 'bus' must be one of {', '.join(_BUS_NAMES)}, got {body['bus']!r}"
        )
    elif msg_type is MsgType.TREE_PUBLISH:
        key = next((key for key in body["kwargs"] if not isinstance(key, str)), None)
        if key is not None:
            raise ProtocolError(
                f"TREE_PUBLISH field 'kwargs' must map names (strings), got key {key!r:.40}"
            )
    elif msg_type is MsgType.TREE_REPLY:
        _check_tree_reply(body)


def _check_tree_reply(body: Mapping[str, Any]) -> None:
    if ("reply" in body) == ("error" in body):
        which = "both" if "reply" in body else "neither"
        raise ProtocolError(f"TREE_REPLY must hold a reply or an error, not {which}")
    error = body.get("error")
    if error is not None and (
        not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str)
    ):
        raise ProtocolError("TREE_REPLY error must map code and message to strings")


def check_error(error: object) -> dict[str, str]:
    """Validate one remote error map (`type`, `message`, `listener`, `traceback`)."""
    if not isinstance(error, dict) or any(
        not isinstance(error.get(field), str) for field in _ERROR_FIELDS
    ):
        raise ProtocolError(f"an error must map {', '.join(_ERROR_FIELDS)} to strings")
    return error


def _refuses_bool(types: _Types) -> bool:
    flat = _flat(types)
    return bool not in flat and object not in flat


def _flat(types: _Types) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


_COMPILED: Final = {
    msg_type: (
        frozenset(schema),
        tuple(
            (field, types, required, _refuses_bool(types))
            for field, (types, required) in schema.items()
        ),
    )
    for msg_type, schema in _SCHEMAS.items()
}
"""The schemas ready for `validate` (run for every message, so precomputed)."""
_BY_VALUE: Final = {int(msg_type): msg_type for msg_type in MsgType}
_BUS_STATES: Final = tuple(state.value for state in WorkerBusState)
_BUS_NAMES: Final = tuple(state.value for state in BusState)


def _names(types: _Types) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _flat(types))
