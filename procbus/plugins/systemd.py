"""The master's word to systemd, as a plugin of its bus (``procbus run``).

`SystemdNotify` decides what a ``Type=notify`` (or ``notify-reload``) unit
hears, and when; `procbus.master.systemd.Notifier` sends it (``sd_notify``
without libsystemd, never blocking, never raising):

==================  ============================================================
``READY=1``         every worker runs, the first time (``STATUS=N workers``);
                    after a reload; a master started by ``upgrade`` says it
                    only when it takes the name over, after ``MAINPID=``
``RELOADING=1``     a reload starts, or the master is about to re-execute
                    itself (``restart``)
``STATUS=``         once booted, after each change among the workers
``STOPPING=1``      the master exits: not into its own re-exec, nor after
                    handing the tree over to a new master
``WATCHDOG=1``      every half ``WATCHDOG_USEC``, while some worker heartbeats
                    (or none is wanted): a tree whose workers all went silent
                    stops the pings, and systemd restarts the service
==================  ============================================================

It follows the master's events (``EventStream.observers``) and two channels
of its bus: ``start`` sets the timers (the watchdog, and the retry of state
changes that found systemd's queue full), ``exit`` says ``STOPPING``. Not
``stop``: ``ctl stop`` stops the workers while the master stays up.

It lives apart from `Notifier`, which every worker imports (to forget the
variables after fork): the worker has no use for the master's policy, and
the types of the master's parts would close an import circle there.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final, Protocol

from procbus.master.planner import WorkerState
from procbus.master.systemd import WATCHDOG_PID_VARIABLE, Notifier
from procbus.plugins.base import SimplePlugin

if TYPE_CHECKING:
    from procbus.bus import Bus
    from procbus.master.events import EventStream
    from procbus.master.lineage import Lineage
    from procbus.master.loop import EventLoop, Timer
    from procbus.master.pool import Pool

NOTIFY_RETRY: Final = 0.2
"""Seconds between attempts at state changes that found systemd's queue full."""


class NotifiedMaster(Protocol):
    """What `SystemdNotify` reads of the master (`procbus.master.Master` is one)."""

    @property
    def pid(self) -> int: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def pool(self) -> Pool:
        """The workers: how many are wanted, which run, when each last heartbeat."""

    @property
    def loop(self) -> EventLoop: ...

    @property
    def lineage(self) -> Lineage:
        """A successor still waiting to take over, or a master going to its re-exec
        or to a successor."""

    @property
    def event_stream(self) -> EventStream: ...

    @property
    def generation(self) -> int: ...


class SystemdNotify(SimplePlugin):
    """Tell systemd how `master` is doing (see the module docstring).

    Build it after the master took what a previous master handed over
    (``Lineage.inherit``): a new master from an upgrade makes the watchdog
    its own (``WATCHDOG_PID`` in `environ` becomes its pid, for the masters
    after it too) and says ``READY`` only when it takes over. Without
    ``NOTIFY_SOCKET`` in `environ` it says nothing.
    """

    def __init__(
        self, master: NotifiedMaster, environ: MutableMapping[str, str] = os.environ
    ) -> None:
        super().__init__(master.bus)
        self.master = master
        if master.lineage.successor is not None and WATCHDOG_PID_VARIABLE in environ:
            environ[WATCHDOG_PID_VARIABLE] = str(os.getpid())
        self.notifier = Notifier(environ)
        self.booted = False
        """Every worker ran once: from then on, each change is a ``STATUS`` line."""
        self._timers: list[Timer] = []

    def subscribe(self) -> None:
        """Subscribe to the bus's ``start`` and ``exit``, and to the master's events."""
        super().subscribe()
        if self._observe not in self.master.event_stream.observers:
            self.master.event_stream.observers.append(self._observe)

    def unsubscribe(self) -> None:
        """Leave the bus and the events, stop the timers and close the socket: the
        master's life is over (a master after it on the bus gets a plugin of its own)."""
        super().unsubscribe()
        observers = self.master.event_stream.observers
        if self._observe in observers:
            observers.remove(self._observe)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.notifier.close()

    def start(self) -> None:
        """Start the timers (once: ``ctl start`` after ``ctl stop`` starts the bus again)."""
        if self._timers:
            return
        loop = self.master.loop
        if self.notifier.enabled:
            self._timers.append(loop.call_every(NOTIFY_RETRY, self._retry))
        interval = self.notifier.watchdog_interval
        if interval:
            self._timers.append(loop.call_every(interval, lambda: self.ping_watchdog(interval)))

    def exit(self) -> None:
        """``STOPPING``, unless the master goes on in its re-exec or in a successor."""
        if not self.master.lineage.going:
            self.notifier.stopping()

    def ping_watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog while the workers heartbeat (or none is wanted).

        One worker that heartbeat within two intervals is enough to go on.
        """
        pool = self.master.pool
        now = self.master.loop.clock()
        beating = any(
            w.last_heartbeat is not None and now - w.last_heartbeat < 2 * interval
            for w in pool.by_pid.values()
        )
        if beating or pool.target == 0:
            self.notifier.watchdog()

    def _retry(self) -> None:
        self.notifier.retry()

    def _observe(self, event: str, data: dict[str, Any]) -> None:
        master, notifier = self.master, self.notifier
        if event == "ready" and not self.booted and master.pool.all_running():
            self.booted = True
            if master.lineage.successor is None:  # a successor says READY when it takes over
                notifier.ready(f"{master.pool.target} workers")
        elif event == "takeover":
            notifier.mainpid(master.pid)
            notifier.ready(f"took over, generation {master.generation}")
        elif event == "job_started" and data.get("kind") == "reload":
            notifier.reloading()
        elif event == "job_done" and data.get("kind") == "reload":
            notifier.ready()
        if event in ("ready", "scale", "job_done", "exit") and self.booted:
            running = sum(1 for w in master.pool.by_pid.values() if w.state is WorkerState.RUNNING)
            notifier.status(
                f"{running} of {master.pool.target} workers running, "
                f"generation {master.generation}"
            )
        if event == "job_done" and data.get("kind") == "restart" and master.lineage.exec_requested:
            # The loop ends next, and the process re-executes (with or without
            # its workers: ``--adopt`` publishes no ``exit`` on the bus).
            notifier.reloading("re-executing")
