"""An HTTP worker: import the app, see which interface it speaks, serve it.

``http_worker("myapp:app")`` is what ``procbus run myapp:app`` runs in each
worker. Apps are imported in the worker after fork (unless ``--preload``), so
that is where the interface is chosen too (`procbus.worker.interface`): the
master may never import the app. A wrong explicit ``--interface`` is then a
boot failure with a one-line reason, as an app that does not import is: the
master backs off, and at start stops with that line. With ``--preload`` or
``--check`` the master imports the app and refuses it before any fork.

WSGI apps are served by waitress (`procbus.worker.wsgi`), ASGI 3 apps by
uvicorn (`procbus.worker.asgi`, imported only by workers that serve one).
"""

from __future__ import annotations

from typing import Any

from procbus.worker.apps import WorkerApp, WorkerContext, import_object
from procbus.worker.interface import Interface, choose
from procbus.worker.wsgi import wsgi_worker

__all__ = ["http_worker"]


def http_worker(
    app: str | Any,
    *,
    interface: Interface = Interface.AUTO,
    threads: int = 4,
    access_log: bool = False,
    graceful_timeout: float = 30.0,
) -> WorkerApp:
    """A worker app serving `app` (a WSGI or ASGI callable, or its
    ``"module:attribute"`` name) as `interface` says; `threads` is for WSGI."""
    name = app if isinstance(app, str) else getattr(app, "__qualname__", repr(app))

    def main(ctx: WorkerContext) -> None:
        obj = import_object(app) if isinstance(app, str) else app
        chosen = choose(obj, interface, name)
        if chosen is Interface.ASGI:
            from procbus.worker.asgi import asgi_worker  # noqa: PLC0415 -- uvicorn when needed

            served = asgi_worker(obj, access_log=access_log, graceful_timeout=graceful_timeout)
        else:
            served = wsgi_worker(
                obj, threads=threads, access_log=access_log, graceful_timeout=graceful_timeout
            )
        served(ctx)

    main.__qualname__ = main.__name__ = f"http_worker({name!r})"
    main.reports_ready = True  # type: ignore[attr-defined]
    return main
