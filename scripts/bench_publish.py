#!/usr/bin/env python3
"""Tree publish: round trip (p50, p99) and throughput, against bare pyzmq.

For 1, 4 and 16 workers, measured in the same run:

- procbus: a `Master` in this process publishes on a channel whose listener
  returns its argument in every worker; round trip of one publish at a time,
  then throughput with up to 64 publishes in flight;
- from a worker: worker 1 publishes the same to the tree itself
  (`procbus.tree.publish`: to the master over its DEALER, which runs it as its
  own tree publish and sends the reply back), one at a time from its app
  thread, then up to 64 in flight (`procbus.tree.apublish` on an event loop);
  its figures are measured in the worker (CPU: the worker's whole process);
- baseline: the same shape in bare pyzmq (PUB fan-out, DEALER replies to a
  ROUTER, msgpack bodies), forked workers that echo, nothing else.

With ``--targeted``: a publish to 1 of 4 workers (``to=[1]``) against a
broadcast to all 4, with an argument of ``--payload`` bytes: round trip, the
master's CPU per publish, and each worker's CPU per publish (psutil, during
the throughput run), the target's and the non-targets'. Every worker reads a
targeted publish (one send, one sequence); a non-target reads its head only.

Bounded: a fixed number of publishes per measurement. Every process started is
reaped. Run: ``.venv/bin/python scripts/bench_publish.py [--rounds N] [--targeted]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import psutil
import zmq

from procbus import tree
from procbus.master import Master, TreeSettings
from procbus.publishing import PublishOptions
from procbus.worker.apps import WorkerContext


def echo_app(ctx: WorkerContext) -> None:
    ctx.bus.subscribe("bench", lambda value: value)
    ctx.stopping.wait()


def length_app(ctx: WorkerContext) -> None:
    ctx.bus.subscribe("bench", len)  # a short answer whatever the argument's size
    ctx.stopping.wait()


def origin_app(ctx: WorkerContext) -> None:
    """Every worker echoes; worker 1, told to by 'bench.go', measures its own tree
    publishes and writes the figures to the file it was given."""
    ctx.bus.subscribe("bench", lambda value: value)
    if ctx.worker_id != 1:
        ctx.stopping.wait()
        return
    go = threading.Event()
    job: dict[str, Any] = {}

    def start(rounds: int, workers: int, path: str) -> None:
        job.update(rounds=rounds, workers=workers, path=path)
        go.set()

    ctx.bus.subscribe("bench.go", start)
    while not go.wait(0.1):
        if ctx.stopping.is_set():
            return
    workers = job["workers"]

    def check(reply: tree.TreeReply) -> None:
        if not reply.ok or len(reply.workers) != workers:
            raise RuntimeError(f"bad reply: {reply}")

    def one() -> None:
        check(tree.publish("bench", 1, timeout=10))

    def pipelined(total: int, window: int) -> None:
        async def run() -> None:
            room = asyncio.Semaphore(window)

            async def each() -> None:
                async with room:
                    check(await tree.apublish("bench", 1, timeout=10))

            await asyncio.gather(*(each() for _ in range(total)))

        asyncio.run(run())

    figures = measure(one, pipelined, job["rounds"])
    written = Path(job["path"] + ".part")
    written.write_text(json.dumps(figures))
    written.replace(job["path"])
    ctx.stopping.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(
    publish_one: Callable[[], None], pipelined: Callable[[int, int], None], rounds: int
) -> dict[str, float]:
    for _ in range(min(50, rounds)):
        publish_one()  # warm-up
    latencies = []
    for _ in range(rounds):
        start = time.perf_counter()
        publish_one()
        latencies.append(time.perf_counter() - start)
    start, cpu = time.perf_counter(), time.process_time()
    pipelined(rounds, 64)
    elapsed = time.perf_counter() - start
    return {
        "p50_us": statistics.median(latencies) * 1e6,
        "p99_us": percentile(latencies, 0.99) * 1e6,
        "per_s": rounds / elapsed,
        # The publishing side's own CPU per publish: steadier than rates on a
        # shared machine.
        "cpu_us": (time.process_time() - cpu) / rounds * 1e6,
    }


def bench_procbus(workers: int, rounds: int, directory: str) -> dict[str, float]:
    master = Master(
        echo_app,
        name=f"bench{workers}",
        runtime_dir=f"{directory}/pb{workers}",
        settings=TreeSettings(workers=workers, heartbeat_interval=1.0),
    )
    try:
        if not master.start(timeout=30):
            raise RuntimeError("workers did not start")

        def one() -> None:
            reply = master.publish("bench", 1, timeout=10)
            if not reply.ok or len(reply.workers) != workers:
                raise RuntimeError(f"bad reply: {reply}")

        def pipelined(total: int, window: int) -> None:
            done = [0]
            sent = 0

            def finished(reply: Any) -> None:
                done[0] += 1

            while done[0] < total:
                while sent < total and sent - done[0] < window:
                    master.publish_async("bench", [1], on_done=finished, timeout=10)
                    sent += 1
                master.loop.run_once(1.0)

        return measure(one, pipelined, rounds)
    finally:
        master.exit()
        master.close()


def bench_origin(workers: int, rounds: int, directory: str) -> dict[str, float]:
    """Worker 1 publishes to the tree (every worker, itself included) and measures."""
    master = Master(
        origin_app,
        name=f"benchorigin{workers}",
        runtime_dir=f"{directory}/po{workers}",
        settings=TreeSettings(workers=workers, heartbeat_interval=1.0),
    )
    path = Path(directory) / "origin.json"
    try:
        if not master.start(timeout=30):
            raise RuntimeError("workers did not start")
        master.publish("bench.go", rounds, workers, str(path), to=[1]).raise_for_failures()
        if not master.loop.run_until(path.exists, 600):
            raise RuntimeError("worker 1 did not finish within 600 s")
        figures: dict[str, float] = json.loads(path.read_text())
        return figures
    finally:
        master.exit()
        master.close()


def bench_targeted(workers: int, rounds: int, directory: str, payload: int) -> dict[str, float]:
    """A broadcast to every worker, then a publish to worker 1 alone, on one tree."""
    master = Master(
        length_app,
        name="benchto",
        runtime_dir=f"{directory}/pbto",
        settings=TreeSettings(workers=workers, heartbeat_interval=1.0),
    )
    # A list of cache keys, as an invalidation would send: decoding it costs per key.
    value = [f"key-{i:011d}" for i in range(payload // 17)]
    figures: dict[str, float] = {}
    try:
        if not master.start(timeout=30):
            raise RuntimeError("workers did not start")
        processes = {w.id: psutil.Process(w.pid) for w in master.pool.current_workers()}

        def cpu() -> dict[int, float]:
            return {wid: sum(p.cpu_times()[:2]) for wid, p in processes.items()}

        for label, options in (("all", PublishOptions()), ("to1", PublishOptions(to=(1,)))):
            expected = workers if options.to is None else 1

            def one(options: PublishOptions = options, expected: int = expected) -> None:
                reply = master.publish("bench", value, timeout=10, to=options.to)
                if not reply.ok or len(reply.workers) != expected:
                    raise RuntimeError(f"bad reply: {reply}")

            def pipelined(total: int, window: int, options: PublishOptions = options) -> None:
                done = [0]
                sent = 0

                def finished(reply: Any) -> None:
                    done[0] += 1

                while done[0] < total:
                    while sent < total and sent - done[0] < window:
                        master.publish_async(
                            "bench", [value], on_done=finished, timeout=10, options=options
                        )
                        sent += 1
                    master.loop.run_once(1.0)

            before = cpu()
            result = measure(one, pipelined, rounds)
            spent = {wid: used - before[wid] for wid, used in cpu().items()}
            # measure() makes warm-up + rounds + rounds publishes.
            count = min(50, rounds) + 2 * rounds
            others = [spent[wid] for wid in spent if wid != 1]
            figures.update({f"{label}_{key}": v for key, v in result.items()})
            figures[f"{label}_target_cpu_us"] = spent[1] / count * 1e6
            figures[f"{label}_other_cpu_us"] = sum(others) / len(others) / count * 1e6
        return figures
    finally:
        master.exit()
        master.close()


def _bare_worker(pub: str, rep: str, index: int) -> None:
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.connect(pub)
    dealer = context.socket(zmq.DEALER)
    dealer.connect(rep)
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    while True:
        frame = sub.recv()
        seq, value = msgpack.unpackb(frame)
        if seq < 0:
            break
        dealer.send(msgpack.packb([seq, value]))
    os._exit(0)


def _await_subscribers(
    pub: zmq.Socket[bytes], router: zmq.Socket[bytes], workers: int, seq: list[int]
) -> None:
    """Slow joiners: probe until every worker answers one publish."""
    while True:
        seq[0] += 1
        pub.send(msgpack.packb([seq[0], 0]))
        seen: set[bytes] = set()
        deadline = time.monotonic() + 0.2
        while len(seen) < workers and router.poll(
            max(1, int((deadline - time.monotonic()) * 1000))
        ):
            identity, frame = router.recv_multipart()
            if msgpack.unpackb(frame)[0] == seq[0]:
                seen.add(identity)
        if len(seen) == workers:
            return


def bench_bare(workers: int, rounds: int, directory: str) -> dict[str, float]:
    pub_ep, rep_ep = f"ipc://{directory}/bare-pub", f"ipc://{directory}/bare-rep"
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.sndhwm = 0
    router = context.socket(zmq.ROUTER)
    pub.bind(pub_ep)
    router.bind(rep_ep)
    pids = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:
            _bare_worker(pub_ep, rep_ep, index)
        pids.append(pid)
    seq = [0]
    try:
        _await_subscribers(pub, router, workers, seq)

        def one() -> None:
            seq[0] += 1
            pub.send(msgpack.packb([seq[0], 1]))
            got = 0
            while got < workers:
                _identity, frame = router.recv_multipart()
                if msgpack.unpackb(frame)[0] == seq[0]:
                    got += 1

        def pipelined(total: int, window: int) -> None:
            pending: dict[int, int] = {}
            sent = done = 0
            while done < total:
                while sent < total and len(pending) < window:
                    seq[0] += 1
                    pending[seq[0]] = 0
                    pub.send(msgpack.packb([seq[0], 1]))
                    sent += 1
                _identity, frame = router.recv_multipart()
                number = msgpack.unpackb(frame)[0]
                if number in pending:
                    pending[number] += 1
                    if pending[number] == workers:
                        del pending[number]
                        done += 1

        return measure(one, pipelined, rounds)
    finally:
        pub.send(msgpack.packb([-1, 0]))
        time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        pub.close(0)
        router.close(0)
        context.term()


def run_one(kind: str, workers: int, rounds: int, payload: int = 0) -> dict[str, float]:
    """One measurement in a fresh interpreter, so runs cannot disturb each other."""
    command = [sys.executable, __file__, "--one", kind, "--rounds", str(rounds)]
    command += ["--workers", str(workers), "--payload", str(payload)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} with {workers} workers failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument(
        "--targeted", action="store_true", help="a publish to 1 of 4 workers vs a broadcast"
    )
    parser.add_argument(
        "--payload",
        type=int,
        nargs="*",
        default=[0, 65536],
        help="bytes of the argument (a list of 17-byte keys) with --targeted",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the figures to FILE (scripts/bench)"
    )
    parser.add_argument(
        "--one", choices=["procbus", "origin", "pyzmq", "targeted"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        directory = tempfile.mkdtemp(prefix="pb-bench-", dir="/tmp")
        try:
            if args.one == "targeted":
                figures = bench_targeted(args.workers[0], args.rounds, directory, args.payload[0])
            else:
                bench = {"procbus": bench_procbus, "origin": bench_origin}.get(
                    args.one, bench_bare
                )
                figures = bench(args.workers[0], args.rounds, directory)
            print(json.dumps(figures))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return 0
    if args.targeted:
        return print_targeted(args.rounds, args.payload)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    print(
        f"{args.rounds} publishes per figure; round trip one at a time, throughput 64 in "
        "flight; cpu = the publisher's CPU per publish during the throughput run (for a "
        "publish from worker 1: that worker's whole process, its own listener included)"
    )
    header = (
        f"{'workers':>7} | {'master p50':>10} {'p99':>7} {'pub/s':>6} {'cpu':>5} | "
        f"{'worker p50':>10} {'p99':>7} {'pub/s':>6} {'cpu':>5} | "
        f"{'pyzmq p50':>9} {'p99':>7} {'pub/s':>6} {'cpu':>5} | "
        f"{'w/m p50':>7} {'m/z p50':>7} {'w/z p50':>7}"
    )
    print(header)
    print("-" * len(header))
    for workers in args.workers:
        rows = [run_one(kind, workers, args.rounds) for kind in ("procbus", "origin", "pyzmq")]
        cells = " | ".join(
            f"{row['p50_us']:>8.0f}us {row['p99_us']:>5.0f}us {row['per_s']:>6.0f} "
            f"{row['cpu_us']:>3.0f}us"
            for row in rows
        )
        tree_row, origin, bare = rows
        figures[str(workers)] = {"master": tree_row, "worker": origin, "pyzmq": bare}
        print(
            f"{workers:>7} | {cells} | {origin['p50_us'] / tree_row['p50_us']:>7.2f} "
            f"{tree_row['p50_us'] / bare['p50_us']:>7.2f} "
            f"{origin['p50_us'] / bare['p50_us']:>7.2f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "workers": figures}))
    return 0


def print_targeted(rounds: int, payloads: list[int]) -> int:
    print(
        f"{rounds} publishes per figure, 4 workers; cpu per publish during the throughput "
        "run: the master's, worker 1's (the target of to=[1]), the mean of workers 2-4's"
    )
    header = (
        f"{'payload':>8} {'publish':>8} | {'p50':>7} {'p99':>7} {'pub/s':>7} | "
        f"{'master':>7} {'worker 1':>8} {'others':>7}"
    )
    print(header)
    print("-" * len(header))
    for payload in payloads:
        figures = run_one("targeted", 4, rounds, payload)
        for label, name in (("all", "to all"), ("to1", "to [1]")):
            print(
                f"{payload:>7}B {name:>8} | {figures[label + '_p50_us']:>5.0f}us "
                f"{figures[label + '_p99_us']:>5.0f}us {figures[label + '_per_s']:>7.0f} | "
                f"{figures[label + '_cpu_us']:>5.0f}us "
                f"{figures[label + '_target_cpu_us']:>6.0f}us "
                f"{figures[label + '_other_cpu_us']:>5.0f}us",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
