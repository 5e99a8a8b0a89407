"""procbus: a multi-process bus for pre-fork hosting.

``from procbus import bus`` gives this process's bus (a `Bus`, wspbus
compatible): the master's in the master, the worker's own in a worker.
"""

from procbus._version import __version__
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
