"""``procbus run --metrics``: ``GET /metrics`` and ``procbus ctl metrics`` on a real tree
of the demo app, a worker that does not answer, and the endpoint across restart and
upgrade.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.hosting import RunProcess, running
from tests.helpers import wait_until
from tests.processes import procbus

SERVER_METRICS = {
    "procbus_workers",
    "procbus_worker_requests",
    "procbus_worker_in_flight",
    "procbus_worker_rss_bytes",
    "procbus_worker_cpu_seconds",
    "procbus_worker_restarts",
    "procbus_worker_recycles",
    "procbus_reloads",
    "procbus_publishes",
    "procbus_publish_duration_seconds",
    "procbus_listen_backlog",
    "procbus_master_generation",
    "procbus_master_start_time_seconds",
    "procbus_scrape_missing_workers",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(proc: RunProcess) -> str:
    url: str = proc.status()["master"]["endpoints"]["metrics"]
    return url


def scrape(url: str, timeout: float = 10.0) -> tuple[set[str], Samples]:
    """(family names, samples) of one ``GET`` of `url`."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(response.read().decode())


def parse(text: str) -> tuple[set[str], Samples]:
    families = list(text_string_to_metric_families(text))
    found = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }
    return {family.name for family in families}, found


def workers_with(samples: Samples, name: str, **labels: str) -> set[str]:
    """The ``worker`` labels of the samples `name` with `labels`."""
    return {
        dict(key)["worker"]
        for sample, key in samples
        if sample == name and set(labels.items()) <= key and "worker" in dict(key)
    }


def test_metrics_show_the_server_and_the_demo_counter_of_every_worker() -> None:
    """Steps: the demo app, 2 workers, ``--metrics 127.0.0.1:0``; requests until each
    worker served one; ``GET /metrics``; then ``procbus ctl metrics``. Expected: every
    documented server metric, 2 running workers, ``demo_requests_total{path="/"}`` for
    worker 1 and worker 2, no worker missing; ``ctl metrics`` prints the same series."""
    with running("--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0", workers=2) as proc:
        url = metrics_url(proc)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")

        def both_counted() -> tuple[set[str], Samples] | None:
            assert proc.get("/")[0] == 200
            names, found = scrape(url)
            counted = workers_with(found, "demo_requests_total", path="/")
            return (names, found) if counted == {"1", "2"} else None

        names, found = wait_until(both_counted, 30)
        assert names >= SERVER_METRICS
        assert found[("procbus_workers", frozenset({("state", "running")}))] == 2
        assert workers_with(found, "procbus_worker_requests_total") == {"1", "2"}
        assert workers_with(found, "procbus_worker_rss_bytes") == {"1", "2"}
        assert workers_with(found, "process_resident_memory_bytes") == {"1", "2"}
        assert found[("procbus_scrape_missing_workers", frozenset())] == 0
        assert found[("procbus_master_generation", frozenset())] == 1

        done = procbus("ctl", "--runtime-dir", str(proc.runtime_dir), "metrics")
        assert done.returncode == 0, done.stderr
        ctl_names, ctl_found = parse(done.stdout)
        assert ctl_names == names
        assert set(ctl_found) == set(found)


def test_a_worker_that_does_not_answer_is_left_out_and_the_scrape_answers_at_its_deadline() -> (
    None
):
    """Steps: 2 workers, ``--metrics-timeout 0.5``; stop worker 1 (SIGSTOP); scrape.
    Expected: an answer well within the HTTP client's 10 s, worker 1 counted missing and
    none of its app samples, worker 2's there; once worker 1 goes on, nobody is missing."""
    options = ("--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--metrics-timeout", "0.5")
    with running(*options, workers=2) as proc:
        url = metrics_url(proc)
        pid = next(w["pid"] for w in proc.workers() if w["id"] == 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            _, found = scrape(url)
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert took < 5.0
        assert found[("procbus_scrape_missing_workers", frozenset())] == 1
        assert workers_with(found, "python_info") == {"2"}
        assert workers_with(found, "procbus_worker_requests_total") == {"1", "2"}

        def nobody_missing() -> bool:
            return scrape(url)[1][("procbus_scrape_missing_workers", frozenset())] == 0

        wait_until(nobody_missing, 15)


@pytest.mark.parametrize("command", ["restart", "upgrade"])
def test_the_metrics_endpoint_keeps_its_address_across_restart_and_upgrade(
    command: str,
) -> None:
    """Steps: ``--metrics 127.0.0.1:0`` (a port the system picks); ``ctl restart`` or
    ``ctl upgrade``. Expected: the same URL answers, now from generation 2 (the
    listening socket was handed over, not bound again)."""
    with running("--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0", workers=1) as proc:
        url = metrics_url(proc)
        assert scrape(url)[1][("procbus_master_generation", frozenset())] == 1
        proc.call(command, timeout=60)
        if command == "upgrade":
            assert proc.proc.wait(20) == 0  # the old master handed over and left

        def generation() -> Any:
            return scrape(url)[1][("procbus_master_generation", frozenset())]

        assert wait_until(lambda: generation() == 2, 30)
        proc.wait_running(1)
        assert metrics_url(proc) == url


def test_recycles_reloads_and_publishes_are_counted() -> None:
    """Steps: 1 worker with ``--max-requests 5``; requests until it was recycled; a
    ``ctl reload``; a ``ctl publish``. Expected: ``procbus_worker_recycles_total``
    counts a ``max_requests`` recycle, ``procbus_reloads_total`` one ``ok`` reload,
    ``procbus_publishes_total`` one ``ok`` answer (the scrapes are not counted), and the
    publish's duration is in the histogram."""
    options = ("--bind", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--max-requests", "5")
    with running(*options, workers=1) as proc:
        url = metrics_url(proc)

        recycles = ("procbus_worker_recycles_total", frozenset({("reason", "max_requests")}))

        def recycled() -> bool:
            proc.get("/")
            return scrape(url)[1][recycles] >= 1

        wait_until(recycled, 30)
        proc.wait_running(1)
        proc.call("reload", timeout=60)
        assert proc.call("publish", "demo.message", "hi")["ok"]
        _, found = scrape(url)
        assert found[("procbus_reloads_total", frozenset({("result", "ok")}))] == 1
        assert found[("procbus_reloads_total", frozenset({("result", "failed")}))] == 0
        assert found[("procbus_publishes_total", frozenset({("outcome", "ok")}))] == 1
        assert found[("procbus_publish_duration_seconds_count", frozenset())] == 1
