"""The plugin base class and the listener-priority marker the plugins share.

`SimplePlugin` is CherryPy's base class; `_priority` gives listener methods the
CherryPy channel priorities. They sit apart from the plugins so that each plugin
module depends on them, and not on one another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from procbus.bus import Bus, Listener

_F = TypeVar("_F", bound=Callable[..., Any])


def _priority(value: int) -> Callable[[_F], _F]:
    """Give a listener method the ``priority`` that `Bus.subscribe` reads."""

    def mark(func: _F) -> _F:
        setattr(func, "priority", value)  # noqa: B010 - mypy rejects the attribute form
        return func

    return mark


class SimplePlugin:
    """Plugin base class which auto-subscribes methods for known channels."""

    bus: Bus
    """The bus this plugin subscribes to."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    def _channel_methods(self) -> Iterable[tuple[str, Listener]]:
        for channel in list(self.bus.listeners):
            method = getattr(self, channel, None)
            if callable(method):
                yield channel, method

    def subscribe(self) -> None:
        """Subscribe each method named after a channel of the bus (``start``...)."""
        for channel, method in self._channel_methods():
            self.bus.subscribe(channel, method)

    def unsubscribe(self) -> None:
        """Unsubscribe each method named after a channel of the bus."""
        for channel, method in self._channel_methods():
            self.bus.unsubscribe(channel, method)
