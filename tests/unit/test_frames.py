"""`procbus.frames.recv_two`: two-frame messages fast, any other shape read whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from procbus.frames import recv_two


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
