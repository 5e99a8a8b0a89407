"""CURVE authentication of a TCP control socket, inside the master's loop.

ZeroMQ asks a ZAP handler (RFC 27: a REP socket bound to
``inproc://zeromq.zap.01`` in the socket's context) whether each CURVE
handshake may complete. pyzmq's `zmq.auth` authenticators run that handler in
a thread or on asyncio; the master has neither, so `CurveGuard` answers ZAP
requests from the master's own poller, like any other socket. A known client
key is accepted with the key's id (its z85 public key) as the ZAP User-Id,
which ZeroMQ then stamps on every message of that connection (the control
server reads it back as the ``User-Id`` frame property and looks its role
up). An unknown key is refused with status 400.

A client without a key, or with the wrong server key, never reaches ZAP: its
handshake fails earlier. A monitor socket on the control socket reports those
failures so that they are logged too.

The client sees either case as silence, which is what an attacker should see:
``procbus ctl`` reports "unreachable" when its timeout ends. A refused key is
refused for good, but a failed handshake is retried by ZeroMQ every 100 ms or
so, so each kind of refusal (reason and key) is reported once per
`QUIET_PERIOD`, with the number of repeats left unreported.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("procbus.control")

ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
ZAP_VERSION: Final = b"1.0"
CONTROL_DOMAIN: Final = b"procbus-control"
"""The ZAP domain of the control socket: requests of other domains are not ours."""

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


class CurveGuard:
    """Makes `socket` a CURVE server and answers its ZAP requests.

    Created before the socket binds (so that no handshake can pass before the
    handler exists); `readers` are registered with the loop by whoever owns
    it; `close` before the context terminates.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        socket: zmq.Socket[bytes],
        public: bytes,
        secret: bytes,
        allowed: Mapping[str, object],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed = allowed
        """Key id -> anything: the keys that may connect."""
        self.on_denied: Callable[[Denial], None] = lambda denial: None
        self.accepted = 0
        self.denied = 0
        self._clock = clock
        self._reported: dict[tuple[str | None, str], tuple[float, int]] = {}
        """(key, reason) -> (when last reported, repeats since)."""
        self._socket = socket
        self._monitor: zmq.Socket[bytes] | None = None
        self._zap: zmq.Socket[bytes] = context.socket(zmq.REP)
        self._zap.linger = 0
        try:
            self._zap.bind(ZAP_ENDPOINT)
            socket.curve_server = True
            socket.curve_publickey = public
            socket.curve_secretkey = secret
            socket.zap_domain = CONTROL_DOMAIN
            # Should the ZAP handler be gone, fail handshakes rather than let them pass.
            socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            self._monitor = socket.get_monitor_socket(_HANDSHAKE_FAILURES)
            self._monitor.linger = 0
        except zmq.ZMQError:
            self.close()
            raise

    def readers(self) -> list[tuple[zmq.Socket[bytes], Callable[[], None]]]:
        """The sockets to watch in the loop, with their callbacks."""
        readers = [(self._zap, self.on_zap_request)]
        if self._monitor is not None:
            readers.append((self._monitor, self.on_monitor_event))
        return readers

    def close(self) -> None:
        """Close the ZAP and monitor sockets (before the context terminates)."""
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
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
            text = b"OK" if status == b"200" else b"denied"
            self._zap.send_multipart([ZAP_VERSION, request_id, status, text, user_id, b""])

    def _decide(self, frames: list[bytes]) -> tuple[bytes, bytes, bytes]:
        """(request id, status code, user id) for one ZAP request."""
        if len(frames) < 6 or frames[0] != ZAP_VERSION:
            log.error("malformed ZAP request (%d frames) refused", len(frames))
            return (frames[1] if len(frames) > 1 else b""), b"400", b""
        request_id, domain, address, _identity, mechanism = frames[1:6]
        credentials = frames[6:]
        if domain != CONTROL_DOMAIN:
            # Another socket of the master's context: ZeroMQ's default, accept.
            return request_id, (b"200" if mechanism == b"NULL" else b"400"), b""
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self._deny(Denial("not a CURVE handshake", None, _text(address), _text(mechanism)))
            return request_id, b"400", b""
        key_id = z85.encode(credentials[0]).decode("ascii")
        if key_id not in self.allowed:
            self._deny(Denial("unknown key", key_id, _text(address), "CURVE"))
            return request_id, b"400", b""
        self.accepted += 1
        log.debug("control key %s accepted from %s", key_id, _text(address))
        return request_id, b"200", key_id.encode("ascii")

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
            "control connection from %s refused: %s%s%s",
            denial.address or "?",
            denial.reason,
            f" (key {denial.key})" if denial.key else "",
            f" ({repeats} more since the last report)" if repeats else "",
        )
        self.on_denied(denial)

    # -- handshakes that fail before ZAP ------------------------------------------

    def on_monitor_event(self) -> None:
        if self._monitor is None:
            return
        for _ in range(_BATCH):
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
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
