"""Listening sockets: parsing bind addresses, binding, inheritance across exec, systemd.

Real sockets on 127.0.0.1, ::1 (skipped without IPv6) and unix paths in
`tmp_path`; TCP ports are always ephemeral (port 0).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus.errors import ConfigError
from procbus.master.sockets import (
    FDS_VARIABLE,
    Address,
    bind,
    bound_address,
    describe,
    export_fds,
    from_systemd,
    inherit_from_env,
    parse_address,
)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")


@pytest.fixture
def bound() -> Iterator[list[socket.socket]]:
    """A list the test puts its sockets in; every one is closed afterwards."""
    owned: list[socket.socket] = []
    try:
        yield owned
    finally:
        for sock in owned:
            sock.close()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def fd_is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def free_fds(count: int) -> int:
    """The first of `count` consecutive fds that are not open (from 200 up)."""
    first = 200
    while any(fd_is_open(fd) for fd in range(first, first + count)):
        first += 1
    return first


def connects(address: Address) -> bool:
    """Whether a client can connect to `address` right now."""
    family = socket.AF_UNIX if address.is_unix else address.family
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        target: str | tuple[str | None, int | None]
        if address.path is not None:
            target = "\0" + address.path[1:] if address.is_abstract else address.path
        else:
            target = (address.host, address.port)
        try:
            client.connect(target)
        except ConnectionRefusedError:
            return False
    return True


# -- parsing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "expected"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000", Address(host="127.0.0.1", port=8000)),
        ("0.0.0.0:0", "0.0.0.0:0", Address(host="0.0.0.0", port=0)),
        ("LocalHost:80", "localhost:80", Address(host="localhost", port=80)),
        ("web-1.example.org:08080", "web-1.example.org:8080", None),
        ("[::1]:8000", "[::1]:8000", Address(host="::1", port=8000)),
        ("[0:0:0:0:0:0:0:1]:65535", "[::1]:65535", Address(host="::1", port=65535)),
        ("[::]:80", "[::]:80", None),
        ("[fe80::1%eth0]:80", "[fe80::1%eth0]:80", None),
        ("unix:/run/app.sock", "unix:/run/app.sock", Address(path="/run/app.sock")),
        ("unix:relative.sock", "unix:relative.sock", None),
        ("unix:@procbus-web", "unix:@procbus-web", Address(path="@procbus-web")),
    ],
)
def test_valid_bind_values_parse_to_a_canonical_address(
    text: str, canonical: str, expected: Address | None
) -> None:
    """Parse each accepted form.

    Expected: ``str()`` gives the canonical form, which parses back to an
    equal address; where given, the fields are as listed.
    """
    address = parse_address(text)
    assert str(address) == canonical
    assert parse_address(canonical) == address
    if expected is not None:
        assert address == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bind '': expected HOST:PORT, [IPV6]:PORT or unix:PATH"),
        ("8000", "bind '8000': expected HOST:PORT, [IPV6]:PORT or unix:PATH"),
        ("localhost", "bind 'localhost': expected HOST:PORT, [IPV6]:PORT or unix:PATH"),
        ("[::1]", "bind '[::1]': expected HOST:PORT, [IPV6]:PORT or unix:PATH"),
        ("[::1:80", "bind '[::1:80': expected HOST:PORT, [IPV6]:PORT or unix:PATH"),
        ("localhost:99999", "bind 'localhost:99999': port must be 0-65535"),
        ("localhost:", "bind 'localhost:': port must be a number 0-65535"),
        ("localhost:http", "bind 'localhost:http': port must be a number 0-65535"),
        ("localhost:-1", "bind 'localhost:-1': port must be a number 0-65535"),
        ("[::1]:x", "bind '[::1]:x': port must be a number 0-65535"),
        ("::1:80", "bind '::1:80': an IPv6 address goes in brackets, as [IPV6]:PORT"),
        (":80", "bind ':80': the host is empty (0.0.0.0 or [::] means every interface)"),
        ("[nope]:80", "bind '[nope]:80': 'nope' is not an IPv6 address"),
        ("[127.0.0.1]:80", "bind '[127.0.0.1]:80': '127.0.0.1' is not an IPv6 address"),
        ("256.0.0.1:80", "bind '256.0.0.1:80': '256.0.0.1' is not an IPv4 address"),
        ("a b:80", "bind 'a b:80': 'a b' is not a host name or an IP address"),
        (
            "-bad.example:80",
            "bind '-bad.example:80': '-bad.example' is not a host name or an IP address",
        ),
        ("unix:", "bind 'unix:': the unix socket path is empty"),
        ("unix:@", "bind 'unix:@': the unix socket path is empty"),
        ("unix:/a\0b", "bind 'unix:/a\\x00b': the unix socket path contains a NUL byte"),
        (
            "unix:/" + "x" * 107,
            f"bind 'unix:/{'x' * 107}': the unix socket path is 108 bytes, longer than 107",
        ),
    ],
)
def test_malformed_bind_values_raise_one_line_config_errors(text: str, message: str) -> None:
    """Parse a malformed value.

    Expected: `ConfigError` whose one-line message names the value and says
    what was expected.
    """
    with pytest.raises(ConfigError) as caught:
        parse_address(text)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_an_address_is_either_tcp_or_unix() -> None:
    """Build addresses with a missing port or with both a host and a path.

    Expected: ``ValueError``; the families follow the host.
    """
    with pytest.raises(ValueError, match="a host and a port, or a path"):
        Address(host="localhost")
    with pytest.raises(ValueError, match="a host and a port, or a path"):
        Address(host="localhost", port=80, path="/s")
    assert Address(host="localhost", port=80).family == socket.AF_UNSPEC
    assert Address(host="10.0.0.1", port=80).family == socket.AF_INET
    assert Address(host="::1", port=80).family == socket.AF_INET6
    assert Address(path="/s").family == socket.AF_UNIX


# -- binding -------------------------------------------------------------------


def test_tcp_port_zero_binds_a_listening_inheritable_socket_on_a_real_port(
    bound: list[socket.socket],
) -> None:
    """Bind ``127.0.0.1:0``.

    Expected: one listening, inheritable socket with SO_REUSEADDR;
    `bound_address` gives the ephemeral port, which accepts connections;
    `describe` gives the same text.
    """
    bound += bind([parse_address("127.0.0.1:0")])
    (sock,) = bound
    real = bound_address(sock)
    assert real.host == "127.0.0.1"
    assert real.port is not None
    assert real.port > 0
    assert describe(sock) == str(real) == f"127.0.0.1:{real.port}"
    assert sock.get_inheritable()
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    assert connects(real)


def test_a_host_name_binds_its_first_resolved_address(bound: list[socket.socket]) -> None:
    """Bind ``localhost:0``.

    Expected: one socket on a loopback IP address (not the name).
    """
    bound += bind([parse_address("localhost:0")])
    real = bound_address(bound[0])
    assert real.host in {"127.0.0.1", "::1"}


@needs_ipv6
def test_ipv6_loopback_binds_with_brackets_in_its_description(
    bound: list[socket.socket],
) -> None:
    """Bind ``[::1]:0``.

    Expected: an AF_INET6 socket described as ``[::1]:PORT`` that accepts
    connections.
    """
    bound += bind([parse_address("[::1]:0")])
    (sock,) = bound
    assert sock.family == socket.AF_INET6
    real = bound_address(sock)
    assert describe(sock) == f"[::1]:{real.port}"
    assert connects(real)


def test_unix_socket_gets_mode_0660_and_accepts_connections(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    """Bind ``unix:TMP/web.sock``.

    Expected: a listening, inheritable socket whose file has mode 0660,
    described as ``unix:PATH``.
    """
    path = tmp_path / "web.sock"
    bound += bind([parse_address(f"unix:{path}")])
    (sock,) = bound
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert sock.get_inheritable()
    assert describe(sock) == f"unix:{path}"
    assert connects(Address(path=str(path)))


def test_unix_mode_is_a_setting(tmp_path: Path, bound: list[socket.socket]) -> None:
    """Bind a unix socket with ``unix_mode=0o600``.

    Expected: the file has mode 0600.
    """
    path = tmp_path / "private.sock"
    bound += bind([parse_address(f"unix:{path}")], unix_mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_abstract_unix_socket_binds_without_a_file(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    """Bind ``unix:@RANDOM`` (Linux abstract namespace).

    Expected: a listening socket described with the same ``@`` name.
    """
    name = f"@procbus-test-{uuid.uuid4().hex}"
    bound += bind([parse_address(f"unix:{name}")])
    assert describe(bound[0]) == f"unix:{name}"
    assert connects(Address(path=name))


def test_several_addresses_bind_in_order(tmp_path: Path, bound: list[socket.socket]) -> None:
    """Bind a TCP and a unix address together.

    Expected: two sockets, in the order given.
    """
    path = tmp_path / "s.sock"
    bound += bind([parse_address("127.0.0.1:0"), parse_address(f"unix:{path}")], backlog=16)
    assert [sock.family for sock in bound] == [socket.AF_INET, socket.AF_UNIX]
    assert describe(bound[1]) == f"unix:{path}"


def test_stale_unix_socket_file_is_replaced(tmp_path: Path, bound: list[socket.socket]) -> None:
    """Leave a socket file that nobody listens on (a dead master's), then bind it.

    Expected: the bind succeeds and the new socket accepts connections.
    """
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert path.exists()
    bound += bind([parse_address(f"unix:{path}")])
    assert connects(Address(path=str(path)))


def test_tcp_address_in_use_is_a_config_error(bound: list[socket.socket]) -> None:
    """Bind an ephemeral port, then bind the same port again.

    Expected: ``bind '127.0.0.1:PORT': address already in use``.
    """
    bound += bind([parse_address("127.0.0.1:0")])
    taken = bound_address(bound[0])
    with pytest.raises(ConfigError) as caught:
        bind([taken])
    assert str(caught.value) == f"bind '{taken}': address already in use"


def test_live_unix_socket_is_in_use_and_left_alone(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    """Bind a unix path, then bind it again while the first still listens.

    Expected: ``address already in use``, and the first socket still accepts
    connections through its file.
    """
    path = tmp_path / "live.sock"
    bound += bind([parse_address(f"unix:{path}")])
    with pytest.raises(ConfigError) as caught:
        bind([parse_address(f"unix:{path}")])
    assert str(caught.value) == f"bind 'unix:{path}': address already in use"
    assert connects(Address(path=str(path)))


def test_unix_listener_with_a_full_backlog_is_in_use(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    """Fill a unix listener's backlog, then bind its path again.

    Expected: ``address already in use`` at once: the liveness probe does
    not block on the full backlog.
    """
    path = tmp_path / "busy.sock"
    bound += bind([parse_address(f"unix:{path}")], backlog=0)
    clients: list[socket.socket] = []
    try:
        for _ in range(100):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(client)
            client.setblocking(False)
            try:
                client.connect(str(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the backlog never filled")
        with pytest.raises(ConfigError, match="address already in use"):
            bind([parse_address(f"unix:{path}")])
    finally:
        for client in clients:
            client.close()


def test_abstract_unix_name_in_use_is_a_config_error(bound: list[socket.socket]) -> None:
    """Bind the same abstract name twice.

    Expected: ``bind 'unix:@NAME': address already in use``.
    """
    address = parse_address(f"unix:@procbus-test-{uuid.uuid4().hex}")
    bound += bind([address])
    with pytest.raises(ConfigError) as caught:
        bind([address])
    assert str(caught.value) == f"bind '{address}': address already in use"


def test_unresolvable_host_is_a_config_error() -> None:
    """Bind ``nohost.invalid:80`` (a reserved name that never resolves).

    Expected: ``bind 'nohost.invalid:80': cannot resolve host``.
    """
    with pytest.raises(ConfigError) as caught:
        bind([parse_address("nohost.invalid:80")])
    assert str(caught.value) == "bind 'nohost.invalid:80': cannot resolve host"


def test_address_not_on_this_host_is_a_config_error() -> None:
    """Bind an address from TEST-NET-1 (192.0.2.0/24), which no interface has.

    Expected: ``bind '192.0.2.1:0': address not available on this host``.
    """
    with pytest.raises(ConfigError) as caught:
        bind([parse_address("192.0.2.1:0")])
    assert str(caught.value) == "bind '192.0.2.1:0': address not available on this host"


def test_unix_path_in_a_missing_directory_is_a_config_error(tmp_path: Path) -> None:
    """Bind ``unix:TMP/missing/dir/s.sock``.

    Expected: ``bind 'unix:…/missing/dir/s.sock': directory '…/missing/dir'
    does not exist``, and no directory is created.
    """
    directory = tmp_path / "missing" / "dir"
    with pytest.raises(ConfigError) as caught:
        bind([parse_address(f"unix:{directory}/s.sock")])
    assert str(caught.value) == (
        f"bind 'unix:{directory}/s.sock': directory '{directory}' does not exist"
    )
    assert not (tmp_path / "missing").exists()


def test_unix_path_under_a_file_is_a_config_error(tmp_path: Path) -> None:
    """Bind a unix path whose directory is a regular file.

    Expected: ``directory 'FILE' is not a directory``.
    """
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ConfigError) as caught:
        bind([parse_address(f"unix:{not_a_dir}/s.sock")])
    assert str(caught.value) == (
        f"bind 'unix:{not_a_dir}/s.sock': directory '{not_a_dir}' is not a directory"
    )


def test_unix_path_that_is_a_regular_file_is_kept_and_refused(tmp_path: Path) -> None:
    """Bind a unix path where a regular file lies.

    Expected: ``'PATH' exists and is not a socket``; the file is untouched.
    """
    path = tmp_path / "data.txt"
    path.write_text("keep me")
    with pytest.raises(ConfigError) as caught:
        bind([parse_address(f"unix:{path}")])
    assert str(caught.value) == f"bind 'unix:{path}': '{path}' exists and is not a socket"
    assert path.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unix_path_in_a_read_only_directory_is_permission_denied(tmp_path: Path) -> None:
    """Bind a unix path in a directory without write permission (as a normal user).

    Expected: ``bind 'unix:PATH': permission denied``.
    """
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    try:
        with pytest.raises(ConfigError) as caught:
            bind([parse_address(f"unix:{directory}/s.sock")])
    finally:
        directory.chmod(0o700)
    assert str(caught.value) == f"bind 'unix:{directory}/s.sock': permission denied"


def test_permission_errors_from_bind_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``bind(2)`` fail with EACCES, as a port below 1024 does for a normal user.

    This runs as root too, where no real bind is refused.
    Expected: ``bind '127.0.0.1:80': permission denied``.
    """

    def refuse(self: socket.socket, address: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(ConfigError) as caught:
        bind([parse_address("127.0.0.1:80")])
    assert str(caught.value) == "bind '127.0.0.1:80': permission denied"


def test_a_failure_closes_the_sockets_already_bound(tmp_path: Path) -> None:
    """Bind a good TCP address, a good unix address, then one in a missing directory.

    Expected: `ConfigError` for the third; no fd is left open and the unix
    socket file this call created is removed.
    """
    before = open_fds()
    good_unix = tmp_path / "good.sock"
    addresses = [
        parse_address("127.0.0.1:0"),
        parse_address(f"unix:{good_unix}"),
        parse_address(f"unix:{tmp_path}/missing/s.sock"),
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        bind(addresses)
    assert open_fds() == before
    assert not good_unix.exists()


# -- describing a socket -------------------------------------------------------


def test_describe_never_raises() -> None:
    """Describe a closed socket and an unbound one.

    Expected: a short text for each instead of an exception.
    """
    unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        assert describe(unbound) == f"fd {unbound.fileno()} (not bound to an address)"
        with pytest.raises(ValueError, match="not bound"):
            bound_address(unbound)
    finally:
        unbound.close()
    assert describe(unbound) == "closed socket"


# -- inheritance across exec ---------------------------------------------------


def test_exported_fds_are_rebuilt_as_the_same_listening_sockets(
    tmp_path: Path, bound: list[socket.socket]
) -> None:
    """Bind TCP and unix sockets, export them, let go of the socket objects
    (as ``exec`` does) and rebuild them from the environment.

    Expected: ``PROCBUS_FDS`` lists the fds; the rebuilt sockets use the same
    fds, are described as before, are inheritable and accept connections;
    the variable is removed from the mapping.
    """
    path = tmp_path / "s.sock"
    originals = bind([parse_address("127.0.0.1:0"), parse_address(f"unix:{path}")])
    descriptions = [describe(sock) for sock in originals]
    environ = {FDS_VARIABLE: export_fds(originals), "OTHER": "kept"}
    assert environ[FDS_VARIABLE] == f"{originals[0].fileno()},{originals[1].fileno()}"
    fds = [sock.detach() for sock in originals]
    try:
        rebuilt = inherit_from_env(environ)
        assert rebuilt is not None
        bound += rebuilt
    finally:
        for fd in fds[len(bound) :]:
            os.close(fd)
    assert [sock.fileno() for sock in bound] == fds
    assert [describe(sock) for sock in bound] == descriptions
    assert all(sock.get_inheritable() for sock in bound)
    assert connects(bound_address(bound[0]))
    assert connects(Address(path=str(path)))
    assert environ == {"OTHER": "kept"}


def test_export_marks_sockets_inheritable_and_refuses_closed_ones() -> None:
    """Export a socket that is not inheritable, then a closed one.

    Expected: the first is made inheritable; the second raises ``ValueError``.
    """
    sock = socket.socket()
    try:
        assert not sock.get_inheritable()
        assert export_fds([sock]) == str(sock.fileno())
        assert sock.get_inheritable()
    finally:
        sock.close()
    with pytest.raises(ValueError, match="closed socket"):
        export_fds([sock])
    assert export_fds([]) == ""


def test_no_inherited_fds_without_the_variable() -> None:
    """Inherit from an environment without ``PROCBUS_FDS``, then with it empty.

    Expected: ``None`` first (the mapping unchanged), an empty list second.
    """
    environ = {"PATH": "/bin"}
    assert inherit_from_env(environ) is None
    assert environ == {"PATH": "/bin"}
    assert inherit_from_env({FDS_VARIABLE: ""}) == []


@pytest.mark.parametrize("value", ["x", "5,", "5;6", "-1", " 5"])
def test_malformed_fd_list_is_a_config_error(value: str) -> None:
    """Inherit from a malformed ``PROCBUS_FDS``.

    Expected: one-line `ConfigError` naming the variable and its value; the
    variable is removed anyway.
    """
    environ = {FDS_VARIABLE: value}
    with pytest.raises(ConfigError) as caught:
        inherit_from_env(environ)
    assert str(caught.value) == (
        f"PROCBUS_FDS={value!r}: expected file descriptors separated by commas"
    )
    assert environ == {}


def test_fd_listed_twice_is_a_config_error(bound: list[socket.socket]) -> None:
    """Inherit ``PROCBUS_FDS=N,N``.

    Expected: ``fd N is listed twice``; the socket stays open.
    """
    bound += bind([parse_address("127.0.0.1:0")])
    fd = bound[0].fileno()
    with pytest.raises(ConfigError) as caught:
        inherit_from_env({FDS_VARIABLE: f"{fd},{fd}"})
    assert str(caught.value) == f"PROCBUS_FDS='{fd},{fd}': fd {fd} is listed twice"
    assert fd_is_open(fd)


def test_inherited_fd_that_is_not_a_listening_socket_is_refused_and_left_open(
    bound: list[socket.socket],
) -> None:
    """Inherit a good listening socket followed by a pipe, then by a connected
    socket, then by a closed fd.

    Expected: a `ConfigError` naming the bad fd each time; the good socket
    taken before it is closed again (the original fd is a fresh dup each time);
    the bad fd is left open.
    """
    bound += bind([parse_address("127.0.0.1:0")])
    read_end, write_end = os.pipe()
    left, right = socket.socketpair()
    closed = free_fds(1)
    cases = [
        (read_end, "is not a socket"),
        (left.fileno(), "is not a listening TCP or unix stream socket"),
        (closed, "is not open"),
    ]
    try:
        for bad, problem in cases:
            good = os.dup(bound[0].fileno())
            value = f"{good},{bad}"
            with pytest.raises(ConfigError) as caught:
                inherit_from_env({FDS_VARIABLE: value})
            assert str(caught.value) == f"PROCBUS_FDS={value!r}: fd {bad} {problem}"
            assert not fd_is_open(good)
        assert fd_is_open(read_end)
        assert left.send(b"x") == 1
    finally:
        os.close(read_end)
        os.close(write_end)
        left.close()
        right.close()


# -- systemd socket activation -------------------------------------------------


@pytest.fixture
def activation(bound: list[socket.socket]) -> Iterator[tuple[int, list[int]]]:
    """Two listening sockets dup'ed to consecutive free fds, as systemd passes them,
    with a third free fd after them.

    Yields ``(first_fd, fds)``; whatever `from_systemd` did not take is closed.
    """
    originals = bind([parse_address("127.0.0.1:0"), parse_address("127.0.0.1:0")])
    try:
        first = free_fds(3)
        fds = [
            os.dup2(sock.fileno(), fd)
            for sock, fd in zip(originals, (first, first + 1), strict=True)
        ]
    finally:
        for sock in originals:
            sock.close()
    try:
        yield first, fds
    finally:
        taken = {sock.fileno() for sock in bound}
        for fd in fds:
            if fd not in taken and fd_is_open(fd):
                os.close(fd)


def test_systemd_activation_takes_the_passed_sockets_and_unsets_the_variables(
    activation: tuple[int, list[int]], bound: list[socket.socket]
) -> None:
    """Simulate activation: LISTEN_PID is our pid, LISTEN_FDS=2 with names,
    the sockets at `first_fd`.

    Expected: two listening, inheritable sockets on exactly those fds; the
    three LISTEN_ variables are gone, others kept.
    """
    first, fds = activation
    environ = {
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDS": "2",
        "LISTEN_FDNAMES": "web:admin",
        "HOME": "/root",
    }
    taken = from_systemd(environ, first_fd=first)
    assert taken is not None
    bound += taken
    assert [sock.fileno() for sock in bound] == fds
    assert all(sock.get_inheritable() for sock in bound)
    assert all(connects(bound_address(sock)) for sock in bound)
    assert environ == {"HOME": "/root"}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "2"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "2"},
        {"LISTEN_PID": "PID+1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"},
    ],
)
def test_systemd_activation_for_another_process_is_ignored_and_unset(
    environ: dict[str, str],
) -> None:
    """Read activation variables that are missing or meant for another pid.

    Expected: ``None``, and no LISTEN_ variable is left in the mapping.
    """
    environ = {k: v.replace("PID+1", str(os.getpid() + 1)) for k, v in environ.items()}
    assert from_systemd(environ) is None
    assert environ == {}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc': expected a process id"),
        (
            {"LISTEN_PID": "OURS", "LISTEN_FDS": "two"},
            "LISTEN_FDS='two': expected a number of file descriptors",
        ),
        (
            {"LISTEN_PID": "OURS", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"},
            "LISTEN_FDNAMES='web': 1 names for 2 file descriptors",
        ),
    ],
)
def test_malformed_systemd_variables_are_config_errors(
    environ: dict[str, str], message: str
) -> None:
    """Read malformed activation variables.

    Expected: a one-line `ConfigError`; the variables are unset anyway.
    """
    environ = {k: v.replace("OURS", str(os.getpid())) for k, v in environ.items()}
    with pytest.raises(ConfigError) as caught:
        from_systemd(environ)
    assert str(caught.value) == message
    assert environ == {}


def test_systemd_fd_that_is_not_listening_is_refused_by_name(
    activation: tuple[int, list[int]], bound: list[socket.socket]
) -> None:
    """Activate with LISTEN_FDS=3 where only two fds hold sockets.

    Expected: `ConfigError` naming the third fd and its LISTEN_FDNAMES name;
    the two good fds taken before it are closed again.
    """
    first, fds = activation
    extra = first + 2
    assert not fd_is_open(extra)
    environ = {
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDS": "3",
        "LISTEN_FDNAMES": "web:admin:metrics",
    }
    with pytest.raises(ConfigError) as caught:
        from_systemd(environ, first_fd=first)
    assert str(caught.value) == f"LISTEN_FDS='3': fd {extra} ('metrics') is not open"
    assert not any(fd_is_open(fd) for fd in fds)
