"""Worker apps the tree tests run (imported in the workers, after fork)."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

from procbus.worker.apps import WorkerContext

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def systemd_environment() -> dict[str, str | None]:
    """This process's view of the variables systemd gives a service's main process."""
    return {name: os.environ.get(name) for name in SYSTEMD_VARIABLES}


def echo(ctx: WorkerContext) -> None:
    """A worker whose listeners exercise every outcome of a tree publish."""
    bus = ctx.bus

    @bus.subscribe("echo")
    def echo_listener(*args: Any, **kwargs: Any) -> Any:
        return {"worker": ctx.worker_id, "args": list(args), "kwargs": kwargs}

    @bus.subscribe("whoami")
    def whoami() -> dict[str, int]:
        return {"worker": ctx.worker_id, "pid": os.getpid(), "generation": ctx.generation}

    @bus.subscribe("boom")
    def boom() -> None:
        raise ValueError(f"boom in worker {ctx.worker_id}")

    @bus.subscribe("hang")
    def hang(worker: int, seconds: float) -> str:
        if ctx.worker_id == worker:
            time.sleep(seconds)
        return "done"

    @bus.subscribe("freeze")
    def freeze(worker: int, seconds: int) -> str:
        # Stuck in C code that holds the GIL (as a buggy extension may be): no
        # thread of the worker runs, its heartbeats stop.
        if ctx.worker_id == worker:
            ctypes.PyDLL(None).sleep(seconds)
        return "thawed"

    @bus.subscribe("nap")
    def nap(seconds: float) -> dict[str, Any]:
        time.sleep(seconds)
        return {"worker": ctx.worker_id, "slept": seconds}

    @bus.subscribe("hold")
    def hold(marker: str, seconds: float) -> str:
        with open(f"{marker}.{ctx.worker_id}", "w"):
            pass  # the test waits for this file: the listener runs
        time.sleep(seconds)
        return "held"

    @bus.subscribe("die")
    def die(worker: int) -> str:
        if ctx.worker_id == worker:
            os._exit(7)
        return "alive"

    bus.subscribe("systemd_environment", systemd_environment)

    @bus.subscribe("unserializable")
    def unserializable() -> object:
        return object()

    @bus.subscribe("huge")
    def huge(count: int) -> list[dict[str, int]]:
        return [{} for _ in range(count)]

    @bus.subscribe("serve")
    def serve(count: int) -> int:
        for _ in range(count):
            ctx.request_started()
            ctx.request_finished()
        return ctx.counters["requests"]

    ctx.stopping.wait()


def returns_at_once(ctx: WorkerContext) -> None:
    """An app that returns although nobody asked it to stop."""


def raises_at_once(ctx: WorkerContext) -> None:
    """An app that raises as soon as it runs."""
    raise RuntimeError("the app gave up")
