"""CURVE keys: ``procbus keys generate``, loading, and the control socket's ZAP guard.

The guard tests run a real CURVE ROUTER on 127.0.0.1 in this process, its
ZAP handler driven by the master's `EventLoop`, with no master and no fork.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import cli, keys
from procbus.commands import Role
from procbus.errors import ConfigError, StartupError
from procbus.master.auth import QUIET_PERIOD, Denial, ZapHandler
from procbus.master.control_server import ControlSettings
from procbus.master.loop import EventLoop
from tests.helpers import FakeClock, wait_until


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_keys(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = cli.main(["keys", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# -- generate -----------------------------------------------------------------


def test_generate_writes_owner_only_files_in_owner_only_directories(tmp_path: Path) -> None:
    """Steps: generate the server pair and an admin and a read client in a new DIR.
    Expected: the documented layout; every file 0600, every directory 0700, even
    with a permissive umask."""
    directory = tmp_path / "keys"
    previous = os.umask(0o002)
    try:
        keys.generate(directory)
        keys.generate(directory, "alice", Role.ADMIN)
        keys.generate(directory, "bob", Role.READ)
    finally:
        os.umask(previous)
    files = sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()
    )
    assert files == [
        "clients/admin/alice.key",
        "clients/read/bob.key",
        "secret/alice.key_secret",
        "secret/bob.key_secret",
        "server.key",
        "server.key_secret",
    ]
    for path in [directory, *directory.rglob("*")]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_generate_keeps_the_server_pair_and_refuses_an_existing_client(tmp_path: Path) -> None:
    """Steps: generate twice, then the same client name again with either role.
    Expected: the server key is unchanged; the repeated client is a ConfigError
    naming the existing file."""
    keys.generate(tmp_path, "alice", Role.ADMIN)
    before = (tmp_path / "server.key_secret").read_bytes()
    assert "exists" in keys.generate(tmp_path)[0]
    assert (tmp_path / "server.key_secret").read_bytes() == before
    for role in Role:
        with pytest.raises(ConfigError, match=r"alice.*exists already.*admin/alice\.key"):
            keys.generate(tmp_path, "alice", role)


def test_keys_generate_command_reports_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Steps: ``procbus keys generate DIR --client ops --role admin``.
    Expected: exit 0, one line for the server pair and one for the client."""
    status, out, err = run_keys(
        ["generate", str(tmp_path / "k"), "--client", "ops", "--role", "admin"], capsys
    )
    assert (status, err) == (0, "")
    assert len(out.splitlines()) == 2
    assert "clients/admin/ops.key" in out and "secret/ops.key_secret" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--client", "x", "--role", "root"], "role 'root' must be one of read, admin"),
        (["--client", "a/b"], "client name 'a/b' must be"),
        (["--client", ".hidden"], "client name '.hidden' must be"),
        (["--role", "admin"], "--role needs --client NAME"),
    ],
)
def test_keys_generate_bad_input_is_one_line_and_exit_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Steps: a bad role, a name with '/', a hidden name, --role alone.
    Expected: exit 2, one line on stderr saying what is wrong, nothing written."""
    status, out, err = run_keys(["generate", str(tmp_path / "k"), *argv], capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("procbus keys: ") and message in err
    assert not (tmp_path / "k").exists()


def test_keys_generate_in_an_unwritable_place_is_one_line_and_exit_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Steps: DIR below a regular file (unwritable even for root), then an existing
    client. Expected: exit 1 with one line each."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, _, err = run_keys(["generate", str(blocker / "keys")], capsys)
    assert status == 1
    assert err == f"procbus keys: cannot write keys in {blocker / 'keys'}: Not a directory\n"
    assert run_keys(["generate", str(tmp_path / "k"), "--client", "a"], capsys)[0] == 0
    status, _, err = run_keys(["generate", str(tmp_path / "k"), "--client", "a"], capsys)
    assert status == 1 and err.count("\n") == 1 and "exists already" in err


# -- loading ------------------------------------------------------------------


def test_load_server_maps_keys_to_roles_by_folder(tmp_path: Path) -> None:
    """Steps: an admin and a read client, then load as the master and as each client.
    Expected: the roles follow the folders, the key ids are the clients' public
    keys, and each client gets the server's public key."""
    keys.generate(tmp_path, "alice", Role.ADMIN)
    keys.generate(tmp_path, "bob", Role.READ)
    server = keys.load_server(tmp_path)
    alice = keys.load_client(tmp_path, "alice")
    bob = keys.load_client(tmp_path, "bob")
    assert alice[2] == bob[2] == server.public
    assert {(c.name, c.role, c.key_id) for c in server.clients} == {
        ("alice", Role.ADMIN, alice[0].decode()),
        ("bob", Role.READ, bob[0].decode()),
    }
    assert server.secret.decode() not in repr(server)


