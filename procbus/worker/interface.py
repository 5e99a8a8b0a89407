"""Which interface an app speaks, WSGI or ASGI 3: what ``--interface`` decides.

``auto`` (the default) looks at the app as uvicorn does: a coroutine function,
an object whose ``__call__`` is one, or a class whose instances are awaitable
is ASGI; any other callable is WSGI. An explicit choice is checked against the
app, so that a wrong one is a startup error naming the app instead of a 500 on
every request: ``wsgi`` for a coroutine function cannot be right (calling it
gives a coroutine, never a response), nor ``asgi`` for a callable that cannot
take ``(scope, receive, send)``. A callable that is not a coroutine function
but does take three arguments (a wrapper that returns a coroutine) is served
as ASGI when asked to: the operator knows better than the look of it.

The decision is made where the app is imported: in each worker after fork,
or in the master with ``--preload`` and ``--check``. This module only looks;
it imports nothing and starts nothing.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any

from procbus.errors import StartupError

__all__ = ["Interface", "choose", "detect"]


class Interface(enum.StrEnum):
    """The ``interface`` setting's choices."""

    AUTO = "auto"
    """Look at the app (`detect`)."""
    ASGI = "asgi"
    """ASGI 3, served by uvicorn."""
    WSGI = "wsgi"
    """WSGI, served by waitress."""


def detect(app: object) -> Interface:
    """ASGI when `app` is a coroutine function, has one as ``__call__``, or is a
    class whose instances are awaitable (ASGI 3 as a class); WSGI otherwise."""
    if inspect.isclass(app):
        return Interface.ASGI if hasattr(app, "__await__") else Interface.WSGI
    if inspect.iscoroutinefunction(app):
        return Interface.ASGI
    call = getattr(app, "__call__", None)  # noqa: B004 -- the method itself, not callable()
    return Interface.ASGI if inspect.iscoroutinefunction(call) else Interface.WSGI


def choose(app: object, configured: Interface, name: str) -> Interface:
    """The interface to serve `app` (named `name` in errors) with.

    Raises `StartupError`, one line naming the app, when `app` is not callable,
    when an explicit choice contradicts it, or when ``auto`` finds WSGI for a
    callable that cannot take ``(environ, start_response)``.
    """
    if not callable(app):
        raise StartupError(f"app {name!r} is not callable (got {type(app).__name__})")
    found = detect(app)
    if configured is Interface.AUTO:
        if found is Interface.WSGI and not _takes(app, 2):
            raise StartupError(
                f"app {name!r} is not a coroutine function, so it would be served as WSGI, "
                "but it cannot be called as app(environ, start_response); "
                "if it is an ASGI app, say so with --interface asgi"
            )
        return found
    if configured is Interface.WSGI and found is Interface.ASGI:
        raise StartupError(
            f"app {name!r} is an ASGI app (a coroutine function), not WSGI: "
            "interface 'wsgi' cannot serve it (use 'asgi' or 'auto')"
        )
    if configured is Interface.ASGI and found is Interface.WSGI and not _takes(app, 3):
        raise StartupError(
            f"app {name!r} cannot be called as app(scope, receive, send): "
            "interface 'asgi' cannot serve it (a WSGI app? use 'wsgi' or 'auto')"
        )
    return configured


def _takes(app: Any, count: int) -> bool:
    """Whether `app` can be called with `count` positional arguments (True when
    its signature cannot be read)."""
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True
