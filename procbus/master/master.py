"""The master: owns the authoritative bus and carries it to the workers.

A `Master` is a plugin of its process's `Bus` (by default `procbus.bus`):
``start`` binds its endpoints and fills the pool, ``stop`` drains every worker,
``exit`` waits for them and closes everything, and every other publish on the
bus (``graceful`` and custom channels) is forwarded to the workers. `publish`
does the same and returns the whole tree's answer as a `TreeReply`.

This module is the wiring of the parts ARCHITECTURE.md maps. Everything runs
in one thread around `EventLoop` (no Python thread: a fork never copies a held
lock). The public methods are for top-level code (a script, `run`): they pump
the loop until what they wait for happened; code inside the loop uses the
asynchronous forms.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from procbus.bus import Bus, states
from procbus.bus import bus as process_bus
from procbus.commands import SIGNAL_COMMANDS
from procbus.master import snapshot
from procbus.master.control import API, Commands
from procbus.master.control_server import ControlServer, ControlSettings
from procbus.master.endpoints import Endpoints
from procbus.master.events import EventStream
from procbus.master.forker import Forker, open_fds
from procbus.master.hub import Hub
from procbus.master.jobs import Job, JobAborted, Jobs
from procbus.master.jobs.bodies import job_body
from procbus.master.lineage import Lineage
from procbus.master.loop import Clock, EventLoop
from procbus.master.memory import MemoryWatch
from procbus.master.planner import WorkerProc
from procbus.master.pool import Pool
from procbus.master.publisher import TreePublisher
from procbus.master.relay import TreeReply
from procbus.master.retainer import Retainer
from procbus.master.runtime import RuntimeDir
from procbus.master.scrape import Scraper
from procbus.master.settings import TreeSettings, stop_limit
from procbus.master.stats import ProcessMonitor
from procbus.master.worker_publishes import WorkerPublishes
from procbus.publishing import PublishOptions, Require
from procbus.worker.apps import WorkerApp
from procbus.worker.awaiter import no_event_loop
from procbus.worker.credentials import Credentials

log = logging.getLogger("procbus.master")

MASTER_SIGNALS: Final = (signal.SIGCHLD, *SIGNAL_COMMANDS)


class Master:
    """A master process: a bus, a pool of forked workers, and the wire between them."""

    def __init__(
        self,
        app: str | WorkerApp,
        workers: int | None = None,
        *,
        name: str = "procbus",
        runtime_dir: str | Path | None = None,
        settings: TreeSettings | None = None,
        bus: Bus | None = None,
        sockets: Sequence[Any] = (),
        app_settings: dict[str, Any] | None = None,
        control: ControlSettings | None = None,
        credentials: Credentials | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        settings = settings or TreeSettings()
        if workers is not None:
            settings = dataclasses.replace(settings, workers=workers)  # checked again
        self.app, self.name, self.settings = app, name, settings
        self.bus = bus if bus is not None else process_bus
        self.sockets = list(sockets)
        self.app_settings = dict(app_settings or {})
        self.credentials = credentials
        """Who the workers run as (``--user``/``--group``); None: as the master."""
        self.runtime = RuntimeDir.for_name(name, Path(runtime_dir) if runtime_dir else None)
        self.loop = EventLoop(clock)
        # Fresh figures for every stats event; a burst of status requests shares one.
        self.monitor = ProcessMonitor(max_age=min(1.0, settings.stats_interval / 2))
        self.event_stream = EventStream(self.loop, self.stats, settings.stats_interval)
        self.emit = self.event_stream.emit
        """Put an event on the event stream (and tell its observers)."""
        self.endpoints = Endpoints(
            self.runtime, control or ControlSettings(), credentials, self.event_stream
        )
        self.forker = Forker(
            endpoints=self.endpoints, runtime=self.runtime, loop=self.loop,
            monitor=self.monitor, settings=lambda: self.settings, app=lambda: self.app,
            sockets=self.sockets, app_settings=self.app_settings, credentials=credentials,
        )  # fmt: skip
        self.pool = Pool(
            self.loop, policy=settings.supervision, spawn=self.forker, emit=self.emit,
            target=settings.workers, boot_failed_status=self.forker.boot_failed_status,
        )  # fmt: skip
        self.pool.on_ready, self.pool.on_gone = self._worker_ready, self._worker_gone
        self.pool.on_drain = lambda worker: self.hub.drain(worker) if self.hub else None
        self.pool.last_words = lambda w: self.hub.await_last_words(w) if self.hub else None
        self.pool.on_halt = lambda reason: self.request_exit(fast=True, code=1)
        self.memory = MemoryWatch(self.pool, self.monitor.rss, lambda: self.settings)
        self.endpoints.on_denied = lambda denial: self.emit("auth_denied", **denial.to_dict())
        self.retainer = Retainer(self.emit)
        self.retained = self.retainer.listing
        """The retained publishes (``ctl retained``): channel, time, age, seq, size, who."""
        self.publisher = TreePublisher(
            self.bus, self.pool, self.loop, deadline=lambda: self.settings.publish_timeout,
            emit=self.emit, request_exit=self.request_exit, retainer=self.retainer,
        )  # fmt: skip
        self.publish_async = self.publisher.publish_async
        """Start a tree publish; `on_done(reply)` is called from the loop when complete."""
        self.worker_publishes = WorkerPublishes(
            self.publish_async, emit=self.emit, exiting=lambda: self.exiting,
            send=lambda worker, frame: self.hub.send_to(worker, frame) if self.hub else None,
            alive=lambda worker: self.pool.by_topic.get(worker.topic) is worker,
        )  # fmt: skip
        self.scrape = Scraper(self, self.publisher.ask_workers).scrape
        self.hub: Hub | None = None
        self.control: ControlServer | None = None
        self.commands = Commands(self)
        self.jobs = Jobs(self.loop.stop, self.emit)
        self.reload_config: Callable[[], None] = lambda: None
        """Called by reload before any worker is replaced; raise to abort it."""
        self.lineage = Lineage(
            pool=self.pool, runtime=self.runtime, endpoints=self.endpoints, sockets=self.sockets,
            settings=lambda: self.settings, relay=lambda: self.hub.relay if self.hub else None,
            loop=self.loop, emit=self.emit, request_exit=self.request_exit,
            exiting=lambda: self.exiting, retainer=self.retainer,
        )  # fmt: skip
        self.pid, self.started_at = os.getpid(), time.time()
        self.exit_code = 0
        self._exit_requested = self._fast_exit = self._running = False
        for channel, listener, priority in self._bus_listeners():
            self.bus.subscribe(channel, listener, priority=priority)

    # -- the bus plugin ---------------------------------------------------

    def _bus_listeners(self) -> tuple[tuple[str, Callable[[], None], int], ...]:
        """(channel, listener, priority): the pool starts after the servers, stops first."""
        return (
            ("start", self._on_bus_start, 70),
            ("stop", self._on_bus_stop, 20),
            ("exit", self._on_bus_exit, 80),
        )

    def _on_bus_start(self) -> None:
        self.open()
        self.lineage.adopt()
        self.pool.activate()

    def _on_bus_stop(self) -> None:
        if self.hub is None:
            return
        self.pool.deactivate(fast=self._fast_exit)
        if not self.loop.in_callback:
            self._wait_for_workers()

    def _on_bus_exit(self) -> None:
        if self.hub is None:
            return
        if self.loop.in_callback:
            # Finish from the top of the loop, where waiting is allowed.
            self.request_exit(fast=self._fast_exit)
            return
        self._wait_for_workers()
        self.close()

    def _wait_for_workers(self) -> None:
        limit = stop_limit(self.settings.supervision)
        if not self.loop.run_until(self.pool.no_children, limit):
            log.error("workers still alive %gs after stop: %s", limit, sorted(self.pool.by_pid))

    # -- opening and closing ------------------------------------------------

    def open(self) -> None:
        """Take the runtime directory and bind the endpoints (once)."""
        if self.hub is not None:
            return
        self.forker.inherited_fds = open_fds()
        self.monitor.watch(self.pid)
        self.runtime.worker_tag = self.lineage.worker_tag()
        self.endpoints.open(with_lock=self.lineage.holds_name)
        self.hub, self.control = self.endpoints.serve(self.loop, self.pool, self.commands)
        self.publisher.hub = self.hub
        self.hub.on_tree_publish = self.worker_publishes.receive
        self.bus.forward = self.publisher.forward
        self.bus.awaiter = no_event_loop  # an async listener here: an error, not a coroutine
        self.loop.install_signals([signal.SIGCHLD], self._on_signal)
        log.info("master %d (%s) listening in %s", self.pid, self.name, self.runtime.path)

    def close(self) -> None:
        """Close the sockets, free the runtime directory, restore signals.

        A closed master is finished: it also leaves the bus, so that a later master on
        the same bus (the process's `procbus.bus`) is not joined by this one's listeners.
        """
        for channel, listener, _ in self._bus_listeners():
            self.bus.unsubscribe(channel, listener)
        if self.hub is None:
            return
        self.bus.forward = self.bus.awaiter = None
        self.event_stream.close()
        self.loop.close()
        line = self.lineage
        self.endpoints.close(exec_next=line.exec_requested, handed_over=bool(line.upgraded_to))
        self.hub = self.publisher.hub = self.control = None
        log.info("master %d closed", self.pid)

    # -- the workers ------------------------------------------------------------

    def _worker_ready(self, worker: WorkerProc) -> None:
        if self.hub is not None:
            self.hub.welcome(worker)
        self.lineage.worker_ready()

    def _worker_gone(self, worker: WorkerProc) -> None:
        self.monitor.forget(worker.pid)
        if self.hub is not None:
            self.hub.worker_gone(worker)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.pool.reap()
        else:
            self.commands.run_signal(signum)

    # -- what the command path and the jobs ask of the tree ---------------------

    @property
    def target_workers(self) -> int:
        return self.pool.target

    @property
    def addresses(self) -> dict[str, str]:
        return dict(self.endpoints.addresses)

    @property
    def exiting(self) -> bool:
        return self._exit_requested or self.bus.state is states.EXITING

    def job_listing(self) -> list[dict[str, Any]]:
        return self.jobs.listing()

    def start_job(self, kind: str, args: dict[str, Any], coalesce: bool) -> Job:
        """Queue the job of a long command, or run it now when called from top-level code."""
        body = job_body(self, kind, args)
        if self.loop.in_callback or self._running:
            return self.jobs.start(kind, body, args, coalesce=coalesce)
        job = Job(f"{kind}-now", kind, args, emit=self.emit)
        self.jobs.run(job, body)
        return job

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """For jobs: pump the loop until `predicate()` or `timeout`; abort on exit."""
        self.loop.run_until(lambda: predicate() or self._exit_requested, timeout)
        if self._exit_requested:
            raise JobAborted
        return predicate()

    @property
    def generation(self) -> int:
        return self.lineage.generation

    # -- public API ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.hub is not None

    def start(self, timeout: float | None = None) -> bool:
        """Start the bus (bind, fork the workers); True once every worker runs within
        `timeout` (None: the boot timeout; 0: no wait)."""
        self.open()
        self.bus.start()
        return self.pool.all_running() if timeout == 0 else self.wait_ready(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Pump the loop until every worker runs (or flaps, or none can boot); True if all run."""
        limit = self.settings.supervision.boot_timeout if timeout is None else timeout
        self.loop.run_until(self.pool.settled, limit)
        return self.pool.all_running()

    def publish(
        self,
        channel: str,
        *args: Any,
        timeout: float | None = None,
        require: Require = "all",
        to: Iterable[int] | None = None,
        to_generation: int | None = None,
        retain: bool = False,
        clear: bool = False,
        **kwargs: Any,
    ) -> TreeReply:
        """Publish on the tree, return every answer (`publisher`, `procbus.publishing`); the
        master's listeners run whatever `to` says; `retain` keeps it for every worker started
        later (with `clear`: drops the channel's, `TreeReply.cleared` says whether there was
        one). ``ValueError``: bad option, target, or channel to retain."""
        targets = None if to is None else tuple(to)
        options = PublishOptions(require, targets, to_generation, retain, clear)
        gathered: list[TreeReply] = []
        self.publish_async(
            channel, args, kwargs, timeout=timeout, on_done=gathered.append, options=options
        )
        self.loop.run_until(lambda: bool(gathered))
        return gathered[0]

    def apply_settings(self, settings: TreeSettings) -> None:
        """New settings for a running tree (a reload re-read the config).

        Deadlines and limits apply at once, the stats interval when sampling next starts,
        heartbeats to the workers forked from now on. The worker count is left to the
        caller (`scale`): a count set at runtime outlives a reload.
        """
        self.settings = settings
        self.pool.policy = settings.supervision
        self.event_stream.interval = settings.stats_interval
        self.memory.update()

    def _job_of(self, name: str, *args: Any, **options: Any) -> Job:
        """Run a long command as the Python API; raise `CommandError` if it was refused."""
        answer = self.commands.run(name, list(args), options, API)
        answer.raise_for_error()
        assert answer.job is not None
        return answer.job

    def scale(self, workers: int) -> Job:
        """Run `workers` workers: fork the missing ones, drain the extra ones."""
        return self._job_of("scale", workers)

    def incr(self, count: int = 1) -> Job:
        return self._job_of("incr", count)

    def decr(self, count: int = 1) -> Job:
        return self._job_of("decr", count)

    def reload(self, batch: int | None = None) -> Job:
        """Replace every worker, never below N, `batch` at a time (0: all; None: reload_batch)."""
        return self._job_of("reload", **({} if batch is None else {"batch": batch}))

    def restart(self, adopt: bool = False) -> Job:
        """Drain every worker (unless `adopt`), then have `run`'s caller re-execute the
        master: the same pid, argv and listening sockets (see ``procbus run``)."""
        return self._job_of("restart", **({"adopt": True} if adopt else {}))

    def upgrade(self) -> Job:
        """Start a new master beside this one; once it is ready, drain and exit."""
        return self._job_of("upgrade")

    def kill_worker(self, worker_id: int, signum: int = signal.SIGTERM) -> WorkerProc:
        """Send `signum` to the current worker `worker_id` (`LookupError`); it is replaced."""
        return self.pool.signal_current(worker_id, signum)

    def stop(self) -> None:
        """Drain and stop every worker; the master stays up (bus STOPPED)."""
        self.bus.stop()

    def exit(self) -> None:
        """Stop the workers and close the master (bus EXITING)."""
        if self.bus.state is not states.EXITING:
            self.bus.exit()

    def request_exit(self, fast: bool = False, code: int = 0) -> None:
        """From inside the loop: make `run` stop the tree and return (`code`, if not 0)."""
        self._exit_requested = True
        self._fast_exit = self._fast_exit or fast
        self.exit_code = self.exit_code or code
        self.loop.stop()

    def run(self) -> int:
        """Run the tree until TERM, INT, QUIT or an exit command; return the exit status."""
        self.open()  # a StartupError surfaces here, before any listener runs
        self.loop.install_signals(MASTER_SIGNALS, self._on_signal)
        self._running = True
        try:
            self.bus.start()
            while not self._exit_requested:
                self.loop.run_forever()
                self.jobs.run_queued(stop=lambda: self._exit_requested)
            self.jobs.abort_queued()
            self._before_going()
            if self.lineage.handover is None:
                self.exit()
            # else: restart --adopt; the workers live on for the next master
        finally:
            self._running = False
            self.close()
            self.loop.restore_signals()
        return self.exit_code or self.lineage.exit_code

    def _before_going(self) -> None:
        """Exec, hand-over or exit: publishes in flight get their answers (bounded by
        their deadlines) and every control request already received is answered, so
        that no caller waits for a master that is gone."""
        if self.lineage.going:
            self.publisher.finish(self.settings.supervision.graceful_timeout)
        if self.control is not None:
            self.control.drain()
        self.lineage.before_exec()

    def status(self) -> dict[str, Any]:
        """A snapshot of the master and its workers (plain data, ``ctl status``)."""
        return snapshot.status(self)

    def stats(self) -> dict[str, Any]:
        """Process figures and counters of the master and every live worker
        (``ctl stats`` and each ``stats`` event)."""
        return snapshot.stats(self)

    def __enter__(self) -> Master:
        return self

    def __exit__(self, *exc: object) -> None:
        self.exit()
        self.close()


__all__ = ["Master", "TreeReply", "TreeSettings"]
