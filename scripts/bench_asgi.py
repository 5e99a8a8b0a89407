#!/usr/bin/env python3
"""Pre-forked ASGI hosting: procbus against uvicorn and gunicorn, uvicorn against hypercorn.

Two measurements of one ASGI hello-world app (`hello_app`), in the same run:

1. **Trees** (``--part trees``): whole servers as their users start them, each
   with N workers on one port: ``procbus run``, ``uvicorn --workers N`` and
   ``gunicorn -k uvicorn_worker.UvicornWorker -w N``. Each runs in a session of
   its own; the script waits until N distinct workers answered, warms up,
   loads it, and stops it (TERM, then KILL of the whole session).
2. **Servers** (``--part servers``): what procbus chose to run inside a
   worker. N forked workers serve the app on one listening socket the parent
   bound, as procbus workers do: bare uvicorn (``Server.run(sockets=...)``),
   hypercorn (``serve`` on ``fd://``; both on uvloop), and procbus's own host
   (`asgi_worker`, uvicorn's protocols with request accounting and the drain).

Every server gets the same load: ``wrk`` when installed (else forked Python
clients, see ``benchload.py``), C keep-alive connections for D seconds, then
the light load of keep-alive requests while new connections arrive every
0.5 s. Printed: requests/s, p50, p99, the CPU time all the server's processes
used per request during the load (steadier than the rates on a shared
machine), and the light load's p50, p99 and worst.

Run: ``.venv/bin/python scripts/bench_asgi.py [--workers 2] [--duration 5]``
(needs the bench extra: gunicorn, uvicorn-worker, hypercorn).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from benchload import BODY, fork_child, load_python, load_sparse_accepts, load_wrk, reap

HERE = Path(__file__).resolve().parent
TREES = ("procbus", "uvicorn", "gunicorn")
SERVERS = ("uvicorn", "hypercorn", "procbus")


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET /``: `BODY`; ``GET /pid``: the worker's pid (to count the workers up)."""
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode() if scope["path"] == "/pid" else BODY
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- whole trees --------------------------------------------------------------


