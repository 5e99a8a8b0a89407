"""`procbus.fleet.request_all` against control sockets driven by hand (no master).

Each fake master is a ROUTER on ipc:// in a private directory, answered by a
thread of this test: at once, late, never, with a stale reply first, or with
garbage. What is checked: the replies keep the endpoints' order, each master
has its own deadline, and one bad master spoils nobody else's answer.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import fleet, protocol
from procbus.protocol import MsgType
from tests.processes import short_tempdir

Behaviour = Callable[[dict[str, Any]], list[bytes]]
"""What a fake master sends back for a request body (frames, possibly none)."""


def reply(body: dict[str, Any], result: Any) -> bytes:
    return protocol.encode(MsgType.CONTROL_REPLY, {"id": body["id"], "ok": True, "result": result})


class FakeControls:
    """ROUTER sockets answered by one thread, each after its own delay."""

    def __init__(self, directory: Path) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.directory = directory
        self.sockets: list[tuple[zmq.Socket[bytes], Behaviour, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def add(self, name: str, behaviour: Behaviour, delay: float = 0.0) -> str:
        socket = self.context.socket(zmq.ROUTER)
        socket.linger = 0
        endpoint = f"ipc://{self.directory}/{name}"
        socket.bind(endpoint)
        self.sockets.append((socket, behaviour, delay))
        return endpoint

    def _serve(self) -> None:
        poller = zmq.Poller()
        for socket, _, _ in self.sockets:
            poller.register(socket, zmq.POLLIN)
        behaviours = {socket: (behaviour, delay) for socket, behaviour, delay in self.sockets}
        due: list[tuple[float, zmq.Socket[bytes], bytes, list[bytes]]] = []
        while not self.stop.is_set():
            for socket, _ in poller.poll(10):
                identity, frame = socket.recv_multipart()
                behaviour, delay = behaviours[socket]
                body = protocol.decode(frame).body
                due.append((time.monotonic() + delay, socket, identity, behaviour(body)))
            now = time.monotonic()
            for entry in [entry for entry in due if entry[0] <= now]:
                due.remove(entry)
                _, socket, identity, frames = entry
                for out in frames:
                    socket.send_multipart([identity, out])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for socket, _, _ in self.sockets:
            socket.close(0)
        self.context.term()


@pytest.fixture
def controls() -> Iterator[FakeControls]:
    directory = short_tempdir()
    fakes = FakeControls(directory)
    try:
        yield fakes
    finally:
        fakes.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_replies_keep_the_endpoints_order_and_each_master_its_own_deadline(
    controls: FakeControls,
) -> None:
    """Steps: four fake masters: "slow" answers after 0.3 s, "silent" never, "stale"
    first sends a reply to another request id then the right one, "fast" at once;
    `request_all` with a 1 s timeout, in that order.
    Expected: four replies in the order given: slow's result, silent ``unreachable``
    naming its endpoint, stale's right result (the stale one dropped), fast's result."""
    slow = controls.add("slow", lambda body: [reply(body, "slow")], delay=0.3)
    silent = controls.add("silent", lambda body: [])
    stale = controls.add(
        "stale", lambda body: [reply({"id": "old-1"}, "stale old"), reply(body, "stale")]
    )
    fast = controls.add("fast", lambda body: [reply(body, "fast")])
    controls.thread.start()
    replies = fleet.request_all(
        [slow, silent, stale, fast], "ping", [], {}, wait=True, timeout=1.0, curve=None
    )
    assert [r.get("result") for r in replies] == ["slow", None, "stale", "fast"]
    assert replies[1]["ok"] is False
    assert replies[1]["error"]["code"] == "unreachable"
    assert silent in replies[1]["error"]["message"]


def test_malformed_reply_is_an_internal_error_for_that_master_only(
    controls: FakeControls, tmp_path: Path
) -> None:
    """Steps: a fake master answering garbage bytes, another answering properly, and
    an ipc endpoint with no socket file; `request_all`.
    Expected: the first entry ``internal`` (malformed reply), the second its result,
    the third ``unreachable`` at once (no socket file)."""
    garbage = controls.add("garbage", lambda body: [b"\xc1not msgpack"])
    good = controls.add("good", lambda body: [reply(body, {"pong": True})])
    controls.thread.start()
    missing = f"ipc://{controls.directory}/missing"
    replies = fleet.request_all(
        [garbage, good, missing], "status", [], {}, wait=True, timeout=2.0, curve=None
    )
    assert replies[0]["error"]["code"] == "internal"
    assert "malformed reply" in replies[0]["error"]["message"]
    assert replies[1] == {"id": replies[1]["id"], "ok": True, "result": {"pong": True}}
    assert replies[2]["error"]["code"] == "unreachable"
