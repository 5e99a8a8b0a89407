"""The wire module: round trips, and refusal of everything malformed."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procbus import protocol
from procbus.bus import states
from procbus.errors import ProtocolError
from procbus.protocol import BusState, MsgType, WorkerBusState

VALID: dict[MsgType, dict[str, Any]] = {
    MsgType.PUBLISH: {
        "seq": 7,
        "channel": "ch",
        "args": [1, "a"],
        "kwargs": {"k": 2},
        "timeout": 1.5,
    },
    MsgType.REPLY: {
        "seq": 7,
        "results": [None, {"x": [1, 2]}],
        "errors": [{"type": "ValueError", "message": "m", "listener": "f", "traceback": "tb"}],
    },
    MsgType.HELLO: {"worker": 1, "generation": 2, "pid": 1234, "topic": b"w.1.2."},
    MsgType.WELCOME: {"next_seq": 3},
    MsgType.HEARTBEAT: {"counters": {"requests": 5}},
    MsgType.STATE: {"state": "running", "error": None},
    MsgType.CONTROL_REQUEST: {"id": "r1", "command": "ping", "args": [], "kwargs": {}},
    MsgType.CONTROL_REPLY: {"id": "r1", "ok": True, "result": True},
    MsgType.EVENT: {"event": "spawn", "time": 1.0, "data": {"worker": 1}},
    MsgType.DRAIN: {"last_seq": 41},
    MsgType.TREE_PUBLISH: {
        "id": 3,
        "channel": "cache.clear",
        "args": ["price:42"],
        "kwargs": {"prefix": "p"},
        "timeout": 2.0,
        "options": {"include_self": False},
    },
    MsgType.TREE_REPLY: {"id": 3, "reply": {"channel": "cache.clear", "seq": 9}},
    MsgType.RETAINED: {"frames": [b"\x01\x01\x85", b""], "more": False},
}


def raw(version: int, msg_type: int, body: Any) -> bytes:
    return bytes((version, msg_type)) + msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("msg_type", list(MsgType))
def test_every_message_type_round_trips(msg_type: MsgType) -> None:
    """encode then decode gives back the same type and body."""
    message = protocol.decode(protocol.encode(msg_type, VALID[msg_type]))
    assert message.type is msg_type
    assert message.body == VALID[msg_type]


def test_every_type_has_a_valid_example() -> None:
    """The examples above cover the whole closed set of types."""
    assert set(VALID) == set(MsgType)


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", "frame of 0 bytes is shorter than the header"),
        (b"\x01", "frame of 1 bytes is shorter than the header"),
        (raw(2, 1, {}), "protocol version 2 is not supported (expected 1)"),
        (raw(1, 99, {}), "unknown message type 99"),
        (bytes((1, 1)) + b"\xc1", "malformed msgpack body"),
        (raw(1, 1, {"seq": 1})[:-1], "malformed msgpack body"),
        (bytes((1, 1)) + msgpack.packb({"a": 1}) + b"\x00", "malformed msgpack body"),
        (raw(1, 5, [1, 2]), "HEARTBEAT body must be a map, got list"),
        (raw(1, 4, {}), "WELCOME is missing field 'next_seq'"),
        (raw(1, 4, {"next_seq": "1"}), "WELCOME field 'next_seq' must be int, got str"),
        (raw(1, 4, {"next_seq": True}), "WELCOME field 'next_seq' must be int, got bool"),
        (raw(1, 4, {"next_seq": 1, "extra": 2}), "WELCOME has unknown field 'extra'"),
        (
            raw(1, 2, {"seq": 1, "results": [], "errors": [{"type": "E"}]}),
            "an error must map type, message, listener, traceback to strings",
        ),
        (
            raw(1, 16, {"frames": [b"f", "text"], "more": True}),
            "RETAINED field 'frames' must hold frames (bytes), got str",
        ),
        (
            bytes((1, 5)) + msgpack.packb({"counters": msgpack.ExtType(3, b"x")}),
            "msgpack extension type 3 is not allowed",
        ),
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes, error: str) -> None:
    """Each malformed frame raises ProtocolError with a message naming what is wrong."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    assert str(info.value).startswith(error)


