"""The master: owns the authoritative bus and carries it to the workers.

A `Master` is a plugin of its process's `Bus` (by default `procbus.bus`):
``start`` binds its endpoints and fills the pool, ``stop`` drains every worker,
``exit`` waits for them and closes everything, and every other publish on the
bus (``graceful`` and custom channels) is forwarded to the workers. `publish`
does the same and returns the whole tree's answer as a `TreeReply`.

Everything runs in one thread around `EventLoop`. The public methods here are
meant for top-level code (a script, `run`): they pump the loop until what they
wait for happened. Code running inside the loop (listeners called from a
control command, signal handling) uses the asynchronous forms instead.

There are no Python threads in the master, so a fork never copies a held lock.
(libzmq's own I/O threads exist, but a worker never touches the master's
ZeroMQ context: it closes the fds and makes its own.)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import zmq

from procbus import protocol
from procbus.bus import STARTUP_CWD, Bus, states
from procbus.bus import bus as process_bus
from procbus.commands import SIGNAL_COMMANDS, CommandError, ErrorCode
from procbus.errors import ConfigError, ProtocolError, StartupError
from procbus.master import listeners, snapshot
from procbus.master import reload as reload_jobs
from procbus.master import upgrade as upgrade_jobs
from procbus.master.auth import LOCAL_DOMAIN, WORKERS_DOMAIN, Denial, ZapHandler
from procbus.master.control import CONTROL_MAX_MESSAGE, ControlServer, ControlSettings
from procbus.master.events import EventStream, event_socket
from procbus.master.handover import AdoptedWorker, Adoption, Inherited, exec_problem
from procbus.master.jobs import Job, JobAborted, JobBody, JobFailed, Jobs
from procbus.master.loop import Clock, EventLoop, Timer
from procbus.master.planner import Supervision, WorkerProc, WorkerState
from procbus.master.pool import Pool
from procbus.master.relay import Relay, TreeReply, WorkerResult, WorkerStatus
from procbus.master.runtime import RuntimeDir
from procbus.master.stats import ProcessMonitor
from procbus.master.throttle import LogThrottle
from procbus.master.upgrade import Successor
from procbus.privatedir import traverse_problem
from procbus.protocol import MsgType
from procbus.worker.apps import WorkerApp
from procbus.worker.credentials import Credentials
from procbus.worker.worker import WorkerSpec, run_worker

log = logging.getLogger("procbus.master")

LOCAL_CHANNELS: Final = frozenset({"log", "main"})
"""Channels that stay on the master."""
POOL_CHANNELS: Final = frozenset({"start", "stop", "exit"})
"""Channels that drive the pool instead of being forwarded."""

_WORKER_MESSAGES: Final = frozenset(
    {MsgType.HELLO, MsgType.STATE, MsgType.HEARTBEAT, MsgType.REPLY}
)
_NOBLOCK: Final = int(zmq.NOBLOCK)
"""As a plain int: pyzmq combines enum flags per call, which shows in profiles."""
_BATCH: Final = 1000
"""Messages read from one socket before the loop looks at the others."""
FD_RESERVE: Final = 8
"""Descriptors the master keeps open for its workers: a worker closes them
first thing after fork, so that it can start even when a flood of
connections used up every descriptor the master may have."""
RUNTIME_CHECK_INTERVAL: Final = 2.0
"""Seconds between checks that the runtime directory and its sockets are still there."""
WORKER_RCVHWM: Final = 10_000
"""Messages queued from one worker before ZeroMQ stops reading its pipe (the
worker then holds the rest): a runaway worker cannot fill the master's memory."""
_WORKER_PRIORITY: Final = 0
_AUTH_PRIORITY: Final = 1
_CONTROL_PRIORITY: Final = 2
"""The loop serves ready sockets in this order: the workers' replies and
heartbeats first, so that no flood of control requests makes a healthy worker
look silent."""

MASTER_SIGNALS: Final = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


@dataclass(frozen=True)
class TreeSettings:
    """How the tree behaves (all durations in seconds)."""

    workers: int = 2
    heartbeat_interval: float = 1.0
    publish_timeout: float = 30.0
    supervision: Supervision = field(default_factory=Supervision)
    stats_interval: float = 1.0
    """Seconds between ``stats`` events, sampled only while someone subscribes."""


