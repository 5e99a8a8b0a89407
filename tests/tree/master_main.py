"""Run a `procbus.master.Master` from the command line, for the tree tests.

    python -m tests.tree.master_main --app tests.tree.apps:echo --workers 3 \\
        --runtime-dir /tmp/pb-x [--heartbeat 0.2 --timeout 2 ...] \\
        [--ctl tcp://127.0.0.1:PORT --curve-keys DIR]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from procbus.errors import ConfigError, StartupError
from procbus.master import Backoff, Master, Supervision, TreeSettings
from procbus.master.control_server import ControlSettings
from tests.tree.apps import systemd_environment


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--name", default="test")
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--boot-timeout", type=float, default=10.0)
    parser.add_argument("--graceful-timeout", type=float, default=3.0)
    parser.add_argument("--abort-grace", type=float, default=1.0)
    parser.add_argument("--publish-timeout", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=0)
    parser.add_argument("--max-age", type=float, default=0.0)
    parser.add_argument("--flap-after", type=int, default=3)
    parser.add_argument("--min-uptime", type=float, default=1.0)
    parser.add_argument("--stats-interval", type=float, default=1.0)
    # The tree tests watch supervision (backoff, flapping) from the first fork on: this
    # master gives up when no worker can boot at start only when asked to.
    parser.add_argument("--halt-at-boot", choices=["yes", "no"], default="no")
    parser.add_argument("--ctl", default=None, help="control endpoint (tcp:// needs keys)")
    parser.add_argument("--curve-keys", type=Path, default=None)
    parser.add_argument("--read-uids", type=int, action="append", default=[])
    parser.add_argument("--admin-uids", type=int, action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    settings = TreeSettings(
        workers=args.workers,
        heartbeat_interval=args.heartbeat,
        publish_timeout=args.publish_timeout,
        stats_interval=args.stats_interval,
        supervision=Supervision(
            timeout=args.timeout,
            boot_timeout=args.boot_timeout,
            graceful_timeout=args.graceful_timeout,
            abort_grace=args.abort_grace,
            max_requests=args.max_requests,
            max_age=args.max_age,
            backoff=Backoff(
                initial=0.05, maximum=1.0, min_uptime=args.min_uptime, flap_after=args.flap_after
            ),
            halt_at_boot=args.halt_at_boot == "yes",
        ),
    )
    try:
        control = ControlSettings.from_config(
            args.ctl, args.curve_keys, args.admin_uids, args.read_uids
        )
        master = Master(
            args.app,
            name=args.name,
            runtime_dir=args.runtime_dir,
            settings=settings,
            control=control,
        )
        # The master's side of a publish, beside the workers' (see tests.tree.apps).
        master.bus.subscribe("systemd_environment", systemd_environment)
        return master.run()
    except StartupError as exc:
        print(f"procbus: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"procbus: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
