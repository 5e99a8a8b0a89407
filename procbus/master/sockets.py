"""The listening sockets: bound once by the master, inherited by everything after it.

The master binds every ``bind`` address before it forks. Workers get the
sockets through ``fork``; a master that re-executes itself (``restart``) or
starts its successor (``upgrade``) passes them through ``exec`` as numbered
file descriptors, named in the ``PROCBUS_FDS`` environment variable. Under
systemd socket activation the sockets come from systemd instead
(``LISTEN_PID``/``LISTEN_FDS``, as ``sd_listen_fds(3)`` reads them). Either way
no listening socket is ever closed and bound again, so no connection is
refused while processes come and go: clients wait in the listen backlog.

Decisions:

- One address gives one socket: a host name is resolved with ``getaddrinfo``
  and the first answer is bound, as gunicorn does. Bind ``0.0.0.0:P`` and
  ``[::]:P`` for both families; whether ``[::]`` also accepts IPv4 is the
  system's ``net.ipv6.bindv6only`` choice, left alone.
- TCP sockets get ``SO_REUSEADDR`` (a restarted master rebinds a port with
  connections in ``TIME_WAIT``), never ``SO_REUSEPORT`` (a second master on the
  same port must fail, not silently share it).
- A ``unix:PATH`` socket file left behind by a dead master is removed, but only
  when connecting to it is refused: a live listener means the address is in
  use. A path that exists and is not a socket is never removed. The file gets
  mode 0660 (owner and group: the usual way to let a front proxy in through a
  shared group) before ``listen``, so nobody can connect in between.
  ``unix:@NAME`` is a socket in Linux's abstract namespace, with no file.
- Every socket is inheritable (``os.set_inheritable``), as ``exec`` needs.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import socket
import stat
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from typing import Final

from procbus.errors import ConfigError
from procbus.master.handover import FDS_VARIABLE
from procbus.paths import MAX_IPC_PATH

SD_LISTEN_FDS_START: Final = 3
"""The first fd systemd passes (``SD_LISTEN_FDS_START`` in ``sd-daemon.h``)."""

DEFAULT_BACKLOG: Final = 2048
DEFAULT_UNIX_MODE: Final = 0o660

_EXPECTED: Final = "expected HOST:PORT, [IPV6]:PORT or unix:PATH"
_SYSTEMD_VARIABLES: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_NUMBER = re.compile(r"[0-9]+")
_IPV4_LIKE = re.compile(r"[0-9.]+")
_HOST_NAME = re.compile(
    r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?", re.ASCII
)


@dataclass(frozen=True)
class Address:
    """A parsed bind address: a TCP `host` and `port`, or a unix socket `path`.

    `host` is a host name (lower case), an IPv4 address or an IPv6 address
    without brackets, each in canonical form. `path` is a file system path as
    written, or ``@NAME`` for Linux's abstract namespace. ``str()`` gives the
    canonical text (``127.0.0.1:8000``, ``[::1]:8000``, ``unix:/run/app.sock``),
    which `parse_address` reads back to an equal `Address`.
    """

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        tcp = self.host is not None and self.port is not None and self.path is None
        unix = self.path is not None and self.host is None and self.port is None
        if not (tcp or unix):
            raise ValueError(f"an Address has a host and a port, or a path: {self!r}")

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    @property
    def is_abstract(self) -> bool:
        """A unix socket in the abstract namespace (no file)."""
        return self.path is not None and self.path.startswith("@")

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_UNIX``, ``AF_INET``/``AF_INET6`` for an IP address, ``AF_UNSPEC`` for a name."""
        if self.path is not None:
            return socket.AF_UNIX
        try:
            ip = ipaddress.ip_address(self.host or "")
        except ValueError:
            return socket.AF_UNSPEC
        return socket.AF_INET6 if ip.version == 6 else socket.AF_INET

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Read a ``bind`` value: ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``.

    Raise `ConfigError` with a one-line message naming the value and what was
    expected, such as ``bind 'localhost:99999': port must be 0-65535``.
    """
    where = f"bind {text!r}"
    if text.startswith("unix:"):
        return Address(path=_parse_unix_path(text.removeprefix("unix:"), where))
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"{where}: {_EXPECTED}")
        port_text = rest[1:]
        try:
            canonical = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ConfigError(f"{where}: {_EXPECTED}")
        if ":" in host:
            raise ConfigError(f"{where}: an IPv6 address goes in brackets, as [IPV6]:PORT")
        canonical = _canonical_host(host, where)
    if not _NUMBER.fullmatch(port_text):
        raise ConfigError(f"{where}: port must be a number 0-65535")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"{where}: port must be 0-65535")
    return Address(host=canonical, port=port)


def _parse_unix_path(path: str, where: str) -> str:
    if not path or path == "@":
        raise ConfigError(f"{where}: the unix socket path is empty")
    if "\0" in path:
        raise ConfigError(f"{where}: the unix socket path contains a NUL byte")
    size = len(os.fsencode(path))  # an abstract name's '@' becomes its leading NUL
    if size > MAX_IPC_PATH:
        raise ConfigError(
            f"{where}: the unix socket path is {size} bytes, longer than {MAX_IPC_PATH}"
        )
    return path


def _canonical_host(host: str, where: str) -> str:
    if not host:
        raise ConfigError(f"{where}: the host is empty (0.0.0.0 or [::] means every interface)")
    if _IPV4_LIKE.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv4 address") from None
    if not _HOST_NAME.fullmatch(host):
        raise ConfigError(f"{where}: {host!r} is not a host name or an IP address")
    return host.lower()


# -- binding -------------------------------------------------------------------


def bind(
    addresses: Sequence[Address],
    backlog: int = DEFAULT_BACKLOG,
    *,
    unix_mode: int = DEFAULT_UNIX_MODE,
) -> list[socket.socket]:
    """Bind and listen on every address; return the sockets in the same order.

    Each socket is inheritable. A ``unix:`` socket file gets `unix_mode`. On
    any failure the sockets already bound are closed (and the socket files
    this call created removed) and `ConfigError` says which address failed and
    why, in one line: ``bind '127.0.0.1:8000': address already in use``.
    """
    bound: list[socket.socket] = []
    created: list[str] = []
    try:
        for address in addresses:
            if address.path is None:
                bound.append(_bind_tcp(address, backlog))
            else:
                bound.append(_bind_unix(address, address.path, backlog, unix_mode))
                if not address.is_abstract:
                    created.append(address.path)
    except BaseException:
        for sock in bound:
            sock.close()
        for path in created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise
    return bound


def _bind_tcp(address: Address, backlog: int) -> socket.socket:
    try:
        found = socket.getaddrinfo(
            address.host, address.port, address.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror:
        raise ConfigError(f"bind '{address}': cannot resolve host") from None
    family, kind, proto, _, sockaddr = found[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_failure(address, exc)) from None
    return sock


def _bind_unix(address: Address, path: str, backlog: int, mode: int) -> socket.socket:
    if address.is_abstract:
        name = "\0" + path[1:]
    else:
        _check_unix_path(address, path)
        name = path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_failure(address, exc)) from None
    try:
        if not address.is_abstract:
            os.chmod(path, mode)
        sock.listen(backlog)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        if not address.is_abstract:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        raise ConfigError(_bind_failure(address, exc)) from None
    return sock


def _check_unix_path(address: Address, path: str) -> None:
    """Fail on a missing directory or a path in use; remove a stale socket file."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        problem = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise ConfigError(f"bind '{address}': directory {directory!r} {problem}")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(_bind_failure(address, exc)) from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"bind '{address}': {path!r} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener with a full backlog must not block us
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            raise ConfigError(_bind_failure(address, exc)) from None
    raise ConfigError(f"bind '{address}': address already in use")


