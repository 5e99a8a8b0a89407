"""procbus: a multi-process bus for pre-fork hosting.

``from procbus import bus`` gives this process's bus (a `Bus`, wspbus
compatible): the master's in the master, the worker's own in a worker.

The names below are imported when first used (PEP 562), not with the
package: ``procbus ctl`` imports ``procbus.ctl``, hence this package, and must
not pay for the bus (``inspect``, ``logging`` ...) it never uses. Type checkers
see them through the ``TYPE_CHECKING`` imports.

``procbus.bus`` is the bus instance, as ``from procbus.bus import bus`` made it
when this package imported it eagerly; importing the submodule
``procbus.bus`` (``from procbus.bus import Bus``) must not replace the
instance with the module, which is what `_Package` sees to.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from procbus._version import __version__

if TYPE_CHECKING:
    from procbus.bus import Bus, ChannelFailures, State, states
    from procbus.bus import bus as bus
    from procbus.errors import ProcbusError, RemoteError

__all__ = [
    "Bus",
    "ChannelFailures",
    "ProcbusError",
    "RemoteError",
    "State",
    "__version__",
    "bus",
    "states",
]

_LAZY: Final = {
    "Bus": "procbus.bus",
    "ChannelFailures": "procbus.bus",
    "State": "procbus.bus",
    "states": "procbus.bus",
    "bus": "procbus.bus",
    "ProcbusError": "procbus.errors",
    "RemoteError": "procbus.errors",
}


def __getattr__(name: str) -> Any:
    source = _LAZY.get(name)
    if source is None:
        raise AttributeError(f"module 'procbus' has no attribute {name!r}")
    __import__(source)
    value = getattr(sys.modules[source], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(ModuleType):
    """This package's module type: the import system's ``procbus.bus = <module>``
    (made when the submodule is first imported) stores the bus instance instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "bus" and isinstance(value, ModuleType):
            value = value.bus
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
