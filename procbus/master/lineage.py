"""A master's place in its line: what it took from the master before it, and gives the next.

Masters follow one another under a name: ``restart`` re-executes the same
process (same pid, next generation), ``upgrade`` starts a successor (a new
pid) that takes the name over. `Lineage` keeps, for one master, its
generation, whether it is a successor still waiting to take over, whether it
is going (to its own exec, or to a successor), and the workers to adopt or to
hand over, and the retained publishes (`procbus.master.retainer`), which cross
too (sealed while an upgrade's hand-over is out: a change would not reach the
new master). What crosses is written and read by `procbus.master.handover`;
the jobs that end a master's life (`procbus.master.jobs.restart`,
`procbus.master.jobs.upgrade`) ask for it here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from procbus.errors import ConfigError
from procbus.master.endpoints import Endpoints
from procbus.master.handover import AdoptedWorker, Adoption, HandOver, Inherited, Successor
from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from procbus.master.relay import Relay
from procbus.master.retainer import Retainer
from procbus.master.runtime import RuntimeDir
from procbus.master.settings import TreeSettings

log = logging.getLogger("procbus.master")


class Lineage:
    """One master's line (see the module docstring)."""

    def __init__(
        self,
        *,
        pool: Pool,
        runtime: RuntimeDir,
        endpoints: Endpoints,
        sockets: Sequence[Any],
        settings: Callable[[], TreeSettings],
        relay: Callable[[], Relay | None],
        loop: EventLoop,
        emit: Callable[..., None],
        request_exit: Callable[..., None],
        exiting: Callable[[], bool],
        retainer: Retainer,
    ) -> None:
        self.pool, self.runtime, self.endpoints, self.sockets = pool, runtime, endpoints, sockets
        self.retainer = retainer
        self.settings, self.relay, self.loop, self.emit = settings, relay, loop, emit
        self.request_exit, self._exiting = request_exit, exiting
        self.exit_code = 0
        """Nonzero: the master should exit with it (a successor that could not take over)."""
        self.generation = 1
        self.successor: Successor | None = None
        """Set when an old master started this one (``upgrade``), until it took over."""
        self.upgraded_to: int | None = None
        """The pid of the master this one handed over to (``upgrade``)."""
        self.exec_requested = False
        """Set by ``restart``: whoever called `Master.run` re-executes the process."""
        self.handover: Adoption | None = None
        """Set by ``restart --adopt`` just before the exec: the live workers to adopt."""
        self.to_adopt: Adoption | None = None
        """The workers a previous master of this process left to adopt, until adopted."""
        self._adopt_on_exec = False

    def inherit(self, found: Inherited, configured_workers: int) -> None:
        """Take what a previous master handed over (see `procbus.master.handover`).

        A worker count set at runtime (``scale``) outlives the exec, unless
        the configuration's count changed meanwhile.
        """
        if found.generation is not None:
            self.generation = found.generation
        self.pool.generations = dict(found.worker_generations)
        if found.target is not None and found.target[1] == configured_workers:
            self.pool.view.target = found.target[0]
        if found.adoption is not None:
            self.to_adopt = found.adoption
            pids = [w.pid for w in found.adoption.workers]
            log.info("adopting %d live workers: %s", len(pids), pids)
        if found.lock_fd is not None:
            try:
                self.runtime.adopt_lock(found.lock_fd)
            except OSError as exc:
                raise ConfigError(f"inherited lock fd {found.lock_fd}: {exc.strerror}") from None
        self.endpoints.inherited_fds = dict(found.control_fds)
        if found.retained:
            try:
                self.retainer.store.restore(found.retained)
            except ValueError as exc:
                raise ConfigError(f"the retained publishes handed over: {exc}") from None
            log.info("%d retained publishes handed over", len(self.retainer.store))
        if found.successor is not None:
            self.successor = Successor(*found.successor)

    @property
    def exiting(self) -> bool:
        return self._exiting()

    def worker_ready(self) -> None:
        """A worker runs: a successor whose workers all run says so to the old master."""
        successor = self.successor
        if successor is not None and not successor.announced and self.pool.all_running():
            successor.announce_ready()
            successor.watch(self)

    def take_over_name(self) -> None:
        """A successor whose predecessor let go: serve the name's sockets, handed over."""
        self.endpoints.bind_name()
        log.info("master %d serves %s now", os.getpid(), self.runtime.path)

    def take_name_lock(self) -> None:
        """The old master exited: take the name's lock; `StartupError` while it is held."""
        self.endpoints.take_lock()
        self.emit("takeover", pid=os.getpid(), generation=self.generation)

    def remove_tree_sockets(self, tag: int) -> None:
        """Remove the worker sockets of tree `tag` (a successor that died left them)."""
        self.runtime.remove_tree_sockets(tag)

    @property
    def holds_name(self) -> bool:
        """Not a successor still waiting to take the name over."""
        return self.successor is None or self.successor.took_over

    @property
    def going(self) -> bool:
        """The master is going to its own exec or to a successor."""
        return self.exec_requested or self.upgraded_to is not None

    def worker_tag(self) -> int:
        """The tree of worker sockets: the adopted workers', or a new one of this generation."""
        return self.to_adopt.worker_tag if self.to_adopt is not None else self.generation

    def adopt(self) -> None:
        """Adopt the workers a previous master of this process left (at bus start)."""
        adoption, self.to_adopt = self.to_adopt, None
        relay = self.relay()
        if adoption is None or relay is None:
            return
        relay.seq = adoption.next_seq - 1  # the numbers go on
        for worker in adoption.workers:
            adopted = self.pool.adopt(worker.id, worker.generation, worker.pid)
            if adopted is not None:
                self.retainer.adopted(adopted)

    def live_workers(self) -> Adoption:
        """What a re-executed master needs to adopt the live workers."""
        relay = self.relay()
        workers = tuple(
            AdoptedWorker(w.id, w.generation, w.pid)
            for slot in self.pool.slots()
            if (w := slot.current) is not None and w.alive
        )
        return Adoption(workers, relay.next_seq if relay else 1, self.runtime.worker_tag)

    def hand_over(self) -> HandOver:
        """What the next master (this process's exec, or a successor) is given.

        The retained publishes are sealed from now on (`upgrade_failed` unseals them).
        """
        self.retainer.store.sealed = "they are being handed over to the next master"
        return HandOver(
            generation=self.generation + 1,
            worker_generations={s.id: s.generation for s in self.pool.view.slots.values()},
            target=(self.pool.target, self.settings().workers),
            control_fds=dict(self.endpoints.name_fds),
            listening_fds=[sock.fileno() for sock in self.sockets],
            lock_fd=self.runtime.lock_fd if self.exec_requested else None,
            adoption=self.handover,
            retained=self.retainer.store.dump() if len(self.retainer.store) else b"",
        )

    def upgrade_failed(self) -> None:
        """The successor given the hand-over did not take over: this master serves on."""
        self.retainer.store.sealed = None

    def handed_over(self, pid: int) -> None:
        """The successor `pid` serves the name: this master exits."""
        self.upgraded_to = pid
        self.request_exit()

    def re_execute(self, adopt: bool) -> None:
        """This master exits to re-execute itself (``restart``), adopting its workers or not.

        The adoption itself is taken just before the exec (`before_exec`): a
        worker that dies in between must not be adopted.
        """
        self._adopt_on_exec = adopt
        self.exec_requested = True
        self.request_exit()

    def before_exec(self) -> None:
        """The loop has ended: take the workers to adopt, now that none can die unseen."""
        if self._adopt_on_exec:
            self.pool.reap()
            self.handover = self.live_workers()
