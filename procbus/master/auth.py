"""Who may connect to the master's sockets: one ZAP handler, inside the master's loop.

ZeroMQ asks a ZAP handler (RFC 27: a REP socket bound to
``inproc://zeromq.zap.01`` in the socket's context) whether each handshake on
a socket with a ZAP domain may complete. pyzmq's `zmq.auth` authenticators run
that handler in a thread or on asyncio; the master has neither, so
`ZapHandler` answers from the master's own poller, like any other socket.
Every socket the master binds has a domain and ``ZAP_ENFORCE_DOMAIN``, so a
handshake fails closed if the handler is ever missing. Two kinds of policy:

- **peer credentials** (``ipc://`` sockets): ZeroMQ gives the handler the
  connecting process's ``host:uid:gid:pid`` from ``SO_PEERCRED``; the uid must
  be one of the socket's allowed uids. The control and event sockets allow the
  master's uid, root, ``admin_uids`` and ``read_uids`` (the control server
  then gives each its role); the worker sockets allow the master's uid, root
  and the workers' user. The socket files' modes say the same to the kernel
  wherever a mode can (`procbus.master.runtime`).
- **CURVE keys** (a ``tcp://`` control endpoint and its event stream): a known
  client key is accepted with the key's id (its z85 public key) as the ZAP
  User-Id, which ZeroMQ stamps on every message of that connection (the
  control server reads it back as the ``User-Id`` frame property and looks its
  role up). An unknown key is refused with status 400. A client without a key,
  or with the wrong server key, never reaches ZAP: its handshake fails
  earlier, and a monitor socket on the guarded socket reports it.

The client sees a refusal as silence, which is what an attacker should see:
``procbus ctl`` reports "unreachable" when its timeout ends. ZeroMQ retries a
refused connection every 100 ms or so, so each kind of refusal (reason and
key or uid) is reported once per `QUIET_PERIOD`, with the number of repeats
left unreported.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("procbus.control")

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_VERSION: Final = b"1.0"
CONTROL_DOMAIN: Final = b"procbus-control"
"""CURVE keys: the TCP control socket and its TCP event stream."""
LOCAL_DOMAIN: Final = b"procbus-local"
"""Peer uids: the ipc:// control and event sockets."""
WORKERS_DOMAIN: Final = b"procbus-workers"
"""Peer uids: the ipc:// publish and reply sockets of the workers."""

HANDSHAKE_IVL_MS: Final = 2000
"""A TCP peer that has not finished its handshake by then is disconnected, so
that half-open connections cannot hold the master's descriptors for long."""
_BATCH: Final = 100
QUIET_PERIOD: Final = 10.0
"""Seconds during which the same refusal is counted, not reported again."""
_MAX_REMEMBERED: Final = 1024
_PROTOCOL_ERRORS: Final[dict[int, str]] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "no CURVE key (security mechanism mismatch)",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "CURVE handshake does not decrypt (wrong server key?)",
}
_HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_OK: Final = b"200"
_REFUSED: Final = b"400"


