"""A worker's life, from the instant after fork to its exit status.

Right after fork the worker drops everything it inherited that belongs to the
master (signal handlers and wake-up fd, ZeroMQ sockets and their fds, the
master's listeners on `procbus.bus`, systemd's notify variables), arranges to
die with the master, switches user if asked, makes its own ZeroMQ context and
link, says hello, imports and starts its app, and then runs its own small I/O
loop in the main thread: publishes from the master arrive there and replies
and heartbeats leave from there, on time, and signals arrive through a wake-up
fd. The app runs in a second thread, the listeners of the master's publishes
in a third (`procbus.worker.runner`), so a slow listener never silences the
heartbeats. The app's own publishes to the tree (`procbus.tree`) leave from
the I/O loop too, and their answers come back through it
(`procbus.worker.tree_client`). Before the app serves, the tree's retained
publishes run on the listeners' thread (`procbus.worker.catchup`): the worker
says it runs only after them. Asked to stop gracefully, the loop first
answers every publish its master sent it before it decided to drain it
(`procbus.worker.drain`).

Exit statuses are part of the contract with the master (`ExitCode`): a worker
that cannot boot says so, so that the master backs off instead of forking in a
loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import faulthandler
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import zmq

from procbus.bus import Bus, State, states
from procbus.bus import bus as process_bus
from procbus.errors import StartupError
from procbus.frames import readable
from procbus.master.systemd import forget_in_worker
from procbus.privatedir import DirectoryId
from procbus.protocol import BusState, Message, MsgType, WorkerBusState
from procbus.worker.apps import WorkerApp, WorkerContext, load_app
from procbus.worker.awaiter import no_event_loop
from procbus.worker.catchup import CatchUp
from procbus.worker.credentials import Credentials
from procbus.worker.drain import MARKER_GRACE, Drain
from procbus.worker.link import WorkerLink
from procbus.worker.metrics import subscribe as answer_metrics_scrapes
from procbus.worker.runner import ListenerRunner
from procbus.worker.tree_client import TreeClient, serving

log = logging.getLogger("procbus.worker")

_PR_SET_PDEATHSIG = 1
_BATCH = 100
"""Publishes read from SUB before they go to the listener thread in one hand-off."""


class ExitCode(enum.IntEnum):
    """Exit statuses a worker reports to its master."""

    OK = 0
    """Stopped when asked to."""
    APP_RETURNED = 10
    """The app returned although nobody asked the worker to stop."""
    APP_FAILED = 11
    """The app raised."""
    BOOT_FAILED = 12
    """The app could not be imported or started: do not respawn in a loop."""
    ORPHANED = 13
    """The master died."""
    INTERNAL = 14
    """procbus itself failed in the worker."""


@dataclass
class WorkerSpec:
    """Everything a forked worker needs, prepared by the master before fork."""

    worker_id: int
    generation: int
    master_pid: int
    app: str | WorkerApp
    publish_endpoint: str
    reply_endpoint: str
    heartbeat_interval: float = 1.0
    welcome_timeout: float = 30.0
    graceful_timeout: float = 30.0
    marker_grace: float = MARKER_GRACE
    """Seconds a worker told to stop waits for the master's DRAIN marker."""
    publish_timeout: float = 30.0
    """The master's default deadline of a tree publish (a publish from this worker
    without a timeout gets it)."""
    sockets: Sequence[Any] = ()
    """Listening sockets inherited from the master."""
    close_fds: Collection[int] = ()
    """Master-only fds to close at once (lock file, signal pipe)."""
    keep_fds: Collection[int] = ()
    """Fds that must stay open even if they look like the master's."""
    inherited_ok_fds: Collection[int] = ()
    """Fds that existed before the master started; left alone."""
    app_settings: dict[str, Any] = field(default_factory=dict)
    credentials: Credentials | None = None
    """Who to become before anything else (``--user``/``--group``)."""
    runtime_dir: Path | None = None
    runtime_identity: DirectoryId | None = None
    """The master's runtime directory as it checked it: the worker connects only
    if the path still leads there."""
    unblock_signals: Collection[int] = ()
    """Signals blocked across the fork (the master's): unblocked once the
    worker's own handlers are in place, so that none sent meanwhile is lost."""


