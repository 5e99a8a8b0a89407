"""`procbus.frames.recv_two`: two-frame messages fast, any other shape read whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from procbus.frames import readable, recv_routed, recv_two


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    context: zmq.Context[Any] = zmq.Context()
    receiver, sender = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.bind("inproc://frames")
    sender.connect("inproc://frames")
    try:
        yield receiver, sender
    finally:
        receiver.close(0)
        sender.close(0)
        context.term()


def test_messages_of_one_two_and_four_frames_keep_the_next_message_whole(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    """Steps: send a message of one frame, one of four, then one of two; read them.
    Expected: (b"a", b"", 1), (b"b", b"c", 4), (b"f", b"g", 2): the frames beyond the
    second were read, so the last message starts at its own first frame; then
    zmq.Again with NOBLOCK."""
    receiver, sender = pair
    sender.send(b"a")
    sender.send_multipart([b"b", b"c", b"d", b"e"])
    sender.send_multipart([b"f", b"g"])
    assert receiver.poll(1000)
    assert recv_two(receiver) == (b"a", b"", 1)
    assert recv_two(receiver) == (b"b", b"c", 4)
    assert recv_two(receiver) == (b"f", b"g", 2)
    with pytest.raises(zmq.Again):
        recv_two(receiver, zmq.NOBLOCK)


def test_readable_says_whether_a_message_waits(
    pair: tuple[zmq.Socket[Any], zmq.Socket[Any]],
) -> None:
    """Steps: ask before anything is sent, after one message, after reading it.
    Expected: False, True, False."""
    receiver, sender = pair
    assert not readable(receiver)
    sender.send_multipart([b"a", b"b"])
    assert receiver.poll(1000)
    assert readable(receiver)
    recv_two(receiver)
    assert not readable(receiver)


def test_a_router_reads_identity_and_frame_and_drops_nothing_of_the_next_message() -> None:
    """Steps: a DEALER named b"d" sends a message of one frame, one of three, one of one.
    Expected: (b"d", b"a", 2), (b"d", b"b", 4), (b"d", b"e", 2)."""
    context: zmq.Context[Any] = zmq.Context()
    router, dealer = context.socket(zmq.ROUTER), context.socket(zmq.DEALER)
    try:
        router.bind("inproc://routed")
        dealer.routing_id = b"d"
        dealer.connect("inproc://routed")
        dealer.send(b"a")
        dealer.send_multipart([b"b", b"c", b"x"])
        dealer.send(b"e")
        assert router.poll(1000)
        assert recv_routed(router) == (b"d", b"a", 2)
        assert recv_routed(router) == (b"d", b"b", 4)
        assert recv_routed(router) == (b"d", b"e", 2)
    finally:
        router.close(0)
        dealer.close(0)
        context.term()