class Master:
    """A master process: a bus, a pool of forked workers, and the wire between them."""

    def __init__(  # noqa: PLR0915 - one attribute per line, documented
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
            settings = dataclasses.replace(settings, workers=workers)
        if settings.workers < 0:
            raise ValueError(f"workers must be >= 0, got {settings.workers}")
        if not settings.stats_interval > 0:
            raise ValueError(f"stats_interval must be > 0, got {settings.stats_interval}")
        self.app = app
        self.name = name
        self.settings = settings
        self.bus = bus if bus is not None else process_bus
        self.sockets = list(sockets)
        self.app_settings = dict(app_settings or {})
        self.control_settings = control or ControlSettings()
        self.credentials = credentials
        """Who the workers run as (``--user``/``--group``); None: as the master."""
        self.runtime = RuntimeDir.for_name(
            name, Path(runtime_dir) if runtime_dir is not None else None
        )
        self.loop = EventLoop(clock)
        self.pool = Pool(
            self.loop,
            policy=settings.supervision,
            spawn=self._spawn,
            emit=self.emit,
            target=settings.workers,
        )
        self.pool.on_ready = self._welcome
        self.pool.on_gone = self._worker_gone
        self.pool.on_drain = self._drain
        self.relay: Relay | None = None
        self.control: ControlServer | None = None
        self.jobs = Jobs(self.submit, self.emit)
        # Fresh figures for every stats event; a burst of status requests shares one.
        self.monitor = ProcessMonitor(max_age=min(1.0, settings.stats_interval / 2))
        self.reload_config: Callable[[], None] = lambda: None
        """Called by reload before any worker is replaced; raise to abort it."""
        self.observers: list[Callable[[str, dict[str, Any]], None]] = []
        """Called with every event `emit` puts on the event stream, in the loop."""
        self.exec_requested = False
        """Set by `restart`: whoever called `run` re-executes the process."""
        self.successor: Successor | None = None
        """Set when an old master started this one (`upgrade`), until it took over."""
        self.upgraded_to: int | None = None
        """The pid of the master this one handed over to (`upgrade`)."""
        self.handover: Adoption | None = None
        """Set by ``restart --adopt``: the live workers the next master adopts."""
        self._adoption: Adoption | None = None
        self._adopt_on_exec = False
        self._name_fds: dict[str, int] = {}
        """Role -> a descriptor of the name's listening socket (control,
        events, events_remote), kept to hand on across exec or to a successor."""
        self._inherited_name_fds: dict[str, int] = {}
        self.pid = os.getpid()
        self.generation = 1
        self.started_at = time.time()
        self.endpoints: dict[str, str] = {}
        self.dropped_messages = 0
        self._drop_log = LogThrottle(log, "dropped worker messages")
        self.exit_code = 0
        self._context: zmq.Context[Any] | None = None
        self._zap: ZapHandler | None = None
        self._fd_reserve: list[int] = []
        self._runtime_timer: Timer | None = None
        self._xpub: zmq.Socket[bytes] | None = None
        self._router: zmq.Socket[bytes] | None = None
        self._events: zmq.Socket[bytes] | None = None
        self.event_stream = EventStream(self.loop, self.stats, settings.stats_interval)
        self._control: zmq.Socket[bytes] | None = None
        self._inherited_fds: frozenset[int] = frozenset()
        self._exit_requested = False
        self._fast_exit = False
        self._running = False
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._subscribe_to_bus()

    # -- the bus plugin ---------------------------------------------------

    def _subscribe_to_bus(self) -> None:
        self.bus.subscribe("start", self._on_bus_start, priority=70)
        self.bus.subscribe("stop", self._on_bus_stop, priority=20)
        self.bus.subscribe("exit", self._on_bus_exit, priority=80)

    def _unsubscribe_from_bus(self) -> None:
        self.bus.unsubscribe("start", self._on_bus_start)
        self.bus.unsubscribe("stop", self._on_bus_stop)
        self.bus.unsubscribe("exit", self._on_bus_exit)

    def _on_bus_start(self) -> None:
        if self._context is None:
            self.open()
        if self._adoption is not None:
            adoption, self._adoption = self._adoption, None
            assert self.relay is not None
            self.relay.seq = adoption.next_seq - 1  # the numbers go on
            for worker in adoption.workers:
                self.pool.adopt(worker.id, worker.generation, worker.pid)
        self.pool.activate()

    def _on_bus_stop(self) -> None:
        if self._context is None:
            return
        self.pool.deactivate(fast=self._fast_exit)
        if not self.loop.in_callback:
            self._wait_for_workers()

    def _on_bus_exit(self) -> None:
        if self._context is None:
            return
        if self.loop.in_callback:
            # Finish from the top of the loop, where waiting is allowed.
            self.request_exit(fast=self._fast_exit)
            return
        self._wait_for_workers()
        self.close()

    def _wait_for_workers(self) -> None:
        policy = self.settings.supervision
        limit = policy.graceful_timeout + policy.abort_grace + 10
        if not self.loop.run_until(self.pool.no_children, limit):
            log.error("workers still alive %gs after stop: %s", limit, sorted(self.pool.by_pid))

    def _forward(
        self, channel: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[BaseException]:
        """The bus's forward hook: carry a publish on the master's bus to the workers."""
        if channel in LOCAL_CHANNELS or channel in POOL_CHANNELS or self.relay is None:
            return []
        try:
            template = protocol.PublishTemplate(
                channel, list(args), kwargs, self.settings.publish_timeout
            )
        except (TypeError, ProtocolError) as exc:
            return [TypeError(f"publish on {channel!r} cannot be forwarded to workers: {exc}")]
        reply = TreeReply(channel, None)
        gather = self._send(template, reply, self.settings.publish_timeout, self._log_failures)
        if self.loop.in_callback:
            return []
        self.loop.run_until(lambda: gather.done)
        return [exc for exc in reply.failures() if exc not in reply.master_errors]

    def _log_failures(self, reply: TreeReply) -> None:
        for exc in reply.failures():
            log.error("publish %r (seq %s): %s", reply.channel, reply.seq, exc)
        if not reply.ok:
            self.emit(
                "publish_failed",
                channel=reply.channel,
                seq=reply.seq,
                workers={
                    str(k): v.status.value
                    for k, v in reply.workers.items()
                    if v.status not in (WorkerStatus.OK, WorkerStatus.STARTING)
                },
            )

    # -- opening and closing ------------------------------------------------

    def open(self) -> None:
        """Take the runtime directory and bind the endpoints (once).

        A successor (`upgrade`) binds its workers' sockets at once, and the
        name's (control, events) only when the old master lets it take over.
        """
        if self._context is not None:
            return
        raise_fd_limit()
        self._inherited_fds = frozenset(_open_fds())
        self.monitor.watch(self.pid)
        if self._adoption is None:
            self.runtime.worker_tag = self.generation  # a new tree of workers
        if self.successor is not None and not self.successor.took_over:
            self.runtime.open(shared=self._shared())  # the lock is still the old master's
        else:
            self.runtime.acquire(shared=self._shared(), keep=self._inherited_files())
        try:
            self._check_workers_can_connect()
            self._bind()
        except BaseException:
            self.runtime.release()
            raise
        self._reserve_fds()
        self.bus.forward = self._forward
        self.loop.install_signals([signal.SIGCHLD], self._on_signal)
        self._runtime_timer = self.loop.call_every(RUNTIME_CHECK_INTERVAL, self._check_runtime)
        log.info("master %d (%s) listening in %s", self.pid, self.name, self.runtime.path)

    def inherit(self, found: Inherited, configured_workers: int) -> None:
        """Before `run`: take what a previous master handed over (see `handover`).

        A worker count set at runtime (``scale``) outlives the exec, unless
        the configuration's count changed meanwhile.
        """
        if found.generation is not None:
            self.generation = found.generation
        self.pool.generations = dict(found.worker_generations)
        if found.target is not None and found.target[1] == configured_workers:
            self.pool.view.target = found.target[0]
        if found.adoption is not None:
            self._adoption = found.adoption
            self.runtime.worker_tag = found.adoption.worker_tag
            log.info(
                "adopting %d live workers: %s",
                len(found.adoption.workers),
                [w.pid for w in found.adoption.workers],
            )
        if found.lock_fd is not None:
            try:
                self.runtime.adopt_lock(found.lock_fd)
            except OSError as exc:
                raise ConfigError(f"inherited lock fd {found.lock_fd}: {exc.strerror}") from None
        self._inherited_name_fds = dict(found.control_fds)
        if found.successor is not None:
            self.successor = Successor(*found.successor)

    def _inherited_files(self) -> frozenset[str]:
        """The socket files served by listening sockets inherited across exec."""
        return frozenset(
            self.runtime.filename(role)
            for role in ("control", "events")
            if role in self._inherited_name_fds
        )

    def _shared(self) -> bool:
        """Whether other uids must reach sockets in the runtime directory."""
        control = self.control_settings
        return bool(control.admin_uids or control.read_uids) or (
            self.credentials is not None and self.credentials.differs_from_current()
        )

    def _check_workers_can_connect(self) -> None:
        """Workers that switch user must be able to enter the runtime directory."""
        credentials = self.credentials
        if credentials is None or not credentials.differs_from_current():
            return
        uid = os.getuid() if credentials.uid is None else credentials.uid
        problem = traverse_problem(self.runtime.path, uid, credentials.groups())
        if problem is not None:
            raise StartupError(
                f"workers running as {credentials.describe()} cannot reach the runtime "
                f"directory: {problem}"
            )

    def _worker_uids(self) -> set[int]:
        uids = {os.getuid(), 0}
        if self.credentials is not None and self.credentials.uid is not None:
            uids.add(self.credentials.uid)
        return uids

    def _bind(self) -> None:
        context: zmq.Context[Any] = zmq.Context()
        self._context = context
        zap = ZapHandler(context)
        xpub, router, events, control = sockets = _master_sockets(context)
        try:
            zap.allow_uids(xpub, WORKERS_DOMAIN, self._worker_uids())
            zap.allow_uids(router, WORKERS_DOMAIN, self._worker_uids())
            zap.allow_uids(events, LOCAL_DOMAIN, self.control_settings.local_uids())
            self.control_settings.secure(control, zap)
            group, mode = self._worker_socket_mode()
            for zsock, role in ((xpub, "publish"), (router, "replies")):
                listeners.bind_fd(
                    zsock, self.runtime.listen(role, mode, group), self.runtime.endpoint(role)
                )
                self.endpoints[role] = self.runtime.endpoint(role)
            self._zap = zap
            self._xpub, self._router, self._events, self._control = sockets
            if self.successor is None or self.successor.took_over:
                self._bind_name()
            self.runtime.verify()
        except (zmq.ZMQError, StartupError, OSError) as exc:
            zap.close()
            for sock in sockets:
                sock.close(0)
            context.term()
            self._context = None
            self._zap = None
            self._xpub = self._router = self._events = self._control = None
            self._close_name_fds()
            if isinstance(exc, StartupError):
                raise
            raise StartupError(f"cannot bind the master's endpoints: {exc}") from None
        self.event_stream.attach(events)
        self.relay = Relay(xpub, self.loop)
        self.control = ControlServer(self, control, self.control_settings)
        zap.on_denied = self._auth_denied
        for source, callback in zap.readers():
            self.loop.add_reader(source, callback, priority=_AUTH_PRIORITY)
        self.loop.add_reader(xpub, self._on_xpub, priority=_WORKER_PRIORITY)
        self.loop.add_reader(router, self._on_router, priority=_WORKER_PRIORITY)
        self.loop.add_reader(control, self._on_control, priority=_CONTROL_PRIORITY)

    def _on_control(self) -> None:
        if self.control is not None:
            self.control.on_readable()

    def _bind_name(self) -> None:
        """Listen for control and events: on the sockets inherited (exec, upgrade), else new ones.

        The control socket is the configured endpoint (ipc:// in the runtime
        directory by default, or tcp:// with CURVE); the event stream is
        ipc:// in the runtime directory, and with a tcp:// control endpoint
        also tcp:// on the same host (any port, the same keys).
        """
        assert self._control is not None and self._events is not None
        inherited, self._inherited_name_fds = self._inherited_name_fds, {}
        control_endpoint = self.control_settings.endpoint or self.runtime.endpoint("control")
        wanted = {"control": control_endpoint, "events": self.runtime.endpoint("events")}
        if not control_endpoint.startswith("ipc://"):
            host = control_endpoint.removeprefix("tcp://").rpartition(":")[0]
            wanted["events_remote"] = f"tcp://{host}:0"
        for role, endpoint in wanted.items():
            fd = inherited.pop(role, None)
            sock = self._name_listener(role, endpoint, fd)
            if role == "events_remote":
                self._events_remote(listeners.endpoint_of(sock), sock)
                continue
            self._name_fds[role] = listeners.duplicate(sock)
            listeners.bind_fd(self._control if role == "control" else self._events, sock, endpoint)
            self.endpoints[role] = endpoint
        for fd in inherited.values():  # not wanted any more (the configuration changed)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _name_listener(self, role: str, endpoint: str, inherited: int | None) -> socket.socket:
        """The listening socket for one of the name's endpoints."""
        in_runtime = role != "events_remote" and endpoint == self.runtime.endpoint(role)
        if inherited is not None:
            if in_runtime:
                self.runtime.adopt_file(role)
            return listeners.adopt(inherited)
        settings = self.control_settings
        mode = 0o666 if (settings.admin_uids or settings.read_uids) else 0o600
        if in_runtime:
            return self.runtime.listen(role, mode)
        if endpoint.startswith("ipc://"):
            return listeners.unix_listener(endpoint.removeprefix("ipc://"), mode)
        return listeners.tcp_listener(endpoint)

    def _events_remote(self, endpoint: str, sock: socket.socket) -> None:
        assert self._context is not None and self._zap is not None
        self._name_fds["events_remote"] = listeners.duplicate(sock)
        zsock = self.event_stream.bind_remote(self._context, self._zap, self.control_settings)
        listeners.bind_fd(zsock, sock, endpoint)
        self.endpoints["events_remote"] = endpoint

    def _worker_socket_mode(self) -> tuple[int | None, int]:
        """(group, mode) of the workers' socket files: the owner's, and the workers'
        group's when they run as another user or group."""
        credentials = self.credentials
        if credentials is not None and credentials.differs_from_current():
            return credentials.gid, 0o660
        return None, 0o600

    def _close_name_fds(self) -> None:
        for fd in [*self._name_fds.values(), *self._inherited_name_fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._name_fds.clear()
        self._inherited_name_fds.clear()

    def _reserve_fds(self) -> None:
        while len(self._fd_reserve) < FD_RESERVE:
            try:
                self._fd_reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def _auth_denied(self, denial: Denial) -> None:
        self.emit("auth_denied", **denial.to_dict())

    def _check_runtime(self) -> None:
        """A tmp cleaner (or an operator) removed the runtime directory or a socket in it:
        make it again, with the same checks, and listen there again.

        The sockets keep listening where they were (connections made before
        go on); each gets one more listening socket at the new file.
        """
        if self._context is None or self.runtime.intact():
            return
        path = self.runtime.path
        log.error("runtime directory %s or a socket in it is gone: making it again", path)
        try:
            if self.runtime.dir is None or not self.runtime.dir.intact():
                holds_lock = self.runtime.lock_fd is not None
                self.runtime.release()
                if holds_lock:
                    self.runtime.acquire(shared=self._shared())
                else:
                    self.runtime.open(shared=self._shared())
            self._listen_again()
        except (StartupError, zmq.ZMQError, OSError) as exc:
            log.error("cannot make the runtime directory %s again: %s", path, exc)
            self.emit("runtime_lost", path=str(path), error=str(exc))
            return
        self.emit("runtime_restored", path=str(path))

    def _listen_again(self) -> None:
        """A new listening socket for every file of ours that is missing."""
        settings = self.control_settings
        local_mode = 0o666 if (settings.admin_uids or settings.read_uids) else 0o600
        group, worker_mode = self._worker_socket_mode()
        by_role = {
            "publish": (self._xpub, worker_mode, group),
            "replies": (self._router, worker_mode, group),
            "events": (self._events, local_mode, None),
            "control": (self._control, local_mode, None),
        }
        for role, (zsock, mode, role_group) in by_role.items():
            endpoint = self.runtime.endpoint(role)
            if zsock is None or self.endpoints.get(role) != endpoint or self.runtime.present(role):
                continue
            sock = self.runtime.listen(role, mode, role_group)
            if role in self._name_fds:
                with contextlib.suppress(OSError):
                    os.close(self._name_fds[role])
                self._name_fds[role] = listeners.duplicate(sock)
            listeners.bind_fd(zsock, sock, endpoint)
        self.runtime.verify()

    def close(self) -> None:
        """Close the sockets, free the runtime directory, restore signals.

        A closed master is finished: it also leaves the bus, so that a later
        master on the same bus (the process's `procbus.bus`) is not joined by
        this one's listeners.
        """
        self._unsubscribe_from_bus()
        if self._context is None:
            return
        self.bus.forward = None
        if self._runtime_timer is not None:
            self._runtime_timer.cancel()
            self._runtime_timer = None
        self.event_stream.close()
        self.loop.close()
        if self._zap is not None:
            self._zap.close()
            self._zap = None
        for sock in (self._xpub, self._router, self._control):
            if sock is not None:
                sock.close()
        self._context.term()
        self._context = None
        self._xpub = self._router = self._events = self._control = None
        self.relay = None
        self.control = None
        for fd in self._fd_reserve:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd_reserve.clear()
        if self.upgraded_to is not None:
            # The successor serves the name's socket files now: leave them.
            for role in ("control", "events"):
                self.runtime.disown(role)
        # A master about to re-execute keeps its lock and the name's sockets
        # across the exec, so that no other master can take the name and no
        # client is refused in between.
        keep = (
            frozenset(self.runtime.filename(r) for r in ("control", "events"))
            if self.exec_requested
            else frozenset()
        )
        self.runtime.release(keep_lock=self.exec_requested, keep=keep)
        if not self.exec_requested:
            self._close_name_fds()
        log.info("master %d closed", self.pid)

    # -- fork -----------------------------------------------------------------

    def _spawn(self, worker_id: int, generation: int) -> int:
        spec = WorkerSpec(
            worker_id=worker_id,
            generation=generation,
            master_pid=self.pid,
            app=self.app,
            publish_endpoint=self.endpoints["publish"],
            reply_endpoint=self.endpoints["replies"],
            heartbeat_interval=self.settings.heartbeat_interval,
            welcome_timeout=self.settings.supervision.boot_timeout,
            graceful_timeout=self.settings.supervision.graceful_timeout,
            sockets=self.sockets,
            close_fds=[*self._fd_reserve, *self._master_only_fds()],
            keep_fds=[s.fileno() for s in self.sockets],
            inherited_ok_fds=self._inherited_fds,
            app_settings=self.app_settings,
            credentials=self.credentials,
            runtime_dir=self.runtime.path,
            runtime_identity=self.runtime.identity,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            run_worker(spec)
        self.monitor.watch(pid)  # CPU percent is measured from the fork on (never raises)
        return pid

    def _master_only_fds(self) -> list[int]:
        fds = list(self.loop.signal_fds())
        if self.runtime.lock_fd is not None:
            fds.append(self.runtime.lock_fd)
        return fds

    # -- messages ---------------------------------------------------------------

    def _on_xpub(self) -> None:
        assert self._xpub is not None
        for _ in range(_BATCH):
            try:
                frame = self._xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if frame[:1] == b"\x01":
                self.pool.subscribed(frame[1:])

    def _on_router(self) -> None:
        assert self._router is not None
        for _ in range(_BATCH):
            try:
                frames = self._router.recv_multipart(_NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._drop(frames[0] if frames else b"", f"{len(frames)} frames (expected 2)")
                continue
            identity, frame = frames
            try:
                message = protocol.decode(
                    frame, expect=_WORKER_MESSAGES, limits=protocol.WORKER_LIMITS
                )
            except ProtocolError as exc:
                self._drop(identity, str(exc))
                continue
            self._dispatch(identity, message)

    def _drop(self, identity: bytes, reason: str) -> None:
        self.dropped_messages += 1
        self._drop_log.warn("dropped a message from %r: %s", identity[:64], reason)

    def _dispatch(self, identity: bytes, message: protocol.Message) -> None:
        if message.type is MsgType.HELLO:
            worker = self.pool.by_pid.get(message["pid"])
            expected = f"w.{worker.id}.{worker.generation}.".encode() if worker else None
            if (
                worker is None
                or worker.id != message["worker"]
                or worker.generation != message["generation"]
                or identity != expected
                or message["topic"] != expected
            ):
                self._drop(identity, f"hello from an unknown worker (pid {message['pid']})")
                return
            self.pool.hello(worker)
            return
        found = self.pool.by_topic.get(identity)
        if found is None or not found.hello:
            self._drop(identity, f"{message.type.name} from a worker that did not say hello")
            return
        if message.type is MsgType.HEARTBEAT:
            self.pool.heartbeat(found, message["counters"])
        elif message.type is MsgType.STATE:
            self.pool.worker_state(found, message["state"], message.get("error"))
        elif message.type is MsgType.REPLY:
            found.last_heartbeat = self.loop.clock()
            assert self.relay is not None
            self.relay.on_reply(found, message)

    def _welcome(self, worker: WorkerProc) -> None:
        assert self._router is not None and self.relay is not None
        frame = protocol.encode(MsgType.WELCOME, {"next_seq": self.relay.next_seq})
        self._router.send_multipart([f"w.{worker.id}.{worker.generation}.".encode(), frame])

    def _drain(self, worker: WorkerProc) -> None:
        if self.relay is not None:
            self.relay.send_drain(worker.topic)

    def _worker_gone(self, worker: WorkerProc) -> None:
        self.monitor.forget(worker.pid)
        if self.relay is not None:
            self.relay.on_worker_gone(worker)

    def emit(self, event: str, **data: Any) -> None:
        """Put an event on the event stream (and the debug log)."""
        log.debug("event %s %s", event, data)
        for observer in self.observers:
            try:
                observer(event, data)
            except Exception:
                log.exception("observer %r failed on event %s", observer, event)
        self.event_stream.emit(event, data)

    # -- signals ----------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self.pool.reap()
            return
        name = signal.Signals(signum).name
        command = SIGNAL_COMMANDS.get(signum, "quit" if signum == signal.SIGQUIT else None)
        log.info("master %d: %s -> %s", self.pid, name, command)
        self.emit("signal", signal=name, command=command)
        try:
            if command == "exit":
                self.request_exit()
            elif command == "quit":
                self.request_exit(fast=True)
            elif command == "incr":
                self.scale_job(self.pool.target + 1)
            elif command == "decr":
                self.scale_job(max(0, self.pool.target - 1))
            elif command == "graceful":
                self.publish_async("graceful", on_done=self._log_failures)
            elif command == "reload":
                self.reload()
            elif command == "upgrade":
                self.upgrade()
        except CommandError as exc:
            log.error("%s: %s", name, exc)

    # -- public API ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._context is not None

    def start(self, timeout: float | None = None) -> bool:
        """Start the bus (bind, fork the workers); wait until they all run.

        Returns whether every worker runs within `timeout` (None: the boot
        timeout). With ``timeout=0`` it does not wait.
        """
        self.open()
        self.bus.start()
        if timeout == 0:
            return self.pool.all_running()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Pump the loop until every worker runs (or flaps); True if all run."""
        limit = self.settings.supervision.boot_timeout if timeout is None else timeout
        self.loop.run_until(self.pool.settled, limit)
        return self.pool.all_running()

    def publish(
        self, channel: str, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> TreeReply:
        """Publish on the whole tree and return every process's answer.

        The master's listeners run first (wspbus rules; their failures are in
        ``reply.master_errors``), then the message goes out once to every
        subscribed worker and their replies are gathered until all answered
        or `timeout` passed. ``start``, ``stop`` and ``exit`` drive the bus and
        the pool; ``log`` and ``main`` stay on the master. Raises ``TypeError``
        before anything runs if an argument cannot be sent.
        """
        gather_done: list[TreeReply] = []
        self.publish_async(channel, args, kwargs, timeout=timeout, on_done=gather_done.append)
        self.loop.run_until(lambda: bool(gather_done))
        return gather_done[0]

    def publish_async(
        self,
        channel: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[TreeReply], None] | None = None,
    ) -> None:
        """Start a tree publish; `on_done(reply)` is called from the loop when complete."""
        args = list(args)
        kwargs = dict(kwargs or {})
        if channel in POOL_CHANNELS or channel in LOCAL_CHANNELS:
            reply = self._publish_on_master(channel, args, kwargs)
            if on_done is not None:
                on_done(reply)
            return
        timeout = self.settings.publish_timeout if timeout is None else timeout
        template = protocol.PublishTemplate(channel, args, kwargs, timeout)
        reply = TreeReply(channel, None)
        for outcome in self.bus.run_listeners(channel, *args, **kwargs):
            reply.master.append(outcome.result)
            if outcome.error is not None:
                reply.master_errors.append(outcome.error)
        self._send(template, reply, timeout, on_done)

    def _publish_on_master(
        self, channel: str, args: list[Any], kwargs: dict[str, Any]
    ) -> TreeReply:
        reply = TreeReply(channel, None)
        if channel == "start":
            self.bus.start()
        elif channel == "stop":
            self.bus.stop()
        elif channel == "exit":
            self.request_exit()
        else:
            for outcome in self.bus.run_listeners(channel, *args, **kwargs):
                reply.master.append(outcome.result)
                if outcome.error is not None:
                    reply.master_errors.append(outcome.error)
        return reply

    def _send(
        self,
        template: protocol.PublishTemplate,
        reply: TreeReply,
        timeout: float,
        on_done: Callable[[TreeReply], None] | None,
    ) -> Any:
        if self.relay is None:
            raise RuntimeError("the master is not started")
        targets, starting = self.pool.publish_targets()
        for worker in starting:
            reply.workers[worker.id] = WorkerResult(
                worker.id, worker.pid, worker.generation, WorkerStatus.STARTING
            )
        return self.relay.send(template, targets, timeout, reply, on_done)

    def apply_settings(self, settings: TreeSettings) -> None:
        """New settings for a running tree (a reload re-read the config).

        Deadlines and limits apply at once, the stats interval when sampling
        next starts, heartbeats to the workers forked from now on. The worker
        count is left to the caller (`scale`): a count set at runtime outlives
        a reload.
        """
        self.settings = settings
        self.pool.policy = settings.supervision
        self.event_stream.interval = settings.stats_interval

    def scale(self, workers: int) -> None:
        """Run `workers` workers: fork the missing ones, drain the extra ones."""
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise ValueError(f"worker count must be an integer >= 0, got {workers!r}")
        log.info("scaling from %d to %d workers", self.pool.target, workers)
        self.emit("scale", before=self.pool.target, after=workers)
        self.pool.scale(workers)

    def incr(self, count: int = 1) -> None:
        self.scale(self.pool.target + count)

    def decr(self, count: int = 1) -> None:
        self.scale(max(0, self.pool.target - count))

    def kill_worker(self, worker_id: int, signum: int = signal.SIGTERM) -> WorkerProc:
        """Send `signum` to the current worker `worker_id`; it will be replaced."""
        slot = self.pool.slot(worker_id)
        if slot is None or slot.current is None or worker_id > self.pool.target:
            raise LookupError(f"no worker {worker_id}")
        worker = slot.current
        self.pool.signal(worker, signum)
        return worker

    @property
    def exiting(self) -> bool:
        return self._exit_requested or self.bus.state is states.EXITING

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """For jobs: pump the loop until `predicate()` or `timeout`; abort on exit."""
        self.loop.run_until(lambda: predicate() or self._exit_requested, timeout)
        if self._exit_requested:
            raise JobAborted
        return predicate()

    def _job(self, kind: str, body: JobBody, args: dict[str, Any], coalesce: bool = False) -> Job:
        """Queue a long command, or run it now when called from top-level code."""
        if self.loop.in_callback or self._running:
            return self.jobs.start(kind, body, args, coalesce=coalesce)
        job = Job(f"{kind}-now", kind, args, emit=self.emit)
        self.jobs.run(job, body)
        return job

    def reload(self, batch: int = 1) -> Job:
        """Rolling replacement of every worker, `batch` at a time (never below N)."""
        return self._job(
            "reload",
            lambda job: reload_jobs.reload_tree(self, job, batch),
            {"batch": batch},
            coalesce=True,
        )

    def restart(self, adopt: bool = False) -> Job:
        """Drain every worker, then have `run`'s caller re-execute the master.

        The job ends before the exec (its answer reaches the caller); the
        process then comes back with the same pid, argv and listening sockets
        (see ``procbus run``). Only a master driven by `run` can do this.
        """
        if not self._running:
            raise CommandError(
                ErrorCode.UNAVAILABLE, "restart needs a master driven by run() (procbus run)"
            )

        def body(job: Job) -> dict[str, Any]:
            executable, argv = self.bus.exec_args()
            problem = exec_problem(executable, argv, STARTUP_CWD)
            if problem is not None:
                raise JobFailed(f"cannot re-execute: {problem}; nothing was stopped")
            if adopt:
                # The state itself is taken just before the exec (`run`): a worker
                # that dies in between must not be adopted.
                self._adopt_on_exec = True
                result: dict[str, Any] = {"adopted": len(self._adoption_state().workers)}
            else:
                result = reload_jobs.stop_tree(self, job)
            self.exec_requested = True
            self.request_exit()
            return {**result, "generation": self.generation + 1}

        return self._job("restart", body, {"adopt": adopt}, coalesce=True)

    def upgrade(self) -> Job:
        """Start a new master beside this one; once it is ready, drain and exit."""
        if not self._running:
            raise CommandError(
                ErrorCode.UNAVAILABLE, "upgrade needs a master driven by run() (procbus run)"
            )
        if self.successor is not None and not self.successor.took_over:
            raise CommandError(
                ErrorCode.UNAVAILABLE, "this master is still taking over from the previous one"
            )
        return self._job(
            "upgrade", lambda job: upgrade_jobs.upgrade_tree(self, job), {}, coalesce=True
        )

    def slot_generations(self) -> dict[int, int]:
        """Worker id -> its latest generation, for the next master."""
        return {slot.id: slot.generation for slot in self.pool.view.slots.values()}

    def _adoption_state(self) -> Adoption:
        """What the re-executed master needs to adopt the live workers."""
        assert self.relay is not None
        workers = tuple(
            AdoptedWorker(w.id, w.generation, w.pid)
            for slot in self.pool.slots()
            if (w := slot.current) is not None and w.alive
        )
        return Adoption(workers, self.relay.next_seq, self.runtime.worker_tag)

    def name_fds(self) -> dict[str, int]:
        """The name's listening sockets, to hand on (`handover`)."""
        return dict(self._name_fds)

    def take_over_name(self) -> None:
        """A successor (`upgrade`) whose predecessor let go: listen for control and
        events on the name's sockets, handed over by the old master."""
        if self._context is None or self.successor is None or self.successor.took_over:
            return
        try:
            self._bind_name()
        except (zmq.ZMQError, StartupError, OSError) as exc:
            log.error("cannot listen for control and events after the upgrade: %s", exc)
        log.info("master %d serves %s now", self.pid, self.runtime.path)

    def take_name_lock(self) -> None:
        """The old master exited: take the name's lock; `StartupError` while it is held."""
        self.runtime.lock()
        self.runtime.remove_stale()
        self.emit("takeover", pid=self.pid, generation=self.generation)

    def stop_job(self) -> Job:
        return self._job("stop", lambda job: reload_jobs.stop_tree(self, job), {})

    def start_job(self) -> Job:
        return self._job("start", lambda job: reload_jobs.start_tree(self, job), {})

    def scale_job(self, workers: int) -> Job:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS, f"worker count must be an integer >= 0, got {workers!r}"
            )
        return self._job(
            "scale", lambda job: reload_jobs.scale_tree(self, job, workers), {"workers": workers}
        )

    def stop(self) -> None:
        """Drain and stop every worker; the master stays up (bus STOPPED)."""
        self.bus.stop()

    def exit(self) -> None:
        """Stop the workers and close the master (bus EXITING)."""
        if self.bus.state is not states.EXITING:
            self.bus.exit()

    def request_exit(self, fast: bool = False) -> None:
        """From inside the loop: make `run` stop the tree and return."""
        self._exit_requested = True
        self._fast_exit = self._fast_exit or fast
        self.loop.stop()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` at the top of the loop, where it may wait (long commands)."""
        self._jobs.append(job)
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
                while self._jobs and not self._exit_requested:
                    self._jobs.popleft()()
            self.jobs.abort_queued()
            if self.exec_requested or self.upgraded_to is not None:
                self._finish_publishes()
            if self.control is not None:
                self.control.drain()
            if self._adopt_on_exec:
                self.pool.reap()
                self.handover = self._adoption_state()
            if self.handover is None:
                self.exit()
            # else: restart --adopt; the workers live on for the next master
        finally:
            self._running = False
            self.close()
            self.loop.restore_signals()
        return self.exit_code

    def _finish_publishes(self) -> None:
        """Before the process goes (exec, hand-over): let publishes in flight get
        their answers (bounded by their deadlines), so that no caller is left
        waiting for a master that is gone."""
        relay = self.relay
        if relay is None or not relay.pending:
            return
        limit = min(self.settings.publish_timeout, self.settings.supervision.graceful_timeout)
        self.loop.run_until(lambda: not relay.pending, limit)

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


def _master_sockets(
    context: zmq.Context[Any],
) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]:
    """The XPUB and ROUTER the workers connect to, the event XPUB and the control ROUTER."""
    xpub = context.socket(zmq.XPUB)
    router = context.socket(zmq.ROUTER)
    events = event_socket(context)
    control = context.socket(zmq.ROUTER)
    for sock in (xpub, router, control):
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_SIZE)
    xpub.sndhwm = 0
    # Every subscription is passed on, repeats too: a worker that connects
    # again (adopted, moved) proves its subscription again.
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    router.rcvhwm = WORKER_RCVHWM
    # A reply sent just before the master exits must still leave.
    control.linger = 500
    control.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_MESSAGE)
    return xpub, router, events, control


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard limit (as servers do).

    The master holds a descriptor per connection, and a flood of half-open
    TCP connections to a remote control endpoint should run into the hard
    limit, not into a low soft default.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.debug("open files limit left as it is: %s", exc)


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


__all__ = ["Master", "TreeReply", "TreeSettings", "WorkerState", "WorkerStatus"]
