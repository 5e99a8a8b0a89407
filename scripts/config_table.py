#!/usr/bin/env python3
"""Print the README's table of ``procbus run`` settings, built from the config schema.

    .venv/bin/python scripts/config_table.py > /tmp/table.md

The table is generated from `procbus.config.SETTINGS` so the README cannot
drift from ``--help``; paste the output over the table in the README.
"""

from __future__ import annotations

import sys

from procbus.config import markdown_table


def main() -> int:
    sys.stdout.write(markdown_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
