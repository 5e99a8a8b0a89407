"""Snapshots of a running tree as plain data: ``ctl status`` and ``ctl stats``.

Read-only views of the master, its pool and its process monitor, built for
the control channel and the stats stream; rendering for humans is the CLI's.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from procbus.bus import Bus
from procbus.master.control_server import ControlServer
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.planner import Recycled
from procbus.master.pool import Pool
from procbus.master.stats import ProcessMonitor
from procbus.worker.apps import COUNTER_NAMES


class Observed(Protocol):
    """What a snapshot reads of the master (and never changes)."""

    pid: int
    name: str
    started_at: float
    """Wall-clock time."""
    pool: Pool
    monitor: ProcessMonitor
    loop: EventLoop
    bus: Bus

    @property
    def generation(self) -> int: ...

    @property
    def addresses(self) -> dict[str, str]:
        """Role -> endpoint of every socket the master listens on."""

    hub: Hub | None
    control: ControlServer | None


def status(master: Observed) -> dict[str, Any]:
    """A snapshot of the master and its workers (plain data)."""
    now = master.loop.clock()
    slots = master.pool.slots()
    sampled = master.monitor.sample_many(s.current.pid for s in slots if s.current)
    workers = []
    for slot in slots:
        worker = slot.current
        figures = sampled[worker.pid] if worker else None
        workers.append(
            {
                "id": slot.id,
                "pid": worker.pid if worker else None,
                "state": (
                    worker.state.value if worker else ("flapping" if slot.flapping else "backoff")
                ),
                "bus_state": worker.bus_state.value if worker and worker.bus_state else None,
                "generation": worker.generation if worker else slot.generation,
                "age": now - worker.started_at if worker else None,
                "heartbeat_age": (
                    now - worker.last_heartbeat
                    if worker and worker.last_heartbeat is not None
                    else None
                ),
                "cpu_percent": figures.cpu_percent if figures else None,
                "rss": figures.rss if figures else None,
                "requests": worker.requests if worker else 0,
                "restarts": slot.restarts,
                "last_error": slot.last_error,
                "last_recycle": _recycled(slot.last_recycle, now),
            }
        )
    master.monitor.keep_only([master.pid, *(w.pid for w in master.pool.by_pid.values())])
    return {
        "master": {
            "pid": master.pid,
            "name": master.name,
            "state": master.bus.state.name,
            "generation": master.generation,
            "uptime": time.time() - master.started_at,
            "endpoints": master.addresses,
        },
        "workers": workers,
    }


def _recycled(recycled: Recycled | None, now: float) -> dict[str, Any] | None:
    """The last time a slot's worker was recycled: the limit, the figure, and when
    (``time``: wall clock; ``age``: seconds ago)."""
    if recycled is None:
        return None
    age = now - recycled.at
    return {
        "reason": recycled.reason.value,
        "detail": recycled.detail,
        "time": time.time() - age,
        "age": age,
    }


def stats(master: Observed) -> dict[str, Any]:
    """Process figures and counters of the master and every live worker.

    This is also the body of each ``stats`` event. Worker counters are
    those of the worker's last heartbeat.
    """
    now = master.loop.clock()
    live = sorted(master.pool.by_pid.values(), key=lambda w: (w.id, w.generation))
    sampled = master.monitor.sample_many([master.pid, *(w.pid for w in live)], detailed=True)
    workers = []
    for worker in live:
        workers.append(
            {
                "id": worker.id,
                "generation": worker.generation,
                "state": worker.state.value,
                "age": now - worker.started_at,
                **sampled[worker.pid].to_dict(),
                "counters": {**dict.fromkeys(COUNTER_NAMES, 0), **worker.counters},
            }
        )
    return {
        "master": {
            "name": master.name,
            "state": master.bus.state.name,
            "uptime": time.time() - master.started_at,
            "target_workers": master.pool.target,
            **sampled[master.pid].to_dict(),
            **counters(master.hub, master.control),
        },
        "workers": workers,
    }


def counters(hub: Hub | None, control: ControlServer | None) -> dict[str, int]:
    """The master's own counters: publishes, control requests, messages dropped."""
    relay = hub.relay if hub else None
    return {
        "publishes": relay.sent if relay else 0,
        "in_flight": len(relay.pending) if relay else 0,
        "late_replies": relay.late_replies if relay else 0,
        "dropped_messages": hub.dropped_messages if hub else 0,
        "control_requests": control.requests if control else 0,
        "bad_control_requests": control.bad_requests if control else 0,
    }
