"""`procbus.worker.interface`: which interface an app speaks, and wrong choices refused."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import pytest

from procbus.errors import StartupError
from procbus.worker.interface import Interface, choose, detect


async def asgi_function(scope: Any, receive: Any, send: Any) -> None: ...


class AsgiObject:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None: ...


class AsgiClass:
    """ASGI 3 as a class: instantiated per connection, the instance awaited."""

    def __init__(self, scope: Any, receive: Any, send: Any) -> None: ...

    def __await__(self) -> Any:
        yield


def wsgi_function(environ: Any, start_response: Any) -> Iterable[bytes]:
    return []


class WsgiObject:
    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        return []


def three_argument_wrapper(scope: Any, receive: Any, send: Any) -> Any:
    """Not a coroutine function, but returns a coroutine: ASGI in disguise."""
    return asgi_function(scope, receive, send)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (asgi_function, Interface.ASGI),
        (AsgiObject(), Interface.ASGI),
        (AsgiClass, Interface.ASGI),
        (functools.partial(asgi_function), Interface.ASGI),
        (wsgi_function, Interface.WSGI),
        (WsgiObject(), Interface.WSGI),
        (three_argument_wrapper, Interface.WSGI),
    ],
    ids=lambda value: getattr(value, "__name__", type(value).__name__),
)
def test_detect_calls_coroutine_functions_asgi_and_other_callables_wsgi(
    app: object, expected: Interface
) -> None:
    assert detect(app) is expected


def test_auto_and_matching_explicit_choices_are_kept() -> None:
    assert choose(asgi_function, Interface.AUTO, "m:asgi") is Interface.ASGI
    assert choose(wsgi_function, Interface.AUTO, "m:wsgi") is Interface.WSGI
    assert choose(AsgiObject(), Interface.ASGI, "m:obj") is Interface.ASGI
    assert choose(WsgiObject(), Interface.WSGI, "m:obj") is Interface.WSGI


def test_explicit_asgi_serves_a_three_argument_callable_that_auto_would_not() -> None:
    """A sync callable taking (scope, receive, send): auto refuses it as WSGI (it cannot
    take two arguments), an explicit 'asgi' is trusted."""
    assert choose(three_argument_wrapper, Interface.ASGI, "m:wrapped") is Interface.ASGI
    with pytest.raises(StartupError, match="--interface asgi"):
        choose(three_argument_wrapper, Interface.AUTO, "m:wrapped")


@pytest.mark.parametrize(
    ("app", "configured", "expected"),
    [
        (asgi_function, Interface.WSGI, "app 'm:app' is an ASGI app"),
        (AsgiObject(), Interface.WSGI, "app 'm:app' is an ASGI app"),
        (wsgi_function, Interface.ASGI, "app 'm:app' cannot be called as app(scope, receive"),
        (42, Interface.AUTO, "app 'm:app' is not callable (got int)"),
    ],
)
def test_wrong_choices_are_one_line_startup_errors_naming_the_app(
    app: object, configured: Interface, expected: str
) -> None:
    with pytest.raises(StartupError) as info:
        choose(app, configured, "m:app")
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_a_builtin_without_a_readable_signature_is_given_the_benefit_of_the_doubt() -> None:
    assert choose(print, Interface.AUTO, "builtins:print") is Interface.WSGI
    assert choose(print, Interface.ASGI, "builtins:print") is Interface.ASGI
