"""The control server: ``procbus ctl`` requests, answered from the master's loop.

Requests arrive on a ROUTER socket (never a thread of its own). Each is
decoded and checked against `procbus.commands` and the caller's role before a
handler runs; anything malformed gets an error reply, or is dropped with a log
line when it cannot even be answered. Handlers read the master's state and
return plain data. Long commands become jobs (`procbus.master.jobs`): the
reply carries the job, and a caller that waits gets its reply when the job
ends — the loop keeps serving everyone else meanwhile.

Who may do what: on ``ipc://`` the caller's uid comes from the socket's peer
credentials (``SO_PEERCRED``, which ZeroMQ reports as the ``Peer-Address``
of each message); the master's own uid and root are admins, and the config may
list more admin and read-only uids (nobody else gets past the ZAP handler,
`procbus.master.auth`). On TCP the CURVE authenticator (the same handler, on
the same loop) stamps each message with the client key's id, whose role is
configured with the key (`procbus.keys`).

A peer may mean harm, so what it sends costs the master no more than it must:
decoding is bounded (`procbus.protocol.CONTROL_LIMITS`), the loop serves the
workers' sockets before this one and reads requests for at most
`TURN_BUDGET` seconds per turn, and nothing a request holds is turned into
text. Every command is written to the event stream with who asked, whether it
was allowed and, for ``publish``, the channel: never argument values.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import zmq

from procbus import keys, protocol
from procbus._version import __version__
from procbus.commands import COMMANDS, CommandError, ErrorCode, Role, check_request, parse_signal
from procbus.errors import ConfigError, ProtocolError, StartupError
from procbus.master.auth import LOCAL_DOMAIN, ZapHandler, describe_peer, peer_uid
from procbus.master.jobs import Job, JobState
from procbus.master.relay import TreeReply
from procbus.master.throttle import LogThrottle
from procbus.protocol import MsgType

if TYPE_CHECKING:
    from procbus.master.master import Master

log = logging.getLogger("procbus.control")

_BATCH: Final = 200
TURN_BUDGET: Final = 0.01
"""Seconds of control requests per loop turn, at most (then the others' turn)."""
CONTROL_MAX_MESSAGE: Final = 1024 * 1024
AUDIT_TEXT: Final = 80
"""Characters of a command or channel name kept in an audit event."""
_REPLY_MARGIN: Final = 0.25
"""Seconds kept from a request's timeout for the reply to travel back."""


@dataclass(frozen=True)
class Peer:
    """Who sent a request."""

    role: Role | None
    description: str


@dataclass
class Request:
    envelope: list[bytes]
    id: str
    command: str
    args: list[Any]
    kwargs: dict[str, Any]
    wait: bool
    timeout: float | None
    peer: Peer


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

    @classmethod
    def from_config(
        cls,
        endpoint: str | None,
        curve_keys: Path | None,
        admin_uids: Collection[int] = (),
        read_uids: Collection[int] = (),
    ) -> ControlSettings:
        """Settings for `endpoint`, with the CURVE keys of `curve_keys` when it is not ipc.

        Raises `ConfigError` when the keys cannot be loaded, or could be
        changed by another user (see `procbus.keys` for the directory's
        layout). A TCP endpoint without `curve_keys` is refused when the
        socket is set up (`secure`).
        """
        if _is_ipc(endpoint) or curve_keys is None:
            return cls(endpoint, admin_uids, read_uids)
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
        self, master: Master, socket: zmq.Socket[bytes], settings: ControlSettings
    ) -> None:
        self.master = master
        self.socket = socket
        self.admin_uids = {os.getuid(), 0, *settings.admin_uids}
        self.read_uids = set(settings.read_uids)
        self.key_roles = dict(settings.key_roles)
        self.key_names = dict(settings.key_names)
        self.requests = 0
        self.bad_requests = 0
        self._throttle = LogThrottle(log, "bad control messages")
        self._handlers: dict[str, Callable[[Request], None]] = {
            "ping": self._ping,
            "version": self._version,
            "status": self._status,
            "stats": self._stats,
            "jobs": self._jobs,
            "publish": self._publish,
            "graceful": self._graceful,
            "exit": self._exit,
            "kill": self._kill,
        }
        missing = set(COMMANDS) - set(self._handlers) - set(self._job_bodies())
        assert not missing, f"commands without a handler: {missing}"

    # -- reading ----------------------------------------------------------

    def on_readable(self) -> None:
        deadline = time.monotonic() + TURN_BUDGET
        for _ in range(_BATCH):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.requests += 1
            self._receive(frames)
            if time.monotonic() >= deadline:
                return  # the rest wait for the next turn: the workers go first

    def drain(self, limit: int = 10_000) -> None:
        """The master is going (exec, hand-over, exit): answer every request already
        received, so that no client waits for a master that is gone (admin commands
        are refused as the master is exiting; read commands are answered)."""
        for _ in range(limit):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.requests += 1
            self._receive(frames)

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
        request = Request(
            envelope,
            message["id"],
            message["command"],
            message.get("args", []),
            message.get("kwargs", {}),
            message.get("wait", True),
            message.get("timeout"),
            peer,
        )
        self._dispatch(request)

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

    # -- dispatching ------------------------------------------------------

    def _dispatch(self, request: Request) -> None:
        try:
            spec, request.args, request.kwargs = check_request(
                request.command, request.args, request.kwargs
            )
            timeout = request.timeout
            if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
                raise CommandError(
                    ErrorCode.BAD_ARGUMENTS,
                    f"timeout must be a finite number of seconds > 0, got {timeout!r}",
                )
        except CommandError as exc:
            self._audit(request, allowed=False, reason=exc.code.value)
            self._error(request, exc.code, exc.message)
            return
        allowed = request.peer.role is Role.ADMIN or (
            request.peer.role is Role.READ and spec.role is Role.READ
        )
        self._audit(request, allowed=allowed)
        if not allowed:
            self._error(
                request,
                ErrorCode.FORBIDDEN,
                f"{request.command} needs the {spec.role.value} role; {request.peer.description}"
                f" has {request.peer.role.value if request.peer.role else 'none'}",
            )
            return
        if self.master.exiting and spec.role is Role.ADMIN and request.command != "exit":
            self._error(request, ErrorCode.UNAVAILABLE, "the master is exiting")
            return
        try:
            if spec.job:
                self._start_job(request)
            else:
                self._handlers[request.command](request)
        except CommandError as exc:
            self._error(request, exc.code, exc.message)
        except Exception as exc:
            log.exception("control command %s failed", request.command)
            self._error(request, ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:500])

    def _audit(self, request: Request, *, allowed: bool, reason: str | None = None) -> None:
        """Who asked for what: never argument values (a read peer may be watching)."""
        fields: dict[str, Any] = {
            "command": request.command[:AUDIT_TEXT],
            "peer": request.peer.description,
            "role": request.peer.role.value if request.peer.role else None,
            "allowed": allowed,
            "reason": reason if reason else (None if allowed else "forbidden"),
        }
        if request.command == "publish" and request.args and isinstance(request.args[0], str):
            fields["channel"] = request.args[0][:AUDIT_TEXT]
        self.master.emit("command", **fields)

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

    def _ok(self, request: Request, result: Any) -> None:
        self._send(request.envelope, request.id, ok=True, result=result)

    def _error(self, request: Request, code: ErrorCode, message: str, result: Any = None) -> None:
        self._send(request.envelope, request.id, ok=False, result=result, error=(code, message))

    # -- handlers -----------------------------------------------------------

    def _ping(self, request: Request) -> None:
        self._ok(
            request, {"pong": True, "pid": self.master.pid, "generation": self.master.generation}
        )

    def _version(self, request: Request) -> None:
        self._ok(request, {"procbus": __version__, "protocol": protocol.VERSION})

    def _status(self, request: Request) -> None:
        self._ok(request, self.master.status())

    def _stats(self, request: Request) -> None:
        self._ok(request, self.master.stats())

    def _jobs(self, request: Request) -> None:
        self._ok(request, {"jobs": self.master.jobs.listing()})

    def _publish_timeout(self, request: Request) -> float | None:
        if request.timeout is None:
            return None
        return max(0.05, float(request.timeout) - _REPLY_MARGIN)

    def _reply_tree(self, request: Request) -> Callable[[TreeReply], None]:
        def done(reply: TreeReply) -> None:
            self._ok(request, {**reply.to_dict(), "ok": reply.ok})

        return done

    def _publish(self, request: Request) -> None:
        channel, *args = request.args
        try:
            self.master.publish_async(
                channel,
                args,
                request.kwargs.get("kw", {}),
                timeout=self._publish_timeout(request),
                on_done=self._reply_tree(request),
            )
        except TypeError as exc:  # an argument the wire cannot carry
            raise CommandError(ErrorCode.BAD_ARGUMENTS, f"publish: {exc}"[:500]) from None

    def _graceful(self, request: Request) -> None:
        self.master.publish_async(
            "graceful", timeout=self._publish_timeout(request), on_done=self._reply_tree(request)
        )

    def _exit(self, request: Request) -> None:
        self._ok(request, {"exiting": True, "pid": self.master.pid})
        self.master.request_exit()

    def _kill(self, request: Request) -> None:
        (worker_id,) = request.args
        signum = parse_signal(request.kwargs.get("signal", "TERM"))
        try:
            worker = self.master.kill_worker(worker_id, signum)
        except LookupError as exc:
            raise CommandError(ErrorCode.NOT_FOUND, str(exc).strip("'\"")) from None
        self._ok(
            request,
            {"worker": worker.id, "pid": worker.pid, "signal": signal.Signals(signum).name},
        )

    # -- jobs ---------------------------------------------------------------

    def _job_bodies(self) -> dict[str, Callable[[Request], tuple[str, dict[str, Any]]]]:
        """command -> (the master's method that starts the job, its arguments)."""

        def count(request: Request) -> int:
            return request.args[0] if request.args else 1

        target = self.master.pool.target
        return {
            "reload": lambda r: ("reload", {"batch": r.kwargs.get("batch", 1)}),
            "restart": lambda r: ("restart", {"adopt": r.kwargs.get("adopt", False)}),
            "upgrade": lambda r: ("upgrade", {}),
            "stop": lambda r: ("stop_job", {}),
            "start": lambda r: ("start_job", {}),
            "scale": lambda r: ("scale_job", {"workers": r.args[0]}),
            "incr": lambda r: ("scale_job", {"workers": target + count(r)}),
            "decr": lambda r: ("scale_job", {"workers": max(0, target - count(r))}),
        }

    def _start_job(self, request: Request) -> None:
        method, kwargs = self._job_bodies()[request.command](request)
        job: Job = getattr(self.master, method)(**kwargs)
        if not request.wait or job.ended:
            self._job_reply(request, job)
            return
        job.waiters.append(lambda finished: self._job_reply(request, finished))

    def _job_reply(self, request: Request, job: Job) -> None:
        document = job.to_dict()
        if job.state is JobState.FAILED:
            self._error(request, ErrorCode.FAILED, job.error or "job failed", document)
        else:
            self._ok(request, document)


def _salvage_id(frame: bytes) -> str:
    """The id of a request that failed validation, when one can be read."""
    try:
        body = protocol.unpack(frame[2:], protocol.CONTROL_LIMITS)
    except ProtocolError:
        return ""
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else ""
