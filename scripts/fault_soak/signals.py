"""The soak's signals to workers: SIGKILL, and SIGSTOP held for a while then SIGCONT.

Each signal goes through a pidfd opened on a process of the tree's session
(`Tree.open_pidfd`), so a pid reused by someone else is never signalled. The
stop keeper is a thread of its own, so that a worker is continued on time
even while the schedule is busy with a flood: it waits on the pidfds of the
stopped workers, which also tells it, to the millisecond, when one of them
dies (the master killed it for silence, or at the end of a drain). It keeps
watching a worker for `STOP_DEATH_GRACE` after its SIGCONT: an abort the
master sent while it was stopped is delivered then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass

from fault_soak.journal import STOP_DEATH_GRACE, Journal, Stop
from fault_soak.tree import Tree, wait_readable

IDLE_WAIT = 0.5
"""Longest sleep of the keeper with nothing due (a wake-up pipe cuts it short)."""


def kill_worker(tree: Tree, journal: Journal, pid: int) -> bool:
    """SIGKILL `pid` (a process of the tree) and record it; False if it was gone."""
    fd = tree.open_pidfd(pid)
    if fd is None:
        return False
    try:
        at = time.monotonic()
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    journal.kill(pid, at)
    return True


@dataclass
class _Held:
    record: Stop
    pidfd: int
    resume_at: float
    watch_until: float | None = None
    """Set at SIGCONT: how long deaths still count as caused by the stop."""


class StopKeeper:
    """Holds the workers the soak stopped: SIGCONT when due; records their deaths."""

    def __init__(self, tree: Tree, journal: Journal) -> None:
        self.tree = tree
        self.journal = journal
        self._held: list[_Held] = []
        self._lock = threading.Lock()
        self._closing = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="stop-keeper", daemon=True)
        self._thread.start()

    def hold(self, pid: int, seconds: float) -> bool:
        """SIGSTOP `pid` now and SIGCONT it `seconds` later; False if it was gone."""
        fd = self.tree.open_pidfd(pid)
        if fd is None:
            return False
        at = time.monotonic()
        try:
            signal.pidfd_send_signal(fd, signal.SIGSTOP)
        except ProcessLookupError:
            os.close(fd)
            return False
        record = self.journal.stop(pid, at)
        with self._lock:
            self._held.append(_Held(record, fd, at + seconds))
        self._wake()
        return True

    def stopped(self) -> int:
        """How many workers are stopped now."""
        with self._lock:
            return sum(1 for held in self._held if held.watch_until is None)

    def release_all(self) -> None:
        """SIGCONT every stopped worker now (the soak is ending)."""
        now = time.monotonic()
        with self._lock:
            for held in self._held:
                held.resume_at = min(held.resume_at, now)
        self._wake()

    def close(self, timeout: float = 5.0) -> None:
        """Continue every stopped worker, stop watching, end the thread."""
        self.release_all()
        self._closing = True
        self._wake()
        self._thread.join(timeout)
        with self._lock:
            for held in self._held:  # the thread did not end in time: continue them here
                if held.watch_until is None:
                    with contextlib.suppress(ProcessLookupError):
                        signal.pidfd_send_signal(held.pidfd, signal.SIGCONT)
                os.close(held.pidfd)
            self._held.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closing and all(h.watch_until is not None for h in self._held):
                    # Continued: stop watching for deaths; nothing is left stopped.
                    for held in self._held:
                        os.close(held.pidfd)
                    self._held.clear()
                    return
                fds = [held.pidfd for held in self._held]
                moments = [
                    held.resume_at if held.watch_until is None else held.watch_until
                    for held in self._held
                ]
            timeout = min([*moments, time.monotonic() + IDLE_WAIT]) - time.monotonic()
            readable = set(wait_readable([*fds, self._wake_r], timeout))
            now = time.monotonic()
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            with self._lock:
                for held in list(self._held):
                    if held.pidfd in readable:
                        self.journal.died(held.record, now)
                        self._forget(held)
                    elif held.watch_until is None and now >= held.resume_at:
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(held.pidfd, signal.SIGCONT)
                        self.journal.resumed(held.record, now)
                        held.watch_until = now + STOP_DEATH_GRACE
                    elif held.watch_until is not None and now >= held.watch_until:
                        self._forget(held)

    def _forget(self, held: _Held) -> None:
        os.close(held.pidfd)
        self._held.remove(held)
