"""A TCP control endpoint with CURVE keys: real masters, real ``procbus ctl`` processes.

Every master listens on 127.0.0.1 only. Its event stream stays on ipc:// in
the runtime directory, where the tests read the audit lines and refusals.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import keys, protocol
from procbus.commands import Role
from procbus.protocol import MsgType
from tests.processes import Events, MasterProcess, free_port, procbus, running_master

pytestmark = pytest.mark.slow


@dataclass
class CurveTree:
    master: MasterProcess
    endpoint: str
    keys: Path
    events: Events

    def ctl(
        self, client: Path | str, *args: str, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """``procbus ctl`` with the key pair of client NAME (or the key DIR of a client)."""
        keys_dir, name = (client, None) if isinstance(client, Path) else (self.keys, client)
        options = [
            "--ctl",
            self.endpoint,
            "--curve-keys",
            str(keys_dir),
            "--timeout",
            str(timeout),
        ]
        if name is not None:
            options += ["--curve-client", name]
        return procbus("ctl", *options, *args, timeout=timeout + 20)

    def key_id(self, name: str) -> str:
        return keys.load_client(self.keys, name)[0].decode()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[CurveTree]:
    """A master on tcp://127.0.0.1 allowing "ops" (admin) and "viewer" (read)."""
    key_dir = tmp_path / "keys"
    keys.generate(key_dir, "ops", Role.ADMIN)
    keys.generate(key_dir, "viewer", Role.READ)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with running_master(
        workers=2, ctl=endpoint, curve_keys=key_dir, curve=keys.load_client(key_dir, "ops")
    ) as master:
        events = Events(master)
        try:
            yield CurveTree(master, endpoint, key_dir, events)
        finally:
            events.close()


def stranger(tree: CurveTree, directory: Path) -> Path:
    """A client key DIR with the right server key and a key pair the master never saw."""
    keys.generate(directory / "elsewhere", "mallory", Role.ADMIN)
    (directory / "secret").mkdir(mode=0o700)
    shutil.copy(tree.keys / "server.key", directory / "server.key")
    shutil.copy(
        directory / "elsewhere" / "secret" / "mallory.key_secret",
        directory / "secret" / "mallory.key_secret",
    )
    return directory


def test_tcp_control_without_keys_is_refused_with_one_line() -> None:
    """Steps: start a master with a tcp:// control endpoint and no curve_keys.
    Expected: exit status 1, one line on stderr naming the endpoint and curve_keys,
    nothing listening."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with running_master(workers=1, wait=False, ctl=endpoint) as master:
        assert master.proc.wait(20) == 1
        lines = [line for line in master.log().splitlines() if line.strip()]
        assert len(lines) == 1, master.log()
        assert lines[0].startswith(f"procbus: control endpoint {endpoint} is not ipc://")
        assert "curve_keys" in lines[0]


def test_admin_key_can_ping_and_reload(tree: CurveTree) -> None:
    """Steps: as "ops" (admin): ping, then reload, then status --json.
    Expected: each exits 0; the workers were replaced (generation 2); the audit
    lines of the event stream name the ops key id and role admin."""
    ping = tree.ctl("ops", "ping")
    assert ping.returncode == 0, ping.stderr
    assert f"pong from master {tree.master.pid}" in ping.stdout
    reload = tree.ctl("ops", "reload")
    assert reload.returncode == 0, reload.stderr
    status = tree.ctl("ops", "status", "--json")
    assert status.returncode == 0, status.stderr
    workers = json.loads(status.stdout)["workers"]
    assert [(w["id"], w["generation"], w["state"]) for w in workers] == [
        (1, 2, "running"),
        (2, 2, "running"),
    ]
    audit = tree.events.find("command", command="reload")
    assert audit is not None
    assert audit["peer"] == f"key {tree.key_id('ops')} (ops)"
    assert (audit["role"], audit["allowed"]) == ("admin", True)


def test_read_key_is_forbidden_to_reload_and_the_attempt_is_on_the_event_stream(
    tree: CurveTree,
) -> None:
    """Steps: as "viewer" (read): status, then reload --json.
    Expected: status exits 0; reload exits 1 with error code "forbidden"; the event
    stream has the refused reload with the viewer's key id; the workers are untouched."""
    before = tree.master.workers()
    status = tree.ctl("viewer", "status")
    assert status.returncode == 0, status.stderr
    reload = tree.ctl("viewer", "reload", "--json")
    assert reload.returncode == 1
    error = json.loads(reload.stdout)["error"]
    assert error["code"] == "forbidden"
    assert "reload needs the admin role" in error["message"]
    audit = tree.events.find("command", command="reload")
    assert audit is not None
    assert audit["peer"] == f"key {tree.key_id('viewer')} (viewer)"
    assert (audit["role"], audit["allowed"], audit["reason"]) == ("read", False, "forbidden")
    assert _identity(tree.master.workers()) == _identity(before)


def _identity(workers: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(w["id"], w["pid"], w["generation"], w["state"]) for w in workers]


def test_unknown_key_gets_silence_and_an_auth_denied_event(
    tree: CurveTree, tmp_path: Path
) -> None:
    """Steps: a client with the right server key but a key pair the master does not
    list pings with a 1 s timeout. Expected: exit 3 with one line (the subprocess
    limit of `tree.ctl` bounds the wait); an auth_denied event with reason "unknown
    key" and the key's z85 id (never its secret); the master then still serves "ops"."""
    client_dir = stranger(tree, tmp_path / "mallory")
    public, secret, _ = keys.load_client(client_dir)
    result = tree.ctl(client_dir, "ping", timeout=1)
    assert result.returncode == 3
    assert result.stderr.count("\n") == 1 and "no answer from the master" in result.stderr
    denied = tree.events.find("auth_denied", key=public.decode())
    assert denied is not None
    assert (denied["reason"], denied["address"], denied["mechanism"]) == (
        "unknown key",
        "127.0.0.1",
        "CURVE",
    )
    assert secret.decode() not in json.dumps(tree.events.seen)
    assert secret.decode() not in tree.master.log()
    assert tree.events.find("command", wait=0.5) is None  # it never got to ask
    assert tree.ctl("ops", "ping").returncode == 0


def test_client_without_a_key_gets_silence_and_is_logged(tree: CurveTree) -> None:
    """Steps: a raw DEALER without CURVE sends a ping request to the endpoint.
    Expected: no reply within 1 s; an auth_denied event says the handshake failed;
    the master then still serves "ops"."""
    context: zmq.Context[Any] = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        dealer.connect(tree.endpoint)
        dealer.send(
            protocol.encode(MsgType.CONTROL_REQUEST, {"id": "x", "command": "ping", "args": []})
        )
        assert not dealer.poll(1000)
    finally:
        dealer.close(0)
        context.term()
    denied = tree.events.find("auth_denied", key=None)
    assert denied is not None
    assert denied["reason"].startswith("handshake failed: ")
    assert tree.ctl("ops", "ping").returncode == 0
