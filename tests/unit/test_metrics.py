"""Metrics without processes: a worker's registry read out and back, the merge of the
workers' samples with their worker label, the server's families from a snapshot, the
text of both formats, and what the relay counts of each publish.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import msgpack
import pytest
import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector

from procbus import protocol
from procbus.master import exposition
from procbus.master.loop import EventLoop
from procbus.master.meter import DURATION_BUCKETS, PublishMeter
from procbus.master.meter import Histogram as DurationHistogram
from procbus.master.metrics import WORKER_STATES, ServerSnapshot, WorkerFigures
from procbus.master.metrics_http import wants_openmetrics
from procbus.master.planner import WorkerProc, WorkerState
from procbus.master.relay import Relay, TreeReply
from procbus.protocol import MsgType
from procbus.worker import metrics as worker_metrics
from tests.helpers import FakeClock


class QueueDepth(Collector):
    """A custom collector, as an app writes one."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("app_queue_depth", "Jobs waiting.", labels=["queue"])
        family.add_metric(["mail"], 7)
        return [family]


def app_registry(requests: int) -> CollectorRegistry:
    """What an app's registry holds: a counter, a histogram, a gauge, an Info, a collector."""
    registry = CollectorRegistry()
    counter = Counter("app_requests", "Requests.", ["path"], registry=registry)
    counter.labels("/").inc(requests)
    latency = Histogram("app_latency_seconds", "Latency.", registry=registry, buckets=(0.1, 1))
    latency.observe(0.05)
    Gauge("app_sessions", "Sessions.", registry=registry, multiprocess_mode="livesum").set(3)
    Info("app_build", "Build.", registry=registry).info({"version": "1.2"})
    registry.register(QueueDepth())
    return registry


def over_the_wire(registry: CollectorRegistry) -> Any:
    """A worker's answer as the master reads it: through msgpack and the protocol's limits."""
    answer = worker_metrics.collect(registry)
    return protocol.unpack(msgpack.packb(answer), protocol.WORKER_LIMITS)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in parse_text(text)
        for sample in family.samples
    }


def test_every_sample_of_each_worker_is_shown_once_with_its_worker_label() -> None:
    """Steps: two workers' registries (counter, histogram, gauge, Info, custom collector)
    with different counts, read out, sent through msgpack, read back and merged; render
    the text. Expected: each app sample appears once per worker, labelled ``worker="1"``
    or ``"2"``, with that worker's value; one HELP/TYPE per family."""
    answers = {}
    for worker_id, requests in ((1, 5), (2, 9)):
        families, dropped = exposition.worker_families(over_the_wire(app_registry(requests)))
        assert dropped == []
        answers[worker_id] = families
    text = exposition.render(exposition.merge(answers), openmetrics_format=False)[0].decode()
    found = samples(text)
    for worker, requests in (("1", 5.0), ("2", 9.0)):
        assert found[("app_requests_total", frozenset({("path", "/"), ("worker", worker)}))] == (
            requests
        )
        assert (
            found[("app_latency_seconds_bucket", frozenset({("le", "0.1"), ("worker", worker)}))]
            == 1
        )
        assert found[("app_sessions", frozenset({("worker", worker)}))] == 3
        assert found[("app_build_info", frozenset({("version", "1.2"), ("worker", worker)}))] == 1
        assert found[("app_queue_depth", frozenset({("queue", "mail"), ("worker", worker)}))] == 7
    assert text.count("# TYPE app_requests_total counter") == 1
    assert all("worker" in dict(labels) for _, labels in found)


def test_an_app_label_called_worker_is_kept_as_exported_worker() -> None:
    """Steps: a gauge with its own ``worker`` label, from worker 3. Expected: the app's
    value moves to ``exported_worker``; ``worker`` is procbus's (3)."""
    registry = CollectorRegistry()
    Gauge("app_shards", "Shards.", ["worker"], registry=registry).labels("w-a").set(2)
    families, _ = exposition.worker_families(over_the_wire(registry))
    text = exposition.render(exposition.merge({3: families}), openmetrics_format=False)[0]
    assert samples(text.decode()) == {
        ("app_shards", frozenset({("exported_worker", "w-a"), ("worker", "3")})): 2.0
    }


