"""Reading two-frame messages off a ZeroMQ socket, on the tree publish's hot paths.

Every message between a master and its workers is two frames: a topic and a
body on PUB/SUB, an identity and a body on ROUTER. pyzmq's ``recv_multipart``
reads them in a Python loop that asks for each frame's "more" flag through
its option machinery: about 4.6 µs a message here, against 1.4 µs for two
``recv`` calls and one ``RCVMORE`` query with a plain int. A message of another
shape is still read whole (the next message must start at its own first
frame) and reported by its frame count, for the caller to drop.
"""

from __future__ import annotations

from typing import Any, Final

import zmq

_RCVMORE: Final = int(zmq.RCVMORE)
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)


def recv_two(socket: zmq.Socket[Any], flags: int = 0) -> tuple[bytes, bytes, int]:
    """(first frame, second frame, frames in the message) of the next message.

    A message of one frame gives ``b""`` as its second. Raises ``zmq.Again``
    with ``zmq.NOBLOCK`` when none is waiting (a message arrives whole: once its
    first frame is read, the others are there).
    """
    first: bytes = socket.recv(flags)
    if not socket.get(_RCVMORE):
        return first, b"", 1
    return (first, *_second_and_count(socket, flags))


def recv_routed(router: zmq.Socket[Any], flags: int = 0) -> tuple[bytes, bytes, int]:
    """`recv_two` for a ROUTER, whose messages always start with the sender's
    identity and hold at least one frame after it: one "more" query instead of two
    (each converts its option to an enum: a third of the call)."""
    identity: bytes = router.recv(flags)
    return (identity, *_second_and_count(router, flags))


def _second_and_count(socket: zmq.Socket[Any], flags: int) -> tuple[bytes, int]:
    """After a message's first frame: its second, and how many frames it had (those
    after the second are read and dropped)."""
    second: bytes = socket.recv(flags)
    count = 2
    while socket.get(_RCVMORE):
        socket.recv(flags)
        count += 1
    return second, count


def readable(socket: zmq.Socket[Any]) -> bool:
    """Whether a message waits on `socket`: 1.7 µs, against 4.3 µs for the
    ``zmq.Again`` that reading an empty socket raises."""
    events: int = socket.get(_EVENTS)  # type: ignore[assignment]  # an int option
    return bool(events & _POLLIN)
