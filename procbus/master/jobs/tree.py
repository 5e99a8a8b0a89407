"""What a long command may ask of the tree: the `Tree` protocol.

Jobs (`procbus.master.jobs`) never see the `Master`: they see this narrow
interface, which the master implements, and a test can implement with fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from procbus.bus import Bus
from procbus.master.lineage import Lineage
from procbus.master.loop import EventLoop
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings


class Tree(Protocol):
    """The tree as a job sees it."""

    settings: TreeSettings
    pool: Pool
    loop: EventLoop
    bus: Bus
    lineage: Lineage
    """Where the master is in its line: what goes to the next one."""
    reload_config: Callable[[], None]
    """Re-read the configuration (reload); raises to abort."""

    @property
    def exiting(self) -> bool:
        """The master is going: a job stops where it is."""

    def emit(self, event: str, **data: Any) -> None:
        """Put an event on the event stream."""

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Pump the loop until `predicate()` or `timeout`; raises `JobAborted` on exit."""
