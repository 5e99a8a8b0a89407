"""Upgrade: hand the tree over to a freshly executed master, with zero downtime.

The old master (generation g) forks and executes a new one (g+1) with the
same argv (`procbus.master.handover.spawn_successor`). The new master
inherits the listening sockets the workers serve and the name's own (control,
events), and two pipes: it says ``ready``, ``took-over`` or ``failed`` on one,
the old master says ``go`` on the other (and closes it by exiting).

The old master, step by step, never letting go of anything before the new
one has it:

1. wait for ``ready`` (or the new master's death, or a deadline); on failure
   stop the new master (its workers die with it) and keep serving;
2. drain its own workers; should the new master die meanwhile, start new
   workers again and keep serving;
3. say ``go``, and wait for ``took-over``; should the new master die or fail,
   start new workers again and keep serving;
4. exit. Only the lock changes hands after that.

A failed upgrade's job says why, the old master keeps the name, and the
worker sockets the new master made are removed. While both masters run, both
accept on the same listening sockets: no connection is refused at any point,
and a client of the old master gets its answer from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Final

from procbus.master.handover import FAILED, GO, READY, TOOK_OVER, spawn_successor
from procbus.master.jobs.queue import Job, JobFailed
from procbus.master.jobs.tree import Tree
from procbus.master.settings import boot_limit, stop_limit

log = logging.getLogger("procbus.master")

TAKEOVER_LIMIT: Final = 10.0
"""Seconds the old master gives the new one to serve the name after ``go``."""


@dataclass
class _Successor:
    """The old master's view of the new one, during the upgrade."""

    pid: int
    ready_fd: int
    alive_fd: int
    said: bytearray = field(default_factory=bytearray)
    exit_status: int | None = None

    @property
    def ready(self) -> bool:
        return READY in self.said

    @property
    def took_over(self) -> bool:
        return TOOK_OVER in self.said

    @property
    def failed(self) -> bool:
        return FAILED in self.said or self.exit_status is not None


def upgrade_tree(tree: Tree, job: Job) -> dict[str, Any]:
    """The ``upgrade`` job of the old master."""
    hand = tree.lineage.hand_over()
    try:
        spawned = spawn_successor(hand, *tree.bus.exec_args())
    except BaseException:
        tree.lineage.upgrade_failed()  # no successor: this master serves on
        raise
    new = _Successor(spawned.pid, spawned.ready_fd, spawned.alive_fd)
    job.progress("new master started", pid=new.pid, generation=hand.generation)

    def exited(status: int) -> None:
        new.exit_status = status

    tree.pool.watch_child(new.pid, exited)
    tree.loop.add_reader(new.ready_fd, lambda: _read(tree, new))
    try:
        _hand_over(tree, job, new)
    except BaseException:
        _abandon(tree, new, hand.generation)
        raise
    finally:
        tree.loop.remove_reader(new.ready_fd)
        os.close(new.ready_fd)
        tree.pool.forget_child(new.pid)
    # The alive pipe closes when this process exits: the new master's cue for the lock.
    tree.lineage.handed_over(new.pid)
    return {"new_master": new.pid, "generation": hand.generation}


def _hand_over(tree: Tree, job: Job, new: _Successor) -> None:
    policy = tree.settings.supervision
    limit = boot_limit(policy) + 5
    tree.wait_until(lambda: new.ready or new.failed, limit)
    if not new.ready:
        late = f"was not ready within {limit:g}s"
        raise JobFailed(f"{_fate(new, late)}; this master keeps serving")
    job.progress("new master ready; draining the old workers", pid=new.pid)
    tree.bus.stop()
    tree.wait_until(lambda: tree.pool.no_children() or new.failed, stop_limit(policy))
    if new.failed:
        raise JobFailed(
            f"{_fate(new, 'failed')} while the old workers drained; "
            "this master keeps serving with new workers"
        )
    job.progress("old workers drained; handing the name over", pid=new.pid)
    with contextlib.suppress(OSError):  # the new master is gone: its status comes on SIGCHLD
        os.write(new.alive_fd, GO)
    tree.wait_until(lambda: new.took_over or new.failed, TAKEOVER_LIMIT)
    if not new.took_over:
        raise JobFailed(
            f"{_fate(new, f'did not take the name over within {TAKEOVER_LIMIT:g}s')}; "
            "this master keeps serving with new workers"
        )


def _fate(new: _Successor, otherwise: str) -> str:
    if new.exit_status is not None:
        return f"the new master (pid {new.pid}) exited with status {new.exit_status}"
    if FAILED in new.said:
        return f"the new master (pid {new.pid}) could not take the name over"
    return f"the new master (pid {new.pid}) {otherwise}"


def _read(tree: Tree, new: _Successor) -> None:
    try:
        data = os.read(new.ready_fd, 64)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    new.said += data
    if not data:
        # End of file: the new master is gone (its exit status follows on
        # SIGCHLD) or done talking; stop watching a fd that stays readable.
        tree.loop.remove_reader(new.ready_fd)


def _abandon(tree: Tree, new: _Successor, generation: int) -> None:
    """The upgrade failed: stop the new master (its workers die with it), remove the
    worker sockets it made, and serve on, with new workers if the old ones drained."""
    if new.exit_status is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(new.pid, signal.SIGTERM)
        with contextlib.suppress(Exception):
            tree.wait_until(
                lambda: new.exit_status is not None, stop_limit(tree.settings.supervision)
            )
        if new.exit_status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(new.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                tree.wait_until(lambda: new.exit_status is not None, 5)
    # Only now: to the new master, end of file means "the name is yours".
    with contextlib.suppress(OSError):
        os.close(new.alive_fd)
    tree.lineage.remove_tree_sockets(generation)
    tree.lineage.upgrade_failed()
    if not tree.pool.active and not tree.exiting:
        log.error("upgrade failed after the old workers drained: starting new ones")
        tree.bus.start()
