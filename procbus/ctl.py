"""``procbus ctl``: drive running masters from the shell.

Exit statuses: 0 success; 1 the command ran but something in the tree failed
(a listener error, a timeout, a lost worker, a failed job) or was refused; 2
usage error (checked before connecting, so it needs no master); 3 no master
answered within the timeout.

Human output by default, one JSON document on stdout with ``--json``.

A fleet: with several masters (``--ctl`` given more than once, or
``--ctl-file``), the read commands (ping, version, status, stats, jobs,
metrics ...), ``publish`` and ``graceful`` run on all of them at once (see
`procbus.fleet`), each with its own ``--timeout``; the admin commands (reload,
restart, upgrade, stop, start, exit, scale, incr, decr, kill) run on one
master after another, on all of them whatever fails, unless ``--parallel``
(all at once) or ``--rolling``: one master at a time, stopping at the first
that fails, or with ``--max-failures K`` at the K+1th (the masters after it are
reported as skipped). The output has one result per master, in the order
given; the exit status is the largest of theirs (3 if one master was
unreachable, even when the others answered). A duplicated endpoint, an empty
or unreadable ``--ctl-file``, ``--max-failures`` without ``--rolling``, and
``watch`` (one master's stream) with several endpoints are usage errors.
A ``tcp://`` endpoint needs CURVE keys: ``--curve-keys DIR`` (or
``PROCBUS_CURVE_KEYS``) with ``DIR/server.key`` and the client's
``DIR/secret/NAME.key_secret``, NAME from ``--curve-client`` (or
``PROCBUS_CURVE_CLIENT``, or the only pair there); see `procbus.keys`.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Final, TextIO

from procbus.commands import COMMANDS, CommandError, ErrorCode, Role, check_request

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_TIMEOUT = 10.0
DEFAULT_JOB_TIMEOUT = 300.0


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """Options accepted before or after the command (defaults applied later)."""
    group = parser.add_argument_group("connection and output")
    sup = argparse.SUPPRESS
    group.add_argument("--name", default=sup, help="instance name (default: procbus)")
    group.add_argument("--runtime-dir", default=sup, help="the master's runtime directory")
    group.add_argument(
        "--ctl",
        action="append",
        default=sup,
        metavar="ENDPOINT",
        help="control endpoint (repeatable: one result per master)",
    )
    group.add_argument(
        "--ctl-file", default=sup, metavar="FILE", help="file of endpoints, one a line"
    )
    group.add_argument("--json", action="store_true", default=sup, help="print one JSON document")
    group.add_argument(
        "--timeout", type=float, default=sup, metavar="S", help="bound on the whole command"
    )
    group.add_argument(
        "--no-wait", action="store_true", default=sup, help="return a job's id at once"
    )
    group.add_argument(
        "--rolling",
        action="store_true",
        default=sup,
        help="one master at a time, each waited for; stop at the first failed master",
    )
    group.add_argument(
        "--max-failures",
        type=int,
        default=sup,
        metavar="K",
        help="with --rolling: go on past K failed masters, stop at the next (default 0)",
    )
    group.add_argument(
        "--parallel",
        action="store_true",
        default=sup,
        help="run an admin command on every master at once (read commands, publish and "
        "graceful always are)",
    )
    group.add_argument(
        "--curve-keys",
        default=sup,
        metavar="DIR",
        help="CURVE keys for tcp:// endpoints: DIR/server.key and DIR/secret/NAME.key_secret "
        "(env PROCBUS_CURVE_KEYS)",
    )
    group.add_argument(
        "--curve-client",
        default=sup,
        metavar="NAME",
        help="which client key pair of --curve-keys to use (env PROCBUS_CURVE_CLIENT; "
        "default: the only one)",
    )


_VALUE_OPTIONS: Final = (
    "--name",
    "--runtime-dir",
    "--ctl",
    "--ctl-file",
    "--timeout",
    "--curve-keys",
    "--curve-client",
    "--max-failures",
)
"""The options of `add_global_options` that take a value (`command_in` skips it)."""


def command_in(argv: Sequence[str]) -> str | None:
    """The command named by the words after ``procbus ctl``, or None if unsure.

    The first word that is neither an option nor an option's value, as
    argparse reads it (``--opt=value`` and abbreviations of the value-taking
    options included); None when that word is no known command, or before a
    ``--``: then the whole parser is built, for its usual errors and help.
    """
    takes_value = False
    for word in argv:
        if takes_value:
            takes_value = False
        elif word == "--":
            return None
        elif word.startswith("-") and word != "-":
            takes_value = (
                word.startswith("--")
                and "=" not in word
                and any(option.startswith(word) for option in _VALUE_OPTIONS)
            )
        else:
            return word if word in COMMANDS or word == "watch" else None
    return None


def build_parser(parser: argparse.ArgumentParser, only: str | None = None) -> None:
    """Fill the ``ctl`` parser: global options and one subcommand per command.

    With `only` (see `command_in`), that command's subcommand alone: enough to
    parse its command line, at a tenth of the cost.
    """
    add_global_options(parser)
    commands = parser.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    for spec in COMMANDS.values():
        if only is not None and spec.name != only:
            continue
        sub = commands.add_parser(spec.name, help=spec.help, description=spec.help)
        for param in spec.params:
            kind = int if param.kind is int else str
            if param.many:
                sub.add_argument(param.name, nargs="*", help=param.help)
            elif param.required:
                sub.add_argument(param.name, type=kind, help=param.help)
            else:
                sub.add_argument(param.name, type=kind, nargs="?", help=param.help)
        for option in spec.options:
            flag = "--" + option.name.replace("_", "-")
            if option.kind is bool:
                sub.add_argument(flag, action="store_true", help=option.help)
            elif option.kind is dict:
                sub.add_argument(flag, action="append", metavar="KEY=VALUE", help=option.help)
            else:
                sub.add_argument(flag, type=option.kind, help=option.help)
        add_global_options(sub)
    if only is not None and only != "watch":
        return
    watch = commands.add_parser("watch", help="stream the master's events")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.add_argument("--duration", type=float, help="stop after this many seconds")
    add_global_options(watch)


def parse_literal(text: str) -> Any:
    """A JSON literal where it parses (``42``, ``"a"``, ``{"k": 1}``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def request_from_args(args: argparse.Namespace) -> tuple[str, list[Any], dict[str, Any]]:
    """The (command, args, kwargs) of a parsed command line, checked."""
    name = args.ctl_command
    spec = COMMANDS[name]
    positional: list[Any] = []
    for param in spec.params:
        value = getattr(args, param.name)
        if param.many:
            positional.extend(parse_literal(v) for v in value or [])
        elif value is not None:
            positional.append(value)
    options: dict[str, Any] = {}
    for option in spec.options:
        value = getattr(args, option.name)
        if option.kind is dict:
            if value:
                options[option.name] = _parse_pairs(value)
        elif option.kind is bool:
            if value:
                options[option.name] = True
        elif value is not None:
            options[option.name] = value
    if name == "publish":
        # Arguments are JSON literals; the channel is a plain string.
        positional[0] = str(args.channel)
    check_request(name, positional, options)
    return name, positional, options


def _parse_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CommandError(ErrorCode.BAD_ARGUMENTS, f"--kw {pair!r}: expected KEY=VALUE")
        result[key] = parse_literal(value)
    return result


def check_seconds(flag: str, value: float, *, zero: bool = False) -> float:
    """`value` of option `flag` if it is a finite number of seconds > 0 (>= 0 with `zero`).

    argparse's ``float`` takes ``inf`` and ``nan``: as a deadline the one
    overflows and the other never comes, so both are usage errors, like a
    negative number. Raises `CommandError` (``bad_arguments``) naming the value.
    """
    if math.isfinite(value) and (value > 0 or (zero and value == 0)):
        return value
    raise CommandError(
        ErrorCode.BAD_ARGUMENTS,
        f"{flag} must be a finite number of seconds {'>=' if zero else '>'} 0, got {value:g}",
    )


def check_count(flag: str, value: int) -> int:
    """`value` of option `flag` if it is > 0; else `CommandError` naming it."""
    if value > 0:
        return value
    raise CommandError(ErrorCode.BAD_ARGUMENTS, f"{flag} must be a whole number > 0, got {value}")


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    return getattr(args, name, default)


def targets(args: argparse.Namespace) -> list[str]:
    """The control endpoints to talk to."""
    endpoints = list(_option(args, "ctl", None) or [])
    ctl_file = _option(args, "ctl_file", None)
    if ctl_file:
        try:
            with open(ctl_file, encoding="utf-8") as handle:
                listed = [
                    line.strip() for line in handle if line.strip() and not line.startswith("#")
                ]
        except OSError as exc:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS, f"--ctl-file {ctl_file!r}: {exc.strerror}"
            ) from None
        except UnicodeDecodeError:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS, f"--ctl-file {ctl_file!r}: not UTF-8 text"
            ) from None
        if not listed:
            # Not the local master instead: a fleet file emptied by mistake must not
            # reload whatever runs here.
            raise CommandError(ErrorCode.BAD_ARGUMENTS, f"--ctl-file {ctl_file!r}: no endpoint")
        endpoints.extend(listed)
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint in seen:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS,
                f"endpoint {endpoint!r} given twice (it would run the command twice)",
            )
        seen.add(endpoint)
    if not endpoints:
        from procbus.errors import StartupError  # noqa: PLC0415
        from procbus.paths import control_endpoint  # noqa: PLC0415

        name = _option(args, "name", None) or os.environ.get("PROCBUS_NAME", "procbus")
        try:
            endpoints.append(control_endpoint(name, _option(args, "runtime_dir", None)))
        except StartupError as exc:  # a bad --name, a --runtime-dir too long for ipc
            raise CommandError(ErrorCode.BAD_ARGUMENTS, str(exc)) from None
    return endpoints


