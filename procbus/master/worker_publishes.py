"""Publishes that start in a worker: the master runs them as its own tree publish.

A worker's app calls `procbus.tree.publish` (the request that changed a price
must drop it from every worker's cache); the worker sends a TREE_PUBLISH on
its DEALER, the hub (`procbus.master.hub`) hands it here with the worker it
came from, and the master runs it exactly as its own tree publish
(`TreePublisher.publish_async`: its own listeners, then every subscribed
worker, the caller included unless ``include_self=False``). The answer, a
TREE_REPLY with the tree's reply as `TreeReply.to_dict` gives it, goes back
from the publish's ``on_done``: the master never waits for it.

What a worker may not do, answered at once with a one-line error (`admit`, a
pure decision):

- publish ``start``, ``stop``, ``exit`` or ``graceful``: they drive the pool and
  stay with the master and ``procbus ctl``; nor ``log`` and ``main``, which stay
  on the master, nor ``procbus.metrics``, the reserved channel of metrics
  scrapes;
- give a timeout that is not a finite number of seconds > 0 (none: the
  master's ``publish_timeout``), or options `PublishOptions.parse` refuses;
- have more than `MAX_IN_FLIGHT` tree publishes waiting for their replies: a
  worker looping on publishes gets errors, and cannot eat the master.

Every request is on the event stream as a ``worker_publish`` event: the
worker, its pid and generation, the channel, whether it was allowed and why
not; never argument values (read-only peers watch the stream). A caller that
died before its answer is not answered (its answer is counted in
`WorkerPublishes.dropped_answers`). A request the wire refuses never gets
here: the hub drops and counts it like any malformed message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Protocol

from procbus import protocol
from procbus.commands import ErrorCode
from procbus.errors import ProtocolError
from procbus.master.planner import WorkerProc
from procbus.master.publisher import LOCAL_CHANNELS, POOL_CHANNELS
from procbus.master.relay import TreeReply
from procbus.protocol import Message, MsgType
from procbus.publishing import OPTION_NAMES, PublishOptions
from procbus.worker.metrics import METRICS_CHANNEL

log = logging.getLogger("procbus.master")

MAX_IN_FLIGHT: Final = 64
"""Tree publishes one worker may have waiting for their replies at once."""
WORKER_OPTIONS: Final = OPTION_NAMES | {"include_self"}
"""The options a worker's publish may carry."""
FORBIDDEN_CHANNELS: Final = POOL_CHANNELS | LOCAL_CHANNELS | {"graceful", METRICS_CHANNEL}
"""Channels a worker cannot publish to the tree (see the module docstring)."""
AUDIT_TEXT: Final = 80
"""Characters of a channel name kept in a ``worker_publish`` event."""
MESSAGE_TEXT: Final = 500
"""Characters of an error message sent back to the worker."""

_WHY_FORBIDDEN: Final = {
    **dict.fromkeys(
        POOL_CHANNELS | {"graceful"},
        "start, stop, exit and graceful stay with the master and procbus ctl",
    ),
    **dict.fromkeys(LOCAL_CHANNELS, "log and main stay on the master"),
    METRICS_CHANNEL: "the channel of metrics scrapes is reserved",
}


@dataclass(frozen=True, slots=True)
class TreeRequest:
    """A worker's tree publish, admitted."""

    id: int
    """The worker's own number for it (its answer carries it back)."""
    channel: str
    args: list[Any]
    kwargs: dict[str, Any]
    timeout: float | None
    """None: the master's ``publish_timeout``."""
    options: PublishOptions


class Refusal(NamedTuple):
    """Why a worker's tree publish was not run: an error code and one line."""

    code: ErrorCode
    message: str


def admit(worker_id: int, body: Mapping[str, Any], in_flight: int) -> TreeRequest | Refusal:
    """Whether worker `worker_id` may publish the TREE_PUBLISH `body` (already checked
    against the wire's schema), having `in_flight` tree publishes waiting already."""
    channel: str = body["channel"]
    why = _WHY_FORBIDDEN.get(channel)
    if why is not None:
        return Refusal(
            ErrorCode.FORBIDDEN,
            f"worker {worker_id} cannot publish {channel!r} to the tree: {why}",
        )
    timeout = body.get("timeout")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        return Refusal(
            ErrorCode.BAD_ARGUMENTS,
            f"timeout must be a finite number of seconds > 0, got {timeout!r}",
        )
    try:
        options = PublishOptions.parse(body.get("options", {}), allowed=WORKER_OPTIONS)
    except (TypeError, ValueError) as exc:  # TypeError: option names that are not text
        return Refusal(ErrorCode.BAD_ARGUMENTS, _line(exc))
    if in_flight >= MAX_IN_FLIGHT:
        return Refusal(
            ErrorCode.UNAVAILABLE,
            f"worker {worker_id} has {in_flight} tree publishes in flight already "
            f"(at most {MAX_IN_FLIGHT}): publish on {channel[:AUDIT_TEXT]!r} refused",
        )
    return TreeRequest(
        body["id"],
        channel,
        body["args"],
        body["kwargs"],
        None if timeout is None else float(timeout),
        options,
    )