def tree_command(name: str, port: int, workers: int, runtime: Path) -> list[str]:
    app = "bench_asgi:hello_app"
    address = f"127.0.0.1:{port}"
    python = sys.executable
    if name == "procbus":
        return [python, "-m", "procbus", "run", app, "-w", str(workers), "-b", address,
                "--runtime-dir", str(runtime), "--log-level", "warning"]  # fmt: skip
    if name == "uvicorn":
        return [python, "-m", "uvicorn", app, "--workers", str(workers), "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    if name == "gunicorn":
        return [python, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker",
                "-w", str(workers), "-b", address, "--log-level", "warning", app]  # fmt: skip
    raise ValueError(name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_workers(port: int, workers: int, proc: subprocess.Popen[bytes]) -> None:
    """Until `workers` distinct pids answered ``/pid`` (each on a new connection)."""
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < workers:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {workers} workers answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/pid", headers={"Connection": "close"})
            seen.add(conn.getresponse().read())
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()


@contextlib.contextmanager
def running_tree(name: str, workers: int) -> Iterator[tuple[int, list[psutil.Process]]]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as tmp:
        proc = subprocess.Popen(
            tree_command(name, port, workers, Path(tmp) / "rt"),
            cwd=HERE,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_workers(port, workers, proc)
            leader = psutil.Process(proc.pid)
            yield port, [leader, *leader.children(recursive=True)]
        finally:
            proc.terminate()  # the master (or arbiter) stops its own workers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- servers in forked workers on one inherited socket -------------------------


def serve_uvicorn(sock: socket.socket, ready: Callable[[], None]) -> None:
    import uvicorn  # noqa: PLC0415

    config = uvicorn.Config(
        hello_app, lifespan="off", access_log=False, log_config=None, log_level="warning"
    )
    ready()  # the socket listens already: requests wait in the backlog
    uvicorn.Server(config).run(sockets=[sock])


def serve_hypercorn(sock: socket.socket, ready: Callable[[], None]) -> None:
    import uvloop  # noqa: PLC0415
    from hypercorn.asyncio import serve  # noqa: PLC0415
    from hypercorn.config import Config  # noqa: PLC0415

    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    ready()
    uvloop.run(serve(hello_app, config))  # type: ignore[arg-type]


def serve_procbus(sock: socket.socket, ready: Callable[[], None]) -> None:
    from procbus import Bus  # noqa: PLC0415
    from procbus.worker.apps import WorkerContext  # noqa: PLC0415
    from procbus.worker.asgi import asgi_worker  # noqa: PLC0415

    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[sock])
    ready()
    asgi_worker(hello_app)(ctx)


def worker_main(name: str, sock: socket.socket, ready_fd: int) -> None:
    def ready() -> None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)

    servers = {"uvicorn": serve_uvicorn, "hypercorn": serve_hypercorn, "procbus": serve_procbus}
    servers[name](sock, ready)


@contextlib.contextmanager
def running_server(name: str, workers: int) -> Iterator[tuple[int, list[psutil.Process]]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port: int = listener.getsockname()[1]
    children: list[int] = []
    try:

        def serve(out: int) -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            worker_main(name, listener, out)

        for _ in range(workers):
            with os.fdopen(fork_child(serve, children), "rb") as ready:
                if ready.read(1) != b"r":
                    raise RuntimeError(f"{name} worker {children[-1]} did not start")
        yield port, [psutil.Process(pid) for pid in children]
    finally:
        listener.close()
        reap(children)


# -- measuring -------------------------------------------------------------------


def measure(
    port: int, server: list[psutil.Process], args: argparse.Namespace, client: str
) -> tuple[dict[str, float], ...]:
    """The load's figures (with the server's CPU time per request), then the light load's."""
    clients: list[int] = []
    load_python(port, args.connections, 1.0, 10_000, close=False, children=clients)  # warm-up
    cpu_before = _cpu(server)
    if client == "wrk":
        load = load_wrk(port, args.connections, args.duration, False)
    else:
        load = load_python(
            port, args.connections, args.duration, 200_000, close=False, children=clients
        )
    load["cpu_us"] = (_cpu(server) - cpu_before) / load["requests"] * 1e6
    return load, load_sparse_accepts(port, args.sparse_duration)


def _cpu(processes: list[psutil.Process]) -> float:
    """CPU seconds (user + system) the processes used so far."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


TITLES = {
    "trees": "trees: whole servers, {workers} workers each",
    "servers": "servers in {workers} forked workers on one socket",
}


def median(
    rounds: list[dict[str, tuple[dict[str, float], ...]]],
) -> dict[str, tuple[dict[str, float], ...]]:
    """Each server's figures, each the median over the rounds."""
    merged: dict[str, tuple[dict[str, float], ...]] = {}
    for name in rounds[0]:
        merged[name] = tuple(
            {
                key: statistics.median(r[name][index][key] for r in rounds)
                for key in rounds[0][name][index]
            }
            for index in range(len(rounds[0][name]))
        )
    return merged


def report(title: str, results: dict[str, tuple[dict[str, float], ...]]) -> None:
    print(f"\n{title}")
    print(f"{'':<10} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU/req':>8}   "
          f"{'light p50':>9} {'p99':>6} {'max':>6}")  # fmt: skip
    for name, (load, sparse) in results.items():
        print(
            f"{name:<10} {int(load['requests']):>9} {load['per_s']:>9.0f} "
            f"{load['p50_ms']:>8.2f} {load['p99_ms']:>8.2f} {load['cpu_us']:>6.1f}us   "
            f"{sparse['p50_ms']:>9.2f} {sparse['p99_ms']:>6.2f} {sparse['max_ms']:>6.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per server (2)")
    parser.add_argument("--connections", type=int, default=8, help="client connections (8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (5)")
    parser.add_argument(
        "--sparse-duration", type=float, default=4.0, help="seconds of the light load (4)"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--part", choices=("all", "trees", "servers"), default="all")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every server this many times, interleaved"
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    print(
        f"{args.workers} workers, {os.cpu_count()} CPUs; load: {client}, "
        f"{args.connections} keep-alive connections, {args.duration:g} s; "
        f"light load {args.sparse_duration:g} s"
    )
    parts = [part for part in ("trees", "servers") if args.part in ("all", part)]
    rounds: dict[str, list[dict[str, tuple[dict[str, float], ...]]]] = {p: [] for p in parts}
    for round_ in range(1, args.rounds + 1):
        suffix = f" (round {round_})" if args.rounds > 1 else ""
        for part in parts:
            names, start = (TREES, running_tree) if part == "trees" else (SERVERS, running_server)
            results = {}
            shift = (round_ - 1) % len(names)  # each server goes first in turn
            for name in names[shift:] + names[:shift]:
                with start(name, args.workers) as (port, processes):
                    results[name] = measure(port, processes, args, client)
            rounds[part].append({name: results[name] for name in names})
            report(TITLES[part].format(workers=args.workers) + suffix, results)
    if args.rounds > 1:
        for part in parts:
            report(TITLES[part].format(workers=args.workers) + ": medians", median(rounds[part]))
    if "trees" in parts:
        trees = median(rounds["trees"])
        base = max(trees["uvicorn"][0]["per_s"], trees["gunicorn"][0]["per_s"])
        ratio = trees["procbus"][0]["per_s"] / base
        print(f"\nprocbus / the faster of uvicorn and gunicorn (req/s): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
