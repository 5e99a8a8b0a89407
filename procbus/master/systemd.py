"""Telling systemd how the master is doing: ``sd_notify(3)`` without libsystemd.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the unix socket
named by ``NOTIFY_SOCKET`` (a path, or ``@NAME`` in Linux's abstract
namespace). With ``Type=notify`` (or ``notify-reload``) the master says
``READY=1`` once its workers run, ``RELOADING=1`` when a reload starts (then
``READY=1`` again when it is done), ``STOPPING=1`` when it drains, and pings
``WATCHDOG=1`` when the unit has ``WatchdogSec=``.

Notifying never blocks the master and never raises, because the master must
not die when systemd cannot listen: the socket is non-blocking. A state change
(``READY``, ``RELOADING``, ``STOPPING``, ``MAINPID``) that finds systemd's
queue full waits (bounded, `MAX_PENDING`) and is sent, in order, by the next
send or `Notifier.retry` (the master calls it from its loop); a watchdog ping
or a status line is simply dropped, the next one says the same. A failure is
logged once, then again only after a send has worked in between. Without
``NOTIFY_SOCKET`` every method does nothing.

The master reads the variables and never unsets them: a master re-exec'd in
place keeps its pid and must notify again, and an upgraded master with a new
pid first sends ``MAINPID=`` from the old one (the unit needs
``NotifyAccess=all`` for that). A worker drops them right after fork
(`forget_in_worker`): only the master speaks for the service, and with
``NotifyAccess=all`` anything in a worker that calls ``sd_notify`` would too.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Final

log = logging.getLogger("procbus.master")

NOTIFY_VARIABLE: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_VARIABLE: Final = "WATCHDOG_USEC"
WATCHDOG_PID_VARIABLE: Final = "WATCHDOG_PID"
MASTER_ONLY_VARIABLES: Final = (NOTIFY_VARIABLE, WATCHDOG_USEC_VARIABLE, WATCHDOG_PID_VARIABLE)
"""What systemd tells the main process; a worker must not act on them."""
_NUMBER = re.compile(r"[0-9]+")
MAX_PENDING: Final = 32
"""State changes kept while systemd's queue is full (the oldest go first)."""


class Notifier:
    """Sends ``sd_notify`` messages to the socket named in `environ`.

    Every method returns whether the message was sent (``False`` when
    notifying is disabled or the send failed).
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._target = environ.get(NOTIFY_VARIABLE) or None
        self._address = _socket_address(self._target)
        self._watchdog_usec = _number(environ, WATCHDOG_USEC_VARIABLE)
        self._watchdog_pid = _number(environ, WATCHDOG_PID_VARIABLE)
        self._failing = False
        self._pending: list[bytes] = []
        self._sock: socket.socket | None = None
        if self._address is None:
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("cannot notify systemd: %s", exc.strerror or exc)
            return
        sock.setblocking(False)
        self._sock = sock

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere: ``NOTIFY_SOCKET`` is usable and not closed."""
        return self._sock is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between `watchdog` pings: half of ``WATCHDOG_USEC``.

        ``None`` when notifying is disabled, there is no watchdog, or
        ``WATCHDOG_PID`` names another process (the watchdog is the main
        process's, not a forked worker's).
        """
        if self._sock is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup, or a reload, is complete."""
        return self._send("READY=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``, as ``Type=notify-reload`` wants."""
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send(f"RELOADING=1\nMONOTONIC_USEC={now}", status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the master is shutting down."""
        return self._send("STOPPING=1", status)

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self._send(None, text)

    def mainpid(self, pid: int) -> bool:
        """``MAINPID=``: the main process is now `pid` (after an upgrade)."""
        return self._send(f"MAINPID={pid}", None)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the master is alive."""
        return self._send("WATCHDOG=1", None)

    def close(self) -> None:
        """Close the socket; every method does nothing afterwards."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """State changes waiting for room in systemd's queue."""
        return len(self._pending)

    def retry(self) -> bool:
        """Send the state changes that wait, in order; True when none is left."""
        while self._pending and self._sock is not None and self._address is not None:
            try:
                self._sock.sendto(self._pending[0], self._address)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._failed(exc)
                self._pending.clear()
                return True
            self._pending.pop(0)
            self._worked()
        return not self._pending

    def _send(self, state: str | None, status: str | None) -> bool:
        if self._sock is None or self._address is None:
            return False
        lines = [] if state is None else [state]
        if status is not None:
            lines.append("STATUS=" + " ".join(status.splitlines()))
        message = "\n".join(lines).encode()
        keep = state is not None and state != "WATCHDOG=1"
        if not self.retry():
            self._wait(message, keep)
            return False
        try:
            self._sock.sendto(message, self._address)
        except BlockingIOError as exc:
            self._failed(exc)
            self._wait(message, keep)
            return False
        except OSError as exc:
            self._failed(exc)
            return False
        self._worked()
        return True

    def _wait(self, message: bytes, keep: bool) -> None:
        if keep:
            self._pending.append(message)
            del self._pending[:-MAX_PENDING]

    def _failed(self, exc: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "cannot notify systemd on %s: %s (not logged again until it works)",
                self._target,
                exc.strerror or exc,
            )

    def _worked(self) -> None:
        if self._failing:
            self._failing = False
            log.info("notifying systemd on %s works again", self._target)


def forget_in_worker(environ: MutableMapping[str, str]) -> None:
    """Remove `MASTER_ONLY_VARIABLES` from a forked worker's `environ`.

    Given ``os.environ`` this unsets them in the process (``unsetenv``), so
    neither C code in the worker nor a process it starts sees them either.
    """
    for name in MASTER_ONLY_VARIABLES:
        environ.pop(name, None)


def _socket_address(target: str | None) -> str | None:
    """The address to send to for ``NOTIFY_SOCKET=target``, ``None`` if unusable."""
    if target is None:
        return None
    if target.startswith("/"):
        return target
    if target.startswith("@") and len(target) > 1:
        return "\0" + target[1:]
    log.warning(
        "%s=%r is not a unix socket path or @name; not notifying systemd",
        NOTIFY_VARIABLE,
        target,
    )
    return None


def _number(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None:
        return None
    if not _NUMBER.fullmatch(text):
        log.warning("%s=%r is not a number; ignored", name, text)
        return None
    return int(text)