def _bind_failure(address: Address, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        problem = "address already in use"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        problem = "permission denied"
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem = "address not available on this host"
    else:
        problem = str(exc.strerror or exc).lower()
    return f"bind '{address}': {problem}"


# -- what a socket is bound to -------------------------------------------------


def bound_address(sock: socket.socket) -> Address:
    """The address `sock` is bound to, with the real port after binding port 0.

    ``str(bound_address(sock))`` is the ``HOST:PORT`` to print or connect to.
    Raise ``ValueError`` for a socket that is not bound to an address.
    """
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # Linux gives an abstract name as bytes
            name = "@" + os.fsdecode(name[1:]) if name.startswith(b"\0") else os.fsdecode(name)
        if not name:
            raise ValueError("the unix socket is not bound to a path")
        return Address(path=name)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = name[0], name[1]
        return Address(host=str(ipaddress.ip_address(host)), port=port)
    raise ValueError(f"not a TCP or unix socket: {sock.family!r}")


def describe(sock: socket.socket) -> str:
    """The canonical address of `sock` for logs and status; never raises."""
    fd = sock.fileno()
    if fd == -1:
        return "closed socket"
    try:
        return str(bound_address(sock))
    except (OSError, ValueError):
        return f"fd {fd} (not bound to an address)"


# -- inheritance across exec ---------------------------------------------------


def export_fds(sockets: Sequence[socket.socket]) -> str:
    """The value of ``PROCBUS_FDS`` that hands `sockets` to an exec'd process.

    Marks every socket inheritable (`bind` already did), so that the fds
    named are really open after ``exec``. ``""`` for no sockets.
    """
    for sock in sockets:
        if sock.fileno() == -1:
            raise ValueError("cannot export a closed socket")
        sock.set_inheritable(True)
    return ",".join(str(sock.fileno()) for sock in sockets)


def inherit_from_env(environ: MutableMapping[str, str]) -> list[socket.socket] | None:
    """Take back the listening sockets a previous master passed in ``PROCBUS_FDS``.

    Return ``None`` when the variable is not set. The variable is *removed*
    from `environ` whenever it is there (pass ``os.environ`` so that workers
    and later execs do not see stale fds). Every fd must be an open listening
    stream socket, else `ConfigError`; then the fds already taken are closed
    and the offending one is left alone.
    """
    text = environ.pop(FDS_VARIABLE, None)
    if text is None:
        return None
    where = f"{FDS_VARIABLE}={text!r}"
    if not text:
        return []
    parts = text.split(",")
    if not all(_NUMBER.fullmatch(part) for part in parts):
        raise ConfigError(f"{where}: expected file descriptors separated by commas")
    fds = [int(part) for part in parts]
    for fd in fds:
        if fds.count(fd) > 1:
            raise ConfigError(f"{where}: fd {fd} is listed twice")
    return _adopt_all([(fd, f"fd {fd}") for fd in fds], where)


def from_systemd(
    environ: MutableMapping[str, str], *, first_fd: int = SD_LISTEN_FDS_START
) -> list[socket.socket] | None:
    """The listening sockets systemd passed (socket activation), or ``None``.

    Follows ``sd_listen_fds(3)`` with ``unset_environment`` true: ``LISTEN_PID``,
    ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` are *removed* from `environ` in every
    case (pass ``os.environ``: a re-exec'd master keeps its pid and must not
    take the fds twice; it gets them through ``PROCBUS_FDS`` instead). Return
    ``None`` unless both are set and ``LISTEN_PID`` is our pid; otherwise
    ``LISTEN_FDS=N`` means fds ``first_fd .. first_fd+N-1``, each of which must
    be a listening stream socket (``Accept=no``), else `ConfigError`. The
    sockets are made inheritable, like those `bind` makes. `first_fd` is
    ``SD_LISTEN_FDS_START`` (3) except in tests.
    """
    pid_text, count_text, names_text = (environ.pop(name, None) for name in _SYSTEMD_VARIABLES)
    if pid_text is None or count_text is None:
        return None
    if not _NUMBER.fullmatch(pid_text):
        raise ConfigError(f"LISTEN_PID={pid_text!r}: expected a process id")
    if int(pid_text) != os.getpid():
        return None
    where = f"LISTEN_FDS={count_text!r}"
    if not _NUMBER.fullmatch(count_text):
        raise ConfigError(f"{where}: expected a number of file descriptors")
    count = int(count_text)
    fds = range(first_fd, first_fd + count)
    if names_text is None:
        labels = [f"fd {fd}" for fd in fds]
    else:
        names = names_text.split(":")
        if len(names) != count:
            raise ConfigError(
                f"LISTEN_FDNAMES={names_text!r}: {len(names)} names for {count} file descriptors"
            )
        labels = [f"fd {fd} ({name!r})" for fd, name in zip(fds, names, strict=True)]
    return _adopt_all(list(zip(fds, labels, strict=True)), where)


def _adopt_all(fds: list[tuple[int, str]], where: str) -> list[socket.socket]:
    adopted: list[socket.socket] = []
    try:
        for fd, label in fds:
            adopted.append(_adopt(fd, f"{where}: {label}"))
    except BaseException:
        for sock in adopted:
            sock.close()
        raise
    return adopted


def _adopt(fd: int, what: str) -> socket.socket:
    """Wrap inherited `fd` in a socket object after checking it is a listening socket."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        raise ConfigError(f"{what} is not open") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{what} is not a socket")
    sock = socket.socket(fileno=fd)
    try:
        listening = sock.type == socket.SOCK_STREAM and bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        listening = False
    if not listening or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        sock.detach()  # not ours to close
        raise ConfigError(f"{what} is not a listening TCP or unix stream socket")
    sock.set_inheritable(True)
    return sock
