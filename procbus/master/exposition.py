"""The text of a scrape: the server's families and the workers' merged, in Prometheus's
text format or OpenMetrics, written by prometheus_client.

Each worker answers a scrape with its registry's samples (`procbus.worker.metrics`).
`worker_families` reads one answer back into prometheus_client families, checking
it as it goes (a worker runs app code: a bad family is dropped with a reason, never
an exception for the master); `merge` joins the workers' families into one per name,
adding a ``worker`` label to every sample. Two workers may disagree on a family (a
reload in progress runs two versions of the app): the first worker's type wins and
the other's family is dropped. An app label already called ``worker`` is kept as
``exported_worker``, as Prometheus itself renames a target's conflicting labels.
Names under ``procbus_`` belong to the server's families; an app's are dropped.

This module imports prometheus_client (about 50 ms): the master imports it at
its first scrape, not at start.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from procbus.master.metrics import WORKER_STATES, ServerSnapshot
from procbus.worker.metrics import FORMAT

log = logging.getLogger("procbus.metrics")

RESERVED_PREFIX: Final = "procbus_"
WORKER_LABEL: Final = "worker"
EXPORTED_WORKER_LABEL: Final = "exported_worker"
_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES: Final = frozenset(
    {"counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"}
)


class BadFamily(ValueError):
    """A worker's family that cannot be shown; the message says why."""


@dataclass(frozen=True)
class ScrapeFigures:
    """What the scrape itself measured."""

    missing_workers: int
    """Workers that were targets and did not answer in time (or answered garbage)."""
    duration: float
    """Seconds from the scrape's publish to the workers' last answer."""


# -- the server --------------------------------------------------------------------------


def server_families(server: ServerSnapshot, scrape: ScrapeFigures) -> list[Metric]:
    """The server's metrics (names in `procbus.master.metrics`)."""
    families: list[Metric] = []

    def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=labels)
        families.append(family)
        return family

    def counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        families.append(family)
        return family

    states = gauge("procbus_workers", "Worker processes by supervision state.", ["state"])
    for state in WORKER_STATES:
        states.add_metric([state], server.workers_by_state.get(state, 0))
    requests = counter("procbus_worker_requests", "Requests served by the worker.", [WORKER_LABEL])
    in_flight = gauge(
        "procbus_worker_in_flight", "Requests the worker is serving now.", [WORKER_LABEL]
    )
    rss = gauge("procbus_worker_rss_bytes", "Resident memory of the worker.", [WORKER_LABEL])
    cpu = counter(
        "procbus_worker_cpu_seconds", "User and system CPU time of the worker.", [WORKER_LABEL]
    )
    restarts = counter(
        "procbus_worker_restarts", "Unexpected deaths of the slot's workers.", [WORKER_LABEL]
    )
    for worker in server.workers:
        slot = [str(worker.worker)]
        restarts.add_metric(slot, worker.restarts)
        for family, value in (
            (requests, worker.requests),
            (in_flight, worker.in_flight),
            (rss, worker.rss),
            (cpu, worker.cpu_seconds),
        ):
            if value is not None:
                family.add_metric(slot, value)
    for name, doc, label, values in (
        ("procbus_worker_recycles", "Workers renewed by recycling.", "reason", server.recycles),
        ("procbus_reloads", "Reloads by how they ended.", "result", server.reloads),
        ("procbus_publishes", "Worker answers to tree publishes.", "outcome", server.publishes),
    ):
        family = counter(name, doc, [label])
        for key, value in values.items():
            family.add_metric([str(key)], value)
    durations = server.publish_durations
    histogram = HistogramMetricFamily(
        "procbus_publish_duration_seconds",
        "Seconds from a tree publish's send to the tree's answer.",
        buckets=[(_bound(bound), count) for bound, count in durations.cumulative()],
        sum_value=durations.total,
    )
    families.append(histogram)
    if server.listen_backlog:
        backlog = gauge(
            "procbus_listen_backlog", "Connections waiting to be accepted.", ["socket"]
        )
        for name, value in server.listen_backlog.items():
            backlog.add_metric([name], value)
    gauge("procbus_master_generation", "Generation of the master.").add_metric(
        [], server.generation
    )
    gauge("procbus_master_start_time_seconds", "Start of the master, in Unix time.").add_metric(
        [], server.start_time
    )
    gauge(
        "procbus_scrape_missing_workers", "Workers left out of this scrape: no answer in time."
    ).add_metric([], scrape.missing_workers)
    gauge(
        "procbus_scrape_duration_seconds", "Seconds this scrape waited for the workers."
    ).add_metric([], scrape.duration)
    return families


