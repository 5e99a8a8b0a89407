"""Hostile peers on the control socket: they cannot crash, starve or spy on the master.

A master listens for control on tcp://127.0.0.1 with CURVE keys ("ops":
admin, "viewer": read). The tests send what an
attacker with a ``read`` key (or no key) would: absurdly nested arguments,
floods of large requests, thousands of half-open connections, and watch the
event stream for what an admin's command leaked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procbus import keys, protocol
from procbus.client import ControlError
from procbus.commands import COMMANDS, Role
from procbus.protocol import MsgType
from tests.helpers import wait_until
from tests.processes import (
    Events,
    MasterProcess,
    free_port,
    master_argv,
    running_master,
    short_tempdir,
    supervised,
)

pytestmark = pytest.mark.slow

HEADER = bytes((protocol.VERSION, MsgType.CONTROL_REQUEST))
READ_COMMANDS = sorted(name for name, spec in COMMANDS.items() if spec.role is Role.READ)


class Peer:
    """A raw DEALER on a master's control socket: sends any frame, reads replies."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.linger = 0
        if curve is not None:
            self.socket.curve_publickey, self.socket.curve_secretkey = curve[0], curve[1]
            self.socket.curve_serverkey = curve[2]
        self.socket.connect(endpoint)

    def send(self, body: bytes) -> None:
        self.socket.send(HEADER + body)

    def reply(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.socket.poll(int(timeout * 1000)), "no reply"
        return protocol.decode(self.socket.recv()).body

    def ask(self, command: str, *args: Any, timeout: float = 10.0) -> dict[str, Any]:
        self.send(msgpack.packb({"id": command, "command": command, "args": list(args)}))
        return self.reply(timeout)

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


@dataclass
class Tree:
    master: MasterProcess
    tcp: str
    keys: Path

    def peer(self, role: str | None) -> Peer:
        """admin: the ops key; read: the viewer key; None: no key at all."""
        if role == "admin":
            return Peer(self.tcp, keys.load_client(self.keys, "ops"))
        if role == "read":
            return Peer(self.tcp, keys.load_client(self.keys, "viewer"))
        return Peer(self.tcp)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    key_dir = tmp_path_factory.mktemp("keys")
    keys.generate(key_dir, "ops", Role.ADMIN)
    keys.generate(key_dir, "viewer", Role.READ)
    tcp = f"tcp://127.0.0.1:{free_port()}"
    with running_master(
        workers=1, ctl=tcp, curve_keys=key_dir, curve=keys.load_client(key_dir, "ops"),
        timeout=2, heartbeat=0.2,
    ) as master:  # fmt: skip
        yield Tree(master, tcp, key_dir)


def nested(depth: int) -> bytes:
    """msgpack of a list nested `depth` deep (msgpack's own packer stops at 512)."""
    return b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("role", ["admin", "read"])
def test_arguments_nested_990_deep_get_bad_request_and_the_master_lives(
    tree: Tree, role: str
) -> None:
    """Steps: ``ping`` with arguments nested 990 deep (what ended the master with a
    RecursionError), from an admin and from a read key. Expected: a bad_request reply
    naming the depth limit; the master then answers status with the same pid."""
    peer = tree.peer(role)
    try:
        body = b"\x83" + msgpack.packb("id") + msgpack.packb("deep")
        body += msgpack.packb("command") + msgpack.packb("ping")
        body += msgpack.packb("args") + nested(990)
        peer.send(body)
        reply = peer.reply()
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request"
        assert "nested more than 32 levels" in reply["error"]["message"]
        assert peer.ask("status")["result"]["master"]["pid"] == tree.master.pid
    finally:
        peer.close()


values = st.recursive(
    # msgpack carries integers from -2**63 to 2**64 - 1; a bigger one cannot be sent.
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    role=st.sampled_from(["admin", "read"]),
    command=st.sampled_from([*READ_COMMANDS, "publish"]),
    args=st.lists(values, max_size=3),
    kwargs=st.dictionaries(st.text(max_size=6), values, max_size=3),
    depth=st.integers(0, 120),
)
def test_random_nested_requests_from_every_role_never_stop_the_master(  # noqa: PLR0917
    tree: Tree, role: str, command: str, args: list[Any], kwargs: dict[str, Any], depth: int
) -> None:
    """Steps: a request with random arguments, wrapped `depth` lists deep, from an
    admin or a read key (a read key's publish is refused; an admin's goes to a
    channel nobody listens on, or is refused by the command table). Expected: a
    reply of any kind, then ``status`` answers with the same master and its worker."""
    peer = tree.peer(role)
    try:
        wrapped: Any = args
        for _ in range(depth):
            wrapped = [wrapped]
        try:
            body = msgpack.packb(
                {"id": "x", "command": command, "args": wrapped, "kwargs": kwargs}
            )
        except ValueError:  # deeper than msgpack's own packer goes
            body = b"\x84" + msgpack.packb("id") + msgpack.packb("x")
            body += msgpack.packb("command") + msgpack.packb(command)
            body += msgpack.packb("kwargs") + msgpack.packb({})
            body += msgpack.packb("args") + nested(depth)
        peer.send(body)
        peer.reply()
        status = peer.ask("status")["result"]
        assert status["master"]["pid"] == tree.master.pid
        assert len(status["workers"]) == 1
    finally:
        peer.close()


def test_a_flood_of_big_requests_from_a_read_key_does_not_starve_heartbeats(tree: Tree) -> None:
    """Steps: with ``--timeout 2`` (a worker silent 2 s is aborted), a read key sends
    30 requests of about 1 MiB each (60 000 short strings: decoding them is real
    work), as fast as it can, then reads every reply. Expected: every request is
    answered; the worker is still the same process, never aborted."""
    before = tree.master.workers()[0]
    peer = tree.peer("read")
    try:
        payload = msgpack.packb({"id": "big", "command": "ping", "args": [["x" * 14] * 60_000]})
        assert 900_000 < len(payload) < protocol.MAX_MESSAGE_SIZE
        for _ in range(30):
            peer.send(payload)
        for _ in range(30):
            assert peer.reply(30)["id"] == "big"
    finally:
        peer.close()
    after = tree.master.workers()[0]
    assert (after["pid"], after["restarts"], after["state"]) == (before["pid"], 0, "running")


def test_audit_events_show_the_channel_never_argument_values(tree: Tree) -> None:
    """Steps: a watcher on the event stream; an admin publishes ``echo
    db_password=hunter2`` and runs ``scale hunter2`` (refused). Expected: the publish's
    audit event names the command, peer, role and channel; no event holds hunter2."""
    events = Events(tree.master)
    try:
        tree.master.call("publish", "echo", "db_password=hunter2", kw={"token": "hunter2"})
        with contextlib.suppress(Exception):
            tree.master.call("scale", "hunter2")
        audit = events.find("command", command="publish")
        assert audit is not None
        assert audit["channel"] == "echo" and audit["role"] == "admin"
        assert events.find("command", command="scale", wait=5) is not None
        assert "hunter2" not in json.dumps(events.seen, default=str)
    finally:
        events.close()


@pytest.mark.parametrize("limit", ["256:4096", "200"])
def test_half_open_tcp_connections_do_not_stop_control_or_respawns(
    tmp_path: Path, limit: str
) -> None:
    """Steps: a master under ``prlimit --nofile=LIMIT`` with a tcp:// control endpoint;
    300 plain TCP connections that never handshake; then an admin ping (with its
    key, on the same port), and SIGKILL of a worker.
    Expected: with a hard limit above the soft one the master
    raised its limit and answers at once; at a hard limit of 200 it answers once the
    half-open connections time out (a few seconds); the killed worker is replaced by
    a running one either way."""
    key_dir = tmp_path / "keys"
    keys.generate(key_dir, "ops", Role.ADMIN)
    port = free_port()
    directory = short_tempdir()
    argv = master_argv(
        "tests.tree.apps:echo", directory / "rt", 2,
        ctl=f"tcp://127.0.0.1:{port}", curve_keys=key_dir,
    )  # fmt: skip
    master = MasterProcess(
        ["prlimit", f"--nofile={limit}", "--", *argv], directory / "rt", directory / "log"
    )
    master.endpoint, master.curve = f"tcp://127.0.0.1:{port}", keys.load_client(key_dir, "ops")
    flood: list[socket.socket] = []
    with supervised(master, directory, 2):
        try:
            for _ in range(300):
                conn = socket.socket()
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    conn.connect(("127.0.0.1", port))
                flood.append(conn)

            def answers() -> bool:
                try:
                    return bool(master.call("ping", timeout=1)["pid"] == master.pid)
                except ControlError:
                    return False

            wait_until(answers, 20)
            victim = master.workers()[0]
            os.kill(victim["pid"], signal.SIGKILL)

            def replaced() -> bool:
                worker = master.workers()[0]
                return worker["pid"] != victim["pid"] and worker["state"] == "running"

            wait_until(replaced, 30)
        finally:
            for conn in flood:
                conn.close()
        assert master.call("ping")["pid"] == master.pid
