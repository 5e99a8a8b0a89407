"""One control request on many masters at once (``procbus ctl --ctl A --ctl B ...``).

A fleet's ``status`` should cost about one round trip, not one per master: the
request goes out on one DEALER socket per master, all at once, and one
`zmq.Poller` gathers the replies. Each master has its own deadline, counted
from its own request, so a master that is down costs the others nothing: its
entry says ``unreachable`` when its time is up, theirs hold their answers.

The replies keep the order of the endpoints given, whatever order they came
in. What to run concurrently, and what one master at a time (a roll), is
`procbus.ctl`'s decision; this module does the sockets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import zmq

from procbus.client import Client, ControlError

Curve = tuple[bytes, bytes, bytes]


def error_reply(exc: ControlError) -> dict[str, Any]:
    """A reply body for a request that got no (usable) answer, as a master's refusal reads."""
    return {"ok": False, "error": {"code": exc.code.value, "message": exc.message}}


def request_all(
    endpoints: Sequence[str],
    command: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    wait: bool,
    timeout: float,
    curve: Curve | None,
) -> list[dict[str, Any]]:
    """Send the request to every endpoint at once; each one's reply body, in order.

    `curve` is used for the tcp:// endpoints (ipc:// ones need none). A
    master that does not answer within `timeout` of its request gets an
    ``unreachable`` error body; so does an ipc:// one whose socket file is
    missing, at once.
    """
    replies: list[dict[str, Any] | None] = [None] * len(endpoints)
    context: zmq.Context[Any] = zmq.Context()
    clients: list[Client] = []
    try:
        pending: dict[zmq.Socket[bytes], tuple[int, Client, str, float]] = {}
        poller = zmq.Poller()
        for index, endpoint in enumerate(endpoints):
            client = Client(
                endpoint,
                timeout,
                context=context,
                curve=None if endpoint.startswith("ipc://") else curve,
            )
            clients.append(client)
            try:
                request_id = client.send(command, args, kwargs, wait=wait, timeout=timeout)
            except ControlError as exc:
                replies[index] = error_reply(exc)
                continue
            pending[client.socket] = (index, client, request_id, time.monotonic() + timeout)
            poller.register(client.socket, zmq.POLLIN)
        while pending:
            now = time.monotonic()
            for socket, (index, client, _, deadline) in list(pending.items()):
                if deadline <= now:
                    replies[index] = error_reply(client.no_answer(timeout))
                    poller.unregister(socket)
                    del pending[socket]
            if not pending:
                break
            soonest = min(deadline for *_, deadline in pending.values())
            for socket, _ in poller.poll(max(1, math.ceil((soonest - now) * 1000))):
                index, client, request_id, _ = pending[socket]
                try:
                    body = client.receive(request_id)
                except ControlError as exc:
                    body = error_reply(exc)
                if body is not None:
                    replies[index] = body
                    poller.unregister(socket)
                    del pending[socket]
    finally:
        for client in clients:
            client.close()
        context.term()
    answered = [reply for reply in replies if reply is not None]
    assert len(answered) == len(endpoints), "every endpoint has a reply or an error"
    return answered
