"""Retained publishes in the master: kept as they are made, sent to each new worker.

`TreePublisher` asks the `Retainer` whether a retained publish may be made
(`check`, before anything runs), and gives it each one once it went out on
PUB (`keep`); ``--retain --clear`` drops one (`clear`). The store itself is
`procbus.master.retained`; each change is an event (``retained_stored``,
``retained_cleared``: the channel only, read-only watchers see events).

**A new worker's catch-up.** A worker that starts after a retained publish
must run it before it serves (`procbus.worker.catchup`), and it is no target
of publishes until it runs. So the hub tells the retainer about each worker
(`procbus.master.hub.WorkerFeed`), and the retainer sends it RETAINED messages
on the ROUTER, where ZeroMQ keeps their order with its WELCOME:

1. on its hello: the snapshot, every retained publish in publish order (in
   several messages if large, ``more`` on all but the last);
2. while it starts: each publish retained meanwhile, at once;
3. just before its WELCOME (it runs, and is a target from then on): what was
   retained since it was last sent one -- nothing, for a worker that said hello
   here; for a worker adopted after ``restart --adopt`` (which got every
   retained publish from the previous master and says no hello to this one),
   those retained by this master so far. It is sent nothing while it is not
   heard here: ZeroMQ's ROUTER would drop it.

A retained publish sent this way also reached the worker on SUB, before its
WELCOME, and the worker drops it there (its number is below the WELCOME's):
nothing runs twice. One retained after the WELCOME reaches it on SUB alone, as
a target. So every worker runs each channel's last word exactly once, in
publish order, before any publish it is a target of.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from procbus import protocol
from procbus.master.planner import WorkerProc
from procbus.master.retained import RetainedPublish, RetainedStore, chunks
from procbus.protocol import MsgType

log = logging.getLogger("procbus.master")

SendFn = Callable[[WorkerProc, bytes], None]
"""Send a frame to a worker on the hub's ROUTER."""


class Retainer:
    """The retained publishes of a master, and what each new worker is owed of them."""

    def __init__(
        self,
        emit: Callable[..., None],
        store: RetainedStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.emit = emit
        self.store = store if store is not None else RetainedStore()
        self.wall_clock = wall_clock
        self.send: SendFn | None = None
        """The hub's `Hub.send_to`, while the master is open."""
        self._owed: dict[WorkerProc, int] = {}
        """Workers not welcomed yet -> the store's order number up to which they were
        sent every retained publish (or, adopted, had them already)."""
        self._heard: set[WorkerProc] = set()
        """Those of them that said hello here: sent each new retained publish at once."""

    # -- publishing ---------------------------------------------------------------

    def check(self, channel: str, size: int | None = None) -> None:
        """``ValueError`` in one line unless `channel` may be retained (`size` bytes) or
        cleared now (`RetainedStore.check`)."""
        self.store.check(channel, size)

    def keep(self, channel: str, seq: int, frame: bytes, publisher: str) -> None:
        """Publish `seq` on `channel` went out on PUB as `frame`: it is the channel's
        last word now, and goes to every worker that starts."""
        publish = self.store.put(channel, seq, frame, publisher, self.wall_clock())
        self.emit("retained_stored", channel=channel)
        for worker in self._heard:
            self._send(worker, [publish])
            self._owed[worker] = publish.order

    def clear(self, channel: str) -> bool:
        """Drop `channel`'s retained publish; whether there was one."""
        cleared = self.store.clear(channel)
        if cleared:
            self.emit("retained_cleared", channel=channel)
        return cleared

    def listing(self) -> list[dict[str, Any]]:
        """``ctl retained``: channel, time, age, seq, size, publisher of each."""
        return self.store.listing(self.wall_clock())

    # -- the workers (`procbus.master.hub.WorkerFeed`) ---------------------------------

    def hello(self, worker: WorkerProc) -> None:
        """`worker` said hello: send it the snapshot (possibly empty: it says it is all)."""
        if worker in self._owed:
            return  # a hello said twice: the worker has its snapshot
        self._heard.add(worker)
        self._send(worker, list(self.store), snapshot=True)
        self._owed[worker] = self.store.last_order

    def adopted(self, worker: WorkerProc) -> None:
        """`worker` was adopted (``restart --adopt``): it has every retained publish the
        store holds now; those retained later go to it before its WELCOME."""
        self._owed[worker] = self.store.last_order

    def welcome(self, worker: WorkerProc) -> None:
        """`worker` is about to be welcomed: send what was retained since it was last sent
        one; from its WELCOME on it is a target of every publish, retained or not."""
        self._heard.discard(worker)
        through = self._owed.pop(worker, None)
        if through is None:
            return
        missing = self.store.since(through)
        if missing:
            self._send(worker, missing)

    def gone(self, worker: WorkerProc) -> None:
        self._heard.discard(worker)
        self._owed.pop(worker, None)

    def owes(self, worker: WorkerProc) -> bool:
        """Whether `worker` is still to be welcomed (it is sent retained publishes)."""
        return worker in self._owed

    def _send(
        self, worker: WorkerProc, publishes: list[RetainedPublish], snapshot: bool = False
    ) -> None:
        """Send `publishes` to `worker` in RETAINED messages (a `snapshot`: its first, whose
        last message says it is complete)."""
        if self.send is None:
            return
        runs = chunks([p.frame for p in publishes])
        for index, run in enumerate(runs):
            more = snapshot and index < len(runs) - 1
            self.send(worker, protocol.encode(MsgType.RETAINED, {"frames": run, "more": more}))
        log.debug("worker %d sent %d retained publishes", worker.id, len(publishes))