def _bound(bound: float) -> str:
    """A bucket's ``le`` label, as prometheus_client writes it (``0.5``, ``+Inf``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# -- the workers -------------------------------------------------------------------------


def worker_families(answer: object) -> tuple[list[Metric], list[str]]:
    """A worker's answer to a scrape read back: (its families, why others were dropped).

    Raises `BadFamily` when the answer as a whole cannot be read.
    """
    if not isinstance(answer, dict) or answer.get("format") != FORMAT:
        raise BadFamily(f"not a metrics answer of format {FORMAT}")
    rows = answer.get("families")
    if not isinstance(rows, list):
        raise BadFamily("its families are not a list")
    families: list[Metric] = []
    dropped: list[str] = []
    for row in rows:
        try:
            families.append(_family(row))
        except BadFamily as exc:
            dropped.append(str(exc))
    return families, dropped


def _family(row: object) -> Metric:
    if not (isinstance(row, list) and len(row) == 5):
        raise BadFamily("a family is not [name, type, help, unit, samples]")
    name, kind, documentation, unit, samples = row
    if not (isinstance(name, str) and _NAME.fullmatch(name)):
        raise BadFamily(f"bad family name {str(name)[:80]!r}")
    if name.startswith(RESERVED_PREFIX):
        raise BadFamily(f"{name}: names under {RESERVED_PREFIX!r} are procbus's")
    if kind not in _TYPES or not isinstance(documentation, str) or not isinstance(unit, str):
        raise BadFamily(f"{name}: bad type, help or unit")
    if unit and not name.endswith("_" + unit):
        raise BadFamily(f"{name}: the name does not end with its unit {unit[:80]!r}")
    if not isinstance(samples, list):
        raise BadFamily(f"{name}: its samples are not a list")
    family = Metric(name, documentation, kind, unit)
    for sample in samples:
        if not (isinstance(sample, list) and 3 <= len(sample) <= 5):
            raise BadFamily(f"{name}: a sample is not [name, labels, value, ...]")
        sample_name, labels, value = sample[:3]
        timestamp = sample[3] if len(sample) > 3 else None
        if not (isinstance(sample_name, str) and sample_name.startswith(name)):
            raise BadFamily(f"{name}: sample {str(sample_name)[:80]!r} is not of this family")
        family.add_sample(
            sample_name,
            _labels(name, labels),
            _number(name, value),
            None if timestamp is None else _number(name, timestamp),
            _exemplar(family, sample_name, sample[4]) if len(sample) > 4 else None,
        )
    return family


def _labels(family: str, labels: object) -> dict[str, str]:
    if not isinstance(labels, dict):
        raise BadFamily(f"{family}: labels are not a map")
    for key, value in labels.items():
        if not (isinstance(key, str) and _LABEL.fullmatch(key) and isinstance(value, str)):
            raise BadFamily(f"{family}: bad label {str(key)[:80]!r}")
    return labels


def _number(family: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadFamily(f"{family}: {str(value)[:80]!r} is not a number")
    return float(value)


def _exemplar(family: Metric, sample: str, exemplar: object) -> Exemplar | None:
    if exemplar is None:
        return None
    name = family.name
    if not (isinstance(exemplar, list) and len(exemplar) == 3):
        raise BadFamily(f"{name}: an exemplar is not [labels, value, timestamp]")
    if not (
        (family.type == "counter" and sample.endswith("_total"))
        or (family.type in ("histogram", "gaugehistogram") and sample.endswith("_bucket"))
    ):
        raise BadFamily(f"{name}: an exemplar on {sample[:80]!r}, not a counter or a bucket")
    labels, value, timestamp = exemplar
    return Exemplar(
        _labels(name, labels),
        _number(name, value),
        None if timestamp is None else _number(name, timestamp),
    )


def merge(answers: Mapping[int, Iterable[Metric]]) -> list[Metric]:
    """One family per name, every sample labelled with its worker (ids in order)."""
    merged: dict[str, Metric] = {}
    for worker_id in sorted(answers):
        worker = str(worker_id)
        for family in answers[worker_id]:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            elif (into.type, into.unit) != (family.type, family.unit):
                log.debug(
                    "worker %s: %s is a %s, worker %s said %s: dropped",
                    worker, family.name, family.type, sorted(answers)[0], into.type,
                )  # fmt: skip
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if WORKER_LABEL in labels:
                    labels[EXPORTED_WORKER_LABEL] = labels.pop(WORKER_LABEL)
                labels[WORKER_LABEL] = worker
                into.samples.append(sample._replace(labels=labels))
    return list(merged.values())


# -- the text ----------------------------------------------------------------------------

OPENMETRICS_TYPE: Final = openmetrics.CONTENT_TYPE_LATEST
TEXT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4


_openmetrics_text = cast(Callable[[Collector], bytes], openmetrics.generate_latest)


class _Families(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(families: Sequence[Metric], openmetrics_format: bool) -> tuple[bytes, str]:
    """(body, content type): the Prometheus text format 0.0.4, or OpenMetrics 1.0.0."""
    if openmetrics_format:
        return _openmetrics_text(_Families(families)), OPENMETRICS_TYPE
    return generate_latest(_Families(families)), TEXT_TYPE
