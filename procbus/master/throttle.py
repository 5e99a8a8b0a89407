"""Warnings about what peers send, logged at a bounded rate.

The master logs a line for each message it drops, so that an operator sees
why. But whoever sends a burst of bad messages (a hostile control client, a
buggy worker, garbage on a socket) must not also fill the log and slow the
loop: past `limit` lines per `period`, the rest are only counted, and the
count is logged when the next period begins.
"""

from __future__ import annotations

import logging
import time

from procbus.master.loop import Clock


class LogThrottle:
    """Log at most `limit` warnings per `period` seconds, then count the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        limit: int = 20,
        period: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        """What the warnings are about, plural ("bad control messages")."""
        self.limit, self.period = limit, period
        self._clock = clock
        self.window_start: float | None = None
        self.logged = 0
        self.suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        now = self._clock()
        if self.window_start is None or now - self.window_start >= self.period:
            if self.suppressed:
                self.logger.warning("%d more %s were not logged", self.suppressed, self.what)
            self.window_start, self.logged, self.suppressed = now, 0, 0
        if self.logged < self.limit:
            self.logged += 1
            self.logger.warning(message, *args)
        else:
            self.suppressed += 1
