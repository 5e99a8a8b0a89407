#!/usr/bin/env python3
"""Pre-forked WSGI hosting: waitress against cheroot, measured in the same run.

A third row, ``procbus``, is the hosting procbus chose (`wsgi_worker`: waitress
with request accounting and procbus's drain-aware event loop), to show what
it costs over bare waitress.

For each server: bind one listening socket on 127.0.0.1:0 in this process,
fork N workers that each serve a trivial WSGI app on the inherited socket with
T threads (the way a procbus worker does), wait until every worker says it is
serving, warm up, then drive a bounded load and print requests/s, p50 and p99.

The load comes from ``wrk`` when it is installed (``--client auto``, the
default) and from forked Python clients otherwise (``--client python``): C
processes, each with one keep-alive ``http.client`` connection, each bounded by
the duration and by ``--max-requests``. ``--close`` asks for a new connection
per request instead.

A second, light measurement is the one a pre-fork tree cares about: requests
on established keep-alive connections while new connections arrive now and
then. Every worker polls the shared listening socket, so every worker wakes for
each new connection and all but one find nothing to accept; a server whose
event loop blocks in that ``accept()`` stalls its other connections meanwhile.

Every process started is reaped.

Run: ``.venv/bin/python scripts/bench_wsgi.py [--workers 2] [--duration 5]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable, Iterable
from typing import Any

from benchload import BODY, fork_child, load_python, load_sparse_accepts, load_wrk, reap
from cheroot import wsgi
from waitress.server import create_server

from procbus import Bus
from procbus.worker.apps import WorkerContext
from procbus.worker.wsgi import wsgi_worker

SERVERS = ("waitress", "cheroot", "procbus")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def hello_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


# -- the servers, each on a socket bound by the parent ----------------------


def serve_waitress(sock: socket.socket, threads: int, ready: Callable[[], None]) -> None:
    server = create_server(hello_app, sockets=[sock], threads=threads)
    ready()
    server.run()


class PreboundCherootServer(wsgi.Server):
    """cheroot binds its own socket in `prepare`; this one is handed ours."""

    def __init__(self, sock: socket.socket, threads: int) -> None:
        host, port = sock.getsockname()[:2]
        super().__init__((host, port), hello_app, numthreads=threads, request_queue_size=1024)
        self.prebound = sock

    def bind(self, family: int, type: int, proto: int = 0) -> None:
        self.socket = self.prebound


def serve_cheroot(sock: socket.socket, threads: int, ready: Callable[[], None]) -> None:
    server = PreboundCherootServer(sock, threads)
    server.prepare()
    ready()
    server.serve()


def serve_procbus(sock: socket.socket, threads: int, ready: Callable[[], None]) -> None:
    """procbus's own hosting (waitress inside `wsgi_worker`), for its overhead."""
    ctx = WorkerContext(worker_id=1, generation=1, bus=Bus(), sockets=[sock])
    main = wsgi_worker(hello_app, threads=threads)
    ready()  # the socket listens already: requests wait in the backlog
    main(ctx)


def worker_main(name: str, sock: socket.socket, threads: int, ready_fd: int) -> None:
    # waitress warns on every queued task; at full load that is every request.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)

    def ready() -> None:
        os.write(ready_fd, b"r")
        os.close(ready_fd)

    servers = {"waitress": serve_waitress, "cheroot": serve_cheroot, "procbus": serve_procbus}
    servers[name](sock, threads, ready)


# -- one server, start to finish -------------------------------------------


def bench_server(
    name: str, args: argparse.Namespace, client: str
) -> tuple[dict[str, float], dict[str, float]]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    workers: list[int] = []
    clients: list[int] = []
    try:

        def serve(out: int) -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            worker_main(name, listener, args.threads, out)

        for _ in range(args.workers):
            with os.fdopen(fork_child(serve, workers), "rb") as ready:
                if ready.read(1) != b"r":
                    raise RuntimeError(f"{name} worker {workers[-1]} did not start")
        load_python(  # warm-up
            port,
            args.connections,
            min(1.0, args.duration),
            10_000,
            close=args.close,
            children=clients,
        )
        if client == "wrk":
            load = load_wrk(port, args.connections, args.duration, args.close)
        else:
            load = load_python(
                port,
                args.connections,
                args.duration,
                args.max_requests,
                close=args.close,
                children=clients,
            )
        return load, load_sparse_accepts(port, args.sparse_duration)
    finally:
        listener.close()
        reap(clients + workers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (4)")
    parser.add_argument("--connections", type=int, default=8, help="client connections (8)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (5)")
    parser.add_argument(
        "--max-requests", type=int, default=200_000, help="per Python client (200000)"
    )
    parser.add_argument(
        "--close", action="store_true", help="a new connection per request (no keep-alive)"
    )
    parser.add_argument(
        "--sparse-duration", type=float, default=4.0, help="seconds of the light load (4)"
    )
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    kind = "new connection per request" if args.close else "keep-alive"
    print(
        f"{args.workers} workers x {args.threads} threads, {os.cpu_count()} CPUs; "
        f"load: {client}, {args.connections} connections ({kind}), {args.duration:g} s"
    )
    results = {name: bench_server(name, args, client) for name in SERVERS}
    print(f"{'server':<10} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, (load, _) in results.items():
        print(
            f"{name:<10} {int(load['requests']):>9} {load['per_s']:>9.0f} "
            f"{load['p50_ms']:>8.2f} {load['p99_ms']:>8.2f}"
        )
    ratio = results["waitress"][0]["per_s"] / results["cheroot"][0]["per_s"]
    print(f"waitress/cheroot throughput ratio: {ratio:.2f}")
    print(
        f"\nlight load: keep-alive requests on 4 connections while a new connection "
        f"arrives every 0.5 s, {args.sparse_duration:g} s"
    )
    print(f"{'server':<10} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, (_, sparse) in results.items():
        print(
            f"{name:<10} {int(sparse['requests']):>9} {sparse['p50_ms']:>8.2f} "
            f"{sparse['p99_ms']:>8.2f} {sparse['max_ms']:>8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
