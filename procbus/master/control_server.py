"""The control socket: ``procbus ctl`` requests, read and answered in the master's loop.

Requests arrive on a ROUTER socket (never a thread of its own). Each is
decoded within bounds (`procbus.protocol.CONTROL_LIMITS`), its peer
identified, and handed to the one command path (`procbus.master.control`),
which checks, audits and runs it; the answer goes back when it is there (a
caller that waits for a job gets its reply when the job ends, the loop keeps
serving everyone else meanwhile). Anything malformed gets an error reply, or
is dropped with a log line when it cannot even be answered.

Who asks: on ``ipc://`` the caller's uid comes from the socket's peer
credentials (``SO_PEERCRED``, which ZeroMQ reports as the ``Peer-Address``
of each message); the master's own uid and root are admins, and the config may
list more admin and read-only uids (nobody else gets past the ZAP handler,
`procbus.master.auth`). On TCP the CURVE authenticator (the same handler, on
the same loop) stamps each message with the client key's id, whose role is
configured with the key (`procbus.keys`).

A peer may mean harm, so what it sends costs the master no more than it must:
decoding is bounded, the loop serves the workers' sockets before this one and
reads requests for at most `TURN_BUDGET` seconds per turn, and nothing a
request holds is turned into text.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from procbus import keys, protocol
from procbus.commands import ErrorCode, Role
from procbus.errors import ConfigError, ProtocolError, StartupError
from procbus.master.auth import LOCAL_DOMAIN, ZapHandler, describe_peer, peer_uid
from procbus.master.control import AUDIT_TEXT, Answer, Commands, Peer
from procbus.master.throttle import LogThrottle
from procbus.protocol import MsgType

log = logging.getLogger("procbus.control")

_BATCH: Final = 200
TURN_BUDGET: Final = 0.01
"""Seconds of control requests per loop turn, at most (then the others' turn)."""
CONTROL_MAX_MESSAGE: Final = 1024 * 1024


@dataclass
class ControlSettings:
    """Where the control socket listens and who may use it."""

    endpoint: str | None = None
    """None: ``ipc://RUNTIME_DIR/ctl``. A ``tcp://`` endpoint needs CURVE keys."""
    admin_uids: Collection[int] = ()
    read_uids: Collection[int] = ()
    key_roles: Mapping[str, Role] = field(default_factory=dict)
    """CURVE client key id -> role (TCP only)."""
    key_names: Mapping[str, str] = field(default_factory=dict)
    """CURVE client key id -> the client's name, for audit lines."""
    curve_server: tuple[bytes, bytes] | None = field(default=None, repr=False)
    """The master's CURVE (public, secret) key, z85 (TCP only)."""
    metrics: str | None = None
    """HOST:PORT of the ``/metrics`` HTTP endpoint (`procbus.master.metrics_http`);
    None: none (``ctl metrics`` still answers)."""

    @classmethod
    def from_config(
        cls,
        endpoint: str | None,
        curve_keys: Path | None,
        admin_uids: Collection[int] = (),
        read_uids: Collection[int] = (),
        metrics: str | None = None,
    ) -> ControlSettings:
        """Settings for `endpoint`, with the CURVE keys of `curve_keys` when it is not ipc.

        Raises `ConfigError` when the keys cannot be loaded, or could be
        changed by another user (see `procbus.keys` for the directory's
        layout). A TCP endpoint without `curve_keys` is refused when the
        socket is set up (`secure`).
        """
        if _is_ipc(endpoint) or curve_keys is None:
            return cls(endpoint, admin_uids, read_uids, metrics=metrics)
        try:
            server = keys.load_server(curve_keys)
        except ConfigError as exc:
            raise ConfigError(f"curve_keys: {exc}") from None
        if not server.clients:
            log.warning("curve_keys %s allows no client key yet: nobody can connect", curve_keys)
        return cls(
            endpoint,
            admin_uids,
            read_uids,
            key_roles={client.key_id: client.role for client in server.clients},
            key_names={client.key_id: client.name for client in server.clients},
            curve_server=(server.public, server.secret),
            metrics=metrics,
        )

    def local_uids(self) -> set[int]:
        """The uids that may connect to the ipc:// control and event sockets."""
        return {os.getuid(), 0, *self.admin_uids, *self.read_uids}

    def secure(self, socket: zmq.Socket[bytes], zap: ZapHandler) -> None:
        """Configure authentication on the control socket before it binds."""
        if _is_ipc(self.endpoint):
            zap.allow_uids(socket, LOCAL_DOMAIN, self.local_uids())
            return
        if self.curve_server is None:
            raise StartupError(
                f"control endpoint {self.endpoint} is not ipc://: it needs CURVE keys "
                "(curve_keys = a directory made by `procbus keys generate DIR`)"
            )
        public, secret = self.curve_server
        try:
            zap.allow_curve_keys(socket, public, secret, self.key_roles)
        except zmq.ZMQError as exc:
            raise StartupError(f"cannot set up CURVE on {self.endpoint}: {exc}") from None


def _is_ipc(endpoint: str | None) -> bool:
    return endpoint is None or endpoint.startswith("ipc://")


class ControlServer:
    """Serves control requests on one ROUTER socket inside the master's loop."""

    def __init__(
        self, commands: Commands, socket: zmq.Socket[bytes], settings: ControlSettings
    ) -> None:
        self.commands = commands
        self.socket = socket
        self.admin_uids = {os.getuid(), 0, *settings.admin_uids}
        self.read_uids = set(settings.read_uids)
        self.key_roles = dict(settings.key_roles)
        self.key_names = dict(settings.key_names)
        self.requests = 0
        self.bad_requests = 0
        self._throttle = LogThrottle(log, "bad control messages")

    # -- reading ----------------------------------------------------------

    def on_readable(self) -> None:
        # The rest wait for the next turn: the workers go first.
        self._read(_BATCH, time.monotonic() + TURN_BUDGET)

    def drain(self, limit: int = 10_000) -> None:
        """The master is going (exec, hand-over, exit): answer every request already
        received, so that no client waits for a master that is gone (admin commands
        are refused as the master is exiting; read commands are answered)."""
        self._read(limit, math.inf)

    def _read(self, limit: int, deadline: float) -> None:
        """Answer up to `limit` waiting requests, stopping early once past `deadline`."""
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.requests += 1
            self._receive(frames)
            if time.monotonic() >= deadline:
                return

    def _receive(self, frames: list[zmq.Frame]) -> None:
        # DEALER clients send [identity, body]; REQ clients [identity, b"", body].
        envelope = [bytes(f.buffer) for f in frames[:-1]]
        if not envelope or len(envelope) > 2 or (len(envelope) == 2 and envelope[1]):
            self._bad(envelope, "", f"{len(frames)} frames is not a control request")
            return
        last = frames[-1]
        peer = self._peer(last)
        try:
            message = protocol.decode(
                bytes(last.buffer),
                expect=frozenset({MsgType.CONTROL_REQUEST}),
                limits=protocol.CONTROL_LIMITS,
            )
        except ProtocolError as exc:
            self._bad(envelope, _salvage_id(bytes(last.buffer)), str(exc))
            return
        request_id: str = message["id"]
        answer = self.commands.run(
            message["command"],
            message.get("args", []),
            message.get("kwargs", {}),
            peer,
            timeout=message.get("timeout"),
        )
        if not message.get("wait", True) and answer.job is not None and not answer.done:
            self._send(envelope, request_id, ok=True, result=answer.job.to_dict())
            return
        answer.then(lambda done: self._answer(envelope, request_id, done))

    def _answer(self, envelope: list[bytes], request_id: str, answer: Answer) -> None:
        self._send(envelope, request_id, ok=answer.ok, result=answer.result, error=answer.error)

    def _bad(self, envelope: list[bytes], request_id: str, reason: str) -> None:
        self.bad_requests += 1
        self._throttle.warn("bad control request: %s", reason)
        if envelope:
            self._send(envelope, request_id, ok=False, error=(ErrorCode.BAD_REQUEST, reason))

    def _peer(self, frame: zmq.Frame) -> Peer:
        try:
            user_id = frame.get("User-Id")
        except zmq.ZMQError:
            user_id = None
        if user_id:
            name = self.key_names.get(str(user_id))
            return Peer(
                self.key_roles.get(str(user_id)), f"key {user_id}" + (f" ({name})" if name else "")
            )
        try:
            address = str(frame.get("Peer-Address"))
        except zmq.ZMQError:
            address = ""
        # ipc: "host:uid:gid:pid" from SO_PEERCRED.
        uid = peer_uid(address)
        if uid is not None:
            if uid in self.admin_uids:
                role: Role | None = Role.ADMIN
            elif uid in self.read_uids:
                role = Role.READ
            else:
                role = None
            return Peer(role, describe_peer(address))
        return Peer(None, f"unauthenticated peer {address[:AUDIT_TEXT]!r}")

    # -- replying ---------------------------------------------------------

    def _send(
        self,
        envelope: list[bytes],
        request_id: str,
        *,
        ok: bool,
        result: Any = None,
        error: tuple[ErrorCode, str] | None = None,
    ) -> None:
        body: dict[str, Any] = {"id": request_id, "ok": ok}
        if result is not None:
            body["result"] = result
        if error is not None:
            body["error"] = {"code": error[0].value, "message": error[1]}
        try:
            frame = protocol.encode(MsgType.CONTROL_REPLY, body)
        except (TypeError, ProtocolError) as exc:
            log.error("control reply to %r not serializable: %s", request_id, exc)
            body.pop("result", None)
            body["ok"] = False
            body["error"] = {
                "code": ErrorCode.INTERNAL.value,
                "message": f"reply not serializable: {exc}",
            }
            frame = protocol.encode(MsgType.CONTROL_REPLY, body)
        try:
            self.socket.send_multipart([*envelope, frame], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("control reply to %r dropped: %s", request_id, exc)


def _salvage_id(frame: bytes) -> str:
    """The id of a request that failed validation, when one can be read."""
    try:
        body = protocol.unpack(frame[2:], protocol.CONTROL_LIMITS)
    except ProtocolError:
        return ""
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else ""
