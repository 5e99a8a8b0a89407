"""Random frames thrown at a running master's control socket never take it down.

A raw DEALER sends what Hypothesis makes up: random bytes, requests with wrong
field types, truncated msgpack, wrong versions and message types, deeply nested
and large frames (within the socket's size limit), one to four frames at a
time. After every message the master must still answer ``ping`` on a proper
client; at the end ``status`` must show the same master and the same workers.
Read-only commands only: a random admin command could legitimately stop the
tree, which is not what is tested here.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procbus import protocol
from procbus.commands import COMMANDS, Role
from procbus.master.control_server import CONTROL_MAX_MESSAGE
from procbus.protocol import MsgType
from tests.processes import running_master

pytestmark = pytest.mark.slow

ADMIN_COMMANDS = frozenset(name for name, spec in COMMANDS.items() if spec.role is Role.ADMIN)
READ_COMMANDS = sorted(name for name, spec in COMMANDS.items() if spec.role is Role.READ)
HEADER = bytes((protocol.VERSION, MsgType.CONTROL_REQUEST))


def _not_admin(value: Any) -> bool:
    return not (isinstance(value, str) and value in ADMIN_COMMANDS)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
).filter(_not_admin)


@st.composite
def request_bodies(draw: st.DrawFn) -> dict[Any, Any]:
    """Control requests, each field right or wrong, sometimes with unknown fields."""
    body: dict[Any, Any] = {
        "id": draw(st.text(max_size=12) | values),
        "command": draw(st.sampled_from(READ_COMMANDS) | values),
    }
    for field in ("args", "kwargs", "wait", "timeout"):
        if draw(st.booleans()):
            body[field] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        body[draw(values.filter(lambda v: isinstance(v, str | int)))] = draw(values)
    return body


def _pack(body: dict[Any, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


frames = st.one_of(
    st.binary(max_size=512),
    request_bodies().map(lambda body: HEADER + _pack(body)),
    st.tuples(request_bodies(), st.integers(0, 64)).map(
        lambda pair: (HEADER + _pack(pair[0]))[: pair[1]]
    ),
    st.tuples(st.integers(0, 255), st.integers(0, 255), request_bodies())
    .filter(lambda triple: (triple[0], triple[1]) != tuple(HEADER))
    .map(lambda triple: bytes(triple[:2]) + _pack(triple[2])),
    st.integers(1, 100_000).map(lambda depth: HEADER + b"\x91" * depth),
    st.integers(1, 2**32 - 1).map(lambda claimed: HEADER + b"\xc6" + claimed.to_bytes(4, "big")),
    st.integers(256 * 1024, CONTROL_MAX_MESSAGE - 1024).map(
        lambda size: HEADER + _pack({"id": "big", "command": "ping", "args": ["x" * size]})
    ),
)


def test_random_frames_on_the_control_socket_never_take_the_master_down() -> None:
    """Steps: start a tree of two workers; send up to 50 random messages (1-4 frames
    each) on a raw DEALER, checking after each that the master answers ping.
    Expected: ping always answers; the master keeps its pid, both workers keep their
    pids and run; the bad requests were counted."""
    with running_master(workers=2) as master:
        before = master.status()
        context = zmq.Context()
        rogue = context.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(master.endpoint)
        client = master.client(timeout=10)
        try:

            @settings(
                max_examples=50,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(message=st.lists(frames, min_size=1, max_size=4))
            def survives(message: list[bytes]) -> None:
                rogue.send_multipart(message)
                assert client.call("ping")["pid"] == master.pid
                while rogue.poll(0):  # answers to the garbage, if any
                    rogue.recv_multipart()

            survives()
            after = master.status()
            stats = client.call("stats")
        finally:
            client.close()
            rogue.close(0)
            context.term()
        assert master.proc.poll() is None
        assert after["master"]["pid"] == before["master"]["pid"]
        assert [(w["id"], w["pid"], w["state"]) for w in after["workers"]] == [
            (w["id"], w["pid"], "running") for w in before["workers"]
        ]
        assert stats["master"]["bad_control_requests"] > 0
