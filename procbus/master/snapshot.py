"""Snapshots of a running tree as plain data: ``ctl status`` and ``ctl stats``.

Read-only views of the master, its pool and its process monitor, built for
the control channel and the stats stream; rendering for humans is the CLI's.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from procbus.worker.apps import COUNTER_NAMES

if TYPE_CHECKING:
    from procbus.master.master import Master


def status(master: Master) -> dict[str, Any]:
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
            "endpoints": dict(master.endpoints),
        },
        "workers": workers,
    }


def stats(master: Master) -> dict[str, Any]:
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
    relay = master.relay
    return {
        "master": {
            "name": master.name,
            "state": master.bus.state.name,
            "uptime": time.time() - master.started_at,
            "target_workers": master.pool.target,
            **sampled[master.pid].to_dict(),
            "publishes": relay.sent if relay else 0,
            "in_flight": len(relay.pending) if relay else 0,
            "late_replies": relay.late_replies if relay else 0,
            "dropped_messages": master.dropped_messages,
            "control_requests": master.control.requests if master.control else 0,
            "bad_control_requests": master.control.bad_requests if master.control else 0,
        },
        "workers": workers,
    }
