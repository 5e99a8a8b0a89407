"""The ``procbus`` command line.

Start-up must stay quick (``procbus ctl`` runs in shell loops): this module
imports only argparse and the command table at load time; each subcommand
imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from procbus._version import __version__


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line `argv`, only the part it needs.

    argparse costs about 20 µs per option (each ``add_argument`` makes a help
    formatter), so for ``procbus ctl ping`` only ``ping``'s parser is built,
    not every command's (see `procbus.ctl.command_in`), and ``top``'s not.
    """
    from procbus import ctl  # noqa: PLC0415 - the command table is light

    only_ctl = argv is not None and argv[:1] == ["ctl"]
    parser = argparse.ArgumentParser(
        prog="procbus",
        description="A multi-process bus for pre-fork hosting.",
    )
    parser.add_argument("--version", action="version", version=f"procbus {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # `procbus run ...` never gets here (see main): its many options are
    # built only when it runs, so that `procbus ctl` starts quickly.
    commands.add_parser(
        "run",
        help="host a WSGI app (or a generic worker) behind pre-forked workers",
        add_help=False,
    )
    ctl_parser = commands.add_parser(
        "ctl",
        help="drive a running master (status, publish, reload, ...)",
        description="Drive running masters. Exit status: 0 ok, 1 failed in the tree, "
        "2 usage error, 3 master unreachable.",
    )
    ctl.build_parser(ctl_parser, only=ctl.command_in(argv[1:]) if argv and only_ctl else None)
    top_parser = commands.add_parser(
        "top",
        help="live table of the workers, from the master's stats stream",
        description="A live table of the workers (q or Ctrl-C quits). Exit status: 0 ok, "
        "1 refused, 2 usage error, 3 master unreachable or silent.",
    )
    if not only_ctl:
        from procbus import top  # noqa: PLC0415

        top.build_parser(top_parser)
    _build_keys_parser(
        commands.add_parser(
            "keys",
            help="CURVE keys for a tcp:// control endpoint",
            description="CURVE keys for a tcp:// control endpoint (layout: see procbus.keys). "
            "Exit status: 0 ok, 1 failed, 2 usage error.",
        )
    )
    return parser


def _build_keys_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate",
        help="create the server key pair (if missing) and optionally a client key pair",
        description="Create DIR/server.key and DIR/server.key_secret if missing; with "
        "--client, a client key pair: its public key in DIR/clients/ROLE/NAME.key (allowed by "
        "the master), the pair in DIR/secret/NAME.key_secret (hand it to the client with "
        "DIR/server.key). Files are 0600, directories 0700.",
    )
    generate.add_argument("directory", metavar="DIR", help="the curve_keys directory")
    generate.add_argument("--client", metavar="NAME", help="also make a client key pair")
    generate.add_argument("--role", metavar="ROLE", help="read (default) or admin")


def main(argv: Sequence[str] | None = None) -> int:  # noqa: RET503 - parser.error exits
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        from procbus import run  # noqa: PLC0415

        return run.main(argv[1:])
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "ctl":
        from procbus import ctl  # noqa: PLC0415

        try:
            return ctl.run(args)
        except BrokenPipeError:
            # The reader went away (| head): not an error of ours.
            sys.stderr.close()
            return 0
    if args.command == "top":
        from procbus import top  # noqa: PLC0415

        try:
            return top.run(args)
        except BrokenPipeError:
            sys.stderr.close()
            return 0
    if args.command == "keys":
        from procbus import keys  # noqa: PLC0415

        return keys.run(args)
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
