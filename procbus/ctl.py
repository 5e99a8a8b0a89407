"""``procbus ctl``: drive running masters from the shell.

Exit statuses: 0 success; 1 the command ran but something in the tree failed
(a listener error, a timeout, a lost worker, a failed job) or was refused; 2
usage error (checked before connecting, so it needs no master); 3 no master
answered within the timeout.

Human output by default, one JSON document on stdout with ``--json``. With
several masters (``--ctl`` given more than once, or ``--ctl-file``) the
command runs on each and prints one result per master; ``--rolling`` runs
``reload``/``restart`` on one master at a time and stops at the first failure.
A ``tcp://`` endpoint needs CURVE keys: ``--curve-keys DIR`` (or
``PROCBUS_CURVE_KEYS``) with ``DIR/server.key`` and the client's
``DIR/secret/NAME.key_secret``, NAME from ``--curve-client`` (or
``PROCBUS_CURVE_CLIENT``, or the only pair there); see `procbus.keys`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from procbus.commands import COMMANDS, CommandError, ErrorCode, check_request

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
        help="one master at a time; stop at a failure",
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


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Fill the ``ctl`` parser: global options and one subcommand per command."""
    add_global_options(parser)
    commands = parser.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)
    for spec in COMMANDS.values():
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
                endpoints.extend(
                    line.strip() for line in handle if line.strip() and not line.startswith("#")
                )
        except OSError as exc:
            raise CommandError(
                ErrorCode.BAD_ARGUMENTS, f"--ctl-file {ctl_file!r}: {exc.strerror}"
            ) from None
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
        endpoints = targets(args)
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

    from procbus.client import Client, ControlError  # noqa: PLC0415

    wait = not _option(args, "no_wait", False)
    rolling = bool(_option(args, "rolling", False))
    documents: list[dict[str, Any]] = []
    status = EXIT_OK
    for endpoint in endpoints:
        try:
            with Client(endpoint, timeout, curve=None if _is_ipc(endpoint) else curve) as client:
                reply = client.request(command, positional, options, wait=wait, timeout=timeout)
        except ControlError as exc:
            reply = {"ok": False, "error": {"code": exc.code.value, "message": exc.message}}
        code = _exit_status(command, reply)
        status = max(status, code) if status != EXIT_USAGE else status
        documents.append({"endpoint": endpoint, **reply})
        if not as_json:
            _print_human(command, endpoint if len(endpoints) > 1 else None, reply, out, err)
        elif not reply.get("ok"):  # the JSON document goes to stdout, the one line here
            from procbus.render import printable  # noqa: PLC0415

            prefix = f"[{endpoint}] " if len(endpoints) > 1 else ""
            print(printable(_error_line(prefix, command, reply)), file=err)
        if rolling and code != EXIT_OK:
            break
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
