"""The master's ZeroMQ endpoints: its runtime directory, its sockets, who may connect.

`Endpoints` makes the ZeroMQ context and the ZAP handler (`procbus.master.auth`),
takes the runtime directory with its checks (`procbus.master.runtime`), binds
the workers' sockets (XPUB, ROUTER) and the name's (control, events), on
listening sockets procbus made itself (`procbus.master.listeners`): new ones,
or those inherited across an exec or from an old master. It keeps a
descriptor of each of the name's listening sockets to hand on, notices a
runtime directory (or a socket file) removed under it and listens there
again, and closes it all. It reads no message: the hub and the control
server do.

A successor (``upgrade``) binds its workers' sockets at once and the name's
only when the old master lets it take over (`bind_name`); the lock comes last
(`take_lock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
from collections.abc import Callable
from typing import Any, Final

import zmq

from procbus import protocol
from procbus.errors import StartupError
from procbus.master import listeners
from procbus.master.auth import LOCAL_DOMAIN, WORKERS_DOMAIN, Denial, ZapHandler
from procbus.master.control import Commands
from procbus.master.control_server import CONTROL_MAX_MESSAGE, ControlServer, ControlSettings
from procbus.master.events import EventStream, event_socket
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.metrics_http import MetricsHTTP, metrics_listener, metrics_url
from procbus.master.pool import Pool
from procbus.master.runtime import RuntimeDir
from procbus.privatedir import traverse_problem
from procbus.worker.credentials import Credentials

log = logging.getLogger("procbus.master")

FD_RESERVE: Final = 8
"""Descriptors the master keeps open for its workers: a worker closes them
first thing after fork, so that it can start even when a flood of
connections used up every descriptor the master may have."""
WORKER_RCVHWM: Final = 10_000
"""Messages queued from one worker before ZeroMQ stops reading its pipe (the
worker then holds the rest): a runaway worker cannot fill the master's memory."""
RUNTIME_CHECK_INTERVAL: Final = 2.0
"""Seconds between checks that the runtime directory and its sockets are still there."""
NAME_ROLES: Final = ("control", "events")
"""The name's sockets that have a file in the runtime directory."""


