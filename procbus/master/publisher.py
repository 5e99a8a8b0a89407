"""The tree publish: the master's own listeners, then every subscribed worker.

A publish on the master runs the master's listeners first (wspbus rules),
then goes out once on the XPUB (`procbus.master.hub`) to every worker that is
a target (running and subscribed); workers still starting are reported as
such, and the relay gathers the others' replies until the publish's
requirement is decided (``require``: by default every target answered) or the
deadline passed. ``start``, ``stop`` and ``exit`` drive the bus and the pool
instead of being forwarded; ``log`` and ``main`` stay on the master (neither
takes ``require``, ``to`` or ``to_generation``).

``retain`` makes the publish its channel's last word for every worker started
later (`procbus.master.retainer`): checked before anything runs (a channel of
the master's own, the store's bounds), kept once it went out; with ``clear``
the channel's retained publish is dropped and nothing is published (the reply
says in `TreeReply.cleared` whether there was one).

``to`` and ``to_generation`` choose the target workers
(`procbus.master.targeting`): a worker or generation that does not exist is a
``ValueError`` before anything runs. The master's own listeners run whatever
the targets: the master owns the bus. The answers of workers still pending
when the reply went back go to the event stream as ``publish_late_answer``
events (`relay.late_answer_fields`: status and errors, never results).

`TreePublisher.forward` is the hook of the master's bus (`Bus.forward`): a
plain ``bus.publish("graceful")`` in the master reaches the workers too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from procbus import protocol
from procbus.bus import Bus
from procbus.errors import ProtocolError
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc
from procbus.master.pool import Pool
from procbus.master.relay import (
    Gather,
    TreeReply,
    WorkerResult,
    WorkerStatus,
    late_answer_fields,
)
from procbus.master.retainer import Retainer
from procbus.master.targeting import Selection, select
from procbus.publishing import DEFAULT, PublishOptions

log = logging.getLogger("procbus.master")

LOCAL_CHANNELS: Final = frozenset({"log", "main"})
"""Channels that stay on the master."""
POOL_CHANNELS: Final = frozenset({"start", "stop", "exit"})
"""Channels that drive the pool instead of being forwarded."""
MASTER_CODE: Final = "master code"
"""Who published, for a publish made by code in the master (``ctl retained`` shows it)."""


class TreePublisher:
    """Publishes on the whole tree for the master (see the module docstring)."""

    def __init__(
        self,
        bus: Bus,
        pool: Pool,
        loop: EventLoop,
        *,
        deadline: Callable[[], float],
        emit: Callable[..., None],
        request_exit: Callable[[], None],
        retainer: Retainer | None = None,
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.loop = loop
        self.deadline = deadline
        """The default deadline of a publish (the ``publish_timeout`` setting)."""
        self.emit = emit
        self.request_exit = request_exit
        self.retainer = retainer if retainer is not None else Retainer(emit)
        self._hub: Hub | None = None

    @property
    def hub(self) -> Hub | None:
        """The workers' sockets, set while the master is open."""
        return self._hub

    @hub.setter
    def hub(self, hub: Hub | None) -> None:
        self._hub = hub
        self.retainer.send = hub.send_to if hub is not None else None
        if hub is not None:
            hub.relay.on_late_answer = self._late_answer
            hub.feed = self.retainer

    def _late_answer(self, reply: TreeReply, result: WorkerResult) -> None:
        self.emit("publish_late_answer", **late_answer_fields(reply, result))

    def publish_async(
        self,
        channel: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[TreeReply], None] | None = None,
        options: PublishOptions = DEFAULT,
        origin: WorkerProc | None = None,
        publisher: str = MASTER_CODE,
    ) -> None:
        """Start a tree publish; `on_done(reply)` is called from the loop once the
        publish's requirement is decided (see `procbus.master.quorum`). `origin`: the
        worker the publish comes from (`procbus.master.worker_publishes`), no target
        when the options say ``include_self=False``. `publisher` says who publishes
        (kept with a retained publish; ``worker N`` for a publish from worker N).

        Raises ``TypeError`` before anything runs if an argument cannot be sent,
        ``ValueError`` if an option cannot be honoured (a target that does not
        exist, an option a channel that stays on the master cannot take, a channel
        that cannot be retained or a retained publish past the store's bounds).
        """
        if options.retain:
            self.retainer.check(channel)
            if options.clear:
                args = list(args)
                if args or kwargs:
                    raise ValueError(
                        "clear takes no arguments: it drops the retained publish of"
                        f" {channel!r} and publishes nothing"
                    )
                reply = TreeReply(channel, None, cleared=self.retainer.clear(channel))
                if on_done is not None:
                    on_done(reply)
                return
        args = list(args)
        kwargs = dict(kwargs or {})
        if channel in POOL_CHANNELS or channel in LOCAL_CHANNELS:
            if options.targeted or options.require != "all":
                option = "require" if options.require != "all" else "to or to_generation"
                raise ValueError(
                    f"publish on {channel!r} stays on the master: it takes no {option}"
                )
            reply = self._on_master(channel, args, kwargs)
            if on_done is not None:
                on_done(reply)
            return
        timeout = self.deadline() if timeout is None else timeout
        template = protocol.PublishTemplate(channel, args, kwargs, timeout)
        selection = self._select(options, origin)
        if options.retain:
            self.retainer.check(channel, self._frame_size(template))
        reply = TreeReply(channel, None, require=options.require)
        for outcome in self.bus.run_listeners(channel, *args, **kwargs):
            reply.master.append(outcome.result)
            if outcome.error is not None:
                reply.master_errors.append(outcome.error)
        # A broadcast would reach the origin too: leaving it out names the targets.
        leaves_out = origin is not None and not options.include_self
        self._send(
            template, reply, timeout, on_done, selection,
            targeted=options.targeted or leaves_out,
        )  # fmt: skip
        if options.retain:
            assert reply.seq is not None
            who = publisher if origin is None else f"worker {origin.id}"
            self.retainer.keep(channel, reply.seq, template.frame(reply.seq), who)

    def _frame_size(self, template: protocol.PublishTemplate) -> int:
        """The size of `template`'s frame as the next publish (its number's bytes too)."""
        return len(template.frame(self.hub.relay.next_seq if self.hub else 0)) + 8

    def _select(
        self, options: PublishOptions = DEFAULT, origin: WorkerProc | None = None
    ) -> Selection:
        """The workers `options` name (`procbus.master.targeting`); ``ValueError`` if
        one does not exist."""
        targets, starting = self.pool.publish_targets()
        # Only `to` is checked against the slots: a broadcast does not list them.
        slots = [s.id for s in self.pool.slots()] if options.to is not None else ()
        return select(options, targets, starting, slots, origin)

    def _on_master(self, channel: str, args: list[Any], kwargs: dict[str, Any]) -> TreeReply:
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
        selection: Selection | None = None,
        *,
        metered: bool = True,
        targeted: bool = False,
    ) -> Gather:
        if self.hub is None:
            raise RuntimeError("the master is not started")
        targets, starting = self._select() if selection is None else selection
        for worker in starting:
            reply.workers[worker.id] = WorkerResult(
                worker.id, worker.pid, worker.generation, WorkerStatus.STARTING
            )
        return self.hub.relay.send(
            template, targets, timeout, reply, on_done, metered=metered, targeted=targeted
        )

    def ask_workers(
        self, channel: str, timeout: float, on_done: Callable[[TreeReply], None]
    ) -> None:
        """Ask the workers alone (the master's listeners do not run), unmetered: the
        gather of a metrics scrape (`procbus.master.scrape`). `RuntimeError` if the
        master is not open."""
        template = protocol.PublishTemplate(channel, [], {}, timeout)
        self._send(template, TreeReply(channel, None), timeout, on_done, metered=False)

    def finish(self, limit: float) -> None:
        """Before the master goes (exec, hand-over): let the publishes in flight get their
        answers, for at most `limit` seconds (and their own deadlines)."""
        relay = self.hub.relay if self.hub else None
        if relay is not None and relay.pending:
            self.loop.run_until(lambda: not relay.pending, min(limit, self.deadline()))

    def forward(
        self, channel: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[BaseException]:
        """The bus's forward hook: carry a publish on the master's bus to the workers."""
        if channel in LOCAL_CHANNELS or channel in POOL_CHANNELS or self.hub is None:
            return []
        timeout = self.deadline()
        try:
            template = protocol.PublishTemplate(channel, list(args), kwargs, timeout)
        except (TypeError, ProtocolError) as exc:
            return [TypeError(f"publish on {channel!r} cannot be forwarded to workers: {exc}")]
        reply = TreeReply(channel, None)
        gather = self._send(template, reply, timeout, self.log_failures)
        if self.loop.in_callback:
            return []
        self.loop.run_until(lambda: gather.done)
        return [exc for exc in reply.failures() if exc not in reply.master_errors]

    def log_failures(self, reply: TreeReply) -> None:
        """Log what failed in a publish nobody waits for, and put it on the event stream."""
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
                    if v.status
                    not in (WorkerStatus.OK, WorkerStatus.STARTING, WorkerStatus.PENDING)
                },
            )
