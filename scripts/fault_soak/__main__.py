"""Fault-injection soak of a procbus tree: load, publishes and a random schedule of faults.

Starts ``procbus run`` (the demo app, N workers, 127.0.0.1:0) in a session
of its own on a private runtime directory under /tmp, then for ``--seconds``
drives keep-alive HTTP clients and a stream of tree publishes while a seeded
schedule injects one fault every ``--min-gap`` to ``--max-gap`` seconds:
SIGKILL of a worker, SIGSTOP of a worker for less or more than the worker
timeout (then SIGCONT), ``ctl reload``, ``ctl restart --adopt``, ``ctl
upgrade``, ``ctl scale N``, a flood of good and bad control requests, and
garbage frames on the worker endpoints. Then it lets the tree settle, stops it
(TERM to the current master, bounded wait, KILL of whatever is left) and
prints requests (failed ones cut by the soak's own SIGKILL or stop counted
apart), publishes (every worker ok, or not, explained or not), faults,
the master's RSS and fds at start and end, and orphans. The rules used to
explain a failure are printed with the figures.

Exit status: 0 when nothing failed that the soak's own kills and stops do not
explain and no process was left; 1 otherwise; 2 when the soak itself could
not run. The seed is printed; ``--seed`` replays the schedule (the tree's
timing still varies).

Run: ``scripts/soak [--seconds 60] [--workers 4] [--clients 4] [--seed N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from fault_soak.faults import Schedule, ScheduleSettings
from fault_soak.jobs import JobRunner
from fault_soak.journal import FaultKind, Journal
from fault_soak.load import Load
from fault_soak.publisher import Publisher
from fault_soak.report import SoakRun, render, summarize
from fault_soak.signals import StopKeeper
from fault_soak.tree import (
    Leftover,
    StopReport,
    Tree,
    TreeSettings,
    TreeStartError,
    become_subreaper,
    wait_until,
)
from fault_soak.vitals import Vitals

BOOT_LIMIT: Final = 60.0
JOB_TIMEOUT: Final = 90.0
"""The ``procbus ctl --timeout`` of job commands (an upgrade boots a whole tree)."""
SETTLED_LIMIT: Final = 30.0
"""Seconds for the tree to have every worker running once the faults stopped."""
LAST_LOAD: Final = 1.0
"""Seconds of load on the settled tree before the end."""
SAMPLE_EVERY: Final = 1.0
SCALE_BACK_LIMIT: Final = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/soak",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--seconds", type=float, default=60.0, help="how long faults are injected")
    add("--workers", type=int, default=4, help="workers at start")
    add("--clients", type=int, default=4, help="keep-alive HTTP client threads")
    add("--seed", type=int, help="seed of the fault schedule (default: random, printed)")
    add("--json", action="store_true", help="print the summary as one JSON document")
    add(
        "--faults",
        default=",".join(FaultKind),
        help="comma-separated fault kinds to inject",
    )
    add("--timeout", type=float, default=4.0, help="the tree's worker timeout (s)")
    add("--graceful-timeout", type=float, default=3.0, help="the tree's graceful timeout (s)")
    add("--publish-timeout", type=float, default=3.0, help="a publish's deadline (s)")
    add("--publish-every", type=float, default=0.3, help="mean seconds between publishes")
    add("--flood", type=int, default=200, help="messages per control flood / garbage burst")
    add("--min-gap", type=float, default=0.5, help="shortest time between faults (s)")
    add("--max-gap", type=float, default=2.0, help="longest time between faults (s)")
    add("--scale-min", type=int, default=2, help="smallest scale target")
    add("--scale-max", type=int, default=6, help="largest scale target")
    add("--settle", type=float, default=120.0, help="longest wait for running jobs at the end")
    add("--keep", action="store_true", help="keep the run directory (kept anyway on failure)")
    add("-v", "--verbose", action="store_true", help="print each fault as it is injected")
    args = parser.parse_args(argv)
    try:
        args.kinds = frozenset(FaultKind(k.strip()) for k in args.faults.split(",") if k.strip())
    except ValueError as exc:
        parser.error(f"--faults: {exc} (kinds: {', '.join(FaultKind)})")
    checks = [
        (args.seconds > 0, "--seconds must be > 0"),
        (args.workers >= 1, "--workers must be >= 1"),
        (args.clients >= 1, "--clients must be >= 1"),
        (0 < args.min_gap <= args.max_gap, "need 0 < --min-gap <= --max-gap"),
        (1 <= args.scale_min <= args.scale_max, "need 1 <= --scale-min <= --scale-max"),
        (args.flood >= 0, "--flood must be >= 0"),
        (args.timeout > 0 and args.graceful_timeout >= 0, "timeouts must be positive"),
        (args.publish_timeout > 0.5, "--publish-timeout must be > 0.5"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


def replay_command(args: argparse.Namespace, seed: int) -> str:
    parts = [
        "scripts/soak",
        f"--seconds {args.seconds:g}",
        f"--workers {args.workers}",
        f"--clients {args.clients}",
        f"--seed {seed}",
    ]
    defaults = parse_args([])
    for name in (
        "faults",
        "timeout",
        "graceful_timeout",
        "publish_timeout",
        "publish_every",
        "flood",
        "min_gap",
        "max_gap",
        "scale_min",
        "scale_max",
    ):
        value = getattr(args, name)
        if value != getattr(defaults, name):
            parts.append(f"--{name.replace('_', '-')} {value}")
    return " ".join(parts)


def soak(tree: Tree, args: argparse.Namespace, seed: int) -> SoakRun:
    """Start the tree, drive it, settle, stop it; return what was recorded."""
    tree.start(BOOT_LIMIT)
    origin = time.monotonic()
    journal = Journal(origin)
    vitals = Vitals()
    vitals.sample(tree, origin)
    longest_stop = args.timeout + 3.0
    load = Load(tree.port, args.clients, longest_stop + args.graceful_timeout + 5.0)
    publisher = Publisher(tree, args.publish_every, args.publish_timeout, seed + 1)
    keeper = StopKeeper(tree, journal)
    jobs = JobRunner(tree, journal, JOB_TIMEOUT)
    schedule = Schedule(
        tree=tree,
        journal=journal,
        keeper=keeper,
        jobs=jobs,
        seed=seed,
        settings=ScheduleSettings(
            kinds=args.kinds,
            min_gap=args.min_gap,
            max_gap=args.max_gap,
            timeout=args.timeout,
            scale_min=args.scale_min,
            scale_max=args.scale_max,
            flood=args.flood,
        ),
        verbose=args.verbose,
    )
    problems: list[str] = []
    strays: list[Leftover] = []
    stop: StopReport | None = None
    final_stats: dict[str, Any] | None = None
    load.start()
    publisher.start()
    try:
        drive(schedule, jobs, vitals, tree, origin + args.seconds)
        journal.event(time.monotonic(), "schedule ended")
        if not args.json:
            print(f"soak: faults done after {args.seconds:g}s; settling", file=sys.stderr)
        keeper.release_all()
        jobs.wait_all(args.settle)
        # Back to the first size, so that the master's fds compare with the start.
        error = scale_back(tree, args.workers, SCALE_BACK_LIMIT)
        journal.event(time.monotonic(), f"scaled back to {args.workers}: {error or 'done'}")
        if error is not None:
            problems.append(f"scale back to {args.workers} workers failed: {error}")

        def settled() -> bool:
            status = tree.status(2.0)
            return status is not None and all(w["state"] == "running" for w in status["workers"])

        if wait_until(settled, SETTLED_LIMIT):
            journal.event(time.monotonic(), "settled")
        else:
            problems.append(f"the tree did not have every worker running {SETTLED_LIMIT:g}s after")
        # Unknown to the master twice, a second apart: not a master just exiting.
        unknown = {p.pid for p in tree.strays()}
        time.sleep(LAST_LOAD)  # load on the settled tree, not a synchronisation
        strays = [p for p in tree.strays() if p.pid in unknown]
    finally:
        keeper.close()  # first: a client waiting on a stopped worker gets its answer
        publisher.stop()
        clients_stopped = load.stop()
        load_end = time.monotonic()
        jobs.wait_all(0.0)
        vitals.sample(tree, time.monotonic())
        stats = tree.call("stats", timeout=2.0)
        final_stats = stats if isinstance(stats, dict) else None
        stop = tree.stop()
    return SoakRun(
        seed=seed,
        replay=replay_command(args, seed),
        settings={
            "workers": args.workers,
            "clients": args.clients,
            "faults": sorted(args.kinds),
            "timeout": args.timeout,
            "graceful_timeout": args.graceful_timeout,
            "publish_timeout": args.publish_timeout,
            "seconds": args.seconds,
        },
        journal=journal,
        seconds=load_end - origin,
        ok=load.ok,
        connections=load.connections,
        workers_seen=load.workers_seen(),
        failures=load.failures(),
        failed_total=load.failed,
        publishes=list(publisher.records),
        lives=vitals.lives,
        stop=stop,
        strays=strays,
        unresponsive=schedule.unresponsive,
        clients_stuck=not clients_stopped,
        final_stats=final_stats,
        problems=problems,
    )


def scale_back(tree: Tree, workers: int, limit: float) -> str | None:
    """``scale N`` once the control socket has settled; None when it succeeded.

    After an upgrade the old master answers until it exits and the new one
    binds the named socket a moment later: the same master must answer two
    pings half a second apart first. A command that still finds no master, or
    one that is exiting, waits for that again, within `limit`.
    """
    deadline = time.monotonic() + limit
    error: str | None = "no master answered"
    while time.monotonic() < deadline:
        first = tree.ping(1.0)
        time.sleep(0.5)  # the interval of the stability check, not a synchronisation
        if first is None or tree.ping(1.0) != first:
            continue
        error = tree.command("scale", workers, timeout=max(1.0, deadline - time.monotonic()))
        if error is None or not error.startswith(("unreachable", "unavailable")):
            return error
    return error


def drive(schedule: Schedule, jobs: JobRunner, vitals: Vitals, tree: Tree, end: float) -> None:
    """The schedule's loop: faults when due, job commands polled, the master sampled."""
    now = time.monotonic()
    next_fault = now + schedule.gap()
    next_sample = now + SAMPLE_EVERY
    while now < end:
        jobs.poll()
        if now >= next_sample:
            vitals.sample(tree, now)
            next_sample = time.monotonic() + SAMPLE_EVERY
        if now >= next_fault:
            schedule.inject()
            next_fault = time.monotonic() + schedule.gap()
        now = time.monotonic()
        time.sleep(min(max(0.0, min(next_fault, next_sample, end) - now), 0.05))
        now = time.monotonic()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # TERM (and INT, even where the shell ignored it) interrupt the soak like Ctrl-C:
    # the tree is stopped and reaped on the way out.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if not become_subreaper():
        print(
            "soak: not a child subreaper: masters left by an upgrade go to init", file=sys.stderr
        )
    directory = Path(tempfile.mkdtemp(prefix="pbsk-", dir="/tmp"))
    tree = Tree(
        directory,
        TreeSettings(
            workers=args.workers,
            timeout=args.timeout,
            graceful_timeout=args.graceful_timeout,
            publish_timeout=args.publish_timeout,
            boot_timeout=20.0,
        ),
    )
    print(
        f"soak: seed {seed}, {args.seconds:g}s, {args.workers} workers, {args.clients} clients, "
        f"run directory {directory}",
        file=sys.stderr,
    )
    summary: dict[str, Any] | None = None
    try:
        summary = summarize(soak(tree, args, seed))
    except TreeStartError as exc:
        print(f"soak: {exc}", file=sys.stderr)
    finally:
        tree.kill_all()
        tree.close()
        failed = summary is None or summary["exit_status"] != 0
        if failed or args.keep:
            print(f"soak: kept {directory} (master.log)", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    if summary is None:
        return 2
    if failed or args.keep:
        (directory / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(summary))
    return int(summary["exit_status"])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        sys.exit(130)
