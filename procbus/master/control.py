"""The one path into the tree: ``procbus ctl``, a signal and the Python API.

Every command, whoever asks, goes through `Commands.run(name, args, kwargs,
peer)`: the arguments are checked against the command table
(`procbus.commands`), the peer's role against the command's, the attempt is
written to the event stream (who, what, allowed or not; for ``publish`` the
channel, never argument values), a master that is exiting refuses admin
commands, and the handler runs. A signal is a peer of its own (``signal
SIGHUP``, admin), the Python API another (admin); the control socket's peers
are told apart by their uid or key (`procbus.master.control_server`).

Handlers are bound to the table by one dict of callables, checked to cover
it. A handler answers at once, or later: a publish when every worker
answered, a long command (reload, restart, upgrade, scale, stop, start) when
its job ends (`procbus.master.jobs`; asking again for a reload, restart or
upgrade while one is queued or running joins it). Each answer is an `Answer`,
which the caller reads at once or waits for with `Answer.then`.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from procbus import protocol
from procbus._version import __version__
from procbus.commands import (
    COMMANDS,
    SIGNAL_COMMANDS,
    CommandError,
    ErrorCode,
    Role,
    check_request,
    parse_signal,
)
from procbus.master.jobs import Job, JobState
from procbus.master.planner import WorkerProc
from procbus.master.relay import TreeReply
from procbus.publishing import DEFAULT, PublishOptions

log = logging.getLogger("procbus.control")

AUDIT_TEXT: Final = 80
"""Characters of a command or channel name kept in an audit event."""
REPLY_MARGIN: Final = 0.25
"""Seconds kept from a request's timeout for the reply to travel back."""
JOB_COMMANDS: Final = frozenset(name for name, spec in COMMANDS.items() if spec.job)
COALESCING: Final = frozenset({"reload", "restart", "upgrade"})
"""Long commands that join a job of their kind already queued or running."""


@dataclass(frozen=True)
class Peer:
    """Who asks: a role (None: none) and a description for the audit."""

    role: Role | None
    description: str

    @classmethod
    def for_signal(cls, signum: int) -> Peer:
        """A signal sent to the master: an admin (whoever may signal the master may
        do anything to it)."""
        return cls(Role.ADMIN, f"signal {signal.Signals(signum).name}")


API: Final = Peer(Role.ADMIN, "the Python API")
"""Code in the master's process calling `Master`'s methods."""


class Answer:
    """What a command answered: at once, or later (`then`)."""

    def __init__(self) -> None:
        self.done = False
        self.ok = False
        self.result: Any = None
        self.error: tuple[ErrorCode, str] | None = None
        self.job: Job | None = None
        """The job a long command started (or joined)."""
        self._callbacks: list[Callable[[Answer], None]] = []

    def resolve(self, result: Any = None, error: tuple[ErrorCode, str] | None = None) -> None:
        self.done, self.ok, self.result, self.error = True, error is None, result, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def then(self, callback: Callable[[Answer], None]) -> None:
        """Call `callback(answer)` when the answer is there (now, if it is)."""
        if self.done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def raise_for_error(self) -> None:
        """Raise `CommandError` if the command was refused or failed."""
        if self.done and self.error is not None:
            raise CommandError(*self.error)


class Scraped(Protocol):
    """The text of a metrics scrape (`procbus.master.scrape.Exposition`)."""

    def to_dict(self) -> dict[str, Any]: ...


class CommandTarget(Protocol):
    """What the commands may ask of the tree: the master implements it."""

    pid: int

    @property
    def generation(self) -> int: ...

    @property
    def exiting(self) -> bool: ...

    @property
    def target_workers(self) -> int:
        """The number of workers the pool keeps."""

    def emit(self, event: str, **data: Any) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def job_listing(self) -> list[dict[str, Any]]: ...

    def start_job(self, kind: str, args: dict[str, Any], coalesce: bool) -> Job:
        """Queue (or join, or run now from top-level code) the job of command `kind`."""

    def publish_async(
        self,
        channel: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        on_done: Callable[[TreeReply], None],
        options: PublishOptions = DEFAULT,
        publisher: str = ...,
    ) -> None:
        """Raises ``TypeError`` (an argument the wire cannot carry) or ``ValueError`` (an
        option the tree cannot honour: a target that does not exist) before anything runs;
        `publisher` says who publishes (kept with a retained publish)."""

    def request_exit(self, fast: bool = False) -> None: ...

    def retained(self) -> list[dict[str, Any]]:
        """The retained publishes: channel, time, age, seq, size, publisher (no arguments)."""

    def scrape(
        self,
        on_done: Callable[[Scraped], None],
        *,
        openmetrics: bool = False,
        timeout: float | None = None,
    ) -> None:
        """A metrics scrape of the whole tree (`procbus.master.scrape`)."""

    def kill_worker(self, worker_id: int, signum: int) -> WorkerProc: ...