def _is_ipc(endpoint: str) -> bool:
    return endpoint.startswith("ipc://")


def curve_keys(
    args: argparse.Namespace, endpoints: Sequence[str]
) -> tuple[bytes, bytes, bytes] | None:
    """The CURVE keys for the tcp:// `endpoints` (None when all are ipc://).

    From ``--curve-keys``/``--curve-client`` or ``PROCBUS_CURVE_KEYS``/
    ``PROCBUS_CURVE_CLIENT``; missing or unreadable keys are a usage error.
    """
    remote = [endpoint for endpoint in endpoints if not _is_ipc(endpoint)]
    if not remote:
        return None
    directory = _option(args, "curve_keys", None) or os.environ.get("PROCBUS_CURVE_KEYS")
    name = _option(args, "curve_client", None) or os.environ.get("PROCBUS_CURVE_CLIENT") or None
    if not directory:
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS,
            f"{remote[0]} needs CURVE keys: --curve-keys DIR [--curve-client NAME] "
            "(or PROCBUS_CURVE_KEYS), made by `procbus keys generate`",
        )
    from pathlib import Path  # noqa: PLC0415

    from procbus import keys  # noqa: PLC0415 - imports zmq
    from procbus.errors import ConfigError  # noqa: PLC0415

    try:
        return keys.load_client(Path(directory), name)
    except ConfigError as exc:
        raise CommandError(ErrorCode.BAD_ARGUMENTS, f"--curve-keys: {exc}") from None


