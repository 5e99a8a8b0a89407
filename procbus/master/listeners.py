"""The master's ZeroMQ listening sockets, made by procbus and handed to ZeroMQ.

ZeroMQ can bind a socket it did not make (``ZMQ_USE_FD``). procbus makes its
listening sockets itself, for three reasons:

- the socket file of an ``ipc://`` endpoint is created where procbus checked
  it may be (`procbus.master.runtime.RuntimeDir.listen`), with its mode, and
  removed only by procbus: libzmq unlinks the path of a socket it bound when
  it closes it, which would remove the file of whichever master serves the
  name by then;
- the name's listening sockets (control and events) can then be passed, as
  plain file descriptors, across an ``execv`` and to a successor master, so
  that the name never stops accepting connections during a restart or an
  upgrade, and requests already accepted by the old master get their answer
  from it;
- a successor does not have to bind anything the old master still holds.

The master keeps a duplicate of each such descriptor to hand on; ZeroMQ owns
the one it was given.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import zmq

from procbus.errors import ConfigError, StartupError


def bind_fd(zsock: zmq.Socket[Any], sock: socket.socket, endpoint: str) -> None:
    """Make `zsock` accept on `sock` (listening), under the name `endpoint`.

    ZeroMQ owns the descriptor afterwards (`sock` is detached).
    """
    zsock.setsockopt(zmq.USE_FD, sock.fileno())
    try:
        zsock.bind(endpoint)
    finally:
        zsock.setsockopt(zmq.USE_FD, -1)
    sock.detach()


def tcp_listener(endpoint: str) -> socket.socket:
    """A listening TCP socket for ``tcp://HOST:PORT`` (PORT 0: any free port)."""
    from procbus.master import sockets  # noqa: PLC0415 - the HTTP sockets' binding rules

    try:
        (sock,) = sockets.bind([sockets.parse_address(endpoint.removeprefix("tcp://"))], 128)
    except ConfigError as exc:
        raise StartupError(f"control endpoint {endpoint}: {exc}") from None
    sock.set_inheritable(False)
    return sock


def unix_listener(path: str, mode: int, backlog: int = 128) -> socket.socket:
    """A listening Unix socket at `path` (outside the runtime directory), with `mode`:
    bound under a temporary name beside it, then renamed into place."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, mode)
        sock.listen(backlog)
        os.rename(temporary, path)
    except OSError as exc:
        sock.close()
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise StartupError(f"cannot bind ipc://{path}: {exc.strerror or exc}") from None
    return sock


def endpoint_of(sock: socket.socket) -> str:
    """The ZeroMQ endpoint a listening socket serves (``ipc://PATH``, ``tcp://HOST:PORT``)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = os.fsdecode(name) if isinstance(name, bytes) else name
        return f"ipc://{path}"
    host, port = name[0], name[1]
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def adopt(fd: int) -> socket.socket:
    """A socket object for an inherited listening descriptor (which it then owns)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise StartupError(f"inherited control socket fd {fd}: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise StartupError(f"inherited control socket fd {fd} is not a stream socket")
    return sock


def duplicate(sock: socket.socket) -> int:
    """A descriptor of `sock` to keep for handing on (close-on-exec until then)."""
    return os.dup(sock.fileno())