@pytest.mark.parametrize("state", list(WorkerBusState))
def test_state_decodes_to_the_bus_state_enum_with_the_same_bytes(state: WorkerBusState) -> None:
    """Steps: encode a STATE with each bus state; compare its bytes with the plain string's;
    decode it.
    Expected: the bytes are those of the plain string (the wire is unchanged); decoded, the
    state is the enum member itself."""
    frame = protocol.encode(MsgType.STATE, {"state": state, "error": None})
    assert frame == raw(1, MsgType.STATE, {"state": state.value, "error": None})
    assert protocol.decode(frame)["state"] is state


@pytest.mark.parametrize("state", ["sleeping", "RUNNING", ""])
def test_state_with_an_unknown_bus_state_is_refused_naming_it(state: str) -> None:
    """Steps: decode a STATE whose state is not one of the worker's bus states; encode one.
    Expected: both raise ProtocolError naming the bad value (the receiver drops it; a
    sender cannot emit it)."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode(raw(1, MsgType.STATE, {"state": state}))
    assert str(info.value) == (
        "STATE field 'state' must be one of starting, running, stopping, stopped, failed, "
        f"got {state!r}"
    )
    with pytest.raises(ProtocolError, match="must be one of"):
        protocol.encode(MsgType.STATE, {"state": state})


def test_bus_state_names_are_those_of_the_bus_states_in_order() -> None:
    """Steps: list BusState's values and procbus.bus.states' names.
    Expected: the same names in the same order (the wire speaks the bus's own words)."""
    assert [state.value for state in BusState] == [state.name for state in states]


@pytest.mark.parametrize("bus", list(BusState))
def test_heartbeat_carries_the_bus_state_decoded_to_its_enum(bus: BusState) -> None:
    """Steps: encode a HEARTBEAT with counters and each bus state; compare its bytes with
    the plain name's; decode it; decode a HEARTBEAT without a bus state.
    Expected: the bytes are those of the name; decoded, the bus state is the enum member;
    a heartbeat without one is still valid (it has no "bus" field)."""
    frame = protocol.encode(MsgType.HEARTBEAT, {"counters": {"requests": 1}, "bus": bus})
    assert frame == raw(1, MsgType.HEARTBEAT, {"counters": {"requests": 1}, "bus": bus.value})
    assert protocol.decode(frame)["bus"] is bus
    bare = protocol.decode(protocol.encode(MsgType.HEARTBEAT, {"counters": {}}))
    assert "bus" not in bare.body


@pytest.mark.parametrize("bus", ["started", "RUNNING", ""])
def test_heartbeat_with_an_unknown_bus_state_is_refused_naming_it(bus: str) -> None:
    """Steps: decode a HEARTBEAT whose bus state is not a bus state's name.
    Expected: ProtocolError naming the field, the names allowed and the bad value."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode(raw(1, MsgType.HEARTBEAT, {"counters": {}, "bus": bus}))
    assert str(info.value) == (
        "HEARTBEAT field 'bus' must be one of STOPPED, STARTING, STARTED, STOPPING, EXITING, "
        f"got {bus!r}"
    )


def timestamp_publish(nest: Any) -> bytes:
    """A PUBLISH frame whose arguments hold `nest` (packed as msgpack itself would)."""
    body = {"seq": 1, "channel": "c", "args": [nest], "kwargs": {}, "timeout": 1.0}
    return bytes((1, MsgType.PUBLISH)) + msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            bytes((1, 5)) + msgpack.packb({"counters": msgpack.Timestamp(1, 0)}), id="ts32-field"
        ),
        pytest.param(timestamp_publish([msgpack.Timestamp(2**33, 5)]), id="ts64-nested-list"),
        pytest.param(timestamp_publish([[msgpack.Timestamp(-1, 5)]]), id="ts96-nested-twice"),
        pytest.param(timestamp_publish({"k": msgpack.Timestamp(1, 0)}), id="ts32-in-map"),
    ],
)
def test_timestamp_extension_is_refused_naming_its_type(frame: bytes) -> None:
    """msgpack decodes its Timestamp extension (type -1) itself; it is refused all the same.

    Steps: decode a frame whose body holds a Timestamp as a field, inside a
    list, a list of lists or a map (the 32, 64 and 96-bit encodings).
    Expected: ProtocolError naming extension type -1, as for any other type.
    """
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    assert str(info.value).startswith("msgpack extension type -1 is not allowed")


def test_first_refused_extension_is_named_when_a_timestamp_follows() -> None:
    """With another extension type before a Timestamp, that first type is named.

    Steps: decode a PUBLISH whose arguments are ExtType(7) then a Timestamp.
    Expected: ProtocolError naming type 7.
    """
    frame = timestamp_publish([msgpack.ExtType(7, b"abc"), msgpack.Timestamp(1, 0)])
    with pytest.raises(ProtocolError, match=r"^msgpack extension type 7 is not allowed"):
        protocol.decode(frame)


def test_oversized_frame_is_refused_before_unpacking() -> None:
    """A body above MAX_MESSAGE_SIZE is refused by size."""
    frame = bytes((1, 5)) + b"\x00" * (protocol.MAX_MESSAGE_SIZE + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.decode(frame)


def test_unexpected_type_is_refused() -> None:
    """decode(expect=...) refuses a well-formed message of another type."""
    frame = protocol.encode(MsgType.WELCOME, {"next_seq": 1})
    with pytest.raises(ProtocolError, match="unexpected message type WELCOME"):
        protocol.decode(frame, expect=frozenset({MsgType.REPLY}))


def test_encode_refuses_unserializable_body() -> None:
    """A body holding an object msgpack cannot encode raises TypeError."""
    with pytest.raises(TypeError, match="not serializable"):
        protocol.encode(MsgType.CONTROL_REPLY, {"id": "x", "ok": True, "result": object()})


def test_encode_validates_like_the_receiver() -> None:
    """A sender cannot emit a body its peer would refuse."""
    with pytest.raises(ProtocolError, match="missing field 'seq'"):
        protocol.encode(MsgType.REPLY, {"results": [], "errors": []})


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(json_like, max_size=5), kwargs=st.dictionaries(st.text(), json_like, max_size=3)
)
def test_publish_round_trips_any_msgpack_values(args: list[Any], kwargs: dict[str, Any]) -> None:
    """Any msgpack-native arguments survive a round trip unchanged (NaN aside)."""
    body = {"seq": 1, "channel": "c", "args": args, "kwargs": kwargs, "timeout": 1.0}
    decoded = protocol.decode(protocol.encode(MsgType.PUBLISH, body))
    assert protocol.pack(decoded.body) == protocol.pack(body)


@settings(max_examples=500, deadline=None)
@given(frame=st.binary(max_size=256))
def test_random_bytes_never_escape_as_another_exception(frame: bytes) -> None:
    """Garbage either decodes to a valid message or raises ProtocolError, nothing else."""
    try:
        message = protocol.decode(frame)
    except ProtocolError:
        return
    assert message.type in MsgType


@settings(max_examples=300, deadline=None)
@given(
    msg_type=st.sampled_from(list(MsgType)),
    body=st.dictionaries(st.text(max_size=8), json_like, max_size=5),
)
def test_random_bodies_are_validated_or_refused(msg_type: MsgType, body: dict[str, Any]) -> None:
    """A well-framed message with an arbitrary body is valid or a ProtocolError."""
    frame = bytes((protocol.VERSION, msg_type)) + msgpack.packb(body, use_bin_type=True)
    with contextlib.suppress(ProtocolError):
        protocol.decode(frame)


def test_publish_template_frames_decode_with_their_seq() -> None:
    """A template packs the arguments once; each frame carries its own seq."""
    template = protocol.PublishTemplate("ch", [1, "two"], {"k": [3]}, 2.5)
    for seq in (0, 1, 2**40):
        message = protocol.decode(template.frame(seq))
        assert message.type is MsgType.PUBLISH
        assert message.body == {
            "seq": seq,
            "channel": "ch",
            "args": [1, "two"],
            "kwargs": {"k": [3]},
            "timeout": 2.5,
        }


def test_publish_template_refuses_unserializable_arguments() -> None:
    """An argument msgpack cannot carry is refused before anything is sent."""
    with pytest.raises(TypeError, match="not serializable"):
        protocol.PublishTemplate("ch", [object()], {}, 1.0)


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (7, 0),
        ([], 1),
        ([1, [2, [3]]], 3),
        ({"a": {"b": [1, [2, {"c": ()}]]}}, 6),
        ({(1, (2,)): "a tuple key nests too"}, 3),
        ([{"n": n} for n in range(100)], 2),
    ],
)
def test_nesting_counts_the_deepest_chain_of_containers(value: Any, depth: int) -> None:
    assert protocol.nesting(value) == depth


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (list(range(10)), "message holds more than 10 elements"),
        ([{} for _ in range(5)], "message holds more than 10 elements"),
        ([[[[1]]]], "message is nested more than 3 levels deep"),
    ],
)
def test_unpack_refuses_a_body_beyond_its_limits(body: Any, error: str) -> None:
    """Steps: bodies of 11 elements, of 6 containers (each counts), and 4 levels deep,
    decoded with at most 10 elements and 3 levels.
    Expected: ProtocolError naming the limit; a body at the limits decodes."""
    limits = protocol.Limits(elements=10, depth=3)
    with pytest.raises(ProtocolError, match=f"^{error}$"):
        protocol.unpack(msgpack.packb(body), limits)
    assert protocol.unpack(msgpack.packb([[[1]], 2, 3, 4, 5]), limits) == [[[1]], 2, 3, 4, 5]


def test_targeted_publish_frame_carries_its_targets_and_a_broadcast_frame_is_unchanged() -> None:
    """Steps: frame one template without targets and with the topics of workers 1 and 3.
    Expected: the broadcast frame is byte for byte what it was before targeting existed
    (a map of 5 fields; older workers read it); the targeted one decodes with ``to``
    holding the topics, and the same other fields."""
    template = protocol.PublishTemplate("ch", [1, "two"], {"k": [3]}, 2.5)
    body = {"seq": 9, "channel": "ch", "args": [1, "two"], "kwargs": {"k": [3]}, "timeout": 2.5}
    assert template.frame(9) == bytes((protocol.VERSION, MsgType.PUBLISH)) + msgpack.packb(body)
    message = protocol.decode(template.frame(9, to=[b"w.1.1.", b"w.3.2."]))
    assert message.body == {**body, "to": [b"w.1.1.", b"w.3.2."]}


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255, 256, 2**16, 2**32, 2**40])
def test_publish_head_reads_seq_and_targets_of_a_targeted_publish(seq: int) -> None:
    """Steps: a targeted frame for every width msgpack gives a sequence number.
    Expected: `publish_head` returns the number and the targets; for the broadcast
    frame of the same template it returns None (the caller decodes it whole)."""
    template = protocol.PublishTemplate("ch", ["x" * 1000], {}, 1.0)
    head = protocol.publish_head(template.frame(seq, to=[b"w.2.1."]))
    assert head == protocol.PublishHead(seq, [b"w.2.1."])
    assert protocol.publish_head(template.frame(seq)) is None


def test_publish_head_does_not_read_the_arguments() -> None:
    """Steps: a targeted frame whose bytes after the targets are not msgpack at all.
    Expected: `publish_head` still returns the number and targets (it never looks at
    the arguments: a worker that is no target does not pay for them); `decode`
    refuses the frame."""
    good = protocol.PublishTemplate("ch", [], {}, 1.0).frame(5, to=[b"w.1.1."])
    head_end = good.index(b"\xa7channel")
    broken = good[:head_end] + b"\xc1" * 64
    assert protocol.publish_head(broken) == protocol.PublishHead(5, [b"w.1.1."])
    with pytest.raises(ProtocolError):
        protocol.decode(broken)


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        bytes((protocol.VERSION, MsgType.PUBLISH)),
        bytes((protocol.VERSION, MsgType.PUBLISH, 0x86)) + msgpack.packb("seq"),
        bytes((protocol.VERSION, MsgType.PUBLISH, 0x86))
        + msgpack.packb("seq")
        + msgpack.packb(-1)
        + msgpack.packb("to"),
        bytes((protocol.VERSION, MsgType.PUBLISH, 0x86))
        + msgpack.packb("seq")
        + msgpack.packb(3)
        + msgpack.packb("to")
        + b"\x92\xc4",  # an array of 2 cut in its first item
        bytes((protocol.VERSION, MsgType.PUBLISH, 0x86))
        + msgpack.packb("seq")
        + msgpack.packb(3)
        + msgpack.packb("to")
        + msgpack.packb("not a list"),
        bytes((protocol.VERSION + 1, MsgType.PUBLISH, 0x86))
        + msgpack.packb("seq")
        + msgpack.packb(3)
        + msgpack.packb("to")
        + msgpack.packb([b"w.1.1."]),
        bytes((protocol.VERSION, MsgType.DRAIN, 0x86))
        + msgpack.packb("seq")
        + msgpack.packb(3)
        + msgpack.packb("to")
        + msgpack.packb([b"w.1.1."]),
    ],
)
def test_publish_head_leaves_anything_else_to_decode(frame: bytes) -> None:
    """Steps: frames that are short, cut, of another version or type, or whose targets
    are not a list. Expected: None (never an exception): `decode` judges them."""
    assert protocol.publish_head(frame) is None


TREE_ERROR = {"code": "forbidden", "message": "worker 1 cannot publish 'stop' to the tree"}


@pytest.mark.parametrize(
    ("msg_type", "body"),
    [
        (MsgType.TREE_PUBLISH, {"id": 1, "channel": "c", "args": [], "kwargs": {}}),
        (MsgType.TREE_REPLY, {"id": 1, "error": TREE_ERROR}),
    ],
)
def test_tree_publish_and_reply_take_their_optional_fields_out(
    msg_type: MsgType, body: dict[str, Any]
) -> None:
    """Steps: a TREE_PUBLISH without timeout and options; a TREE_REPLY with an error
    instead of a reply. Expected: both round trip unchanged."""
    assert protocol.decode(protocol.encode(msg_type, body)).body == body


@pytest.mark.parametrize(
    ("msg_type", "body", "error"),
    [
        (MsgType.TREE_PUBLISH, {"id": 1, "args": [], "kwargs": {}}, "is missing field 'channel'"),
        (
            MsgType.TREE_PUBLISH,
            {"id": 1, "channel": "c", "args": [], "kwargs": {}, "timeout": True},
            "field 'timeout' must be int or float, got bool",
        ),
        (
            MsgType.TREE_PUBLISH,
            {"id": 1, "channel": "c", "args": [], "kwargs": {1: "x"}},
            "TREE_PUBLISH field 'kwargs' must map names (strings), got key 1",
        ),
        (
            MsgType.TREE_PUBLISH,
            {"id": 1, "channel": "c", "args": [], "kwargs": {}, "options": []},
            "field 'options' must be dict, got list",
        ),
        (MsgType.TREE_REPLY, {"id": 1}, "TREE_REPLY must hold a reply or an error, not neither"),
        (
            MsgType.TREE_REPLY,
            {"id": 1, "reply": {}, "error": TREE_ERROR},
            "TREE_REPLY must hold a reply or an error, not both",
        ),
        (
            MsgType.TREE_REPLY,
            {"id": 1, "error": {"code": "x"}},
            "TREE_REPLY error must map code and message to strings",
        ),
    ],
)
def test_malformed_tree_publish_and_reply_are_refused_naming_the_field(
    msg_type: MsgType, body: dict[str, Any], error: str
) -> None:
    """Each malformed body raises ProtocolError on decode (and on encode: a sender
    cannot emit it), the message naming what is wrong."""
    frame = bytes((protocol.VERSION, msg_type)) + msgpack.packb(body)
    for attempt in (lambda: protocol.decode(frame), lambda: protocol.encode(msg_type, body)):
        with pytest.raises(ProtocolError) as info:
            attempt()
        assert error in str(info.value)


def test_beyond_limits_names_what_a_receiver_would_refuse() -> None:
    """Steps: a small frame; one nested deeper than the limits allow; one holding more
    elements. Expected: None for the first, then one line naming the depth and the count."""
    limits = protocol.Limits(elements=100, depth=4)

    def frame(value: Any) -> bytes:
        return protocol.encode(MsgType.WELCOME, {"next_seq": 1})[:2] + msgpack.packb(value)

    assert protocol.beyond_limits(frame([1, [2]]), limits) is None
    deep = protocol.beyond_limits(frame([[[[[1]]]]]), limits)
    assert deep is not None and "nested more than 4 levels deep" in deep
    many = protocol.beyond_limits(frame(list(range(200))), limits)
    assert many is not None and "more than 100 elements" in many


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"seq": True, "results": [], "errors": []}, "field 'seq' must be int"),
        ({"seq": 1, "results": (), "errors": [], "x": 1}, "unknown field 'x'"),
        ({"seq": 1, "results": {}, "errors": []}, "field 'results' must be list"),
        ({"seq": 1, "results": [], "errors": [{}]}, "an error must map"),
        ({"seq": 1, "results": []}, "missing field 'errors'"),
    ],
)
def test_a_reply_off_the_fast_path_is_still_judged_by_its_schema(
    body: dict[str, Any], error: str
) -> None:
    """Steps: decode REPLY bodies that the plain-reply shortcut does not take (a bool
    number, an extra field, results not a list, a malformed error, a field missing).
    Expected: each refused as the schema says, naming the field."""
    with pytest.raises(ProtocolError, match=error):
        protocol.decode(raw(protocol.VERSION, MsgType.REPLY, body))


@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8))),
    st.lists(
        st.fixed_dictionaries({f: st.text(max_size=8) for f in protocol._ERROR_FIELDS}),
        max_size=3,
    ),
)
@settings(max_examples=100, deadline=None)
def test_encode_reply_is_what_encode_would_send(
    seq: int, results: list[Any], errors: list[dict[str, str]]
) -> None:
    """Steps: a reply encoded by the worker's shortcut. Expected: the same bytes as the
    validating `encode`, and it decodes to the same body."""
    body = {"seq": seq, "results": results, "errors": errors}
    frame = protocol.encode_reply(seq, results, errors)
    assert frame == protocol.encode(MsgType.REPLY, body)
    assert protocol.decode(frame).body == body


def _elements(value: Any) -> int:
    """What `protocol.Limits.elements` counts: each container, plus its items (a map's
    pairs count once each)."""
    if isinstance(value, list):
        return 1 + len(value) + sum(_elements(item) for item in value)
    if isinstance(value, dict):
        return 1 + len(value) + sum(_elements(item) for item in value.values())
    return 0


@settings(max_examples=300, deadline=None)
@given(
    value=json_like,
    elements=st.integers(min_value=0, max_value=12),
    depth=st.integers(min_value=0, max_value=4),
)
def test_unpack_refuses_exactly_what_exceeds_its_limits_on_either_path(
    value: Any, elements: int, depth: int
) -> None:
    """Steps: random values under small limits (short frames take the path without
    hooks when their bytes prove them within bounds; the others are counted).
    Expected: refused if and only if the value holds more elements or nests deeper
    than the limits; otherwise decoded to the same value."""
    limits = protocol.Limits(elements=elements, depth=depth)
    data = msgpack.packb(value, use_bin_type=True)
    too_big = _elements(value) > elements or protocol.nesting(value) > depth
    if too_big:
        with pytest.raises(ProtocolError):
            protocol.unpack(data, limits)
    else:
        decoded = protocol.unpack(data, limits)
        assert msgpack.packb(decoded, use_bin_type=True) == data


def test_a_short_frame_whose_containers_are_counted_twice_is_still_refused() -> None:
    """Steps: [None, []] (3 bytes, 4 elements: each container counts for itself and as
    its parent's item) under a limit of 3 elements, unpacked and judged by a sender.
    Expected: both refuse it (neither takes the byte count alone as the bound)."""
    limits = protocol.Limits(elements=3, depth=4)
    body = msgpack.packb([None, []])
    with pytest.raises(ProtocolError, match="more than 3 elements"):
        protocol.unpack(body, limits)
    assert (
        protocol.beyond_limits(b"\x01\x02" + body, limits) == "message holds more than 3 elements"
    )
