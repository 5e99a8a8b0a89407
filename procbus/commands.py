"""The control commands: names, arguments, roles, and the signals that map to them.

One table serves both ends. ``procbus ctl`` checks a command against it before
connecting (a typo exits 2 even when no master runs), and the master's control
server checks every request against it again before running anything. A signal
sent to the master runs the same command as its ``procbus ctl`` equivalent.

This module is imported by the CLI at start-up: it imports nothing heavy
(NamedTuples, not dataclasses, which import ``inspect``).
"""

from __future__ import annotations

import enum
import reprlib
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple


class Role(enum.StrEnum):
    """What a control client may do."""

    READ = "read"
    """status, stats, jobs, metrics, retained, ping, version, watch."""
    ADMIN = "admin"
    """Everything."""


class ErrorCode(enum.StrEnum):
    """Stable error codes of control replies."""

    BAD_REQUEST = "bad_request"
    """The message is not a well-formed control request."""
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENTS = "bad_arguments"
    FORBIDDEN = "forbidden"
    """The caller's role does not allow the command."""
    NOT_FOUND = "not_found"
    """A well-formed command names something that does not exist (``kill 99``)."""
    FAILED = "failed"
    """The command ran and something in the tree failed."""
    UNAVAILABLE = "unavailable"
    """The command cannot run now (the master is stopping)."""
    INTERNAL = "internal"
    """A bug in the master; the message says what."""
    UNREACHABLE = "unreachable"
    """Client side only: no answer from the master within the timeout."""
    SKIPPED = "skipped"
    """Client side only: not sent, a ``--rolling`` command stopped before this master."""


