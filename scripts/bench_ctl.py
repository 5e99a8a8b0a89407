#!/usr/bin/env python3
"""Start-up cost of ``procbus ctl``: ``ctl ping`` as a whole process vs bare Python.

``procbus ctl`` runs in shell loops and health checks, so a whole ``procbus
ctl ping`` process (interpreter start, imports, one round trip to a real
master) is timed against ``python -c "import zmq"`` (the floor: the client
cannot avoid pyzmq) and ``python -c pass``. The three commands are run in
turn, `--runs` times each after a warm-up; median and p90 wall times and the
ratios are printed. ``--imports`` also lists the slowest imports of ``ctl ping``
(``python -X importtime``).

The commands get a private bytecode cache (``PYTHONPYCACHEPREFIX``, filled
by the warm-up run), as an installed procbus has; ``--cold`` runs them without
one (``PYTHONDONTWRITEBYTECODE``, a source checkout: procbus's modules are
compiled on every start). ``--pythonpath DIR`` measures another procbus as the
client (e.g. ``git archive`` of an older commit), against the same master.

A fleet (``--fleet N``, default 32; 0 skips it): N masters of one idle
worker each on ipc://, and ``procbus ctl --ctl E1 ... --ctl EN status`` (all
at once, `procbus.fleet`) timed against ``status`` on one master and against
``--rolling status`` on the N (one master after another, as ctl did before);
the goal is N masters in at most 2x one master's time.

The masters are started for the run and always reaped.
Run: ``.venv/bin/python scripts/bench_ctl.py [--runs 20] [--imports] [--cold] [--fleet 32]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmaster import bench_master

NEUTRAL_DIR = tempfile.gettempdir()
"""Where the commands run: not the checkout, so PYTHONPATH picks the procbus measured."""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, cwd=NEUTRAL_DIR, env=env, timeout=60, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return elapsed


def slowest_imports(
    argv: list[str], env: dict[str, str], count: int = 12
) -> list[tuple[int, str]]:
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        capture_output=True,
        text=True,
        check=True,
        cwd=NEUTRAL_DIR,
        env=env,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.split("|")
        rows.append((int(cumulative), name.rstrip()))
    return sorted(rows, reverse=True)[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command")
    parser.add_argument("--imports", action="store_true", help="list the slowest imports")
    parser.add_argument(
        "--pythonpath",
        metavar="DIR",
        help="measure the procbus in DIR (e.g. an export of an older commit) as the client",
    )
    parser.add_argument("--cold", action="store_true", help="no bytecode cache for procbus")
    parser.add_argument(
        "--fleet", type=int, default=32, metavar="N", help="masters of the fleet run (0: none)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the medians (ms) to FILE"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbc-") as pycache:
        env = dict(os.environ)
        if args.pythonpath:
            env["PYTHONPATH"] = args.pythonpath
        if args.cold:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = pycache
        return measure(args, env)


def measure(args: argparse.Namespace, env: dict[str, str]) -> int:
    procbus = [sys.executable, "-m", "procbus", "ctl"]
    with bench_master(2) as master:
        commands = {
            "procbus ctl --ctl EP ping": [*procbus, "--ctl", master.control, "ping"],
            "procbus ctl --runtime-dir D ping": [
                *procbus,
                "--runtime-dir",
                str(master.runtime_dir),
                "ping",
            ],
            'python -c "import zmq"': [sys.executable, "-c", "import zmq"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        for argv in commands.values():
            run_once(argv, env)  # warm the page cache and the bytecode cache
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, argv in commands.items():
                times[name].append(run_once(argv, env))
        imports = (
            slowest_imports(commands["procbus ctl --runtime-dir D ping"], env)
            if args.imports
            else []
        )

    cache = "no bytecode cache" if args.cold else "bytecode cached"
    print(f"{args.runs} runs each ({cache}), wall time of the whole process:")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            f"  {name:<34} median {medians[name] * 1000:6.1f} ms"
            f"   p90 {percentile(values, 0.9) * 1000:6.1f} ms"
        )
    zmq_only, bare = medians['python -c "import zmq"'], medians["python -c pass"]
    for name in list(commands)[:2]:
        print(
            f"  {name}: {medians[name] / zmq_only:.2f}x import zmq,"
            f" {medians[name] / bare:.2f}x python -c pass"
        )
    if imports:
        print("slowest imports of ctl --runtime-dir D ping (cumulative ms):")
        for micros, name in imports:
            print(f"  {micros / 1000:7.1f}  {name}")
    found = {name: median * 1e3 for name, median in medians.items()}
    if args.fleet > 1:
        found.update(measure_fleet(args.fleet, args.runs, env))
    if args.json:
        args.json.write_text(json.dumps(found))
    return 0


def measure_fleet(count: int, runs: int, env: dict[str, str]) -> dict[str, float]:
    """``status`` on `count` masters at once, vs one master, vs one master after another."""
    procbus = [sys.executable, "-m", "procbus", "ctl"]
    print(f"starting {count} masters of 1 idle worker ...", flush=True)
    with contextlib.ExitStack() as stack:
        masters = [stack.enter_context(bench_master(1)) for _ in range(count)]
        fleet = [word for master in masters for word in ("--ctl", master.control)]
        commands = {
            "status, 1 master": [*procbus, "--ctl", masters[0].control, "status", "--json"],
            f"status, {count} masters at once": [*procbus, *fleet, "status", "--json"],
            f"status, {count} masters one by one": [
                *procbus,
                *fleet,
                "--rolling",
                "status",
                "--json",
            ],
        }
        for argv in commands.values():
            run_once(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                times[name].append(run_once(argv, env))
    print(f"{runs} runs each, wall time of the whole procbus ctl process:")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            f"  {name:<34} median {medians[name] * 1000:6.1f} ms"
            f"   p90 {percentile(values, 0.9) * 1000:6.1f} ms"
        )
    one, names = medians["status, 1 master"], list(commands)
    print(
        f"  {count} masters at once: {medians[names[1]] / one:.2f}x one master (goal <= 2x);"
        f" one by one: {medians[names[2]] / one:.2f}x"
    )
    return {
        "status, 1 master": one * 1e3,
        "status, fleet at once": medians[names[1]] * 1e3,
        "status, fleet one by one": medians[names[2]] * 1e3,
        "fleet size": count,
    }


if __name__ == "__main__":
    sys.exit(main())
