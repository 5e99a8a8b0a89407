#!/usr/bin/env python3
"""What ``/metrics`` costs: scrape latency and the master's CPU, idle and per scrape.

For each worker count, ``procbus run`` hosts the demo app (whose workers count
their requests with a prometheus_client counter) with ``--metrics``, in a
session of its own on a private runtime directory, always reaped. Measured:

1. the master's idle CPU (user + system, psutil) over `--seconds` with the
   endpoint open and nobody scraping: the endpoint has no timer of its own, so
   this is the idle master's figure (``scripts/bench_idle.py``);
2. `--scrapes` sequential ``GET /metrics`` (after one that imports
   prometheus_client in the master): the latency of each (p50, p99, worst), the
   size of the text, and the master's CPU per scrape.

Run: ``.venv/bin/python scripts/bench_metrics.py [--workers 4 16] [--scrapes 200]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from procbus.client import Client, ControlError


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@contextlib.contextmanager
def tree(workers: int) -> Iterator[tuple[psutil.Process, str]]:
    """``procbus run`` of the demo with `workers` workers: (its master, its metrics URL)."""
    directory = Path(tempfile.mkdtemp(prefix="pbm-", dir="/tmp"))
    control = f"ipc://{directory}/rt/ctl"
    argv = [
        sys.executable, "-m", "procbus", "run", "--workers", str(workers),
        "--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
        "--runtime-dir", str(directory / "rt"), "--log-level", "warning",
    ]  # fmt: skip
    with open(directory / "run.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the tree did not start: see {directory / 'run.log'}")
            try:
                with Client(control, 1.0) as client:
                    status = client.call("status")
            except ControlError:
                time.sleep(0.2)
                continue
            if [w["state"] for w in status["workers"]] == ["running"] * workers:
                break
            time.sleep(0.2)
        yield psutil.Process(proc.pid), status["master"]["endpoints"]["metrics"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return len(response.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="idle measurement")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after the boot")
    args = parser.parse_args()
    print(f"{'workers':>7}  {'idle CPU':>8}  {'p50':>8}  {'p99':>8}  {'worst':>8}  "
          f"{'CPU/scrape':>10}  {'first':>8}  text")  # fmt: skip
    for workers in args.workers:
        with tree(workers) as (master, url):
            time.sleep(args.settle)
            start_cpu, start = cpu_seconds(master), time.monotonic()
            time.sleep(args.seconds)
            idle = (cpu_seconds(master) - start_cpu) / (time.monotonic() - start) * 100
            started = time.perf_counter()
            get(url)  # imports prometheus_client in the master (and in each worker)
            first = time.perf_counter() - started
            latencies = []
            start_cpu = cpu_seconds(master)
            size = 0
            for _ in range(args.scrapes):
                started = time.perf_counter()
                size = get(url)
                latencies.append(time.perf_counter() - started)
            per_scrape = (cpu_seconds(master) - start_cpu) / args.scrapes
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"{workers:>7}  {idle:>7.2f}%  {statistics.median(latencies) * 1e3:>6.2f}ms  "
            f"{p99 * 1e3:>6.2f}ms  {latencies[-1] * 1e3:>6.2f}ms  {per_scrape * 1e3:>8.2f}ms  "
            f"{first * 1e3:>6.0f}ms  {size / 1024:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
