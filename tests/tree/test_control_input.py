"""Bad input on the control socket: each gets an error reply or is dropped, and
the master keeps serving the next client with the tree untouched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from procbus import protocol
from procbus.protocol import MsgType
from tests.processes import MasterProcess, running_master

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def master() -> Iterator[MasterProcess]:
    with running_master("tests.tree.apps:echo", workers=2) as proc:
        yield proc


@pytest.fixture
def dealer(master: MasterProcess) -> Iterator[zmq.Socket[bytes]]:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    # Queue all it sends and gets (the flood test; set before connecting).
    sock.sndhwm = sock.rcvhwm = 0
    sock.connect(master.endpoint)
    try:
        yield sock
    finally:
        sock.close(0)
        context.term()


def request(body: dict[str, Any], version: int = protocol.VERSION) -> bytes:
    """A control request frame, built by hand (encode() refuses bad bodies)."""
    return bytes((version, MsgType.CONTROL_REQUEST)) + msgpack.packb(body)


def reply_to(sock: zmq.Socket[bytes], frame: bytes, timeout: float = 5.0) -> dict[str, Any] | None:
    sock.send(frame)
    if not sock.poll(int(timeout * 1000)):
        return None
    body: dict[str, Any] = protocol.decode(sock.recv()).body
    return body


def tree_untouched(master: MasterProcess, pids: list[int]) -> None:
    assert master.call("ping") is not None
    assert [w["pid"] for w in master.workers()] == pids


def pids(master: MasterProcess) -> list[int]:
    return [w["pid"] for w in master.workers()]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00garbage\xff", "bad_request"),
        (request({"id": "t1", "command": "status"})[:-3], "bad_request"),  # truncated
        (request({"id": "t2", "command": "ping"}, version=99), "bad_request"),
        (request({"id": "t3", "command": "frobnicate"}), "unknown_command"),
        (request({"id": "t4", "command": "scale"}), "bad_arguments"),  # missing N
        (request({"id": "t5", "command": "scale", "args": ["four"]}), "bad_arguments"),
        (request({"id": "t6", "command": "scale", "args": [-1]}), "bad_arguments"),
        (request({"id": "t7", "command": "publish", "args": "x"}), "bad_request"),
        (request({"id": "t8", "command": "status", "kwargs": {"nope": 1}}), "bad_arguments"),
        (request({"id": 42, "command": "ping"}), "bad_request"),  # id not a string
    ],
)
def test_bad_request_gets_an_error_reply_and_the_tree_is_untouched(
    master: MasterProcess, dealer: zmq.Socket[bytes], frame: bytes, code: str
) -> None:
    before = pids(master)
    reply = reply_to(dealer, frame)
    assert reply is not None
    assert reply["ok"] is False
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    tree_untouched(master, before)


def test_oversized_frame_is_refused_by_zeromq_and_the_master_serves_others(
    master: MasterProcess, dealer: zmq.Socket[bytes]
) -> None:
    before = pids(master)
    big = request({"id": "big", "command": "publish", "args": ["echo", "x" * (2 * 1024 * 1024)]})
    assert reply_to(dealer, big, timeout=1.0) is None  # MAXMSGSIZE: connection dropped
    tree_untouched(master, before)


def test_a_flood_from_one_client_does_not_starve_another(
    master: MasterProcess, dealer: zmq.Socket[bytes]
) -> None:
    """Steps: one client keeps 500 bad requests in flight, 5000 in all; halfway, another
    client pings.
    Expected: the ping is answered while the flood goes on; every one of the 5000
    gets its unknown_command error; the workers are the same.

    The flood keeps a window rather than sending all 5000 unread: the master's control
    socket, like any ROUTER, drops replies to a peer that leaves 1000 of them unread
    (it never blocks on a client, nor holds unbounded memory for one).
    """
    before = pids(master)
    answered = 0

    def read(wait_ms: int) -> bool:
        nonlocal answered
        if not dealer.poll(wait_ms):
            return False
        reply = protocol.decode(dealer.recv()).body
        assert reply["error"]["code"] == "unknown_command"
        answered += 1
        return True

    for number in range(5000):
        while number - answered >= 500:
            assert read(5000), f"no answer with {number - answered} requests in flight"
        dealer.send(request({"id": f"f{number}", "command": "nonsense"}))
        if number == 2500:
            # Another client is served while the flood is being answered.
            assert master.call("ping", timeout=10) is not None
    while answered < 5000 and read(5000):
        pass
    assert answered == 5000
    tree_untouched(master, before)