def run_worker(spec: WorkerSpec) -> NoReturn:
    """The forked child's entry point: run the worker, then ``_exit``."""
    code = ExitCode.INTERNAL
    # First of all: the master's reserve of descriptors, so that even a master
    # out of descriptors forks a worker that can open what it needs.
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        code = Worker(spec).run()
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _set_parent_death_signal(signum: int) -> None:
    """Linux: have the kernel send `signum` when the master dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _close_master_fds(spec: WorkerSpec) -> None:
    """Close the fds this process inherited from the master's ZeroMQ context.

    libzmq's sockets, eventfds and epoll fds show up as ``socket:`` and
    ``anon_inode:`` entries; those that existed before the master started
    belong to the application and are left alone, as are the listening
    sockets.
    """
    keep = {0, 1, 2, *spec.keep_fds, *spec.inherited_ok_fds}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return
    for name in names:
        fd = int(name)
        if fd in keep:
            continue
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "anon_inode:")):
            with contextlib.suppress(OSError):
                os.close(fd)


class Worker:
    """One worker process (runs in the child after fork)."""

    def __init__(self, spec: WorkerSpec, bus: Bus = process_bus) -> None:
        self.spec = spec
        self.bus = bus
        self.pid = os.getpid()
        self.stop_requested: int | None = None
        self._app_outcome: BaseException | None = None
        self._app_done = threading.Event()
        self._reports_ready = False
        self._running_reported = False
        self._drain: Drain | None = None
        """Set when a graceful stop was asked for: the publishes still owed."""
        self._bus_said: State | None = None
        """The bus state its last heartbeat carried."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._runner = ListenerRunner(bus, self._wake)
        self._catch_up = CatchUp(self._wake)
        self._tree = TreeClient(spec.worker_id, spec.generation, self._wake, spec.publish_timeout)

    # -- set-up right after fork ----------------------------------------

    def _reset_process(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGQUIT,
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGCHLD,
        ):
            signal.signal(signum, signal.SIG_DFL)
        _close_master_fds(self.spec)
        forget_in_worker(os.environ)
        _set_parent_death_signal(signal.SIGTERM)
        # A stack dump on SIGABRT (the master's timeout kill) and on crashes.
        faulthandler.enable(all_threads=True)
        self.bus.reset_after_fork()

    def _install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(signum, self._on_signal)
        # Operators signal the master; workers ignore what is meant for it.
        for signum in (
            signal.SIGHUP,
            signal.SIGUSR1,
            signal.SIGUSR2,
            signal.SIGTTIN,
            signal.SIGTTOU,
        ):
            signal.signal(signum, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only record; the loop acts on it (the wake-up fd woke it already).
        if self.stop_requested is None or signum == signal.SIGQUIT:
            self.stop_requested = signum

    def request_stop(self, signum: int) -> None:
        """Stop as on signal `signum` (TERM, INT: drain first; QUIT: at once); any thread."""
        self._on_signal(signum, None)
        self._wake()

    # -- the life --------------------------------------------------------

    def run(self) -> ExitCode:
        spec = self.spec
        self._reset_process()
        if os.getppid() != spec.master_pid:
            return ExitCode.ORPHANED
        self._install_signals()
        if spec.unblock_signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, spec.unblock_signals)
        try:
            self._become_worker()
        except (OSError, StartupError) as exc:
            log.error("worker %d cannot start: %s", spec.worker_id, exc)
            return ExitCode.BOOT_FAILED
        context: zmq.Context[Any] = zmq.Context()
        link = WorkerLink(
            context,
            spec.worker_id,
            spec.generation,
            spec.publish_endpoint,
            spec.reply_endpoint,
        )
        try:
            return self.serve(link)
        finally:
            link.close(linger=1000)
            context.term()

    def _become_worker(self) -> None:
        """Drop privileges, then check the runtime directory, before any connection."""
        spec = self.spec
        if spec.credentials is not None:
            spec.credentials.apply()
        if spec.runtime_dir is not None and spec.runtime_identity is not None:
            try:
                found = DirectoryId.of(os.lstat(spec.runtime_dir))
            except OSError as exc:
                raise StartupError(
                    f"runtime directory '{spec.runtime_dir}': {exc.strerror or exc}"
                ) from None
            if found != spec.runtime_identity:
                raise StartupError(
                    f"runtime directory '{spec.runtime_dir}' is not the master's any more"
                )

    def serve(self, link: WorkerLink) -> ExitCode:
        """Be the worker on `link`, from the hello to the ``stopped`` state.

        `run` calls this once the process is set up; it runs on any thread
        (signals only reach it through `request_stop`, or the handlers `run`
        installs).
        """
        try:
            with serving(self._tree):
                return self._serve(link)
        finally:
            self.bus.on_state = None
            self._tree.close(f"worker {self.spec.worker_id} stopped")

    def _serve(self, link: WorkerLink) -> ExitCode:
        spec = self.spec
        link.hello(self.pid)
        link.state(WorkerBusState.STARTING)
        answer_metrics_scrapes(self.bus)  # before the app: its own listeners come after
        ctx = WorkerContext(
            worker_id=spec.worker_id,
            generation=spec.generation,
            bus=self.bus,
            sockets=spec.sockets,
            settings=spec.app_settings,
            catch_up=self._catch_up.wait,
        )
        io_thread = self._tree.io_thread = threading.get_ident()

        def bus_moved(state: State) -> None:
            # Told at once from this thread (the link is its own), else by its loop.
            if threading.get_ident() == io_thread:
                self._beat(link, ctx)
            else:
                self._wake()

        self.bus.on_state = bus_moved
        # An ASGI host replaces this while its event loop runs.
        self.bus.awaiter = no_event_loop
        try:
            app = load_app(spec.app)
            self.bus.start()
        except BaseException as exc:
            detail = str(exc) if isinstance(exc, StartupError) else _format(exc)
            log.error("worker %d failed to boot: %s", spec.worker_id, detail)
            link.state(WorkerBusState.FAILED, f"boot: {detail}")
            return ExitCode.BOOT_FAILED
        ctx.on_ready = self._wake
        self._reports_ready = bool(getattr(app, "reports_ready", False))
        self._runner.start()
        app_thread = threading.Thread(target=self._run_app, args=(app, ctx), name="app")
        app_thread.start()

        code = self._loop(link, ctx)
        self._tree.close(
            f"worker {spec.worker_id} is stopping: its tree publishes get no answer any more"
        )

        if self._drain is None:
            link.state(WorkerBusState.STOPPING)
        deadline = (
            self._drain.deadline
            if self._drain is not None
            else time.monotonic() + spec.graceful_timeout
        )
        ctx.stop_deadline = deadline
        ctx.stopping.set()
        self._catch_up.abandon()
        # A quick stop (SIGQUIT, or the master gone) skips the drain: the
        # stop and exit listeners may wait for in-flight work.
        fast = code is ExitCode.ORPHANED or self.stop_requested == signal.SIGQUIT
        self._runner.stop()
        if not fast:
            # After a drain nothing runs any more, unless it ran out of time: like
            # a request in flight, the publish whose listeners run now finishes
            # and is answered before the stop listeners run.
            if not self._runner.join(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "worker %d: listeners still running after %gs",
                    spec.worker_id,
                    spec.graceful_timeout,
                )
            self._send_replies(link, ctx)
        if not fast and self.bus.state is not states.EXITING:
            self.bus.exit()
        app_thread.join(0 if fast else spec.graceful_timeout)
        if app_thread.is_alive() and not fast:
            log.warning(
                "worker %d: app did not stop within %gs", spec.worker_id, spec.graceful_timeout
            )
        link.state(WorkerBusState.STOPPED)
        return code

    def _run_app(self, app: WorkerApp, ctx: WorkerContext) -> None:
        try:
            if not self._reports_ready:
                ctx.ready()  # after the retained publishes: before the app runs
            app(ctx)
        except BaseException as exc:
            self._app_outcome = exc
        finally:
            self._app_done.set()
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\x00")

    def _report_ready(self, link: WorkerLink, ctx: WorkerContext) -> None:
        if not self._running_reported and ctx.ready_event.is_set():
            self._running_reported = True
            link.state(WorkerBusState.RUNNING)

    def _loop(self, link: WorkerLink, ctx: WorkerContext) -> ExitCode:
        spec = self.spec
        poller = zmq.Poller()
        poller.register(link.monitor, zmq.POLLIN)
        poller.register(link.sub, zmq.POLLIN)
        poller.register(link.dealer, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            drain_check = math.inf
            if self.stop_requested is not None:
                if os.getppid() != spec.master_pid:
                    return ExitCode.ORPHANED
                if self.stop_requested == signal.SIGQUIT:
                    return ExitCode.OK
                if self._drain is None:
                    self._drain = self._start_drain(link, now)
                if self._drained(link, self._drain, now):
                    return ExitCode.OK
                drain_check = self._drain.next_check(now, marked=link.drain_seq is not None)
            elif self._app_done.is_set():
                return self._app_ended(link)
            else:
                self._report_ready(link, ctx)
            if now >= next_beat or self.bus.state is not self._bus_said:
                if os.getppid() != spec.master_pid:
                    log.error("worker %d: master %d is gone", spec.worker_id, spec.master_pid)
                    return ExitCode.ORPHANED
                self._beat(link, ctx)
                next_beat = now + spec.heartbeat_interval
            wake_at = min(next_beat, drain_check)
            timeout_ms = math.ceil(max(0.0, wake_at - time.monotonic()) * 1000)
            ready = dict(poller.poll(timeout_ms))
            # A lost connection first: the publishes read after it are held
            # back until the next WELCOME (see `WorkerLink.watch_connection`).
            if link.monitor in ready:
                link.watch_connection()
            if link.sub in ready:
                self._handle_publishes(link, ctx)
            if link.dealer in ready:
                self._handle_commands(link, ctx)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
                self._send_replies(link, ctx)
                self._run_retained()
                self._tree.flush(link.send_frame)

    def _beat(self, link: WorkerLink, ctx: WorkerContext) -> None:
        """A heartbeat: the counters, and the bus's state (sent early when that moves)."""
        self._bus_said = self.bus.state
        link.heartbeat(ctx.counters.snapshot(), BusState(self._bus_said.name))

    def _start_drain(self, link: WorkerLink, now: float) -> Drain:
        """A graceful stop was asked for: say so, and owe what the master sent."""
        # A master that did not send the TERM sends the DRAIN marker once it
        # reads this; a worker that never said it runs is nobody's target.
        link.state(WorkerBusState.STOPPING)
        grace = self.spec.marker_grace if self._running_reported else 0.0
        return Drain(now, self.spec.graceful_timeout, grace)

    def _drained(self, link: WorkerLink, drain: Drain, now: float) -> bool:
        """Whether every publish owed was answered (or the drain ran out of time)."""
        marked = link.drain_seq is not None
        if not drain.taking_publishes(now, marked=marked):
            link.stop_taking_publishes()
        unanswered = self._runner.backlog
        if not drain.done(now, marked=marked, unanswered=unanswered, held=link.held):
            return False
        if unanswered or (marked and link.held):
            log.warning(
                "worker %d: %d publishes not answered after %gs",
                self.spec.worker_id,
                unanswered + link.held,
                self.spec.graceful_timeout,
            )
        return True

    def _handle_publishes(self, link: WorkerLink, ctx: WorkerContext) -> None:
        # Everything waiting, without a poll per message (a poll costs a Poller),
        # handed to the listener thread in batches (a hand-off costs a thread switch).
        # A graceful stop goes on reading, up to the master's DRAIN marker.
        batch: list[Message] = []
        # Asking the socket whether a message waits costs less than the zmq.Again a
        # read of an empty socket raises, and most wake-ups bring one publish.
        while self.stop_requested != signal.SIGQUIT and readable(link.sub):
            try:
                message = link.receive_publish(zmq.NOBLOCK)
            except zmq.Again:
                break
            if message is not None:
                batch.append(message)
                if len(batch) == _BATCH:
                    self._submit(link, ctx, batch)
                    batch = []
        if batch:
            self._submit(link, ctx, batch)

    def _handle_commands(self, link: WorkerLink, ctx: WorkerContext) -> None:
        while True:
            try:
                message = link.receive_command(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message is None:
                continue
            if message.type is MsgType.TREE_REPLY:
                self._tree.on_reply(message)
            elif message.type is MsgType.RETAINED:
                self._catch_up.receive(message)
                self._run_retained()
            elif message.type is MsgType.WELCOME:
                held = link.take_held()
                for start in range(0, len(held), _BATCH):
                    self._submit(link, ctx, held[start : start + _BATCH])

    def _submit(self, link: WorkerLink, ctx: WorkerContext, messages: list[Message]) -> None:
        """Hand `messages` to the listener thread; refuse those past a full backlog."""
        for message in self._runner.submit(messages):
            seq = message["seq"]
            reason = (
                f"worker {self.spec.worker_id}: {self._runner.backlog} publishes already "
                f"wait for its listeners; publish {seq} on {message['channel']!r} was not run"
            )
            log.error("%s", reason)
            ctx.counters.add("publishes")
            ctx.counters.add("publish_errors")
            link.refuse(seq, reason)

    def _run_retained(self) -> None:
        """Hand the retained publishes whose turn it is to the listener thread."""
        messages = self._catch_up.to_run()
        if messages:
            self._runner.submit(messages, retained=True)

    def _send_replies(self, link: WorkerLink, ctx: WorkerContext) -> None:
        """Answer every publish whose listeners ran (from the I/O thread: sockets are its own);
        a retained one's outcome goes to the catch-up instead."""
        for done in self._runner.finished():
            if done.raised is not None:
                raise done.raised  # SystemExit or KeyboardInterrupt from a listener
            ctx.counters.add("publishes")
            if any(outcome.error is not None for outcome in done.outcomes):
                ctx.counters.add("publish_errors")
            if done.retained:
                self._catch_up.ran(done.outcomes)
            else:
                link.reply(done.seq, done.outcomes)

    def _app_ended(self, link: WorkerLink) -> ExitCode:
        exc = self._app_outcome
        if exc is None:
            log.warning("worker %d: app returned", self.spec.worker_id)
            link.state(WorkerBusState.FAILED, "app returned")
            return ExitCode.APP_RETURNED
        if not self._running_reported:
            # Failed before it said it serves: a boot failure (no respawn loop).
            detail = str(exc) if isinstance(exc, StartupError) else _format(exc)
            log.error("worker %d failed to boot: %s", self.spec.worker_id, detail)
            link.state(WorkerBusState.FAILED, f"boot: {detail}")
            return ExitCode.BOOT_FAILED
        detail = _format(exc)
        log.error("worker %d: app failed: %s", self.spec.worker_id, detail)
        link.state(WorkerBusState.FAILED, f"app: {detail}")
        return ExitCode.APP_FAILED


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
