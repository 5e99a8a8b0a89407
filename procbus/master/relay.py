"""Tree publish: one send on PUB, then gather the workers' replies.

A publish is numbered when it is sent. Each gather knows which workers it
waits for; each of them answers, dies (`lost`) or misses the deadline
(`timeout`). Replies are matched by number, so publishes may overlap; a reply
that comes after its gather completed is counted and dropped. A slow worker
delays nobody else's answer, only its own.

The reply goes back to the caller as soon as the publish's requirement
(``require``, `procbus.master.quorum`) is met or can no longer be met; with
the default ``"all"`` that is when every target's outcome is known. The
targets that had not answered by then are `WorkerStatus.PENDING` in the reply,
and the gather stays in `Relay.pending` for them (stragglers) until each
answered, died or its deadline passed: each of those outcomes goes to
`Relay.on_late_answer` (the master puts it on the event stream), not into the
reply already given.

A targeted publish (``to``, ``to_generation``) is the same single send on the
broadcast topic, naming its targets' topics (see `procbus.protocol` for why
not one send per target topic).

A worker the master drains is sent a DRAIN marker after the publishes it is a
target of, so it answers them before it stops: only a worker that dies or is
cut short is `lost`.

Each gather is counted in `Relay.meter` (`procbus.master.meter`): the outcome
of every worker's answer once it is known (a straggler's when it comes) and
the publish's duration until its reply went back, unless it was sent unmetered
(a metrics scrape, which is counted on its own).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from procbus import protocol
from procbus.bus import ChannelFailures
from procbus.errors import ProtocolError, QuorumError, RemoteError
from procbus.master.loop import EventLoop, Timer
from procbus.master.meter import PublishMeter
from procbus.master.planner import WorkerProc
from procbus.master.quorum import Verdict, unmet_reason, verdict
from procbus.protocol import MsgType
from procbus.publishing import Require

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
    PENDING = "pending"
    """A target that had not answered when the requirement was met or could no longer
    be met; its answer goes to the event stream."""


_SNDMORE: Final = int(zmq.SNDMORE)
_FAILED: Final = frozenset({WorkerStatus.ERROR, WorkerStatus.TIMEOUT, WorkerStatus.LOST})
_NOT_TARGETS: Final = frozenset({WorkerStatus.STARTING})


@dataclass(slots=True)
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

    @classmethod
    def from_dict(cls, worker: int, data: Mapping[str, Any]) -> WorkerResult:
        """Worker `worker`'s result as `to_dict` gave it (fields it does not know are
        ignored); ``ProtocolError`` if a field is missing or malformed."""
        try:
            errors = [
                RemoteError(worker, e["type"], e["message"], e["listener"], e["traceback"])
                for e in map(protocol.check_error, data.get("errors", []))
            ]
            return cls(
                worker, int(data["pid"]), int(data["generation"]),
                WorkerStatus(data["status"]), list(data.get("results", [])), errors,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"worker {worker}'s result is malformed: {exc!r:.200}") from None


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
    require: Require = "all"
    """What "done" means (`procbus.master.quorum`): ``"all"``, ``"any"`` or a number."""
    cleared: bool | None = None
    """For ``retain`` with ``clear`` (nothing was published): whether the channel had a
    retained publish to drop. None for any other publish."""

    def _counts(self) -> tuple[int, int, int]:
        """(targets, answered without error, failed): a starting worker is no target."""
        targets = ok = failed = 0
        for result in self.workers.values():
            if result.status in _NOT_TARGETS:
                continue
            targets += 1
            ok += result.status is WorkerStatus.OK
            failed += result.status in _FAILED
        return targets, ok, failed

    @property
    def met(self) -> bool:
        """Whether the workers' answers meet the requirement (`require`)."""
        return verdict(self.require, *self._counts()) is Verdict.MET

    @property
    def reason(self) -> str | None:
        """Why the requirement is not met, in one line (None when it is)."""
        if self.met:
            return None
        return unmet_reason(self.require, *self._counts()) or (f"require {self.require}: not met")

    @property
    def pending(self) -> list[int]:
        """The targets that had not answered when the reply went back."""
        return sorted(k for k, r in self.workers.items() if r.status is WorkerStatus.PENDING)

    @property
    def ok(self) -> bool:
        """True when the requirement is met and none of the master's listeners failed.

        With the default requirement (all), every target answered without error; with
        ``"any"`` or N, a target that failed or is pending does not make it false (its
        failure is still in `failures`)."""
        return not self.master_errors and self.met

    def failures(self) -> list[BaseException]:
        """The master's errors, then each worker's, as exceptions naming the worker;
        last, when a requirement other than all is not met, a `QuorumError` saying why."""
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
        if self.require != "all":
            reason = self.reason
            if reason is not None:
                found.append(QuorumError(f"require {self.require}: {reason}"))
        return found

    def raise_for_failures(self) -> TreeReply:
        """Raise `ChannelFailures` (holding every one of `failures`) unless `ok`;
        else return self."""
        if self.ok:
            return self
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
            "require": self.require,
            "met": self.met,
            "reason": self.reason,
            "master": self.master,
            "master_errors": [_error_line(e) for e in self.master_errors],
            "workers": {str(k): v.to_dict() for k, v in sorted(self.workers.items())},
            **({} if self.cleared is None else {"cleared": self.cleared}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeReply:
        """The reply `to_dict` gave, rebuilt (a worker's `procbus.tree.publish` gets it
        over the wire): `ok`, `met`, `failures` and `raise_for_failures` behave as on
        the master. The master's errors come back as `RemoteError` (worker None) of
        their type name, each worker's with its listener and traceback. Fields it does
        not know are ignored (a newer master's), missing optional ones take their
        defaults; ``ProtocolError`` if a field it needs is missing or malformed."""
        try:
            errors: list[BaseException] = []
            for line in data.get("master_errors", []):
                type_name, _, message = str(line).partition(": ")
                errors.append(RemoteError(None, type_name, message))
            workers = {
                int(k): WorkerResult.from_dict(int(k), v) for k, v in data["workers"].items()
            }
            return cls(
                str(data["channel"]), data.get("seq"), list(data.get("master", [])), errors,
                workers, data.get("require", "all"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProtocolError(f"a tree reply is malformed: {exc!r:.200}") from None


def _error_line(exc: BaseException) -> str:
    """``Type: message`` for one of the master's errors (a rebuilt one keeps its type)."""
    if isinstance(exc, RemoteError):
        return f"{exc.type_name}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def late_answer_fields(reply: TreeReply, result: WorkerResult) -> dict[str, Any]:
    """The event-stream fields of a straggler's outcome (`Relay.on_late_answer`).

    Its status and errors' types and messages; never its results or tracebacks:
    read-only watchers see the event stream, and results are the caller's.
    """
    return {
        "channel": reply.channel,
        "seq": reply.seq,
        "worker": result.worker,
        "pid": result.pid,
        "generation": result.generation,
        "status": result.status.value,
        "errors": [{"type": e.type_name, "message": e.message} for e in result.errors],
    }


@dataclass(eq=False, slots=True)
class Gather:
    """A publish in flight: until its reply went back (`done`), then until its
    stragglers are accounted for."""

    reply: TreeReply
    waiting: dict[WorkerProc, None]
    on_done: list[Callable[[TreeReply], None]]
    targets: int = 0
    ok: int = 0
    """Targets that answered without error."""
    failed: int = 0
    """Targets that answered with an error, died or missed the deadline."""
    timer: Timer | None = None
    done: bool = False
    """The reply went back (`on_done` was called)."""
    sent_at: float = 0.0
    metered: bool = True
    """Counted in the relay's `PublishMeter`."""


class Relay:
    """Sends publishes on the master's PUB socket and gathers replies."""

    def __init__(self, pub: zmq.Socket[bytes], loop: EventLoop) -> None:
        self.pub = pub
        self.loop = loop
        self.seq = 0
        self.pending: dict[int, Gather] = {}
        """Gathers by publish number: until every target's outcome is known."""
        self.late_replies = 0
        self.sent = 0
        self.meter = PublishMeter()
        self.on_late_answer: Callable[[TreeReply, WorkerResult], None] = lambda r, w: None
        """Called with the reply already given and a straggler's outcome (see the module
        docstring); the master puts `late_answer_fields` on its event stream."""

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
        targeted: bool = False,
    ) -> Gather:
        """Send once to every subscriber; gather the `targets`' replies until
        `reply.require` is met or can no longer be met. `targeted`: only the
        `targets` run it (their topics go in the frame)."""
        self.seq += 1
        seq = self.seq
        reply.seq = seq
        waiting = dict.fromkeys(targets)
        to = [worker.topic for worker in waiting] if targeted else None
        # Two sends, not send_multipart: a third of its cost for a frame this small.
        self.pub.send(protocol.BROADCAST_TOPIC, _SNDMORE)
        self.pub.send(template.frame(seq, to))
        self.sent += 1
        gather = Gather(
            reply, waiting, [on_done] if on_done else [], targets=len(waiting),
            sent_at=self.loop.clock(), metered=metered,
        )  # fmt: skip
        self.pending[seq] = gather
        if gather.waiting:
            gather.timer = self.loop.call_later(timeout, lambda: self._expire(seq))
        self._settle(seq, gather)
        return gather

    def send_drain(self, topic: bytes) -> None:
        """Tell the worker subscribed to `topic` that the master drains it.

        The DRAIN marker goes out on PUB after every publish sent so far, and
        ZeroMQ keeps the order on the way to one subscriber: once the worker
        reads it, it has read every publish it may be a target of, and it
        answers those before it stops (see `procbus.worker.drain`).
        """
        frame = protocol.encode(MsgType.DRAIN, {"last_seq": self.seq})
        self.pub.send(topic, _SNDMORE)
        self.pub.send(frame)

    def on_reply(self, worker: WorkerProc, message: protocol.Message) -> None:
        seq: int = message["seq"]
        gather = self.pending.get(seq)
        if gather is None or worker not in gather.waiting:
            self.late_replies += 1
            log.debug("dropped a late reply to publish %d from worker %d", seq, worker.id)
            return
        # `protocol.decode` checked the reply's fields and each error's.
        errors = [
            RemoteError(
                worker.id, e["type"], e["message"], listener=e["listener"],
                traceback=e["traceback"],
            )
            for e in message["errors"]
        ]  # fmt: skip
        status = WorkerStatus.ERROR if errors else WorkerStatus.OK
        result = WorkerResult(
            worker.id, worker.pid, worker.generation, status, message["results"], errors
        )
        self._outcome(seq, gather, worker, result)

    def on_worker_gone(self, worker: WorkerProc) -> None:
        """`worker` died: every publish still waiting for it reports it lost."""
        for seq, gather in list(self.pending.items()):
            if worker in gather.waiting:
                result = WorkerResult(worker.id, worker.pid, worker.generation, WorkerStatus.LOST)
                self._outcome(seq, gather, worker, result)

    def _expire(self, seq: int) -> None:
        gather = self.pending.get(seq)
        if gather is None:
            return
        for worker in list(gather.waiting):
            result = WorkerResult(worker.id, worker.pid, worker.generation, WorkerStatus.TIMEOUT)
            self._outcome(seq, gather, worker, result, settle=False)
        self._settle(seq, gather)

    def _outcome(
        self,
        seq: int,
        gather: Gather,
        worker: WorkerProc,
        result: WorkerResult,
        *,
        settle: bool = True,
    ) -> None:
        """`worker`'s outcome of publish `seq`: into the reply, or, once the reply went
        back, to `on_late_answer`."""
        del gather.waiting[worker]
        if gather.metered:
            self.meter.answered(result.status.value)
        if gather.done:
            self.on_late_answer(gather.reply, result)
        else:
            gather.reply.workers[worker.id] = result
            if result.status is WorkerStatus.OK:
                gather.ok += 1
            else:
                gather.failed += 1
        if settle:
            self._settle(seq, gather)

    def _settle(self, seq: int, gather: Gather) -> None:
        """Give the reply back once the requirement is decided; forget the gather once
        no target is left to hear from."""
        if not gather.done and (
            not gather.waiting
            or verdict(gather.reply.require, gather.targets, gather.ok, gather.failed)
            is not Verdict.WAITING
        ):
            self._give_back(gather)
        if gather.waiting:
            return
        del self.pending[seq]
        if gather.timer is not None:
            gather.timer.cancel()

    def _give_back(self, gather: Gather) -> None:
        gather.done = True
        reply = gather.reply
        for worker in gather.waiting:
            reply.workers[worker.id] = WorkerResult(
                worker.id, worker.pid, worker.generation, WorkerStatus.PENDING
            )
        if gather.metered:
            # Each outcome was counted when it came (`_outcome`).
            self.meter.replied(self.loop.clock() - gather.sent_at)
        for callback in gather.on_done:
            callback(reply)
