"""The ``procbus`` command line.

Start-up must stay quick (``procbus ctl`` is run in shell loops): this module
imports only argparse at load time; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from procbus._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procbus",
        description="A multi-process bus for pre-fork hosting.",
    )
    parser.add_argument("--version", action="version", version=f"procbus {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
