"""A metrics scrape: the server's figures and every worker's registry, in one text.

A scrape is a tree publish on the reserved channel
`procbus.worker.metrics.METRICS_CHANNEL`, to the workers alone and with a short
deadline (``metrics_timeout``, 2 s by default). Each worker answers with its
prometheus_client registry's samples; when every target answered, or at the
deadline, the server's metrics (`procbus.master.metrics`) and the workers'
(merged, each sample labelled with its worker: `procbus.master.exposition`)
are written out as one text. A worker that does not answer in time is left
out of that scrape and counted in ``procbus_scrape_missing_workers``; the
master's loop never waits: the caller (the HTTP endpoint, or ``ctl metrics``
through the command path) gets the text in a callback.

Scrapes are not counted in ``procbus_publishes_total`` or the publish
durations: those show the app's publishes, not the observer's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from procbus.master.loop import Clock
from procbus.master.metrics import Observed, read_server
from procbus.master.relay import TreeReply, WorkerStatus
from procbus.master.throttle import LogThrottle
from procbus.worker.metrics import METRICS_CHANNEL

log = logging.getLogger("procbus.metrics")

AskWorkers = Callable[[str, float, Callable[[TreeReply], None]], None]
"""(channel, deadline, on_done): a publish to the workers alone (`TreePublisher.ask_workers`)."""


@dataclass(frozen=True)
class Exposition:
    """The text of one scrape."""

    text: str
    content_type: str
    workers: list[int]
    """The workers whose metrics are in it."""
    missing: list[int]
    """The workers left out: targets that did not answer in time, or answered garbage."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "content_type": self.content_type,
            "workers": self.workers,
            "missing": self.missing,
        }


class Scraper:
    """Scrapes the tree for the master (see the module docstring)."""

    def __init__(
        self, master: Observed, ask_workers: AskWorkers, clock: Clock = time.monotonic
    ) -> None:
        self.master = master
        self.ask_workers = ask_workers
        self.clock = clock
        self._dropped = LogThrottle(log, "metrics scrape problems")

    def scrape(
        self,
        on_done: Callable[[Exposition], None],
        *,
        openmetrics: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Scrape the tree; `on_done(exposition)` is called from the loop (or now).

        `timeout` shortens the deadline (a ``ctl`` caller's own); it never lengthens it.
        """
        limit = self.master.settings.metrics_timeout
        deadline = limit if timeout is None else min(timeout, limit)
        started = self.clock()

        def gathered(reply: TreeReply) -> None:
            on_done(self._expose(reply, self.clock() - started, openmetrics))

        try:
            self.ask_workers(METRICS_CHANNEL, deadline, gathered)
        except RuntimeError:  # not open (or closed): the server's figures alone
            gathered(TreeReply(METRICS_CHANNEL, None))

    def _expose(self, reply: TreeReply, duration: float, openmetrics: bool) -> Exposition:
        from procbus.master import exposition  # noqa: PLC0415 - prometheus_client, at first use

        answers = {}
        missing = []
        for worker_id, result in sorted(reply.workers.items()):
            if result.status is WorkerStatus.STARTING:
                continue
            found = [r for r in result.results if isinstance(r, dict) and "format" in r]
            if not found:
                missing.append(worker_id)
                why = result.errors[0] if result.errors else f"status {result.status.value}"
                self._dropped.warn("worker %d left out of a metrics scrape: %s", worker_id, why)
                continue
            try:
                families, dropped = exposition.worker_families(found[0])
            except exposition.BadFamily as exc:
                missing.append(worker_id)
                self._dropped.warn("worker %d left out of a metrics scrape: %s", worker_id, exc)
                continue
            for reason in dropped:
                self._dropped.warn("worker %d: metric dropped: %s", worker_id, reason)
            answers[worker_id] = families
        figures = exposition.ScrapeFigures(len(missing), duration)
        families = [
            *exposition.server_families(read_server(self.master), figures),
            *exposition.merge(answers),
        ]
        body, content_type = exposition.render(families, openmetrics)
        return Exposition(body.decode(), content_type, sorted(answers), missing)