def test_a_family_two_workers_disagree_on_keeps_the_first_workers_type() -> None:
    """Steps: worker 1 says ``app_jobs`` is a counter, worker 2 (new code, mid-reload)
    says it is a gauge. Expected: one family, a counter, with worker 1's sample only."""
    old, new = CollectorRegistry(), CollectorRegistry()
    Counter("app_jobs", "Jobs.", registry=old).inc()
    Gauge("app_jobs", "Jobs.", registry=new).set(4)
    merged = exposition.merge(
        {
            1: exposition.worker_families(over_the_wire(old))[0],
            2: exposition.worker_families(over_the_wire(new))[0],
        }
    )
    (family,) = merged
    assert family.type == "counter"
    assert {s.labels["worker"] for s in family.samples} == {"1"}


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (["procbus_workers", "gauge", "", "", []], "procbus's"),
        (["bad name", "gauge", "", "", []], "bad family name"),
        (["app_x", "nonsense", "", "", []], "bad type"),
        (["app_x", "gauge", "", "", [["app_x", {}, "7"]]], "not a number"),
        (["app_x", "gauge", "", "", [["app_x", {}, True]]], "not a number"),
        (["app_x", "gauge", "", "", [["other", {}, 1.0]]], "not of this family"),
        (["app_x", "gauge", "", "", [["app_x", {"bad-label": "v"}, 1.0]]], "bad label"),
        (["app_x", "gauge", "", "", [["app_x", {"a": 1}, 1.0]]], "bad label"),
        (["app_x", "gauge", "", "", [["app_x", {}, 1.0, None, [{}, 1.0, None]]]], "exemplar"),
        (["app_x", "gauge", "", "seconds", []], "unit"),
        (["app_x", "gauge"], "is not [name"),
    ],
)
def test_a_bad_family_is_dropped_with_a_reason_and_the_others_kept(row: Any, why: str) -> None:
    """Steps: an answer with one bad family beside a good one. Expected: the good one
    is read, the bad one is dropped with a reason naming what was wrong."""
    good = ["app_ok", "gauge", "Fine.", "", [["app_ok", {}, 1.0]]]
    families, dropped = exposition.worker_families({"format": 1, "families": [row, good]})
    assert [family.name for family in families] == ["app_ok"]
    assert len(dropped) == 1 and why in dropped[0]


@pytest.mark.parametrize(
    "answer", [None, "text", {"format": 99, "families": []}, {"format": 1, "families": 3}]
)
def test_an_answer_that_is_not_a_metrics_answer_is_refused_whole(answer: object) -> None:
    """Steps: a worker's answer of another shape or format. Expected: `BadFamily`."""
    with pytest.raises(exposition.BadFamily):
        exposition.worker_families(answer)


def server_snapshot() -> ServerSnapshot:
    durations = DurationHistogram()
    for seconds in (0.0002, 0.003, 0.003, 45.0):
        durations.observe(seconds)
    return ServerSnapshot(
        generation=3,
        start_time=1_700_000_000.5,
        workers_by_state={**dict.fromkeys(WORKER_STATES, 0), "running": 2, "flapping": 1},
        workers=[
            WorkerFigures(1, 0, requests=12, in_flight=1, rss=50_000_000, cpu_seconds=1.25),
            WorkerFigures(2, 4, requests=3, in_flight=0, rss=None, cpu_seconds=None),
            WorkerFigures(3, 9),
        ],
        recycles={"max_requests": 2, "max_age": 0},
        reloads={"ok": 1, "rolled_back": 1, "failed": 0},
        publishes={"ok": 6, "error": 1, "timeout": 1, "lost": 0},
        publish_durations=durations,
        listen_backlog={"127.0.0.1:8000": 5},
    )