class Endpoints:
    """The context, the sockets, and the directory they live in (see the module docstring)."""

    def __init__(
        self,
        runtime: RuntimeDir,
        settings: ControlSettings,
        credentials: Credentials | None,
        event_stream: EventStream,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.credentials = credentials
        self.event_stream = event_stream
        self.addresses: dict[str, str] = {}
        """Role (publish, replies, control, events, events_remote) -> endpoint."""
        self.inherited_fds: dict[str, int] = {}
        """The name's listening sockets a previous master handed over (role -> fd)."""
        self.name_fds: dict[str, int] = {}
        """Role -> a descriptor of the name's listening socket, to hand on."""
        self.context: zmq.Context[Any] | None = None
        self.zap: ZapHandler | None = None
        self.xpub: zmq.Socket[bytes] | None = None
        self.router: zmq.Socket[bytes] | None = None
        self.events: zmq.Socket[bytes] | None = None
        self.control: zmq.Socket[bytes] | None = None
        self.fd_reserve: list[int] = []
        self.metrics: MetricsHTTP | None = None
        """The ``/metrics`` endpoint, once served (it listens once the name is bound)."""
        self._metrics_socket: socket.socket | None = None
        self.on_denied: Callable[[Denial], None] = lambda denial: None
        """A connection was refused (for the event stream)."""

    # -- opening ------------------------------------------------------------

    def open(self, *, with_lock: bool) -> None:
        """Take the runtime directory (with its lock unless `with_lock` is False: a
        successor before it took over) and bind the workers' sockets, and the name's
        when `with_lock`."""
        raise_fd_limit()
        if with_lock:
            self.runtime.acquire(shared=self.shared(), keep=self._inherited_files())
        else:
            self.runtime.open(shared=self.shared())
        try:
            self._check_workers_can_connect()
            self._bind(bind_name=with_lock)
        except BaseException:
            self.runtime.release()
            raise
        self._reserve_fds()

    def shared(self) -> bool:
        """Whether other uids must reach sockets in the runtime directory."""
        control = self.settings
        return bool(control.admin_uids or control.read_uids) or (
            self.credentials is not None and self.credentials.differs_from_current()
        )

    def _inherited_files(self) -> frozenset[str]:
        """The socket files served by listening sockets inherited across exec."""
        return frozenset(
            self.runtime.filename(role) for role in NAME_ROLES if role in self.inherited_fds
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

    def _bind(self, *, bind_name: bool) -> None:
        context: zmq.Context[Any] = zmq.Context()
        zap = ZapHandler(context)
        xpub, router, events, control = sockets = _master_sockets(context)
        try:
            zap.allow_uids(xpub, WORKERS_DOMAIN, self._worker_uids())
            zap.allow_uids(router, WORKERS_DOMAIN, self._worker_uids())
            zap.allow_uids(events, LOCAL_DOMAIN, self.settings.local_uids())
            self.settings.secure(control, zap)
            group, mode = self.worker_socket_mode()
            for zsock, role in ((xpub, "publish"), (router, "replies")):
                endpoint = self.runtime.endpoint(role)
                listeners.bind_fd(zsock, self.runtime.listen(role, mode, group), endpoint)
                self.addresses[role] = endpoint
            self.context, self.zap = context, zap
            self.xpub, self.router, self.events, self.control = sockets
            if bind_name:
                self.bind_name()
            self.runtime.verify()
        except (zmq.ZMQError, StartupError, OSError) as exc:
            zap.close()
            for sock in sockets:
                sock.close(0)
            context.term()
            self.context = self.zap = None
            self.xpub = self.router = self.events = self.control = None
            self._close_name_fds()
            self._close_metrics()
            if isinstance(exc, StartupError):
                raise
            raise StartupError(f"cannot bind the master's endpoints: {exc}") from None
        self.event_stream.attach(events)
        zap.on_denied = self._denied

    def serve(self, loop: EventLoop, pool: Pool, commands: Commands) -> tuple[Hub, ControlServer]:
        """After `open`: the hub and the control server on these sockets, read by `loop`.

        The loop serves ready sockets in this order: the workers' replies and
        heartbeats first, so that no flood of control requests (or of refused
        handshakes) makes a healthy worker look silent.
        """
        assert self.xpub is not None and self.router is not None
        assert self.control is not None and self.zap is not None
        hub = Hub(self.xpub, self.router, loop, pool)
        control = ControlServer(commands, self.control, self.settings)
        loop.add_reader(self.xpub, hub.on_xpub, priority=0)
        loop.add_reader(self.router, hub.on_router, priority=0)
        for source, callback in self.zap.readers():
            loop.add_reader(source, callback, priority=1)
        loop.add_reader(self.control, control.on_readable, priority=2)
        loop.call_every(RUNTIME_CHECK_INTERVAL, self._check_runtime)  # until loop.close()
        self.metrics = MetricsHTTP(loop, commands)
        if self._metrics_socket is not None:
            self.metrics.listen(self._metrics_socket)
        return hub, control

    def _check_runtime(self) -> None:
        restored = self.check_runtime()
        if restored is not None:
            event = "runtime_restored" if restored else "runtime_lost"
            self.event_stream.emit(event, path=str(self.runtime.path))

    def _denied(self, denial: Denial) -> None:
        self.on_denied(denial)

    def bind_name(self) -> None:
        """Listen for control and events: on the sockets inherited (exec, upgrade), else new ones.

        The control socket is the configured endpoint (ipc:// in the runtime
        directory by default, or tcp:// with CURVE); the event stream is
        ipc:// in the runtime directory, and with a tcp:// control endpoint
        also tcp:// on the same host (any port, the same keys).
        """
        assert self.control is not None and self.events is not None
        inherited, self.inherited_fds = self.inherited_fds, {}
        control_endpoint = self.settings.endpoint or self.runtime.endpoint("control")
        wanted = {"control": control_endpoint, "events": self.runtime.endpoint("events")}
        if not control_endpoint.startswith("ipc://"):
            host = control_endpoint.removeprefix("tcp://").rpartition(":")[0]
            wanted["events_remote"] = f"tcp://{host}:0"
        for role, endpoint in wanted.items():
            sock = self._name_listener(role, endpoint, inherited.pop(role, None))
            if role == "events_remote":
                self._events_remote(listeners.endpoint_of(sock), sock)
                continue
            self.name_fds[role] = listeners.duplicate(sock)
            listeners.bind_fd(self.control if role == "control" else self.events, sock, endpoint)
            self.addresses[role] = endpoint
        if self.settings.metrics is not None:
            self._bind_metrics(self.settings.metrics, inherited.pop("metrics", None))
        for fd in inherited.values():  # not wanted any more (the configuration changed)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _bind_metrics(self, address: str, inherited: int | None) -> None:
        """The ``/metrics`` endpoint's listening socket: one of the name's, handed on."""
        sock = metrics_listener(address, inherited)
        self._metrics_socket = sock
        self.name_fds["metrics"] = listeners.duplicate(sock)
        self.addresses["metrics"] = metrics_url(sock)
        log.info("metrics on %s", self.addresses["metrics"])
        if self.metrics is not None:
            self.metrics.listen(sock)

    def _close_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.close()  # and its listening socket
        elif self._metrics_socket is not None:
            self._metrics_socket.close()
        self.metrics = self._metrics_socket = None
        self.addresses.pop("metrics", None)

    def _local_mode(self) -> int:
        """The control and event sockets' mode: anyone's when uids are listed (the ZAP
        handler then admits only those), else the owner's."""
        return 0o666 if (self.settings.admin_uids or self.settings.read_uids) else 0o600

    def _name_listener(self, role: str, endpoint: str, inherited: int | None) -> socket.socket:
        """The listening socket for one of the name's endpoints."""
        in_runtime = role != "events_remote" and endpoint == self.runtime.endpoint(role)
        if inherited is not None:
            if in_runtime:
                self.runtime.adopt_file(role)
            return listeners.adopt(inherited)
        if in_runtime:
            return self.runtime.listen(role, self._local_mode())
        if endpoint.startswith("ipc://"):
            return listeners.unix_listener(endpoint.removeprefix("ipc://"), self._local_mode())
        return listeners.tcp_listener(endpoint)

    def _events_remote(self, endpoint: str, sock: socket.socket) -> None:
        assert self.context is not None and self.zap is not None
        self.name_fds["events_remote"] = listeners.duplicate(sock)
        zsock = self.event_stream.bind_remote(self.context, self.zap, self.settings)
        listeners.bind_fd(zsock, sock, endpoint)
        self.addresses["events_remote"] = endpoint

    def worker_socket_mode(self) -> tuple[int | None, int]:
        """(group, mode) of the workers' socket files: the owner's, and the workers'
        group's when they run as another user or group."""
        credentials = self.credentials
        if credentials is not None and credentials.differs_from_current():
            return credentials.gid, 0o660
        return None, 0o600

    def _reserve_fds(self) -> None:
        while len(self.fd_reserve) < FD_RESERVE:
            try:
                self.fd_reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def take_lock(self) -> None:
        """A successor whose old master exited: the name's lock; `StartupError` while held."""
        self.runtime.lock()
        self.runtime.remove_stale()

    # -- a runtime directory removed under the master ----------------------------

    def check_runtime(self) -> bool | None:
        """Make the runtime directory (or a socket in it) again if it is gone.

        The sockets keep listening where they were (connections made before
        go on); each gets one more listening socket at the new file. Returns
        None when nothing was missing, True when it was made again, False
        when that failed (logged).
        """
        if self.context is None or self.runtime.intact():
            return None
        path = self.runtime.path
        log.error("runtime directory %s or a socket in it is gone: making it again", path)
        try:
            if self.runtime.dir is None or not self.runtime.dir.intact():
                holds_lock = self.runtime.lock_fd is not None
                self.runtime.release()
                if holds_lock:
                    self.runtime.acquire(shared=self.shared())
                else:
                    self.runtime.open(shared=self.shared())
            self._listen_again()
        except (StartupError, zmq.ZMQError, OSError) as exc:
            log.error("cannot make the runtime directory %s again: %s", path, exc)
            return False
        return True

    def _listen_again(self) -> None:
        """A new listening socket for every file of ours that is missing."""
        group, worker_mode = self.worker_socket_mode()
        by_role = {
            "publish": (self.xpub, worker_mode, group),
            "replies": (self.router, worker_mode, group),
            "events": (self.events, self._local_mode(), None),
            "control": (self.control, self._local_mode(), None),
        }
        for role, (zsock, mode, role_group) in by_role.items():
            endpoint = self.runtime.endpoint(role)
            if zsock is None or self.addresses.get(role) != endpoint or self.runtime.present(role):
                continue
            sock = self.runtime.listen(role, mode, role_group)
            if role in self.name_fds:
                with contextlib.suppress(OSError):
                    os.close(self.name_fds[role])
                self.name_fds[role] = listeners.duplicate(sock)
            listeners.bind_fd(zsock, sock, endpoint)
        self.runtime.verify()

    # -- closing ----------------------------------------------------------------------

    def close(self, *, exec_next: bool, handed_over: bool) -> None:
        """Close the sockets and free the runtime directory.

        `exec_next`: the process re-executes; it keeps the lock and the
        name's listening sockets (their files too) across the exec, so that no
        other master can take the name and no client is refused in between.
        `handed_over`: a successor serves the name's files now: they stay.
        """
        if self.zap is not None:
            self.zap.close()
            self.zap = None
        self._close_metrics()
        for sock in (self.xpub, self.router, self.control):
            if sock is not None:
                sock.close()
        if self.context is not None:
            self.context.term()
            self.context = None
        self.xpub = self.router = self.events = self.control = None
        for fd in self.fd_reserve:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fd_reserve.clear()
        if handed_over:
            for role in NAME_ROLES:
                self.runtime.disown(role)
        keep = (
            frozenset(self.runtime.filename(role) for role in NAME_ROLES)
            if exec_next
            else frozenset()
        )
        self.runtime.release(keep_lock=exec_next, keep=keep)
        if not exec_next:
            self._close_name_fds()

    def _close_name_fds(self) -> None:
        for fd in [*self.name_fds.values(), *self.inherited_fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.name_fds.clear()
        self.inherited_fds.clear()


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
