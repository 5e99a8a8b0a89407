"""The master's event stream: what happens in the tree, for `watch` and `top`.

Events go out on XPUB sockets as ``[b"ev." + name, EVENT frame]``: one bound
on the runtime directory's ``ipc://`` endpoint, and, when the control
endpoint is ``tcp://``, one more on the same host (any free port) guarded by
the same CURVE keys and ZAP domain as the control socket, so that remote
clients with a key may watch too.

XPUB lets the master hear subscriptions. Periodic ``stats`` samples cost the
master a psutil pass over every worker, so they are taken only while some
socket has a subscriber to ``ev.stats``: without ``XPUB_VERBOSE`` ZeroMQ
passes on the first subscription to a topic and the unsubscription of its
last subscriber (also when it disconnects). A watcher subscribed to the
shorter prefix ``ev.`` receives samples while someone else asks for them, but
does not start the sampling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import zmq

from procbus import protocol
from procbus.master.loop import EventLoop, Timer
from procbus.protocol import MsgType

if TYPE_CHECKING:
    from procbus.master.auth import ZapHandler
    from procbus.master.control_server import ControlSettings

log = logging.getLogger("procbus.master")

EVENTS_HWM: Final = 128
"""Events queued for one slow watcher before it misses some (the master never blocks)."""
MAX_EVENT_SIZE: Final = 128 * 1024
"""Bytes of one encoded event, at most: with `EVENTS_HWM`, a watcher that stops
reading makes the master hold at most 16 MiB for it."""
MAX_FIELD_TEXT: Final = 2048
"""Characters of a text field kept when an event is too big (a long traceback)."""
SUBSCRIPTION_MAX_SIZE: Final = 4096
"""Bytes of a message a watcher may send: a subscription (``ev.`` and a name) or a
handshake command (a CURVE INITIATE is about 300 bytes)."""
_BATCH: Final = 1000


def event_socket(context: zmq.Context[Any]) -> zmq.Socket[bytes]:
    """A new XPUB for events, with the options every event socket has."""
    sock: zmq.Socket[bytes] = context.socket(zmq.XPUB)
    sock.linger = 0
    sock.sndhwm = EVENTS_HWM
    sock.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_SIZE)
    return sock


class EventStream:
    """The event sockets, and the stats sampling while anyone wants it."""

    def __init__(
        self, loop: EventLoop, sample: Callable[[], dict[str, Any]], interval: float
    ) -> None:
        self.loop = loop
        self.sample = sample
        """Returns the ``stats`` event's fields."""
        self.interval = interval
        self.sockets: list[zmq.Socket[bytes]] = []
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        """Called in the loop with every event, before it goes out (the host's hooks)."""
        self._stats_wanted: set[zmq.Socket[bytes]] = set()
        self._stats_timer: Timer | None = None

    def attach(self, sock: zmq.Socket[bytes]) -> None:
        """Send events on `sock` (bound by the caller) and read its subscriptions."""
        self.sockets.append(sock)
        self.loop.add_reader(sock, lambda: self._on_subscription(sock))

    def bind_remote(
        self, context: zmq.Context[Any], zap: ZapHandler, settings: ControlSettings
    ) -> zmq.Socket[bytes]:
        """The stream over TCP too (with a tcp:// control endpoint and CURVE keys).

        Returns the new XPUB, guarded by the same client keys as the control
        socket, for the caller to bind (clients learn its port through
        ``status``).
        """
        assert settings.curve_server is not None
        sock = event_socket(context)
        public, secret = settings.curve_server
        try:
            zap.allow_curve_keys(sock, public, secret, settings.key_roles)
        except zmq.ZMQError:
            sock.close(0)
            raise
        self.attach(sock)
        return sock

    def emit(self, event: str, **data: Any) -> None:
        """Tell the observers, then send one event on every socket (dropped, with a log
        line, if unsendable)."""
        log.debug("event %s %s", event, data)
        for observer in self.observers:
            try:
                observer(event, data)
            except Exception:
                log.exception("observer %r failed on event %s", observer, event)
        if not self.sockets:
            return
        body = {"event": event, "time": time.time(), "data": data}
        try:
            frame = protocol.encode(MsgType.EVENT, body)
            if len(frame) > MAX_EVENT_SIZE:
                body["data"] = _shortened(data)
                frame = protocol.encode(MsgType.EVENT, body)
        except TypeError as exc:
            log.error("event %s not sent: %s", event, exc)
            return
        if len(frame) > MAX_EVENT_SIZE:
            log.error("event %s not sent: %d bytes (limit %d)", event, len(frame), MAX_EVENT_SIZE)
            return
        topic = protocol.EVENT_TOPIC + event.encode()
        for sock in self.sockets:
            sock.send_multipart([topic, frame])

    def close(self) -> None:
        """Stop sampling and close the sockets."""
        self._stats_wanted.clear()
        self._stop_stats()
        for sock in self.sockets:
            self.loop.remove_reader(sock)
            sock.close()
        self.sockets.clear()

    def _on_subscription(self, sock: zmq.Socket[bytes]) -> None:
        for _ in range(_BATCH):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[1:] != protocol.STATS_TOPIC:
                continue
            if frame[:1] == b"\x01":
                self._stats_wanted.add(sock)
                self._start_stats()
            elif frame[:1] == b"\x00":
                self._stats_wanted.discard(sock)
                if not self._stats_wanted:
                    self._stop_stats()

    def _start_stats(self) -> None:
        if self._stats_timer is not None:
            return
        log.debug("stats subscriber: sampling every %gs", self.interval)
        self._emit_stats()  # a new subscriber gets its first sample at once
        self._stats_timer = self.loop.call_every(self.interval, self._emit_stats)

    def _stop_stats(self) -> None:
        if self._stats_timer is None:
            return
        log.debug("no stats subscriber left: sampling stops")
        self._stats_timer.cancel()
        self._stats_timer = None

    def _emit_stats(self) -> None:
        self.emit("stats", **self.sample())


def _shortened(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with long text fields cut, and a mark that it was."""
    short: dict[str, Any] = {}
    for key, value in data.items():
        long_text = isinstance(value, str) and len(value) > MAX_FIELD_TEXT
        short[key] = value[:MAX_FIELD_TEXT] + "…" if long_text else value
    short["truncated"] = True
    return short