def _line(exc: BaseException) -> str:
    """An exception as one line of at most `MESSAGE_TEXT` characters."""
    return " ".join(str(exc).split())[:MESSAGE_TEXT] or type(exc).__name__


class PublishAsync(Protocol):
    """The tree publish (`TreePublisher.publish_async`)."""

    def __call__(
        self,
        channel: str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_done: Callable[[TreeReply], None] | None = None,
        options: PublishOptions = ...,
        origin: WorkerProc | None = None,
    ) -> None: ...


class WorkerPublishes:
    """Runs the workers' tree publishes for the master (see the module docstring)."""

    def __init__(
        self,
        publish_async: PublishAsync,
        *,
        send: Callable[[WorkerProc, bytes], None],
        alive: Callable[[WorkerProc], bool],
        emit: Callable[..., None],
        exiting: Callable[[], bool],
    ) -> None:
        self.publish_async = publish_async
        self.send = send
        """Sends one frame to a worker's DEALER (the hub's ROUTER)."""
        self.alive = alive
        """Whether a worker is still the live process the pool knows."""
        self.emit = emit
        self.exiting = exiting
        self.in_flight: dict[WorkerProc, int] = {}
        """Tree publishes waiting for their replies, per worker that has any."""
        self.dropped_answers = 0
        """Answers not sent: their worker had died."""

    def receive(self, worker: WorkerProc, message: Message) -> None:
        """A TREE_PUBLISH from `worker` (which said hello): run it, or refuse it."""
        request = admit(worker.id, message.body, self.in_flight.get(worker, 0))
        if isinstance(request, TreeRequest) and self.exiting():
            request = Refusal(ErrorCode.UNAVAILABLE, "the master is exiting")
        if isinstance(request, TreeRequest):
            request = self._run(worker, request)
        if isinstance(request, Refusal):
            error = {"code": request.code.value, "message": request.message}
            self._answer(worker, message["id"], {"error": error})
        self._audit(worker, message["channel"], request)

    def _run(self, worker: WorkerProc, request: TreeRequest) -> TreeRequest | Refusal:
        """Start `request`'s publish; its refusal if the publisher refuses it."""
        self.in_flight[worker] = self.in_flight.get(worker, 0) + 1
        try:
            self.publish_async(
                request.channel,
                request.args,
                request.kwargs,
                timeout=request.timeout,
                on_done=lambda reply: self._done(worker, request.id, reply),
                options=request.options,
                origin=worker,
            )
        except (TypeError, ValueError) as exc:  # an argument or option the tree cannot take
            self._release(worker)
            return Refusal(ErrorCode.BAD_ARGUMENTS, _line(exc))
        except Exception as exc:  # the master survives a worker's publish, whatever happens
            log.exception("worker %d's publish on %r failed", worker.id, request.channel)
            self._release(worker)
            return Refusal(ErrorCode.INTERNAL, _line(exc))
        return request

    def _release(self, worker: WorkerProc) -> None:
        left = self.in_flight.get(worker, 0) - 1
        if left > 0:
            self.in_flight[worker] = left
        else:
            self.in_flight.pop(worker, None)

    def _done(self, worker: WorkerProc, request_id: int, reply: TreeReply) -> None:
        """The publish's requirement is decided: the reply goes back to its worker."""
        self._release(worker)
        self._answer(worker, request_id, {"reply": reply.to_dict()})

    def _answer(self, worker: WorkerProc, request_id: int, answer: dict[str, Any]) -> None:
        """Send a TREE_REPLY, unless `worker` died; a reply that cannot travel becomes
        an error saying why (never a frame the worker's socket would refuse)."""
        if not self.alive(worker):
            self.dropped_answers += 1
            log.debug("worker %d died before its tree publish %d was answered", worker.id,
                      request_id)  # fmt: skip
            return
        body = {"id": request_id, **answer}
        try:
            frame = protocol.encode(MsgType.TREE_REPLY, body)
            problem = protocol.beyond_limits(frame, protocol.DEFAULT_LIMITS)
        except (TypeError, ProtocolError) as exc:
            problem = _line(exc)
        if problem is not None:
            message = f"the tree's reply cannot go back to worker {worker.id}: {problem}"
            error = {"code": ErrorCode.FAILED.value, "message": message[:MESSAGE_TEXT]}
            frame = protocol.encode(MsgType.TREE_REPLY, {"id": request_id, "error": error})
        self.send(worker, frame)

    def _audit(self, worker: WorkerProc, channel: str, outcome: TreeRequest | Refusal) -> None:
        """Who published on what: never argument values (a read peer may be watching)."""
        reason = outcome.code.value if isinstance(outcome, Refusal) else None
        self.emit(
            "worker_publish",
            worker=worker.id,
            pid=worker.pid,
            generation=worker.generation,
            channel=channel[:AUDIT_TEXT],
            allowed=reason is None,
            reason=reason,
        )
