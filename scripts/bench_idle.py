#!/usr/bin/env python3
"""The master's idle CPU with many workers: without and with a stats subscriber, and
without and with max_rss.

A master with `--workers` idle workers (32 by default, heartbeats every
second) runs in its own process. Its CPU time (user + system, from psutil) is
measured over `--seconds` in three phases:

1. nobody subscribes to the event stream's ``ev.stats`` topic: no sampling;
2. one subscriber (what ``procbus top`` does): the master samples every
   process (CPU, RSS, USS, threads, fds, connections) and emits a ``stats``
   event every ``stats_interval`` (1 s);
3. the subscriber has left: sampling must stop again.

Then a second master, the same but with ``max_rss`` set (`--max-rss`, far above
what an idle worker uses: nothing is recycled), is measured idle for
`--seconds`: it reads every worker's RSS once per heartbeat interval. Its
difference with phase 1 is the cost of memory-aware recycling; the cost of one
such pass over the tree, measured from this process on the same workers, says
the same without the noise of a shared machine.

Printed: the master's CPU percent in each phase, the stats events received,
the cost of one stats sample of the whole tree, and of one RSS pass. Bounded:
about 4 x `--seconds` plus two boots. The masters are always reaped.
Run: ``.venv/bin/python scripts/bench_idle.py [--workers 32] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil
import zmq
from benchmaster import bench_master

from procbus import protocol
from procbus.client import Client
from procbus.master.stats import ProcessMonitor
from procbus.watch import receive_event, subscribe


def host_inet_sockets() -> int | None:
    """Entries in the kernel's inet tables, which a connection count reads in full."""
    total = 0
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{table}", "rb") as handle:
                total += max(0, handle.read().count(b"\n") - 1)
        except OSError:
            return None
    return total


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(
    process: psutil.Process, seconds: float, socket: zmq.Socket[bytes] | None
) -> tuple[float, int]:
    """(CPU percent of `process` over `seconds`, stats events read from `socket` meanwhile)."""
    events = 0
    start_cpu, start = cpu_seconds(process), time.monotonic()
    end = start + seconds
    while (left := end - time.monotonic()) > 0:
        if socket is None:
            time.sleep(left)
            continue
        event = receive_event(socket, max(1, int(left * 1000)))
        if event is not None and event["event"] == "stats":
            events += 1
    elapsed = time.monotonic() - start
    return (cpu_seconds(process) - start_cpu) / elapsed * 100, events


def rss_pass_ms(control: str, passes: int = 200) -> float:
    """Milliseconds one `ProcessMonitor.rss` pass over the master's workers takes here."""
    with Client(control, 5.0) as client:
        pids = [w["pid"] for w in client.call("status")["workers"]]
    monitor = ProcessMonitor()
    monitor.rss(pids)  # the handles, as the master keeps them
    start = time.perf_counter()
    for _ in range(passes):
        monitor.rss(pids)
    return (time.perf_counter() - start) / passes * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--settle", type=float, default=3.0, help="pause after the boot")
    parser.add_argument(
        "--max-rss", type=int, default=2**40, help="bytes, for the second master (1 TiB)"
    )
    args = parser.parse_args()

    with bench_master(args.workers, heartbeat=1.0, stats_interval=1.0) as master:
        process = psutil.Process(master.pid)
        time.sleep(args.settle)  # the boot's CPU is not what is measured
        idle, _ = measure(process, args.seconds, None)
        context, socket = subscribe(master.events, protocol.STATS_TOPIC)
        try:
            watched, events = measure(process, args.seconds, socket)
        finally:
            socket.close(0)
            context.term()
        time.sleep(0.5)  # the unsubscription reaches the master
        after, _ = measure(process, args.seconds, None)

    with bench_master(
        args.workers, heartbeat=1.0, stats_interval=1.0, max_rss=args.max_rss
    ) as master:
        process = psutil.Process(master.pid)
        time.sleep(args.settle)
        sampling, _ = measure(process, args.seconds, None)
        per_pass_ms = rss_pass_ms(master.control)

    per_sample_ms = (watched - idle) / 100 * args.seconds / events * 1000 if events else None
    print(
        f"master with {args.workers} idle workers (heartbeat 1 s), {args.seconds:g} s per phase:"
    )
    print(f"  no stats subscriber          master CPU {idle:5.2f} %")
    print(f"  one stats subscriber         master CPU {watched:5.2f} %   ({events} stats events)")
    print(f"  after the subscriber left    master CPU {after:5.2f} %")
    print(f"  max_rss set (RSS sampled)    master CPU {sampling:5.2f} %   (a new master)")
    if per_sample_ms is not None:
        print(f"  one stats sample of the tree costs about {per_sample_ms:.1f} ms of master CPU")
    print(
        f"  one RSS pass over the {args.workers} workers costs {per_pass_ms:.2f} ms"
        f" (once per heartbeat interval: {per_pass_ms / 10:.3f} % of a CPU)"
    )
    print(
        f"  (the host's inet tables list {host_inet_sockets()} sockets, most in TIME_WAIT;"
        " connection counts, refreshed every 5 s, cost a little more with more)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
