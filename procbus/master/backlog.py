"""How many connections wait in each listening socket's accept queue (Linux).

``procbus_listen_backlog{socket}``: connections the kernel accepted on the
workers' listening sockets that no worker took yet. It grows when every worker
is busy, and is the first sign that the tree needs more of them.

Linux tells it through sock_diag, for the listening sockets alone (a dump
filtered on the LISTEN state, so a host with many connections costs nothing
more): ``idiag_rqueue`` of a TCP listener, the ``UNIX_DIAG_RQLEN`` attribute
of a unix one. Where netlink is refused, TCP listeners are read from
``/proc/net/tcp`` and ``tcp6`` (the ``rx_queue`` of a ``0A`` line); unix
listeners then, and every socket on other systems, have no figure: the metric
is left out rather than reported as 0.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from collections.abc import Iterable
from typing import Final

from procbus.master.sockdiag import DUMP, SOCK_DIAG_BY_FAMILY, dump, inet_request, sock_diag

_TCP_LISTEN: Final = 10
_INET_QUEUE: Final = struct.Struct("=4x48x4xII4xI")
"""inet_diag_msg: (rqueue, wqueue, inode) after family/state/timer/retrans, the sockid
and expires."""
_UNIX_REQUEST: Final = struct.Struct("=IHHIIBBHIIIII")
"""nlmsghdr, then unix_diag_req: family, protocol, pad, states, inode, show, cookie."""
_UNIX_MESSAGE: Final = struct.Struct("=BBBBI8x")
"""unix_diag_msg: family, type, state, pad, inode, cookie; then attributes."""
_UDIAG_SHOW_RQLEN: Final = 0x10
_UNIX_DIAG_RQLEN: Final = 4
_ATTRIBUTE: Final = struct.Struct("=HH")
_LINUX: Final = sys.platform.startswith("linux")


def listen_backlogs(sockets: Iterable[tuple[str, socket.socket]]) -> dict[str, int]:
    """``{name: connections waiting}`` for each (name, listening socket) the system
    tells about; the others are left out."""
    by_inode: dict[int, str] = {}
    for name, sock in sockets:
        try:
            info = os.fstat(sock.fileno())
        except (OSError, ValueError):  # closed
            continue
        if stat.S_ISSOCK(info.st_mode):
            by_inode[info.st_ino] = name
    if not by_inode or not _LINUX:
        return {}
    try:
        queues = _queues_from_netlink()
    except OSError:  # no sock_diag here (an old kernel, a seccomp filter)
        queues = _tcp_queues_from_proc()
    return {name: queues[inode] for inode, name in by_inode.items() if inode in queues}


def _queues_from_netlink() -> dict[int, int]:
    """Inode -> accept queue length of every listening TCP and unix socket."""
    queues: dict[int, int] = {}
    with sock_diag() as diag:
        for family in (socket.AF_INET, socket.AF_INET6):
            diag.send(inet_request(family, socket.IPPROTO_TCP, 1 << _TCP_LISTEN))
            for payload in dump(diag):
                if len(payload) >= _INET_QUEUE.size:
                    rqueue, _wqueue, inode = _INET_QUEUE.unpack_from(payload)
                    queues[inode] = rqueue
        diag.send(
            _UNIX_REQUEST.pack(
                _UNIX_REQUEST.size, SOCK_DIAG_BY_FAMILY, DUMP, 0, 0, socket.AF_UNIX, 0, 0,
                1 << _TCP_LISTEN, 0, _UDIAG_SHOW_RQLEN, 0xFFFFFFFF, 0xFFFFFFFF,
            )
        )  # fmt: skip
        for payload in dump(diag):
            found = _unix_queue(payload)
            if found is not None:
                queues[found[0]] = found[1]
    return queues


def _unix_queue(payload: bytes) -> tuple[int, int] | None:
    """(inode, accept queue length) of a ``unix_diag_msg`` with its RQLEN attribute."""
    if len(payload) < _UNIX_MESSAGE.size:
        return None
    inode = _UNIX_MESSAGE.unpack_from(payload)[4]
    offset = _UNIX_MESSAGE.size
    while offset + _ATTRIBUTE.size <= len(payload):
        length, kind = _ATTRIBUTE.unpack_from(payload, offset)
        if length < _ATTRIBUTE.size:
            return None
        if kind == _UNIX_DIAG_RQLEN and length >= _ATTRIBUTE.size + 8:
            (rqueue,) = struct.unpack_from("=I", payload, offset + _ATTRIBUTE.size)
            return inode, rqueue
        offset += (length + 3) & ~3
    return None


def _tcp_queues_from_proc() -> dict[int, int]:
    """Inode -> accept queue length of every listening TCP socket, from ``/proc``."""
    queues: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/self/net/{table}", "rb") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split(None, 10)
            # sl local remote st tx_queue:rx_queue tr:when retrnsmt uid timeout inode
            if len(fields) > 9 and fields[3] == b"0A" and fields[9].isdigit():
                queues[int(fields[9])] = int(fields[4].partition(b":")[2], 16)
    return queues