class CommandError(Exception):
    """A command was refused or failed; carries its `ErrorCode`."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Param(NamedTuple):
    """One positional parameter or option of a command."""

    name: str
    kind: type
    """int or str."""
    required: bool = True
    many: bool = False
    """Takes the rest of the positional arguments (publish's ARG ...)."""
    minimum: int | None = None
    help: str = ""


class Option(NamedTuple):
    """A keyword option (``--batch 2``, ``--adopt``)."""

    name: str
    kind: type
    """int, str, bool (a flag), or dict (repeatable KEY=VALUE)."""
    minimum: int | None = None
    help: str = ""


class CommandSpec(NamedTuple):
    name: str
    role: Role
    help: str
    params: Sequence[Param] = ()
    options: Sequence[Option] = ()
    job: bool = False
    """Long command: answered with a job id, waited for by default."""


def _spec(*specs: CommandSpec) -> dict[str, CommandSpec]:
    return {spec.name: spec for spec in specs}


COMMANDS: Final[Mapping[str, CommandSpec]] = _spec(
    CommandSpec("ping", Role.READ, "check that the master answers"),
    CommandSpec("version", Role.READ, "procbus and protocol versions of the master"),
    CommandSpec("status", Role.READ, "the master and every worker"),
    CommandSpec("stats", Role.READ, "process figures of the master and every worker"),
    CommandSpec("jobs", Role.READ, "long commands running or recently finished"),
    CommandSpec(
        "metrics",
        Role.READ,
        "Prometheus metrics of the master and every worker (the text /metrics serves)",
        options=(Option("openmetrics", bool, help="OpenMetrics text instead of Prometheus's"),),
    ),
    CommandSpec(
        "publish",
        Role.ADMIN,
        "publish on the whole tree and show every process's answer",
        params=(
            Param("channel", str, help="the channel"),
            Param("args", str, required=False, many=True, help="arguments (JSON literals)"),
        ),
        options=(
            Option("kw", dict, help="keyword argument KEY=VALUE (repeatable)"),
            Option(
                "require",
                str,
                help="what done means: all (default), any, or a number of workers",
            ),
            Option("to", str, help="only these workers (ids, as 1,3)"),
            Option("to_generation", int, minimum=1, help="only the workers of this generation"),
            Option("retain", bool, help="keep it for every worker started later"),
            Option("clear", bool, help="with --retain: drop the channel's retained publish"),
        ),
    ),
    CommandSpec(
        "retained",
        Role.READ,
        "the retained publishes: channel, when, seq, size, who published (no arguments)",
    ),
    CommandSpec("graceful", Role.ADMIN, "publish graceful: every worker reloads in place"),
    CommandSpec(
        "reload",
        Role.ADMIN,
        "replace every worker, never below N: the whole new generation at once, then the "
        "old drains",
        options=(
            Option(
                "batch",
                int,
                minimum=0,
                help="workers replaced at a time (0: all at once; default: reload_batch)",
            ),
        ),
        job=True,
    ),
    CommandSpec(
        "restart",
        Role.ADMIN,
        "stop the workers and re-exec the master, keeping the listening sockets",
        options=(Option("adopt", bool, help="keep the live workers across the re-exec"),),
        job=True,
    ),
    CommandSpec(
        "upgrade", Role.ADMIN, "start a new master beside this one, then hand over", job=True
    ),
    CommandSpec("stop", Role.ADMIN, "drain and stop every worker; the master stays up", job=True),
    CommandSpec("start", Role.ADMIN, "start the workers again after stop", job=True),
    CommandSpec(
        "exit",
        Role.ADMIN,
        "stop every worker and end the master",
        options=(Option("fast", bool, help="cut requests in flight (as SIGQUIT does)"),),
    ),
    CommandSpec(
        "scale",
        Role.ADMIN,
        "run exactly N workers",
        params=(Param("n", int, minimum=0, help="number of workers"),),
        job=True,
    ),
    CommandSpec(
        "incr",
        Role.ADMIN,
        "add workers",
        params=(Param("n", int, required=False, minimum=1, help="how many (default 1)"),),
        job=True,
    ),
    CommandSpec(
        "decr",
        Role.ADMIN,
        "remove workers (the highest ids)",
        params=(Param("n", int, required=False, minimum=1, help="how many (default 1)"),),
        job=True,
    ),
    CommandSpec(
        "kill",
        Role.ADMIN,
        "signal one worker (it is replaced)",
        params=(Param("worker_id", int, minimum=1, help="the worker's id"),),
        options=(Option("signal", str, help="signal name or number (default TERM)"),),
    ),
)

SIGNAL_COMMANDS: Final[Mapping[int, tuple[str, Mapping[str, Any]]]] = {
    signal.SIGHUP: ("reload", {}),
    signal.SIGUSR1: ("graceful", {}),
    signal.SIGUSR2: ("upgrade", {}),
    signal.SIGTTIN: ("incr", {}),
    signal.SIGTTOU: ("decr", {}),
    signal.SIGTERM: ("exit", {}),
    signal.SIGINT: ("exit", {}),
    signal.SIGQUIT: ("exit", {"fast": True}),
}
"""Signals to the master run these commands (name, options), as ``procbus ctl`` would."""


def parse_signal(value: str | int) -> int:
    """``"TERM"``, ``"SIGTERM"``, ``"15"`` or 15 to a signal number."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        try:
            return int(signal.Signals[name])
        except KeyError:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS,
                f"unknown signal {_short(value)} (expected e.g. TERM or 15)",
            ) from None
    else:
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS, f"signal must be a name or number, got {_short(value)}"
        )
    if number not in signal.valid_signals() or number == 0:
        raise CommandError(ErrorCode.BAD_ARGUMENTS, f"signal {number} is not a valid signal")
    return number


def check_request(
    command: object, args: object, kwargs: object
) -> tuple[CommandSpec, list[Any], dict[str, Any]]:
    """Validate a request against the table; return the spec and clean arguments.

    Raises `CommandError` (``unknown_command`` or ``bad_arguments``) naming the
    bad value and what was expected.
    """
    if not isinstance(command, str) or command not in COMMANDS:
        known = ", ".join(sorted(COMMANDS))
        raise CommandError(
            ErrorCode.UNKNOWN_COMMAND, f"unknown command {_short(command)} (known: {known})"
        )
    spec = COMMANDS[command]
    if not isinstance(args, list):
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS, f"{command}: args must be a list, got {_short(args)}"
        )
    if not isinstance(kwargs, dict):
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS, f"{command}: kwargs must be a map, got {_short(kwargs)}"
        )
    clean_args: list[Any] = []
    rest = list(args)
    for param in spec.params:
        if param.many:
            clean_args.extend(rest)
            rest = []
            break
        if not rest:
            if param.required:
                raise CommandError(
                    ErrorCode.BAD_ARGUMENTS, f"{command}: missing argument {param.name.upper()}"
                )
            break
        clean_args.append(
            _check_value(command, param.name, param.kind, param.minimum, rest.pop(0))
        )
    if rest:
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS,
            f"{command}: unexpected argument {_short(rest[0])} "
            f"(takes {_usage(spec) or 'no arguments'})",
        )
    options = {option.name: option for option in spec.options}
    clean_kwargs: dict[str, Any] = {}
    for key, value in kwargs.items():
        option = options.get(key)
        if option is None:
            raise CommandError(ErrorCode.BAD_ARGUMENTS, f"{command}: unknown option {_short(key)}")
        clean_kwargs[key] = _check_value(command, key, option.kind, option.minimum, value)
    return spec, clean_args, clean_kwargs


def _short(value: object, limit: int = 80) -> str:
    """`repr` of a value to echo in an error, cut to `limit` characters."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = limit
    return short.repr(value)


def _check_value(command: str, name: str, kind: type, minimum: int | None, value: Any) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is dict and ok:
        ok = all(isinstance(k, str) for k in value)
    if not ok:
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS,
            f"{command}: {name} must be {_kind_name(kind)}, got {_short(value)}",
        )
    if minimum is not None and value < minimum:
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS, f"{command}: {name} must be >= {minimum}, got {value}"
        )
    return value


def _kind_name(kind: type) -> str:
    return {int: "an integer", str: "a string", bool: "true or false", dict: "a map"}.get(
        kind, kind.__name__
    )


def _usage(spec: CommandSpec) -> str:
    parts = []
    for param in spec.params:
        text = param.name.upper() + (" ..." if param.many else "")
        parts.append(text if param.required else f"[{text}]")
    return " ".join(parts)
