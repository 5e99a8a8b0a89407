"""The master's own metrics, read from its state when a scrape asks: plain data.

The master keeps no metric registry: what ``/metrics`` shows of the server is
read here, at each scrape, from what the master already keeps (the pool's
slots and counters, the relay's `PublishMeter`, the process monitor) into a
`ServerSnapshot`, which `procbus.master.exposition` turns into Prometheus
families. The names are a contract (README, "Metrics"):

===================================  =======  =============================================
``procbus_workers{state}``           gauge    worker processes by supervision state, and
                                              empty slots (``backoff``, ``flapping``)
``procbus_worker_requests_total``    counter  requests served by the slot's current worker
``procbus_worker_in_flight``         gauge    requests it is serving now
``procbus_worker_rss_bytes``         gauge    its resident memory
``procbus_worker_cpu_seconds_total`` counter  its user + system CPU time
``procbus_worker_restarts_total``    counter  unexpected deaths in the slot
``procbus_worker_recycles_total``    counter  workers renewed by ``reason`` (max_requests, ...)
``procbus_reloads_total{result}``    counter  reloads by ``result`` (ok, rolled_back, failed)
``procbus_publishes_total{outcome}`` counter  worker answers to tree publishes, by outcome
``procbus_publish_duration_seconds`` histo.   from a publish's send to the tree's answer
``procbus_listen_backlog{socket}``   gauge    connections waiting in a listening socket
``procbus_master_generation``        gauge    restarts and upgrades so far, plus one
``procbus_master_start_time_seconds`` gauge   when this master started (Unix time)
===================================  =======  =============================================

``worker`` labels are the stable worker ids (1..N): a worker replaced in its
slot starts its counters again from zero, which Prometheus reads as a counter
reset (``rate()`` handles it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from procbus.master import sockets as listening
from procbus.master.backlog import listen_backlogs
from procbus.master.hub import Hub
from procbus.master.jobs.workers import ReloadResult
from procbus.master.meter import Histogram
from procbus.master.planner import RecycleReason, WorkerState
from procbus.master.pool import Pool
from procbus.master.relay import WorkerStatus
from procbus.master.settings import TreeSettings
from procbus.master.stats import ProcessMonitor

EMPTY_SLOT_STATES: Final = ("backoff", "flapping")
"""What a wanted slot without any process is: waiting to be filled again, or given up on."""
WORKER_STATES: Final = (
    *(state.value for state in WorkerState if state is not WorkerState.EXITED),
    *EMPTY_SLOT_STATES,
)
"""Every value of ``procbus_workers{state}`` (each is shown, 0 included)."""
PUBLISH_OUTCOMES: Final = tuple(s.value for s in WorkerStatus if s is not WorkerStatus.STARTING)


class Observed(Protocol):
    """What the server metrics read of the master (and never change)."""

    started_at: float
    """Wall-clock time."""
    pool: Pool
    monitor: ProcessMonitor
    hub: Hub | None
    settings: TreeSettings

    @property
    def sockets(self) -> Sequence[Any]:
        """The workers' listening sockets."""

    @property
    def generation(self) -> int: ...


@dataclass(frozen=True)
class WorkerFigures:
    """One slot: its id, and its current worker's figures (None: no current worker,
    or not measured)."""

    worker: int
    restarts: int
    requests: int | None = None
    in_flight: int | None = None
    rss: int | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class ServerSnapshot:
    """Everything the server metrics show, as plain data."""

    generation: int
    start_time: float
    workers_by_state: Mapping[str, int]
    workers: Sequence[WorkerFigures]
    recycles: Mapping[str, int]
    reloads: Mapping[str, int]
    publishes: Mapping[str, int]
    publish_durations: Histogram = field(default_factory=Histogram)
    listen_backlog: Mapping[str, int] = field(default_factory=dict)


def read_server(master: Observed) -> ServerSnapshot:
    """The server's figures now."""
    pool = master.pool
    states: Counter[str] = Counter(dict.fromkeys(WORKER_STATES, 0))
    for process in pool.by_pid.values():
        if process.alive:
            states[process.state.value] += 1
    slots = pool.slots()
    for slot in slots:
        if slot.current is None and slot.replacement is None:
            states["flapping" if slot.flapping else "backoff"] += 1
    sampled = master.monitor.sample_many(s.current.pid for s in slots if s.current)
    workers = []
    for slot in slots:
        current = slot.current
        if current is None:
            workers.append(WorkerFigures(slot.id, slot.restarts))
            continue
        figures = sampled[current.pid]
        workers.append(
            WorkerFigures(
                slot.id,
                slot.restarts,
                requests=current.requests,
                in_flight=current.counters.get("in_flight", 0),
                rss=figures.rss,
                cpu_seconds=figures.cpu_seconds,
            )
        )
    relay = master.hub.relay if master.hub is not None else None
    return ServerSnapshot(
        generation=master.generation,
        start_time=master.started_at,
        workers_by_state=states,
        workers=workers,
        recycles={**dict.fromkeys(RecycleReason, 0), **pool.recycles},
        reloads={**dict.fromkeys(ReloadResult, 0), **pool.reload_results},
        publishes={
            **dict.fromkeys(PUBLISH_OUTCOMES, 0),
            **(relay.meter.outcomes if relay else {}),
        },
        publish_durations=relay.meter.durations if relay else Histogram(),
        listen_backlog=listen_backlogs(
            (listening.describe(sock), sock) for sock in master.sockets
        ),
    )