def _checked_numbers(args: argparse.Namespace, command: str) -> float:
    """The timeout (``--timeout`` or the command's default), and watch's
    ``--duration`` and ``--count``, checked; `CommandError` on a bad one."""
    if command == "watch":
        if args.duration is not None:
            check_seconds("--duration", args.duration)
        if args.count is not None:
            check_count("--count", args.count)
    timeout = _option(args, "timeout", None)
    if timeout is None:
        spec = COMMANDS.get(command)
        return DEFAULT_JOB_TIMEOUT if spec is not None and spec.job else DEFAULT_TIMEOUT
    return check_seconds("--timeout", timeout)


class Mode(enum.Enum):
    """How a command runs on several masters."""

    CONCURRENT = "concurrent"
    """On all at once (`procbus.fleet`): read commands, publish, graceful; --parallel."""
    SEQUENTIAL = "sequential"
    """One after another, each whatever the others did: admin commands by default."""
    ROLLING = "rolling"
    """One after another, stopping after too many failed masters: --rolling."""


CONCURRENT_COMMANDS: Final = frozenset(
    {name for name, spec in COMMANDS.items() if spec.role is Role.READ} | {"publish", "graceful"}
)
"""Commands that run on every master at once: they read, or every master answers at once
(a publish); the admin commands that change a tree (reload, stop ...) go one by one."""


