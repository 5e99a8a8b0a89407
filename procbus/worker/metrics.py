"""A worker's side of a metrics scrape: its prometheus_client registry, as plain data.

A scrape of ``/metrics`` (or ``procbus ctl metrics``) is a tree publish on
`METRICS_CHANNEL`. Every worker answers it with this module's listener, which
procbus subscribes on the worker's own bus: the samples of the app's
prometheus_client default registry (its counters, histograms, gauges, Info,
custom collectors, and the default process and platform collectors) as lists
msgpack carries. The master adds a ``worker`` label to each sample and merges
the workers' answers (`procbus.master.scrape`). Each worker keeps its own
registry in its own memory: nothing is shared, no ``PROMETHEUS_MULTIPROC_DIR``,
no files left behind by dead workers, and custom collectors work.

The listener runs on the worker's listener thread, in order with the other
publishes: a worker whose listeners are stuck does not answer a scrape in time
and is left out of it (``procbus_scrape_missing_workers``).

prometheus_client is imported at the first scrape, not at boot: a worker that
is never scraped does not pay for it.

The answer (`FORMAT` 1)::

    {"format": 1, "families": [[name, type, help, unit, [sample, ...]], ...]}
    sample: [name, {label: value}, value]  (+ [timestamp] (+ [exemplar]))
    exemplar: [{label: value}, value, timestamp or None]
"""

from __future__ import annotations

from typing import Any, Final

from procbus.bus import Bus

METRICS_CHANNEL: Final = "procbus.metrics"
"""Reserved: the channel of a metrics scrape."""
FORMAT: Final = 1
"""The version of the answer's layout (the master ignores answers it cannot read)."""


def collect(registry: Any = None) -> dict[str, Any]:
    """The samples of `registry` (None: prometheus_client's default registry)."""
    if registry is None:
        from prometheus_client import REGISTRY  # noqa: PLC0415 - at the first scrape

        registry = REGISTRY
    families = []
    for metric in registry.collect():
        samples: list[list[Any]] = []
        for sample in metric.samples:
            row: list[Any] = [sample.name, dict(sample.labels), float(sample.value)]
            exemplar = sample.exemplar
            if sample.timestamp is not None or exemplar is not None:
                row.append(_seconds(sample.timestamp))
            if exemplar is not None:
                row.append(
                    [dict(exemplar.labels), float(exemplar.value), _seconds(exemplar.timestamp)]
                )
            samples.append(row)
        families.append([metric.name, metric.type, metric.documentation, metric.unit, samples])
    return {"format": FORMAT, "families": families}


def _seconds(timestamp: Any) -> float | None:
    """A sample's timestamp (a float, a prometheus_client `Timestamp`, or None)."""
    return None if timestamp is None else float(timestamp)


def answer_scrape() -> dict[str, Any]:
    """The listener of `METRICS_CHANNEL`: this worker's samples."""
    return collect()


def subscribe(bus: Bus) -> None:
    """Answer scrapes on `bus` (a worker's own bus, before its app is loaded)."""
    bus.subscribe(METRICS_CHANNEL, answer_scrape)
