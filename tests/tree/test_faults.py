"""Bad input and bad environments: the master survives and says what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from procbus import protocol
from procbus.protocol import MsgType
from tests.helpers import wait_until
from tests.processes import master_argv, run_to_end, running_master, short_tempdir

pytestmark = pytest.mark.slow


def _frame(version: int, msg_type: int, body: Any) -> bytes:
    return bytes((version, msg_type)) + msgpack.packb(body, use_bin_type=True)


GARBAGE: list[list[bytes]] = [
    [b"\x00garbage"],
    [_frame(9, MsgType.HEARTBEAT, {"counters": {}})],
    [_frame(1, 77, {})],
    [bytes((1, MsgType.REPLY)) + msgpack.packb({"seq": 1, "results": [1, 2]})[:-3]],
    [_frame(1, MsgType.HEARTBEAT, {"counters": "nope"})],
    [protocol.encode(MsgType.HEARTBEAT, {"counters": {}})],  # no hello first
    [protocol.encode(MsgType.HELLO, {"worker": 1, "generation": 1, "pid": 1, "topic": b"w.1.1."})],
    [protocol.encode(MsgType.CONTROL_REQUEST, {"id": "x", "command": "ping"})],
    [b"a", b"b", b"c"],
    [b""],
]


def test_malformed_worker_messages_are_dropped_and_master_keeps_serving() -> None:
    """Steps: a rogue DEALER on the workers' reply endpoint sends garbage, a wrong
    version, an unknown type, truncated msgpack, a wrongly typed field, a message
    without hello, a forged hello, a control message, extra frames, an empty frame and
    a frame above the size limit. Expected: every one is dropped (counted), the big one
    refused by ZeroMQ, and publishes and status still work for the real workers."""
    with running_master(workers=2) as master:
        context = zmq.Context()
        rogue = context.socket(zmq.DEALER)
        rogue.linger = 0
        try:
            rogue.connect(master.status()["master"]["endpoints"]["replies"])
            for frames in GARBAGE:
                rogue.send_multipart(frames)
            rogue.send(b"\x01\x05" + b"x" * (protocol.MAX_MESSAGE_SIZE + 10))
            wait_until(
                lambda: master.call("stats")["master"]["dropped_messages"] >= len(GARBAGE), 10
            )
        finally:
            rogue.close(0)
            context.term()
        result = master.call("publish", "echo", "still here")
        assert {v["status"] for v in result["workers"].values()} == {"ok"}
        assert [w["state"] for w in master.workers()] == ["running", "running"]


def test_a_burst_of_bad_worker_messages_logs_a_bounded_number_of_lines() -> None:
    """Steps: a rogue DEALER on the workers' reply endpoint sends 200 garbage frames.
    Expected: all 200 are dropped (counted), but the master logs at most 20 lines about
    them (the control socket's throttle), and keeps serving."""
    with running_master(workers=1) as master:
        context = zmq.Context()
        rogue = context.socket(zmq.DEALER)
        rogue.linger = 0
        try:
            rogue.connect(master.status()["master"]["endpoints"]["replies"])
            for _ in range(200):
                rogue.send(b"\x00garbage")
            wait_until(lambda: master.call("stats")["master"]["dropped_messages"] >= 200, 10)
        finally:
            rogue.close(0)
            context.term()
        assert master.call("publish", "echo")["ok"] is True
        assert 1 <= master.log().count("dropped a message from") <= 20


def test_garbage_on_the_publish_socket_is_ignored() -> None:
    """Steps: a rogue SUB connects to the publish endpoint and sends (un)subscriptions
    and junk upstream. Expected: the master keeps serving publishes."""
    with running_master(workers=1) as master:
        context = zmq.Context()
        rogue = context.socket(zmq.XSUB)
        rogue.linger = 0
        try:
            rogue.connect(master.status()["master"]["endpoints"]["publish"])
            for frame in (b"\x01w.1.1.", b"\x00w.1.1.", b"\x01", b"junk", b"\x02zzz"):
                rogue.send(frame)
            result = master.call("publish", "echo")
            assert result["workers"]["1"]["status"] == "ok"
        finally:
            rogue.close(0)
            context.term()


def test_unusable_runtime_directory_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Steps: start a master whose runtime directory would live under a regular file.
    Expected: exit status 1 and a single line naming the directory, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_to_end(master_argv("tests.tree.apps:echo", blocker / "rt"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == f"procbus: '{blocker}' is not a directory"
    assert "Traceback" not in result.stderr


def test_second_master_on_the_same_runtime_directory_is_refused() -> None:
    """Steps: start a master, then a second one on the same runtime directory.
    Expected: the second exits 1 with one line naming the running master's pid; the
    first still answers and keeps its workers."""
    with running_master(workers=1) as master:
        workers = master.workers()
        result = run_to_end(master_argv("tests.tree.apps:echo", master.runtime_dir))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"procbus: another master is already running in '{master.runtime_dir}' "
            f"(pid {master.pid})"
        ]
        assert _identity(master.workers()) == _identity(workers)
        assert master.call("ping")["pid"] == master.pid


def _identity(workers: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(w["id"], w["pid"], w["state"], w["generation"], w["restarts"]) for w in workers]


def test_runtime_directory_path_too_long_for_ipc_is_refused() -> None:
    """Steps: a runtime directory whose socket paths exceed the ipc limit.
    Expected: exit 1 with one line saying the path is too long."""
    base = short_tempdir()
    try:
        long_dir = base / ("d" * 100)
        result = run_to_end(master_argv("tests.tree.apps:echo", long_dir))
        assert result.returncode == 1
        assert "is too long for ipc sockets" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)