def fleet_mode(args: argparse.Namespace, command: str) -> tuple[Mode, int]:
    """The `Mode` of `command` and the failures a roll goes on past, from the options.

    ``--rolling`` with ``--parallel`` or ``--no-wait``, and ``--max-failures``
    without ``--rolling`` or below 0, are usage errors (`CommandError`).
    """
    rolling = bool(_option(args, "rolling", False))
    parallel = bool(_option(args, "parallel", False))
    max_failures = _option(args, "max_failures", None)
    if max_failures is not None:
        if not rolling:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS,
                f"--max-failures {max_failures}: only with --rolling (the other modes run "
                "every master whatever fails)",
            )
        if max_failures < 0:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS,
                f"--max-failures must be a whole number >= 0, got {max_failures}",
            )
    if rolling and parallel:
        raise CommandError(ErrorCode.BAD_ARGUMENTS, "--rolling and --parallel exclude each other")
    if rolling and _option(args, "no_wait", False):
        raise CommandError(
            ErrorCode.BAD_ARGUMENTS,
            "--rolling waits for each master's command to end: not with --no-wait",
        )
    if rolling:
        return Mode.ROLLING, max_failures or 0
    if parallel or command in CONCURRENT_COMMANDS:
        return Mode.CONCURRENT, 0
    return Mode.SEQUENTIAL, 0


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run a parsed ``procbus ctl`` command line; return the exit status."""
    as_json = bool(_option(args, "json", False))
    command: str = args.ctl_command
    positional: list[Any] = []
    options: dict[str, Any] = {}
    try:
        if command != "watch":
            command, positional, options = request_from_args(args)
        timeout = _checked_numbers(args, command)
        mode, max_failures = fleet_mode(args, command)
        endpoints = targets(args)
        if command == "watch" and len(endpoints) > 1:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS,
                f"watch follows one master, got {len(endpoints)} endpoints",
            )
        curve = curve_keys(args, endpoints)
    except CommandError as exc:
        return _usage_error(exc.message, as_json, out, err)
    if command == "watch":
        from procbus.watch import watch  # noqa: PLC0415

        return watch(
            endpoints[0],
            timeout,
            count=args.count,
            duration=args.duration,
            as_json=as_json,
            out=out,
            err=err,
            curve=curve,
        )

    wait = not _option(args, "no_wait", False)
    if len(endpoints) > 1 and mode is Mode.CONCURRENT:
        from procbus import fleet  # noqa: PLC0415

        replies = fleet.request_all(
            endpoints, command, positional, options, wait=wait, timeout=timeout, curve=curve
        )
    else:
        replies = _one_by_one(
            endpoints,
            command,
            positional,
            options,
            wait=wait,
            timeout=timeout,
            curve=curve,
            mode=mode,
            max_failures=max_failures,
        )
    documents: list[dict[str, Any]] = []
    status = EXIT_OK
    for endpoint, reply in zip(endpoints, replies, strict=True):
        code = _exit_status(command, reply)
        status = max(status, code)
        documents.append({"endpoint": endpoint, "exit": code, **reply})
        if not as_json:
            _print_human(command, endpoint if len(endpoints) > 1 else None, reply, out, err)
        elif not reply.get("ok"):  # the JSON document goes to stdout, the one line here
            from procbus.render import printable  # noqa: PLC0415

            prefix = f"[{endpoint}] " if len(endpoints) > 1 else ""
            print(printable(_error_line(prefix, command, reply)), file=err)
    if as_json:
        if len(endpoints) == 1:
            document = documents[0]
            json.dump(
                document.get("result") if document["ok"] else _error_document(document),
                out,
                indent=2,
                sort_keys=False,
                default=str,
            )
        else:
            json.dump({"masters": documents}, out, indent=2, default=str)
        out.write("\n")
    return status


def _one_by_one(
    endpoints: Sequence[str],
    command: str,
    positional: list[Any],
    options: dict[str, Any],
    *,
    wait: bool,
    timeout: float,
    curve: tuple[bytes, bytes, bytes] | None,
    mode: Mode,
    max_failures: int,
) -> list[dict[str, Any]]:
    """Each master's reply, one master after another; a roll (`Mode.ROLLING`) stops
    after `max_failures` + 1 failed masters, and the rest are replied ``skipped``."""
    from procbus.client import Client, ControlError  # noqa: PLC0415

    replies: list[dict[str, Any]] = []
    failed: list[str] = []
    for endpoint in endpoints:
        if mode is Mode.ROLLING and len(failed) > max_failures:
            replies.append(_skipped(failed))
            continue
        try:
            with Client(endpoint, timeout, curve=None if _is_ipc(endpoint) else curve) as client:
                reply = client.request(command, positional, options, wait=wait, timeout=timeout)
        except ControlError as exc:
            reply = {"ok": False, "error": {"code": exc.code.value, "message": exc.message}}
        replies.append(reply)
        if _exit_status(command, reply) != EXIT_OK:
            failed.append(endpoint)
    return replies


def _skipped(failed: Sequence[str]) -> dict[str, Any]:
    stop = f"after {len(failed)} failed masters" if len(failed) > 1 else f"at {failed[0]}"
    return {
        "ok": False,
        "skipped": True,
        "error": {"code": ErrorCode.SKIPPED.value, "message": f"not run: the roll stopped {stop}"},
    }


def _error_document(reply: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"error": reply.get("error")}
    if reply.get("result") is not None:
        document["result"] = reply["result"]
    return document


def _error_line(prefix: str, command: str, reply: dict[str, Any]) -> str:
    """The one line for a refused command (its name once, though the master's message
    may start with it too)."""
    message = str((reply.get("error") or {}).get("message", "failed"))
    message = message.removeprefix(f"{command}: ")
    return f"{prefix}procbus ctl {command}: {message}"


def _usage_error(message: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    print(f"procbus ctl: {message}", file=err)
    if as_json:
        json.dump({"error": {"code": ErrorCode.BAD_ARGUMENTS.value, "message": message}}, out)
        out.write("\n")
    return EXIT_USAGE


def _exit_status(command: str, reply: dict[str, Any]) -> int:
    if not reply.get("ok"):
        code = (reply.get("error") or {}).get("code")
        if code == ErrorCode.UNREACHABLE.value:
            return EXIT_UNREACHABLE
        if code in (ErrorCode.BAD_ARGUMENTS.value, ErrorCode.UNKNOWN_COMMAND.value):
            return EXIT_USAGE
        return EXIT_FAILED
    result = reply.get("result")
    if isinstance(result, dict) and result.get("ok") is False:
        return EXIT_FAILED
    return EXIT_OK


# -- human output -------------------------------------------------------------


def _print_human(
    command: str, endpoint: str | None, reply: dict[str, Any], out: TextIO, err: TextIO
) -> None:
    from procbus import render  # noqa: PLC0415

    prefix = f"[{endpoint}] " if endpoint else ""
    colour = out.isatty() and os.environ.get("NO_COLOR") is None
    if not reply.get("ok"):
        print(render.printable(_error_line(prefix, command, reply)), file=err)
        if reply.get("result") is not None:
            out.write(render.render(command, reply["result"], colour))
        return
    result = reply.get("result")
    if command == "metrics" and isinstance(result, dict):
        # The exposition as it is (for a textfile collector), escaped only on a terminal.
        text = str(result.get("text", ""))
        if out.isatty():
            text = "".join(render.printable(line) + "\n" for line in text.splitlines())
        out.write((f"# {endpoint}\n" if endpoint else "") + text)
        return
    text = render.render(command, result, colour)
    if prefix:
        text = "".join(prefix + line + "\n" for line in text.splitlines())
    out.write(text)
