"""Forking a worker: what it is given (`WorkerSpec`), and the fork itself.

The master forks from its loop (the pool's spawn function): the child runs
`procbus.worker.worker.run_worker` and never returns here. Everything the
child needs is decided before the fork, in the parent, where a mistake is
still the master's to report.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from procbus.master.endpoints import Endpoints
from procbus.master.loop import EventLoop
from procbus.master.runtime import RuntimeDir
from procbus.master.settings import TreeSettings
from procbus.master.stats import ProcessMonitor
from procbus.worker.apps import WorkerApp
from procbus.worker.credentials import Credentials
from procbus.worker.worker import ExitCode, WorkerSpec, run_worker

FORK_BLOCKED: Final = frozenset(
    {
        signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
        signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
    }
)  # fmt: skip
"""The signals the master handles (and a new worker handles its own way)."""


class Forker:
    """Forks workers for the pool (`__call__` is its spawn function)."""

    boot_failed_status: Final = int(ExitCode.BOOT_FAILED)
    """How a worker it forked exits when its app cannot boot (the worker's contract)."""

    def __init__(
        self,
        *,
        endpoints: Endpoints,
        runtime: RuntimeDir,
        loop: EventLoop,
        monitor: ProcessMonitor,
        settings: Callable[[], TreeSettings],
        app: Callable[[], str | WorkerApp],
        sockets: Sequence[Any],
        app_settings: dict[str, Any],
        credentials: Credentials | None,
    ) -> None:
        self.endpoints, self.runtime, self.loop, self.monitor = endpoints, runtime, loop, monitor
        self.settings, self.app = settings, app
        self.sockets, self.app_settings, self.credentials = sockets, app_settings, credentials
        self.inherited_fds: frozenset[int] = frozenset()
        """Descriptors open before the master started (the application's): left open."""

    def __call__(self, worker_id: int, generation: int) -> int:
        """Fork worker `worker_id` of `generation`; return its pid."""
        settings, runtime = self.settings(), self.runtime
        master_only = [*self.endpoints.fd_reserve, *self.loop.signal_fds()]
        if runtime.lock_fd is not None:
            master_only.append(runtime.lock_fd)
        spec = WorkerSpec(
            worker_id=worker_id,
            generation=generation,
            master_pid=os.getpid(),
            app=self.app(),
            publish_endpoint=self.endpoints.addresses["publish"],
            reply_endpoint=self.endpoints.addresses["replies"],
            heartbeat_interval=settings.heartbeat_interval,
            welcome_timeout=settings.supervision.boot_timeout,
            graceful_timeout=settings.supervision.graceful_timeout,
            publish_timeout=settings.publish_timeout,
            sockets=self.sockets,
            close_fds=master_only,
            keep_fds=[s.fileno() for s in self.sockets],
            inherited_ok_fds=self.inherited_fds,
            app_settings=self.app_settings,
            credentials=self.credentials,
            runtime_dir=runtime.path,
            runtime_identity=runtime.identity,
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # A signal sent to the new worker before it has its own handlers would
        # reach the master's (a no-op that writes to the master's wake-up fd):
        # lost. Blocked across the fork, it waits for the worker's handlers.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        pid = -1
        try:
            pid = os.fork()
            if pid == 0:  # the worker: unblocks them once its handlers are in place
                run_worker(dataclasses.replace(spec, unblock_signals=FORK_BLOCKED))
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self.monitor.watch(pid)  # CPU percent is measured from the fork on (never raises)
        return pid


def open_fds() -> frozenset[int]:
    """The descriptors open in this process now."""
    try:
        return frozenset(int(name) for name in os.listdir("/proc/self/fd"))
    except OSError:
        return frozenset()
