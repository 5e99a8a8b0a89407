"""The tree publish: the master's own listeners, then every subscribed worker.

A publish on the master runs the master's listeners first (wspbus rules),
then goes out once on the XPUB (`procbus.master.hub`) to every worker that is
a target (running and subscribed); workers still starting are reported as
such, and the relay gathers the others' replies until all answered or the
deadline passed. ``start``, ``stop`` and ``exit`` drive the bus and the pool
instead of being forwarded; ``log`` and ``main`` stay on the master.

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
from procbus.master.pool import Pool
from procbus.master.relay import Gather, TreeReply, WorkerResult, WorkerStatus
from procbus.publishing import DEFAULT, PublishOptions

log = logging.getLogger("procbus.master")

LOCAL_CHANNELS: Final = frozenset({"log", "main"})
"""Channels that stay on the master."""
POOL_CHANNELS: Final = frozenset({"start", "stop", "exit"})
"""Channels that drive the pool instead of being forwarded."""


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
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.loop = loop
        self.deadline = deadline
        """The default deadline of a publish (the ``publish_timeout`` setting)."""
        self.emit = emit
        self.request_exit = request_exit
        self.hub: Hub | None = None
        """Set while the master is open."""

    def publish_async(
        self,
        channel: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[TreeReply], None] | None = None,
        options: PublishOptions = DEFAULT,
    ) -> None:
        """Start a tree publish; `on_done(reply)` is called from the loop when complete.

        Raises ``TypeError`` before anything runs if an argument cannot be sent,
        ``ValueError`` if an option cannot be honoured.
        """
        self._check_options(options)
        args = list(args)
        kwargs = dict(kwargs or {})
        if channel in POOL_CHANNELS or channel in LOCAL_CHANNELS:
            reply = self._on_master(channel, args, kwargs)
            if on_done is not None:
                on_done(reply)
            return
        timeout = self.deadline() if timeout is None else timeout
        template = protocol.PublishTemplate(channel, args, kwargs, timeout)
        reply = TreeReply(channel, None)
        for outcome in self.bus.run_listeners(channel, *args, **kwargs):
            reply.master.append(outcome.result)
            if outcome.error is not None:
                reply.master_errors.append(outcome.error)
        self._send(template, reply, timeout, on_done)

    def _check_options(self, options: PublishOptions) -> None:
        unbuilt = [
            name for name in ("require", "to", "to_generation", "retain") if name in options.wire()
        ]
        if unbuilt:
            raise ValueError(f"publish option {unbuilt[0]} is not built yet")

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
        *,
        metered: bool = True,
    ) -> Gather:
        if self.hub is None:
            raise RuntimeError("the master is not started")
        targets, starting = self.pool.publish_targets()
        for worker in starting:
            reply.workers[worker.id] = WorkerResult(
                worker.id, worker.pid, worker.generation, WorkerStatus.STARTING
            )
        return self.hub.relay.send(template, targets, timeout, reply, on_done, metered=metered)

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
                    if v.status not in (WorkerStatus.OK, WorkerStatus.STARTING)
                },
            )
