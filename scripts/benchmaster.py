#!/usr/bin/env python3
"""A master in a subprocess for the benchmark scripts, always reaped.

The benchmarks measure a master from the outside (its CPU, a ``procbus ctl``
process talking to it), so the master runs in a process of its own: in a
new session, on a private runtime directory, with idle workers. `bench_master`
waits until every worker runs and, whatever happens, sends TERM, waits, then
KILLs the whole session it created.

Run directly, this module is that master process:
``benchmaster.py --workers N --runtime-dir DIR [--heartbeat S] [--stats-interval S]
[--max-rss BYTES]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procbus.client import Client, ControlError
from procbus.master import Master, Supervision, TreeSettings

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RunningMaster:
    pid: int
    runtime_dir: Path
    control: str
    """The control endpoint (``ipc://``)."""
    events: str
    log_path: Path


def _wait_running(control: str, workers: int, proc: subprocess.Popen[bytes], limit: float) -> str:
    """Wait until the master answers and runs `workers` workers; return its events endpoint."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the master exited with {proc.returncode}")
        try:
            with Client(control, 1.0) as client:
                status: dict[str, Any] = client.call("status")
        except ControlError:
            time.sleep(0.1)
            continue
        running = [w for w in status["workers"] if w["state"] == "running"]
        if len(running) == workers == len(status["workers"]):
            endpoint: str = status["master"]["endpoints"]["events"]
            return endpoint
        time.sleep(0.1)
    raise RuntimeError(f"{workers} workers were not running within {limit:g}s")


@contextlib.contextmanager
def bench_master(
    workers: int,
    *,
    heartbeat: float = 1.0,
    stats_interval: float = 1.0,
    max_rss: int = 0,
    boot_limit: float = 60.0,
) -> Iterator[RunningMaster]:
    """A master with `workers` idle workers in its own session; stopped and reaped on exit."""
    directory = Path(tempfile.mkdtemp(prefix="pbb-", dir="/tmp"))
    runtime = directory / "rt"
    log_path = directory / "master.log"
    argv = [
        sys.executable,
        str(HERE / "benchmaster.py"),
        "--workers",
        str(workers),
        "--runtime-dir",
        str(runtime),
        "--heartbeat",
        str(heartbeat),
        "--stats-interval",
        str(stats_interval),
        "--max-rss",
        str(max_rss),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        control = f"ipc://{runtime}/ctl"
        events = _wait_running(control, workers, proc, boot_limit)
        yield RunningMaster(proc.pid, runtime, control, events, log_path)
    except BaseException:
        sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _idle(ctx: Any) -> None:
    ctx.stopping.wait()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--runtime-dir", required=True)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--stats-interval", type=float, default=1.0)
    parser.add_argument("--max-rss", type=int, default=0, help="bytes (0: no RSS sampling)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    settings = TreeSettings(
        workers=args.workers,
        heartbeat_interval=args.heartbeat,
        stats_interval=args.stats_interval,
        supervision=Supervision(max_rss=args.max_rss),
    )
    return Master(_idle, name="bench", runtime_dir=args.runtime_dir, settings=settings).run()


if __name__ == "__main__":
    sys.exit(main())