def test_load_client_without_a_name_needs_exactly_one_pair(tmp_path: Path) -> None:
    """Steps: one client pair, then two. Expected: the only pair is used; with two
    a ConfigError asks for a name."""
    keys.generate(tmp_path, "alice", Role.ADMIN)
    assert keys.load_client(tmp_path) == keys.load_client(tmp_path, "alice")
    keys.generate(tmp_path, "bob")
    with pytest.raises(ConfigError, match="2 client key pairs; name one"):
        keys.load_client(tmp_path)


def test_loading_refuses_missing_shared_and_ambiguous_keys(tmp_path: Path) -> None:
    """Steps: load an empty DIR; loosen the server secret to 0644; copy one key into
    both roles. Expected: a ConfigError for each, naming the file."""
    with pytest.raises(ConfigError, match=r"server\.key_secret: no such key file"):
        keys.load_server(tmp_path)
    keys.generate(tmp_path, "alice", Role.ADMIN)
    secret = tmp_path / "server.key_secret"
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others \(mode 0644\); chmod 600"):
        keys.load_server(tmp_path)
    secret.chmod(0o600)
    (tmp_path / "clients/read").mkdir()
    (tmp_path / "clients/read/eve.key").write_bytes(
        (tmp_path / "clients/admin/alice.key").read_bytes()
    )
    with pytest.raises(ConfigError, match="the same key is also 'eve' with role read; keep one"):
        keys.load_server(tmp_path)


# -- control settings -----------------------------------------------------------


def test_settings_from_config_load_keys_for_tcp_only(tmp_path: Path) -> None:
    """Steps: settings for ipc with keys, tcp with keys, tcp with a bad keys DIR.
    Expected: ipc ignores the keys; tcp maps key ids to roles and names; a bad DIR
    is a one-line ConfigError."""
    keys.generate(tmp_path, "alice", Role.ADMIN)
    alice = keys.load_client(tmp_path, "alice")[0].decode()
    ipc = ControlSettings.from_config("ipc:///tmp/x/ctl", tmp_path)
    assert ipc.curve_server is None and not ipc.key_roles
    tcp = ControlSettings.from_config("tcp://127.0.0.1:5555", tmp_path, admin_uids=[7])
    assert tcp.key_roles == {alice: Role.ADMIN}
    assert tcp.key_names == {alice: "alice"}
    assert tcp.admin_uids == [7]
    assert tcp.curve_server is not None
    assert tcp.curve_server[1].decode() not in repr(tcp)
    with pytest.raises(ConfigError, match=r"^curve_keys: .*no such key file$"):
        ControlSettings.from_config("tcp://127.0.0.1:5555", tmp_path / "nope")


def test_tcp_control_socket_without_keys_is_refused() -> None:
    """Steps: secure a socket for a tcp:// endpoint given no keys.
    Expected: a one-line StartupError naming the endpoint and what it needs."""
    context: zmq.Context[Any] = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    try:
        settings = ControlSettings.from_config("tcp://127.0.0.1:5555", None)
        with pytest.raises(StartupError) as error:
            settings.secure(socket, context)
        message = str(error.value)
        assert "\n" not in message
        assert "tcp://127.0.0.1:5555" in message and "curve_keys" in message
    finally:
        socket.close(0)
        context.term()


# -- the ZAP guard ----------------------------------------------------------------


