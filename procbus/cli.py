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


def build_parser() -> argparse.ArgumentParser:
    from procbus import ctl  # noqa: PLC0415 - the command table is light

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
    ctl.build_parser(
        commands.add_parser(
            "ctl",
            help="drive a running master (status, publish, reload, ...)",
            description="Drive running masters. Exit status: 0 ok, 1 failed in the tree, "
            "2 usage error, 3 master unreachable.",
        )
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: RET503 - parser.error exits
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:
        from procbus import run  # noqa: PLC0415

        return run.main(argv[1:])
    parser = build_parser()
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
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
