"""How an HTTP worker stops: the same drain whatever the app's interface.

Both hosts (`procbus.worker.wsgi`, `procbus.worker.asgi`) stop in two ``stop``
listeners, so that other listeners can run in between (wspbus priorities):

1. `STOP_ACCEPTING_PRIORITY`: this worker stops accepting at once; the
   listener returns once it no longer polls any listening socket. Connections
   still queued in the kernel stay there for the other holders of the socket
   (sibling workers, the master, its successor after a re-exec): a host serves
   duplicates of the inherited sockets and closes only those.
2. `DRAIN_PRIORITY`: returns once every request in flight was answered and
   every connection closed, or the graceful timeout after the stop began,
   when the rest are cut. App listeners at the default priority (50) stop
   after the last request, as CherryPy's server plugin lets them.

Meanwhile every response says ``Connection: close``, and a connection with
nothing in flight is closed once it has been quiet for a grace: a keep-alive
client may have sent its next request just as the last answer left
(`IDLE_GRACE`), and a connection accepted just before the stop may not have
sent its first one yet (`FRESH_GRACE`). Closing either at once would lose
that request: the classic keep-alive race.
"""

from __future__ import annotations

from typing import Final

STOP_ACCEPTING_PRIORITY: Final = 10
"""Priority of the ``stop`` listener that stops accepting connections."""
DRAIN_PRIORITY: Final = 20
"""Priority of the ``stop`` listener that waits for requests in flight."""

FRESH_GRACE: Final = 2.0
"""How long a connection accepted before a stop may take to send its request."""
IDLE_GRACE: Final = 0.5
"""How long an idle keep-alive connection stays open once a drain began."""
CUT_GRACE: Final = 2
"""Seconds requests still in the app get after the graceful timeout cut them."""
EXIT_MARGIN: Final = 0.25
"""Seconds before ``ctx.stop_deadline`` (the master's kill) at which a host cuts
what is left of its drain, so that the worker ends on its own."""