class GuardBench:
    """A CURVE ROUTER on 127.0.0.1 guarded by a `ZapHandler` on an `EventLoop`, and clients."""

    def __init__(self, directory: Path) -> None:
        self.clock = FakeClock(start=0.0)
        self.context: zmq.Context[Any] = zmq.Context()
        self.client_context: zmq.Context[Any] = zmq.Context()
        """Clients live in a context of their own, as in another process."""
        self.sockets: list[zmq.Socket[bytes]] = []
        self.loop = EventLoop()
        self.server = keys.load_server(directory)
        self.router = self.socket(zmq.ROUTER)
        self.guard = ZapHandler(self.context, clock=self.clock)
        self.guard.allow_curve_keys(
            self.router,
            self.server.public,
            self.server.secret,
            {client.key_id: client.role for client in self.server.clients},
        )
        self.denials: list[Denial] = []
        self.guard.on_denied = self.denials.append
        self.received: list[tuple[bytes, str | None]] = []
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        for source, callback in self.guard.readers():
            self.loop.add_reader(source, callback)
        self.loop.add_reader(self.router, self._receive)

    def socket(self, kind: int, context: zmq.Context[Any] | None = None) -> zmq.Socket[bytes]:
        socket: zmq.Socket[bytes] = (context or self.context).socket(kind)
        socket.linger = 0
        self.sockets.append(socket)
        return socket

    def _receive(self) -> None:
        frames = self.router.recv_multipart(copy=False)
        try:
            user_id: str | None = frames[-1].get("User-Id")
        except zmq.ZMQError:
            user_id = None
        self.received.append((frames[-1].bytes, user_id))

    def client(self, curve: tuple[bytes, bytes, bytes] | None) -> zmq.Socket[bytes]:
        dealer = self.socket(zmq.DEALER, self.client_context)
        if curve is not None:
            dealer.curve_publickey, dealer.curve_secretkey, dealer.curve_serverkey = curve
        dealer.connect(self.endpoint)
        return dealer

    def close(self) -> None:
        self.loop.close()
        self.guard.close()
        for socket in self.sockets:
            socket.close(0)
        self.context.destroy(linger=0)
        self.client_context.destroy(linger=0)


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[GuardBench]:
    keys.generate(tmp_path, "alice", Role.ADMIN)
    keys.generate(tmp_path, "bob", Role.READ)
    guard_bench = GuardBench(tmp_path)
    try:
        yield guard_bench
    finally:
        guard_bench.close()


def test_known_keys_are_accepted_with_their_key_id_as_user_id(
    bench: GuardBench, tmp_path: Path
) -> None:
    """Steps: alice (admin) and bob (read) each send a message.
    Expected: both arrive, each stamped with its own key id; nothing is denied."""
    alice = keys.load_client(tmp_path, "alice")
    bob = keys.load_client(tmp_path, "bob")
    bench.client(alice).send(b"from alice")
    bench.client(bob).send(b"from bob")
    assert bench.loop.run_until(lambda: len(bench.received) == 2, 5)
    assert sorted(bench.received) == [
        (b"from alice", alice[0].decode()),
        (b"from bob", bob[0].decode()),
    ]
    assert bench.denials == []
    assert bench.guard.accepted == 2


def test_unknown_key_is_refused_and_reported_with_its_id(
    bench: GuardBench, tmp_path: Path
) -> None:
    """Steps: a client with a fresh key pair (and the right server key) sends.
    Expected: nothing arrives; one denial with reason "unknown key", the key's z85
    id and the peer address, and no secret anywhere in it."""
    public, secret = zmq.curve_keypair()
    bench.client((public, secret, bench.server.public)).send(b"let me in")
    assert bench.loop.run_until(lambda: bool(bench.denials), 5)
    bench.loop.run_until(lambda: False, 0.2)
    assert bench.received == []
    (denial,) = bench.denials
    assert (denial.reason, denial.key, denial.address) == (
        "unknown key",
        public.decode(),
        "127.0.0.1",
    )
    assert secret.decode() not in repr(denial.to_dict())


def test_keyless_clients_are_reported_once_per_quiet_period(bench: GuardBench) -> None:
    """Steps: clients without a key try to send until three failed handshakes are
    counted; the guard's clock then passes QUIET_PERIOD and more try. Expected:
    nothing arrives; each kind of failure (mechanism mismatch, or the client
    hanging up first, as races go) is reported once, the rest only counted; a
    report after the quiet period carries the count of those left unreported."""

    def attempt(enough: Callable[[], bool]) -> bool:
        bench.client(None).send(b"anyone?")
        return bench.loop.run_until(enough, 0.2)

    wait_until(lambda: attempt(lambda: bench.guard.denied >= 3), 10)
    reasons = [denial.reason for denial in bench.denials]
    assert len(reasons) == len(set(reasons)) < 3
    assert all(reason.startswith("handshake failed: ") for reason in reasons)
    assert {denial.key for denial in bench.denials} == {None}
    bench.clock.advance(QUIET_PERIOD)
    first = len(bench.denials)
    wait_until(lambda: attempt(lambda: any(d.repeats for d in bench.denials[first:])), 10)
    assert bench.received == []
