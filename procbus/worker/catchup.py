"""A new worker's catch-up: the retained publishes it runs before it serves.

A channel's retained publish (`procbus.master.retained`) is its last word: a
worker started after it (respawn, scale-up, reload, the next master's) must
run it before it serves a request, or it would serve stale state. The master
sends it the retained publishes on its DEALER (`procbus.master.retainer`): on
its hello a snapshot, in publish order (RETAINED messages, ``more`` until the
last), then each publish retained while it starts, until its WELCOME.

They can run only once the app's listeners exist: after the app is imported
and the bus started, and, for a hosted app, once its host set up what it
subscribes (an ASGI app's lifespan startup). So the host asks
(`WorkerContext.apply_retained`, or `WorkerContext.ready`, which asks
first) from the app's thread, and waits, before it accepts a connection; the
worker says it runs only after that. Meanwhile the I/O thread hands the
publishes to the listener thread one after the other, in the order they came
(`to_run`), and each outcome comes back here (`ran`): the listeners of a
channel this worker does not listen to simply do not exist, and nothing is
sent back to the master (the worker is no target yet).

The catch-up ends when the app asked, the snapshot is complete and every
publish received ran. A listener that fails before then fails the boot: the
app's wait raises `StartupError` in one line naming the channel, the listener
and the error; the worker reports FAILED and exits BOOT_FAILED, and the master
backs off (or rolls a reload back) as for an app that cannot import. A
publish retained later, after the catch-up and before the WELCOME, runs as
soon as it comes (before any publish the worker is a target of); its failure
is logged. A worker stopped during its catch-up lets the app go (`abandon`),
which then sees that it stops.

The app's thread waits on an event; everything else here runs on the I/O
thread.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence

from procbus import protocol
from procbus.bus import ListenerOutcome
from procbus.errors import ProtocolError, StartupError
from procbus.protocol import Message, MsgType
from procbus.worker.link import listener_name

log = logging.getLogger("procbus.worker")

_PUBLISH = frozenset({MsgType.PUBLISH})


class CatchUp:
    """One worker's catch-up on the retained publishes (see the module docstring)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        """Wakes the I/O thread (the app asked)."""
        self._asked = threading.Event()
        self._done = threading.Event()
        """Set when the app may go on: caught up, failed, or abandoned."""
        self.failure: str | None = None
        """Why the boot failed (one line), once it did."""
        self.caught_up = False
        """Every retained publish received until the end of the catch-up ran."""
        self._complete = False
        """The snapshot's last part came."""
        self._waiting: list[Message] = []
        """Received, not handed out yet."""
        self._running: collections.deque[str] = collections.deque()
        """Channels handed out whose outcome did not come back yet, in order."""

    # -- the app's thread -----------------------------------------------------------

    def wait(self) -> None:
        """Ask for the catch-up and wait for its end; `StartupError` if it failed."""
        self._asked.set()
        self._wake()
        self._done.wait()
        if self.failure is not None:
            raise StartupError(self.failure)

    # -- the I/O thread -------------------------------------------------------------

    def receive(self, message: Message) -> None:
        """A RETAINED message from the master: its publishes wait for their turn."""
        for frame in message["frames"]:
            try:
                self._waiting.append(protocol.decode(frame, expect=_PUBLISH))
            except ProtocolError as exc:
                self._fail(f"a retained publish could not be read: {exc}")
        if not message["more"]:
            self._complete = True
        self._check()

    def to_run(self) -> list[Message]:
        """The publishes to hand to the listener thread now, in order (their outcomes come
        back to `ran` in that order)."""
        if not self._complete or not (self._asked.is_set() or self._done.is_set()):
            return []
        handed, self._waiting = self._waiting, []
        self._running.extend(message["channel"] for message in handed)
        self._check()
        return handed

    def ran(self, outcomes: Sequence[ListenerOutcome]) -> None:
        """The outcome of the oldest publish handed out."""
        channel = self._running.popleft()
        errors = [(o.listener, o.error) for o in outcomes if o.error is not None]
        if errors:
            listener, error = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            message = " ".join(f"{type(error).__name__}: {error}".split())
            self._fail(
                f"retained publish on {channel!r} failed in listener "
                f"{listener_name(listener)}: {message}{more}"
            )
        else:
            log.debug("retained publish on %r ran (%d listeners)", channel, len(outcomes))
        self._check()

    def abandon(self) -> None:
        """The worker stops: let a waiting app go (it sees that it stops)."""
        self._done.set()

    def _fail(self, reason: str) -> None:
        if self._done.is_set():
            log.error("%s", reason)
            return
        self.failure = reason[:1000]
        self._done.set()

    def _check(self) -> None:
        if self._done.is_set() or not self._asked.is_set() or not self._complete:
            return
        if not self._waiting and not self._running:
            self.caught_up = True
            self._done.set()
