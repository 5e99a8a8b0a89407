"""Worker apps: what a worker runs, and what it is given.

A worker app is any callable ``main(ctx)`` taking a `WorkerContext`: the
worker's id and generation, its bus (`procbus.bus` inside the worker), the
listening sockets inherited from the master, and a `stopping` event. It runs in
the worker's app thread and should return once ``ctx.stopping`` is set (or from
a ``stop`` listener on ``ctx.bus``). Returning early, or raising, ends the
worker; the master sees why and replaces it.

Apps are named ``"module:attribute"`` (``"myapp.workers:main"``) and imported
in the worker after fork, so each new worker runs the code on disk now.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from procbus.bus import Bus
from procbus.errors import StartupError

WorkerApp = Callable[["WorkerContext"], Any]

COUNTER_NAMES: Final = ("requests", "in_flight", "publishes", "publish_errors", "errors")
"""What every worker reports: requests served and in flight, publishes handled,
publishes on which one of its listeners failed, and failed requests."""


class Counters:
    """Figures a worker reports with its heartbeat; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def request_started(self) -> None:
        """One more request in flight (one lock: this is on every request's path)."""
        with self._lock:
            self._values["in_flight"] += 1

    def request_finished(self, failed: bool) -> None:
        """One request served (failed: counted in ``errors`` too)."""
        with self._lock:
            values = self._values
            values["in_flight"] -= 1
            values["requests"] += 1
            if failed:
                values["errors"] += 1

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)


@dataclass
class WorkerContext:
    """What a worker app is given."""

    worker_id: int
    generation: int
    bus: Bus
    sockets: Sequence[socket.socket] = ()
    stopping: threading.Event = field(default_factory=threading.Event)
    stop_deadline: float | None = None
    """Set (`time.monotonic`) before `stopping`: the graceful timeout of this stop
    ends then, and the master kills the worker. A host gives up its drain a
    little before, so that the worker still exits on its own."""
    counters: Counters = field(default_factory=Counters)
    settings: dict[str, Any] = field(default_factory=dict)
    """Extra settings the master passes to its workers' apps."""
    ready_event: threading.Event = field(default_factory=threading.Event)
    """Set by `ready`."""
    on_ready: Callable[[], None] = field(default=lambda: None, repr=False)
    """The worker's hook: wakes its loop to report the new state."""
    catch_up: Callable[[], None] = field(default=lambda: None, repr=False)
    """The worker's hook: runs the retained publishes, returns once they ran
    (`procbus.worker.catchup.CatchUp.wait`)."""
    retained_applied: bool = False
    """`apply_retained` returned."""

    def apply_retained(self) -> None:
        """Run the tree's retained publishes in this worker, now that the app's listeners
        exist; return once they ran (at once, the second time).

        A host calls this before it accepts a connection, so that no request is
        served without them (`ready` calls it first). Raises `StartupError` in one
        line naming the channel and the listener when one failed: the worker failed
        to boot. Returns at once, without running them, if the worker is stopped
        meanwhile (``stopping`` is set then).
        """
        if not self.retained_applied:
            self.catch_up()
            self.retained_applied = True

    def ready(self) -> None:
        """Say that the app serves now (apps whose ``reports_ready`` is true), once the
        retained publishes ran (`apply_retained`).

        Until then the master counts the worker as starting: a reload waits
        for it, and an app that fails before this failed to boot.
        """
        self.apply_retained()
        self.ready_event.set()
        self.on_ready()

    def request_started(self) -> None:
        """Count a request as in flight (hosting servers call this)."""
        self.counters.request_started()

    def request_finished(self, failed: bool = False) -> None:
        """Count a served request; the master recycles after `max_requests`."""
        self.counters.request_finished(failed)


_current: WorkerContext | None = None


def current_context() -> WorkerContext | None:
    """The context of the HTTP worker (WSGI or ASGI) running in this process, if any.

    A hosted app reads its worker's id, generation and counters here (the demo
    does); ``None`` outside a hosting worker.
    """
    return _current


@contextlib.contextmanager
def hosting(ctx: WorkerContext) -> Iterator[WorkerContext]:
    """Make `ctx` the `current_context` while a host serves the app."""
    global _current
    _current = ctx
    try:
        yield ctx
    finally:
        if _current is ctx:
            _current = None


def import_object(spec: str) -> Any:
    """Import ``"module:attribute"`` (the attribute may be dotted).

    Raises `StartupError` naming the spec when the module does not import or
    the attribute is missing; the import error is chained.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise StartupError(f"app {spec!r} must look like 'module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise StartupError(
            f"app {spec!r}: module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StartupError(
                f"app {spec!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj


def load_app(app: str | WorkerApp) -> WorkerApp:
    """Return the callable `app` names (or `app` itself)."""
    obj = import_object(app) if isinstance(app, str) else app
    if not callable(obj):
        raise StartupError(f"app {app!r} is not callable (got {type(obj).__name__})")
    return obj
