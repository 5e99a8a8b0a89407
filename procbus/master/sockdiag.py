"""Linux sock_diag over netlink: what the master's figures share.

`procbus.master.stats` asks it for the inet sockets a process holds (its
connection count), `procbus.master.backlog` for the accept queues of the
listening sockets. Both send dump requests on one netlink socket and read the
messages back here; a caller that gets ``OSError`` (no sock_diag: an old
kernel, a seccomp filter, a timeout) falls back to ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Final

SOCK_DIAG_BY_FAMILY: Final = 20
DUMP: Final = 0x1 | 0x300
"""NLM_F_REQUEST | NLM_F_DUMP."""
INET_REQUEST: Final = struct.Struct("=IHHIIBBBBI48x")
"""nlmsghdr, then inet_diag_req_v2: family, protocol, ext, pad, states, a zero sockid."""
_NETLINK_SOCK_DIAG: Final = 4
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_NLMSG_HEADER: Final = struct.Struct("=IHHII")


def inet_request(family: int, protocol: int, states: int) -> bytes:
    """A dump request for the `protocol` sockets of `family` in `states` (a bit mask)."""
    return INET_REQUEST.pack(
        INET_REQUEST.size, SOCK_DIAG_BY_FAMILY, DUMP, 0, 0, family, protocol, 0, 0, states
    )


@contextlib.contextmanager
def sock_diag() -> Iterator[socket.socket]:
    """A netlink sock_diag socket, closed after use (``OSError`` where there is none)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(2.0)  # never expected; the caller's fallback takes over
        yield diag


def dump(diag: socket.socket) -> Iterator[bytes]:
    """The payload of every message of one dump, up to its end; ``OSError`` for the
    kernel's error or a message shorter than its header."""
    while True:
        data = diag.recv(65536)
        if not data:
            return
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
                raise OSError(-code, f"sock_diag: {os.strerror(-code)}")
            if length < _NLMSG_HEADER.size:
                raise OSError(0, "sock_diag: short message")
            yield data[offset + _NLMSG_HEADER.size : offset + length]
            offset += (length + 3) & ~3