Handler = Callable[["Call"], None]


@dataclass
class Call:
    """One command being run: checked arguments, who asked, and its answer."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    peer: Peer
    timeout: float | None
    answer: Answer

    def publish_timeout(self) -> float | None:
        """The deadline of a publish made for this call (its reply must travel back)."""
        if self.timeout is None:
            return None
        return max(0.05, self.timeout - REPLY_MARGIN)


class Commands:
    """Runs commands for every caller; see the module docstring."""

    def __init__(self, target: CommandTarget) -> None:
        self.target = target
        self._handlers: Mapping[str, Handler] = {
            "ping": self._ping,
            "version": self._version,
            "status": lambda call: call.answer.resolve(self.target.status()),
            "stats": lambda call: call.answer.resolve(self.target.stats()),
            "jobs": lambda call: call.answer.resolve({"jobs": self.target.job_listing()}),
            "retained": lambda call: call.answer.resolve({"retained": self.target.retained()}),
            "metrics": self._metrics,
            "publish": self._publish,
            "graceful": self._graceful,
            "exit": self._exit,
            "kill": self._kill,
            **dict.fromkeys(JOB_COMMANDS, self._job),
        }
        missing = set(COMMANDS) - set(self._handlers)
        assert not missing, f"commands without a handler: {missing}"

    def run(
        self,
        name: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        peer: Peer = API,
        *,
        timeout: float | None = None,
    ) -> Answer:
        """Check and run `name` for `peer`; the answer may come later (`Answer.then`)."""
        answer = Answer()
        try:
            spec, clean_args, clean_kwargs = check_request(name, args or [], kwargs or {})
            if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
                raise CommandError(
                    ErrorCode.BAD_ARGUMENTS,
                    f"timeout must be a finite number of seconds > 0, got {timeout!r}",
                )
        except CommandError as exc:
            self._audit(name, args, peer, allowed=False, reason=exc.code.value)
            answer.resolve(error=(exc.code, exc.message))
            return answer
        allowed = peer.role is Role.ADMIN or (peer.role is Role.READ and spec.role is Role.READ)
        self._audit(name, clean_args, peer, allowed=allowed)
        if not allowed:
            has = peer.role.value if peer.role else "none"
            message = f"{name} needs the {spec.role.value} role; {peer.description} has {has}"
            answer.resolve(error=(ErrorCode.FORBIDDEN, message))
            return answer
        if self.target.exiting and spec.role is Role.ADMIN and name != "exit":
            answer.resolve(error=(ErrorCode.UNAVAILABLE, "the master is exiting"))
            return answer
        call = Call(name, clean_args, clean_kwargs, peer, timeout, answer)
        try:
            self._handlers[name](call)
        except CommandError as exc:
            answer.resolve(error=(exc.code, exc.message))
        except Exception as exc:
            log.exception("command %s failed", name)
            answer.resolve(error=(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"[:500]))
        return answer

    def run_signal(self, signum: int) -> None:
        """A signal sent to the master runs its command (`SIGNAL_COMMANDS`) as that peer."""
        command, options = SIGNAL_COMMANDS[signum]
        name = signal.Signals(signum).name
        log.info("master %d: %s -> %s", self.target.pid, name, command)
        self.target.emit("signal", signal=name, command=command)
        answer = self.run(command, [], dict(options), Peer.for_signal(signum))
        answer.then(lambda done: log.error("%s: %s", name, done.error[1]) if done.error else None)

    def _audit(
        self,
        name: object,
        args: object,
        peer: Peer,
        *,
        allowed: bool,
        reason: str | None = None,
    ) -> None:
        """Who asked for what: never argument values (a read peer may be watching)."""
        fields: dict[str, Any] = {
            "command": name[:AUDIT_TEXT] if isinstance(name, str) else None,
            "peer": peer.description,
            "role": peer.role.value if peer.role else None,
            "allowed": allowed,
            "reason": reason if reason else (None if allowed else "forbidden"),
        }
        if name == "publish" and isinstance(args, list) and args and isinstance(args[0], str):
            fields["channel"] = args[0][:AUDIT_TEXT]
        self.target.emit("command", **fields)

    # -- handlers -----------------------------------------------------------

    def _ping(self, call: Call) -> None:
        target = self.target
        call.answer.resolve({"pong": True, "pid": target.pid, "generation": target.generation})

    def _version(self, call: Call) -> None:
        call.answer.resolve({"procbus": __version__, "protocol": protocol.VERSION})

    def _tree_reply(self, call: Call) -> Callable[[TreeReply], None]:
        return lambda reply: call.answer.resolve({**reply.to_dict(), "ok": reply.ok})

    def _publish(self, call: Call) -> None:
        channel, *args = call.args
        try:
            options = PublishOptions.parse({k: v for k, v in call.kwargs.items() if k != "kw"})
            self.target.publish_async(
                channel,
                args,
                call.kwargs.get("kw", {}),
                timeout=call.publish_timeout(),
                on_done=self._tree_reply(call),
                options=options,
                publisher=f"ctl {call.peer.description}",
            )
        except (TypeError, ValueError) as exc:  # an argument or option the tree cannot take
            raise CommandError(ErrorCode.BAD_ARGUMENTS, f"publish: {exc}"[:500]) from None

    def _metrics(self, call: Call) -> None:
        self.target.scrape(
            lambda exposition: call.answer.resolve(exposition.to_dict()),
            openmetrics=bool(call.kwargs.get("openmetrics", False)),
            timeout=call.publish_timeout(),
        )

    def _graceful(self, call: Call) -> None:
        self.target.publish_async(
            "graceful", [], {}, timeout=call.publish_timeout(), on_done=self._tree_reply(call)
        )

    def _exit(self, call: Call) -> None:
        call.answer.resolve({"exiting": True, "pid": self.target.pid})
        self.target.request_exit(fast=bool(call.kwargs.get("fast", False)))

    def _kill(self, call: Call) -> None:
        (worker_id,) = call.args
        signum = parse_signal(call.kwargs.get("signal", "TERM"))
        try:
            worker = self.target.kill_worker(worker_id, signum)
        except LookupError as exc:
            raise CommandError(ErrorCode.NOT_FOUND, str(exc).strip("'\"")) from None
        name = signal.Signals(signum).name
        call.answer.resolve({"worker": worker.id, "pid": worker.pid, "signal": name})

    def _job(self, call: Call) -> None:
        kind, args = self._job_of(call)
        job = self.target.start_job(kind, args, coalesce=kind in COALESCING)
        call.answer.job = job
        if job.ended:
            self._job_done(call, job)
        else:
            job.waiters.append(lambda finished: self._job_done(call, finished))

    def _job_of(self, call: Call) -> tuple[str, dict[str, Any]]:
        """(job kind, its arguments) for a long command."""
        name, options = call.name, call.kwargs
        count = call.args[0] if call.args else 1
        target = self.target.target_workers
        if name == "reload":
            # without --batch, the job reads the reload_batch setting (as the reload re-reads it)
            return "reload", ({"batch": options["batch"]} if "batch" in options else {})
        if name == "restart":
            return "restart", {"adopt": options.get("adopt", False)}
        if name == "scale":
            return "scale", {"workers": call.args[0]}
        if name == "incr":
            return "scale", {"workers": target + count}
        if name == "decr":
            return "scale", {"workers": max(0, target - count)}
        return name, {}  # upgrade, stop, start

    @staticmethod
    def _job_done(call: Call, job: Job) -> None:
        document = job.to_dict()
        if job.state is JobState.FAILED:
            call.answer.resolve(document, (ErrorCode.FAILED, job.error or "job failed"))
        else:
            call.answer.resolve(document)