@dataclass(frozen=True)
class Denial:
    """A refused connection attempt, as the event stream shows it."""

    reason: str
    key: str | None = None
    """The client's key id (z85 public key), when it got that far."""
    address: str | None = None
    mechanism: str | None = None
    repeats: int = 0
    """Refusals of the same kind seen, and not reported, since the last report."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "key": self.key,
            "address": self.address,
            "mechanism": self.mechanism,
            "repeats": self.repeats,
        }


@dataclass(frozen=True)
class ZapRequest:
    """The parts of a ZAP request a policy decides on."""

    domain: bytes
    address: str
    mechanism: bytes
    credentials: tuple[bytes, ...]


Decision = tuple[bool, bytes, Denial | None]
"""(accepted, user id, the denial to report when refused)."""
Policy = Callable[[ZapRequest], Decision]


def peer_uid(address: str) -> int | None:
    """The uid in an ipc peer address (``host:uid:gid:pid``), or None."""
    parts = address.rsplit(":", 3)
    if len(parts) == 4 and parts[1].isdigit():
        return int(parts[1])
    return None


def describe_peer(address: str) -> str:
    """``uid U pid P`` for an ipc peer address, else the address itself."""
    parts = address.rsplit(":", 3)
    if len(parts) == 4 and parts[1].isdigit():
        return f"uid {parts[1]} pid {parts[3]}"
    return address


def uid_policy(uids: Collection[int]) -> Policy:
    """Accept NULL-mechanism peers whose uid is one of `uids`."""
    allowed = frozenset(uids)

    def decide(request: ZapRequest) -> Decision:
        uid = peer_uid(request.address)
        if request.mechanism != b"NULL" or uid is None:
            reason = "not a local peer with credentials"
            return False, b"", Denial(reason, None, request.address, _text(request.mechanism))
        if uid not in allowed:
            denial = Denial(f"uid {uid} is not allowed", None, describe_peer(request.address))
            return False, b"", dataclasses.replace(denial, mechanism="NULL")
        return True, b"", None

    return decide


def curve_policy(keys: Mapping[str, object]) -> Policy:
    """Accept CURVE clients whose public key is one of `keys` (key id -> anything)."""

    def decide(request: ZapRequest) -> Decision:
        credentials = request.credentials
        if request.mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            denial = Denial(
                "not a CURVE handshake", None, request.address, _text(request.mechanism)
            )
            return False, b"", denial
        key_id = z85.encode(credentials[0]).decode("ascii")
        if key_id not in keys:
            return False, b"", Denial("unknown key", key_id, request.address, "CURVE")
        log.debug("control key %s accepted from %s", key_id, request.address)
        return True, key_id.encode("ascii"), None

    return decide


class ZapHandler:
    """Answers the ZAP requests of every socket of one ZeroMQ context.

    Created before any guarded socket binds (so that no handshake can pass
    before the handler exists); `readers` are registered with the loop by
    whoever owns it; `close` before the context terminates.
    """

    def __init__(
        self, context: zmq.Context[Any], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.on_denied: Callable[[Denial], None] = lambda denial: None
        self.accepted = 0
        self.denied = 0
        self._clock = clock
        self._policies: dict[bytes, Policy] = {}
        self._monitors: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]] = []
        self._reported: dict[tuple[str | None, str], tuple[float, int]] = {}
        """(key, reason) -> (when last reported, repeats since)."""
        self._zap: zmq.Socket[bytes] = context.socket(zmq.REP)
        self._zap.linger = 0
        try:
            self._zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError:
            self._zap.close(0)
            raise

    # -- guarding sockets -------------------------------------------------------

    def allow_uids(self, socket: zmq.Socket[bytes], domain: bytes, uids: Collection[int]) -> None:
        """Before `socket` binds: only peers with one of `uids` may connect (ipc)."""
        self._policies[domain] = uid_policy(uids)
        self._guard(socket, domain)

    def allow_curve_keys(
        self,
        socket: zmq.Socket[bytes],
        public: bytes,
        secret: bytes,
        keys: Mapping[str, object],
    ) -> None:
        """Before `socket` binds: a CURVE server accepting only `keys` (key id -> role)."""
        socket.curve_server = True
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        self._policies[CONTROL_DOMAIN] = curve_policy(keys)
        self._guard(socket, CONTROL_DOMAIN)
        monitor = socket.get_monitor_socket(_HANDSHAKE_FAILURES)
        monitor.linger = 0
        self._monitors.append((socket, monitor))

    @staticmethod
    def _guard(socket: zmq.Socket[bytes], domain: bytes) -> None:
        socket.zap_domain = domain
        # Should the handler be gone, fail handshakes rather than let them pass.
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def readers(self) -> list[tuple[zmq.Socket[bytes], Callable[[], None]]]:
        """The sockets to watch in the loop, with their callbacks."""
        readers: list[tuple[zmq.Socket[bytes], Callable[[], None]]] = [
            (self._zap, self.on_zap_request)
        ]
        for _, monitor in self._monitors:
            readers.append((monitor, functools.partial(self.on_monitor_event, monitor)))
        return readers

    def close(self) -> None:
        """Close the ZAP and monitor sockets (before the context terminates)."""
        for socket, monitor in self._monitors:
            if not socket.closed:
                socket.disable_monitor()
            monitor.close(0)
        self._monitors.clear()
        self._zap.close(0)

    # -- ZAP ------------------------------------------------------------------

    def on_zap_request(self) -> None:
        for _ in range(_BATCH):
            try:
                frames = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            request_id, status, user_id = self._decide(frames)
            # REP: exactly one reply per request, even to a malformed one.
            text = b"OK" if status == _OK else b"denied"
            self._zap.send_multipart([ZAP_VERSION, request_id, status, text, user_id, b""])

    def _decide(self, frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """(request id, status code, user id) for one ZAP request."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            log.error("malformed ZAP request (%d frames) refused", len(frames))
            return (frames[1] if len(frames) > 1 else b""), _REFUSED, b""
        request_id, domain, address, _identity, mechanism = frames[1:6]
        policy = self._policies.get(domain)
        if policy is None:
            log.error("ZAP request for unknown domain %r refused", domain[:64])
            return request_id, _REFUSED, b""
        accepted, user_id, denial = policy(
            ZapRequest(domain, _text(address), mechanism, tuple(frames[6:]))
        )
        if not accepted:
            self._deny(denial or Denial("refused", None, _text(address), _text(mechanism)))
            return request_id, _REFUSED, b""
        self.accepted += 1
        return request_id, _OK, user_id

    def _deny(self, denial: Denial) -> None:
        self.denied += 1
        now = self._clock()
        kind = (denial.key, denial.reason)
        reported, repeats = self._reported.get(kind, (None, 0))
        if reported is not None and now - reported < QUIET_PERIOD:
            self._reported[kind] = (reported, repeats + 1)
            return
        if len(self._reported) >= _MAX_REMEMBERED:
            self._reported = {k: v for k, v in self._reported.items() if now - v[0] < QUIET_PERIOD}
        self._reported[kind] = (now, 0)
        denial = dataclasses.replace(denial, repeats=repeats)
        log.warning(
            "connection from %s refused: %s%s%s",
            denial.address or "?",
            denial.reason,
            f" (key {denial.key})" if denial.key else "",
            f" ({repeats} more since the last report)" if repeats else "",
        )
        self.on_denied(denial)

    # -- handshakes that fail before ZAP ------------------------------------------

    def on_monitor_event(self, monitor: zmq.Socket[bytes]) -> None:
        for _ in range(_BATCH):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                event = parse_monitor_message(frames)
            except (ValueError, TypeError, IndexError):
                continue
            code = int(event["value"])
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                reason = _PROTOCOL_ERRORS.get(code, f"ZeroMQ protocol error {code:#x}")
            else:
                # The peer hung up mid-handshake: often a keyless client that
                # noticed the mismatch first, so it counts as an attempt.
                reason = f"connection lost ({os.strerror(code)})"
            self._deny(Denial(f"handshake failed: {reason}"))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
