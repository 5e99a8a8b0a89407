"""Tree publish: one send on PUB, then gather the workers' replies.

A publish is numbered when it is sent. Each gather knows which workers it
waits for; it completes when every one of them answered, died (`lost`) or the
deadline passed (`timeout`). Replies are matched by number, so publishes may
overlap; a reply that comes after its gather completed is counted and
dropped. A slow worker delays nobody else's answer, only its own.

A worker the master drains is sent a DRAIN marker after the publishes it is a
target of, so it answers them before it stops: only a worker that dies or is
cut short is `lost`.

Each completed gather is counted in `Relay.meter` (`procbus.master.meter`): the
outcome of every worker answer and the publish's duration, unless it was sent
unmetered (a metrics scrape, which is counted on its own).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import zmq

from procbus import protocol
from procbus.bus import ChannelFailures
from procbus.errors import ProtocolError, RemoteError
from procbus.master.loop import EventLoop, Timer
from procbus.master.meter import PublishMeter
from procbus.master.planner import WorkerProc
from procbus.protocol import MsgType

log = logging.getLogger("procbus.master")


class WorkerStatus(enum.StrEnum):
    """What became of a publish in one worker."""

    OK = "ok"
    ERROR = "error"
    """Every listener ran; at least one raised."""
    TIMEOUT = "timeout"
    """No reply before the deadline."""
    LOST = "lost"
    """The worker died before it answered."""
    STARTING = "starting"
    """The worker was not yet subscribed: it was not a target."""


@dataclass
class WorkerResult:
    worker: int
    pid: int
    generation: int
    status: WorkerStatus
    results: list[Any] = field(default_factory=list)
    errors: list[RemoteError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "pid": self.pid,
            "generation": self.generation,
            "results": self.results,
            "errors": [
                {
                    "type": e.type_name,
                    "message": e.message,
                    "listener": e.listener,
                    "traceback": e.traceback,
                }
                for e in self.errors
            ],
        }


@dataclass
class TreeReply:
    """The answer of the whole tree to one publish."""

    channel: str
    seq: int | None
    """None when nothing was sent (a channel that stays on the master)."""
    master: list[Any] = field(default_factory=list)
    """The results of the master's own listeners."""
    master_errors: list[BaseException] = field(default_factory=list)
    workers: dict[int, WorkerResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no listener failed and every target answered."""
        return not self.master_errors and all(
            r.status in (WorkerStatus.OK, WorkerStatus.STARTING) for r in self.workers.values()
        )

    def failures(self) -> list[BaseException]:
        """The master's errors, then each worker's, as exceptions naming the worker."""
        found: list[BaseException] = list(self.master_errors)
        for worker_id in sorted(self.workers):
            result = self.workers[worker_id]
            found.extend(result.errors)
            if result.status in (WorkerStatus.TIMEOUT, WorkerStatus.LOST):
                found.append(
                    RemoteError(
                        worker_id,
                        result.status.value.capitalize(),
                        f"worker {worker_id} (pid {result.pid}) "
                        + (
                            "did not answer in time"
                            if result.status is WorkerStatus.TIMEOUT
                            else "died before answering"
                        ),
                    )
                )
        return found

    def raise_for_failures(self) -> TreeReply:
        """Raise `ChannelFailures` if anything failed anywhere; else return self."""
        failures = ChannelFailures()
        for exc in self.failures():
            failures.add(exc)
        if failures:
            raise failures
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "seq": self.seq,
            "master": self.master,
            "master_errors": [f"{type(e).__name__}: {e}" for e in self.master_errors],
            "workers": {str(k): v.to_dict() for k, v in sorted(self.workers.items())},
        }


@dataclass(eq=False)
class Gather:
    """A publish in flight."""

    reply: TreeReply
    waiting: dict[WorkerProc, None]
    on_done: list[Callable[[TreeReply], None]]
    timer: Timer | None = None
    done: bool = False
    sent_at: float = 0.0
    metered: bool = True
    """Counted in the relay's `PublishMeter` when it completes."""


class Relay:
    """Sends publishes on the master's PUB socket and gathers replies."""

    def __init__(self, pub: zmq.Socket[bytes], loop: EventLoop) -> None:
        self.pub = pub
        self.loop = loop
        self.seq = 0
        self.pending: dict[int, Gather] = {}
        self.late_replies = 0
        self.sent = 0
        self.meter = PublishMeter()

    @property
    def next_seq(self) -> int:
        """The number the next publish will carry."""
        return self.seq + 1

    def send(
        self,
        template: protocol.PublishTemplate,
        targets: Iterable[WorkerProc],
        timeout: float,
        reply: TreeReply,
        on_done: Callable[[TreeReply], None] | None = None,
        *,
        metered: bool = True,
    ) -> Gather:
        """Send once to every subscriber; gather the `targets`' replies."""
        self.seq += 1
        seq = self.seq
        reply.seq = seq
        self.pub.send_multipart([protocol.BROADCAST_TOPIC, template.frame(seq)], copy=False)
        self.sent += 1
        gather = Gather(
            reply, dict.fromkeys(targets), [on_done] if on_done else [],
            sent_at=self.loop.clock(), metered=metered,
        )  # fmt: skip
        self.pending[seq] = gather
        if not gather.waiting:
            self._complete(seq)
        else:
            gather.timer = self.loop.call_later(timeout, lambda: self._expire(seq))
        return gather

    def send_drain(self, topic: bytes) -> None:
        """Tell the worker subscribed to `topic` that the master drains it.

        The DRAIN marker goes out on PUB after every publish sent so far, and
        ZeroMQ keeps the order on the way to one subscriber: once the worker
        reads it, it has read every publish it may be a target of, and it
        answers those before it stops (see `procbus.worker.drain`).
        """
        frame = protocol.encode(MsgType.DRAIN, {"last_seq": self.seq})
        self.pub.send_multipart([topic, frame], copy=False)

    def on_reply(self, worker: WorkerProc, message: protocol.Message) -> None:
        seq: int = message["seq"]
        gather = self.pending.get(seq)
        if gather is None or worker not in gather.waiting:
            self.late_replies += 1
            log.debug("dropped a late reply to publish %d from worker %d", seq, worker.id)
            return
        try:
            errors = [
                RemoteError(
                    worker.id,
                    e["type"],
                    e["message"],
                    listener=e["listener"],
                    traceback=e["traceback"],
                )
                for e in map(protocol.check_error, message["errors"])
            ]
        except ProtocolError as exc:
            log.warning("worker %d sent a malformed reply: %s", worker.id, exc)
            return
        del gather.waiting[worker]
        gather.reply.workers[worker.id] = WorkerResult(
            worker.id,
            worker.pid,
            worker.generation,
            WorkerStatus.ERROR if errors else WorkerStatus.OK,
            list(message["results"]),
            errors,
        )
        if not gather.waiting:
            self._complete(seq)

    def on_worker_gone(self, worker: WorkerProc) -> None:
        """`worker` died: every publish still waiting for it reports it lost."""
        for seq, gather in list(self.pending.items()):
            if worker in gather.waiting:
                del gather.waiting[worker]
                gather.reply.workers[worker.id] = WorkerResult(
                    worker.id, worker.pid, worker.generation, WorkerStatus.LOST
                )
                if not gather.waiting:
                    self._complete(seq)

    def _expire(self, seq: int) -> None:
        gather = self.pending.get(seq)
        if gather is None:
            return
        for worker in gather.waiting:
            gather.reply.workers[worker.id] = WorkerResult(
                worker.id, worker.pid, worker.generation, WorkerStatus.TIMEOUT
            )
        gather.waiting.clear()
        self._complete(seq)

    def _complete(self, seq: int) -> None:
        gather = self.pending.pop(seq)
        gather.done = True
        if gather.timer is not None:
            gather.timer.cancel()
        if gather.metered:
            answers = gather.reply.workers.values()
            self.meter.observe(
                (r.status.value for r in answers if r.status is not WorkerStatus.STARTING),
                self.loop.clock() - gather.sent_at,
            )
        for callback in gather.on_done:
            callback(gather.reply)
