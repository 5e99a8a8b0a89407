#!/usr/bin/env python3
"""Load for the HTTP benchmarks (``bench_wsgi.py``, ``bench_asgi.py``), and reaping.

Every server under test answers ``GET /`` with `BODY`. The load comes from
``wrk`` when it is installed and from forked Python clients otherwise (each
with one keep-alive ``http.client`` connection, bounded by a duration and a
request count). `load_sparse_accepts` is the light load a pre-fork tree cares
about: keep-alive requests while new connections arrive now and then (every
worker polls the shared listening socket; a server whose event loop blocks in
``accept()`` stalls its other connections meanwhile).

Not a test module: imported by the scripts beside it.
"""

from __future__ import annotations

import array
import contextlib
import http.client
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Final

BODY: Final = b"hello, world\n"
"""What every server under test answers to ``GET /``."""


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def python_client(port: int, deadline: float, max_requests: int, close: bool, out_fd: int) -> None:
    latencies = array.array("d")
    headers = {"Connection": "close"} if close else {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while len(latencies) < max_requests and time.monotonic() < deadline:
            start = time.perf_counter()
            conn.request("GET", "/", headers=headers)
            response = conn.getresponse()
            body = response.read()
            if close:
                conn.close()  # the next request() connects again
            latencies.append(time.perf_counter() - start)
            if response.status != 200 or body != BODY:
                raise RuntimeError(f"bad response: {response.status} {body!r}")
    finally:
        conn.close()
        data = latencies.tobytes()
        while data:
            data = data[os.write(out_fd, data) :]
        os.close(out_fd)


def fork_child(body: Callable[[int], None], children: list[int]) -> int:
    """Fork a child running ``body(write_fd)``, then exiting (1 if it raised).

    The child's pid is appended to `children` (the caller reaps them); the
    read end of the pipe is returned.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_fd)
            body(write_fd)
            code = 0
        except BaseException as exc:
            print(f"child {os.getpid()} failed: {exc!r}", file=sys.stderr)
        finally:
            os._exit(code)
    children.append(pid)
    os.close(write_fd)
    return read_fd


def load_python(
    port: int,
    connections: int,
    duration: float,
    max_requests: int,
    *,
    close: bool,
    children: list[int],
) -> dict[str, float]:
    readers: list[int] = []
    deadline = time.monotonic() + duration
    started = time.perf_counter()
    for _ in range(connections):
        readers.append(
            fork_child(
                lambda out: python_client(port, deadline, max_requests, close, out), children
            )
        )
    latencies = array.array("d")
    for fd in readers:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        os.close(fd)
        latencies.frombytes(b"".join(chunks))
    elapsed = time.perf_counter() - started
    for pid in list(children):
        _, status = os.waitpid(pid, 0)
        children.remove(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"client {pid} failed")
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "per_s": len(ordered) / elapsed,
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def load_wrk(port: int, connections: int, duration: float, close: bool) -> dict[str, float]:
    command = [
        "wrk",
        f"-t{min(2, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        *(["-H", "Connection: close"] if close else []),
        "--timeout",
        "10s",
        f"http://127.0.0.1:{port}/",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=duration + 30
    ).stdout
    figures: dict[str, float] = {}
    for label, key in (("50%", "p50_ms"), ("99%", "p99_ms")):
        match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            raise RuntimeError(f"cannot read {label} from wrk:\n{out}")
        figures[key] = float(match[1]) * _UNITS[match[2]]
    per_s = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    total = re.search(r"^\s*(\d+) requests in", out, re.M)
    errors = re.search(r"^\s*Non-2xx or 3xx responses: (\d+)", out, re.M)
    if per_s is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    if errors is not None or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    figures["per_s"] = float(per_s[1])
    figures["requests"] = float(total[1])
    return figures


def load_sparse_accepts(port: int, duration: float) -> dict[str, float]:
    """Keep-alive requests, one at a time on 4 connections, while a new
    connection arrives every 0.5 s; latencies of the keep-alive requests."""
    deadline = time.monotonic() + duration
    failures: list[BaseException] = []

    def newcomers() -> None:
        try:
            while time.monotonic() < deadline:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    conn.request("GET", "/", headers={"Connection": "close"})
                    conn.getresponse().read()
                finally:
                    conn.close()
                time.sleep(0.5)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=newcomers, name="newcomers")
    thread.start()
    latencies: list[float] = []
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(4)]
    try:
        while time.monotonic() < deadline:
            for conn in conns:
                start = time.perf_counter()
                conn.request("GET", "/")
                conn.getresponse().read()
                latencies.append(time.perf_counter() - start)
            time.sleep(0.005)  # pacing: a light load, not a saturating one
    finally:
        for conn in conns:
            conn.close()
        thread.join()
    if failures:
        raise RuntimeError(f"a new connection failed: {failures[0]!r}")
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": statistics.median(ordered) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "max_ms": ordered[-1] * 1e3,
    }


def reap(pids: list[int]) -> None:
    """TERM `pids`, wait 5 s at most, KILL those left; reap them all."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.remove(pid)
        if pending:
            time.sleep(0.02)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