def test_server_metrics_of_a_snapshot_have_the_documented_names_labels_and_values() -> None:
    """Steps: render a snapshot with three slots (one empty), recycles, reloads, publish
    outcomes and durations, a backlog. Expected: every documented name, worker labels
    from the slot ids, None figures left out, counters with ``_total``, the histogram's
    buckets cumulative up to ``+Inf``."""
    families = exposition.server_families(server_snapshot(), exposition.ScrapeFigures(1, 0.25))
    found = samples(exposition.render(families, openmetrics_format=False)[0].decode())

    def value(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    assert value("procbus_workers", state="running") == 2
    assert value("procbus_workers", state="flapping") == 1
    assert value("procbus_workers", state="booting") == 0
    assert value("procbus_worker_requests_total", worker="1") == 12
    assert value("procbus_worker_in_flight", worker="1") == 1
    assert value("procbus_worker_rss_bytes", worker="1") == 50_000_000
    assert value("procbus_worker_cpu_seconds_total", worker="1") == 1.25
    assert ("procbus_worker_rss_bytes", frozenset({("worker", "2")})) not in found
    assert ("procbus_worker_requests_total", frozenset({("worker", "3")})) not in found
    assert value("procbus_worker_restarts_total", worker="3") == 9
    assert value("procbus_worker_recycles_total", reason="max_requests") == 2
    assert value("procbus_reloads_total", result="rolled_back") == 1
    assert value("procbus_publishes_total", outcome="timeout") == 1
    assert value("procbus_publish_duration_seconds_bucket", le="0.0005") == 1
    assert value("procbus_publish_duration_seconds_bucket", le="0.005") == 3
    assert value("procbus_publish_duration_seconds_bucket", le="30.0") == 3
    assert value("procbus_publish_duration_seconds_bucket", le="+Inf") == 4
    assert value("procbus_publish_duration_seconds_count") == 4
    assert math.isclose(value("procbus_publish_duration_seconds_sum"), 45.0062)
    assert value("procbus_listen_backlog", socket="127.0.0.1:8000") == 5
    assert value("procbus_master_generation") == 3
    assert value("procbus_master_start_time_seconds") == 1_700_000_000.5
    assert value("procbus_scrape_missing_workers") == 1
    assert value("procbus_scrape_duration_seconds") == 0.25


def test_openmetrics_text_parses_and_ends_with_eof() -> None:
    """Steps: the server's and two workers' families as OpenMetrics. Expected: the
    OpenMetrics parser reads it; the content type says OpenMetrics; ``# EOF`` ends it."""
    workers = {
        worker_id: exposition.worker_families(over_the_wire(app_registry(worker_id)))[0]
        for worker_id in (1, 2)
    }
    families = [
        *exposition.server_families(server_snapshot(), exposition.ScrapeFigures(0, 0.01)),
        *exposition.merge(workers),
    ]
    body, content_type = exposition.render(families, openmetrics_format=True)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    names = {family.name for family in parse_openmetrics(body.decode())}
    assert {"procbus_worker_requests", "procbus_publish_duration_seconds", "app_requests"} <= names


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4", True),
        ("text/plain;version=0.0.4", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_openmetrics_is_chosen_when_the_accept_header_names_it(accept: str, wanted: bool) -> None:
    """Steps: Accept headers as Prometheus and curl send them. Expected: OpenMetrics
    exactly when it is named."""
    assert wants_openmetrics(accept) is wanted


def test_duration_histogram_counts_each_observation_in_its_bucket() -> None:
    """Steps: observe values on a bound, between bounds and beyond the last. Expected:
    a value on a bound counts in that bucket (``le``); cumulative counts end at the
    total; a non-ascending set of bounds is refused."""
    histogram = DurationHistogram((0.1, 1.0))
    for value in (0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 1), (1.0, 3), (math.inf, 4)]
    assert histogram.count == 4 and histogram.total == pytest.approx(8.6)
    with pytest.raises(ValueError, match="ascending"):
        DurationHistogram((1.0, 0.1))
    assert len(DurationHistogram().counts) == len(DURATION_BUCKETS) + 1


class NullPub:
    def send(self, frame: bytes, flags: int = 0) -> None:
        pass


def test_relay_counts_every_worker_answer_of_a_metered_publish_and_none_of_a_scrape(
    loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: a publish to workers 1, 2, 3: 1 answers ok 0.2 s later, 2 with an error,
    3 dies; then an unmetered publish (a scrape) that times out. Expected: outcomes ok,
    error, lost counted once each; one duration of 0.2 s; the scrape counted nowhere."""
    relay = Relay(cast("zmq.Socket[bytes]", NullPub()), loop)
    workers = [WorkerProc(i, 1, 4000 + i, 0.0, state=WorkerState.RUNNING) for i in (1, 2, 3)]
    template = protocol.PublishTemplate("reconfigure", [], {}, 5.0)
    relay.send(template, workers, 5.0, TreeReply("reconfigure", None))
    clock.advance(0.2)
    error = {"type": "E", "message": "m", "listener": "l", "traceback": "t"}
    for worker, errors in ((workers[0], []), (workers[1], [error])):
        body = {"seq": 1, "results": [None], "errors": errors}
        relay.on_reply(worker, protocol.decode(protocol.encode(MsgType.REPLY, body)))
    relay.on_worker_gone(workers[2])
    relay.send(template, workers, 1.0, TreeReply("procbus.metrics", None), metered=False)
    clock.advance(1.5)
    loop.run_once(0)
    assert not relay.pending
    assert dict(relay.meter.outcomes) == {"ok": 1, "error": 1, "lost": 1}
    assert relay.meter.durations.count == 1
    assert relay.meter.durations.total == pytest.approx(0.2)


def test_publish_meter_adds_outcomes_and_one_duration_per_publish() -> None:
    """Steps: four answers and two replies observed. Expected: outcomes added up, two
    durations."""
    meter = PublishMeter()
    for outcome in ("ok", "ok", "timeout", "ok"):
        meter.answered(outcome)
    meter.replied(0.01)
    meter.replied(0.02)
    assert dict(meter.outcomes) == {"ok": 3, "timeout": 1}
    assert meter.durations.count == 2
