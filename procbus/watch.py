"""``procbus ctl watch``: the master's event stream, live.

The watcher asks the master for its events endpoint (so it follows
``--ctl``/``--name`` like every other command) and prints every event but the
periodic ``stats`` samples, which are ``procbus top``'s: it subscribes to the
``ev.`` prefix, which does not make the master sample, and drops the samples
it receives while a ``top`` somewhere asks for them.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any, TextIO

import zmq

from procbus import protocol
from procbus.client import Client, ControlError
from procbus.errors import ProtocolError
from procbus.protocol import MsgType
from procbus.render import printable

Curve = tuple[bytes, bytes, bytes]
"""(client public key, client secret key, server public key), z85."""


def events_endpoint(control: str, timeout: float, curve: Curve | None = None) -> str:
    """Ask the master at `control` where its event stream is.

    Through a tcp:// control endpoint, the answer is the master's CURVE-guarded
    TCP event stream, on the host the caller reached the master by.
    """
    with Client(control, timeout, curve=curve) as client:
        status = client.call("status", timeout=timeout)
    endpoints = status["master"]["endpoints"]
    if control.startswith("ipc://"):
        endpoint = endpoints.get("events")
    else:
        remote = endpoints.get("events_remote")
        port = remote.rpartition(":")[2] if isinstance(remote, str) else None
        endpoint = f"{control.rpartition(':')[0]}:{port}" if port else None
    if not isinstance(endpoint, str):
        raise ControlError("internal", "the master did not say where its events are")
    return endpoint


def subscribe(
    endpoint: str, topic: bytes, curve: Curve | None = None
) -> tuple[zmq.Context[Any], zmq.Socket[bytes]]:
    context: zmq.Context[Any] = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.linger = 0
    if curve is not None and not endpoint.startswith("ipc://"):
        socket.curve_publickey, socket.curve_secretkey = curve[0], curve[1]
        socket.curve_serverkey = curve[2]
    socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_SIZE)
    socket.subscribe(topic)
    socket.connect(endpoint)
    return context, socket


def receive_event(socket: zmq.Socket[bytes], timeout_ms: int) -> dict[str, Any] | None:
    """One event as a flat mapping (``event``, ``time``, fields), or None on timeout."""
    if not socket.poll(timeout_ms):
        return None
    frames = socket.recv_multipart()
    try:
        message = protocol.decode(frames[-1], expect=frozenset({MsgType.EVENT}))
    except ProtocolError:
        return None
    return {"event": message["event"], "time": message["time"], **message["data"]}


def format_event(event: dict[str, Any]) -> str:
    """One line for a human: time, event name, ``key=value`` fields (escaped)."""
    stamp = datetime.datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S.%f")[:-3]
    fields = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("event", "time") and v is not None
    )
    return f"{stamp} {printable(event['event']):<12} {printable(fields)}"


def watch(
    control: str,
    timeout: float,
    *,
    count: int | None,
    duration: float | None,
    as_json: bool,
    out: TextIO,
    err: TextIO,
    curve: Curve | None = None,
) -> int:
    """Print events until Ctrl-C, `count` events or `duration` seconds."""
    try:
        endpoint = events_endpoint(control, timeout, curve)
    except ControlError as exc:
        print(f"procbus ctl watch: {printable(str(exc))}", file=err)
        if as_json:
            out.write(
                json.dumps({"error": {"code": exc.code.value, "message": exc.message}}) + "\n"
            )
        return 3 if exc.code.value == "unreachable" else 1
    context, socket = subscribe(endpoint, protocol.EVENT_TOPIC, curve)
    deadline = None if duration is None else time.monotonic() + duration
    seen = 0
    try:
        while count is None or seen < count:
            wait_ms = 1000
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, min(wait_ms, int(left * 1000)))
            event = receive_event(socket, wait_ms)
            if event is None or event["event"] == "stats":
                continue
            seen += 1
            out.write((json.dumps(event, default=str) if as_json else format_event(event)) + "\n")
            out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        socket.close(0)
        context.term()
    return 0
