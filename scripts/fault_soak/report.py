"""The soak's summary: figures, verdicts, the rules used, and what failed the run.

`summarize` turns what the soak recorded into one plain document (what
``--json`` prints); `render` writes it for a human. The run fails (exit 1)
on any failed request not cut by the soak's own SIGKILL or stop, any publish
the rules do not explain, any process left in the tree's session (or alive
and unknown to the master once the tree has settled), a master that did not
exit after TERM, a master that did not answer ``ping`` after a flood, and a
client stuck past its timeout. Growth of the master's RSS or fds is reported,
not judged.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fault_soak.journal import (
    CHANGE_MARGIN,
    FAILURE_RULES,
    KILL_MARGIN,
    PUBLISH_RULES,
    STOP_DEATH_GRACE,
    Cause,
    Journal,
    PublishRecord,
    PublishVerdict,
    RequestFailure,
    failure_cause,
    publish_verdict,
    unexplained_workers,
    worker_problems,
)
from fault_soak.tree import Leftover, StopReport
from fault_soak.vitals import FD_NOISE, RSS_NOISE, RSS_NOISE_FRACTION, MasterLife

EXAMPLES = 8
"""Unexplained failures and publishes shown with their context."""


@dataclass
class SoakRun:
    """Everything the soak recorded, once every thread has ended."""

    seed: int
    replay: str
    settings: dict[str, Any]
    journal: Journal
    seconds: float
    """Of load, from the first request to the last."""
    ok: int
    connections: int
    workers_seen: int
    failures: list[RequestFailure]
    failed_total: int
    publishes: list[PublishRecord]
    lives: list[MasterLife]
    stop: StopReport | None
    strays: list[Leftover]
    unresponsive: int
    clients_stuck: bool
    final_stats: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f} MiB"


def summarize(run: SoakRun) -> dict[str, Any]:
    j = run.journal
    causes = Counter(failure_cause(f, j.kills, j.stops) for f in run.failures)
    other = [f for f in run.failures if failure_cause(f, j.kills, j.stops) is Cause.OTHER]
    verdicts = Counter(publish_verdict(p, j.kills, j.stops, j.jobs) for p in run.publishes)
    statuses: Counter[str] = Counter()
    for record in run.publishes:
        for answer in (record.result or {}).get("workers", {}).values():
            statuses[str(answer.get("status"))] += 1
    bad_publishes = [
        p
        for p in run.publishes
        if publish_verdict(p, j.kills, j.stops, j.jobs)
        in (PublishVerdict.NOT_OK_UNEXPLAINED, PublishVerdict.UNANSWERED)
    ]
    jobs: dict[str, Counter[str]] = {}
    for job in j.jobs:
        jobs.setdefault(job.kind.value, Counter())[
            "done" if job.returncode == 0 else "failed"
        ] += 1
    summary: dict[str, Any] = {
        "seed": run.seed,
        "started": datetime.datetime.fromtimestamp(j.wall_origin).isoformat(
            timespec="milliseconds"
        ),
        "replay": run.replay,
        "settings": run.settings,
        "seconds": round(run.seconds, 2),
        "faults": {kind.value: count for kind, count in sorted(j.faults.items())},
        "skipped_faults": {kind.value: count for kind, count in sorted(j.skipped.items())},
        "jobs": {kind: dict(counts) for kind, counts in sorted(jobs.items())},
        "failed_jobs": [
            {"at": round(job.start - j.origin, 2), "kind": job.kind.value, "outcome": job.outcome}
            for job in j.jobs
            if job.returncode != 0
        ],
        "requests": {
            "total": run.ok + run.failed_total,
            "ok": run.ok,
            "failed": run.failed_total,
            "cut_by_soak_kill": causes[Cause.SOAK_KILL],
            "cut_by_stop": causes[Cause.STOPPED],
            "other": causes[Cause.OTHER] + (run.failed_total - len(run.failures)),
            "other_by_outcome": dict(Counter(f.outcome.value for f in other)),
            "connections": run.connections,
            "workers_seen": run.workers_seen,
            "rate": round((run.ok + run.failed_total) / run.seconds, 1) if run.seconds else None,
        },
        "publishes": {
            "total": len(run.publishes),
            "all_ok": verdicts[PublishVerdict.ALL_OK],
            "not_ok_explained": verdicts[PublishVerdict.NOT_OK_EXPLAINED],
            "not_ok_unexplained": verdicts[PublishVerdict.NOT_OK_UNEXPLAINED],
            "unanswered_during_master_change": verdicts[PublishVerdict.UNANSWERED_MASTER_CHANGE],
            "unanswered_otherwise": verdicts[PublishVerdict.UNANSWERED],
            "worker_answers": dict(statuses),
        },
        "master": _master(run),
        "final_stats": _stats(run.final_stats),
        "orphans": {
            "before_stop": [str(p) for p in run.strays],
            "after_stop": [str(p) for p in (run.stop.orphans if run.stop else [])],
        },
        "stop": (
            {
                "master": run.stop.master,
                "exited": run.stop.master_exited,
                "seconds": round(run.stop.seconds, 2),
            }
            if run.stop
            else None
        ),
        "unresponsive_after_flood": run.unresponsive,
        "notes": list(j.notes),
        "rules": {
            "requests": FAILURE_RULES.format(grace=STOP_DEATH_GRACE),
            "publishes": PUBLISH_RULES.format(
                kill_margin=KILL_MARGIN, change_margin=CHANGE_MARGIN
            ),
            "master_growth": (
                f"growth beyond noise: RSS more than max({_mib(RSS_NOISE)}, "
                f"{RSS_NOISE_FRACTION:.0%}) or more than {FD_NOISE} fds, for each master "
                "(pid, generation) from its first sample with as many children and running "
                "workers as its last one (a master without such a sample is not compared)"
            ),
        },
        "unexplained_requests": [_failure(f, j) for f in other[:EXAMPLES]],
        "unexplained_publishes": [_publish(p, j) for p in bad_publishes[:EXAMPLES]],
    }
    summary["problems"] = _problems(run, summary)
    summary["exit_status"] = 1 if summary["problems"] else 0
    return summary


def _master(run: SoakRun) -> dict[str, Any]:
    origin = run.journal.origin
    lives = [life.to_dict(origin) for life in run.lives]
    if not run.lives:
        return {"lives": lives}
    first, last = run.lives[0], run.lives[-1]
    return {
        "start": {"pid": first.pid, "generation": first.generation, **lives[0]["first"]},
        "end": {"pid": last.pid, "generation": last.generation, **lives[-1]["last"]},
        "same_master": len(run.lives) == 1,
        "grew": [f"pid {life.pid} gen {life.generation}" for life in run.lives if life.grew],
        "lives": lives,
    }


def _stats(stats: dict[str, Any] | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    master = stats.get("master", {})
    keys = (
        "publishes",
        "late_replies",
        "dropped_messages",
        "control_requests",
        "bad_control_requests",
    )
    return {key: master.get(key) for key in keys}


def _failure(failure: RequestFailure, journal: Journal) -> dict[str, Any]:
    return {
        "at": round(failure.start - journal.origin, 3),
        "when": journal.stamp(failure.start),
        "seconds": round(failure.end - failure.start, 3),
        "outcome": failure.outcome.value,
        "pid": failure.pid,
        "error": failure.error,
        "context": journal.around(failure.start, failure.end),
    }


def _publish(record: PublishRecord, journal: Journal) -> dict[str, Any]:
    workers = unexplained_workers(record, journal.kills, journal.stops)
    return {
        "number": record.number,
        "at": round(record.start - journal.origin, 3),
        "when": journal.stamp(record.start),
        "seconds": round(record.end - record.start, 3),
        "error": f"{record.error_code}: {record.error}" if record.result is None else None,
        "master_errors": (record.result or {}).get("master_errors") or None,
        "workers": [
            f"worker {w} pid {pid} {status}" for w, pid, status in worker_problems(record)
        ],
        "unexplained_workers": [f"worker {w} pid {pid} {status}" for w, pid, status in workers],
        "context": journal.around(record.start, record.end),
    }


def _problems(run: SoakRun, summary: dict[str, Any]) -> list[str]:
    problems = list(run.problems)
    requests, publishes = summary["requests"], summary["publishes"]
    if requests["other"]:
        problems.append(f"{requests['other']} failed requests not cut by the soak's kills/stops")
    unexplained = publishes["not_ok_unexplained"] + publishes["unanswered_otherwise"]
    if unexplained:
        problems.append(f"{unexplained} publishes not explained by the soak's kills/stops")
    orphans = summary["orphans"]
    if orphans["before_stop"]:
        problems.append(
            f"{len(orphans['before_stop'])} processes alive and unknown to the settled master"
        )
    if orphans["after_stop"]:
        problems.append(f"{len(orphans['after_stop'])} processes left after the master's exit")
    if run.stop is not None and not run.stop.master_exited:
        problems.append(f"the master (pid {run.stop.master}) did not exit after TERM")
    if run.unresponsive:
        problems.append(f"the master did not answer ping {run.unresponsive} times after a flood")
    if run.clients_stuck:
        problems.append("an HTTP client was stuck past its timeout at the end")
    return problems


def render(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    out = lines.append
    s = summary["settings"]
    out(
        f"procbus soak: {summary['seconds']:.1f} s of load, {s['workers']} workers, "
        f"{s['clients']} clients, seed {summary['seed']}"
    )
    out(f"  replay: {summary['replay']}")
    out(f"  started {summary['started']} (+0.00s below; the master's log is in wall-clock time)")
    faults = ", ".join(f"{k} {v}" for k, v in summary["faults"].items()) or "none"
    out(f"faults: {faults}")
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped_faults"].items())
    if skipped:
        out(f"  skipped (too many jobs or stops at once, no worker): {skipped}")
    jobs = "; ".join(
        f"{kind} {c.get('done', 0)} done, {c.get('failed', 0)} failed"
        for kind, c in summary["jobs"].items()
    )
    if jobs:
        out(f"jobs: {jobs}")
    for job in summary["failed_jobs"]:
        out(f"  {job['at']:+.2f}s {job['kind']} failed: {job['outcome']}")
    r = summary["requests"]
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["other_by_outcome"].items()))
    out(
        f"requests: {r['total']} ({r['rate']}/s on {r['connections']} connections, "
        f"{r['workers_seen']} worker pids answered); failed {r['failed']}: "
        f"{r['cut_by_soak_kill']} cut by the soak's SIGKILL, {r['cut_by_stop']} cut by a "
        f"stop (killed by the master while stopped), {r['other']} other"
        + (f" ({kinds})" if kinds else "")
    )
    p = summary["publishes"]
    answers = ", ".join(f"{k} {v}" for k, v in sorted(p["worker_answers"].items()))
    out(
        f"publishes: {p['total']}: {p['all_ok']} every worker ok; not ok "
        f"{p['not_ok_explained']} explained, {p['not_ok_unexplained']} unexplained; "
        f"no answer from the master {p['unanswered_during_master_change']} during a "
        f"restart/upgrade, {p['unanswered_otherwise']} otherwise"
    )
    out(f"  worker answers: {answers}")
    out(_render_master(summary["master"]))
    stats = summary["final_stats"]
    if stats:
        out("  last master's counters: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    orphans = summary["orphans"]
    out(
        f"orphans: {len(orphans['before_stop'])} alive and unknown to the settled master, "
        f"{len(orphans['after_stop'])} left after its exit"
    )
    for line in orphans["before_stop"] + orphans["after_stop"]:
        out(f"  {line}")
    stop = summary["stop"]
    if stop:
        state = "exited" if stop["exited"] else "did NOT exit"
        out(f"stop: TERM to master {stop['master']}, {state} in {stop['seconds']:.1f}s")
    for note in summary["notes"]:
        out(f"note: {note}")
    for item in summary["unexplained_requests"]:
        out(
            f"unexplained request at {item['when']} ({item['seconds']:.3f}s, "
            f"{item['outcome']}, pid {item['pid']}): {item['error']}"
        )
        lines.extend(f"    {c}" for c in item["context"])
    for item in summary["unexplained_publishes"]:
        what = item["error"] or "; ".join(item["unexplained_workers"] or item["workers"])
        if item["master_errors"]:
            what += f"; master errors {item['master_errors']}"
        out(
            f"unexplained publish #{item['number']} at {item['when']} "
            f"({item['seconds']:.3f}s): {what}"
        )
        lines.extend(f"    {c}" for c in item["context"])
    out("rules:")
    for name, rule in summary["rules"].items():
        out(f"  {name}: {rule}")
    if summary["problems"]:
        out("FAILED: " + "; ".join(summary["problems"]))
    else:
        out("PASSED")
    return "\n".join(lines) + "\n"


def _render_master(master: dict[str, Any]) -> str:
    if "start" not in master:
        return "master: no sample (it never answered ping)"
    start, end = master["start"], master["end"]
    lines = [
        f"master at start: pid {start['pid']} gen {start['generation']}, "
        f"RSS {_mib(start['rss'])}, {start['fds']} fds, {start['children']} children",
        f"master at end ({end['at']:+.1f}s): pid {end['pid']} gen {end['generation']}, "
        f"RSS {_mib(end['rss'])}, {end['fds']} fds, {end['children']} children, "
        f"{end['running']} running",
    ]
    lives = master["lives"]
    if len(lives) > 1:
        lines.append(
            f"  the master changed {len(lives) - 1} time{'s' if len(lives) > 2 else ''} "
            "(restart: same pid, next generation; upgrade: new pid): each one is compared "
            "with itself; the first and the last:"
        )
        shown = [("first", lives[0]), ("last", lives[-1])]
    else:
        shown = [("same master", lives[0])]
    for label, life in shown:
        lines.append(f"  {label}, pid {life['pid']} gen {life['generation']}: {_growth(life)}")
    grew = master["grew"]
    lines.append(
        f"  growth beyond noise in: {', '.join(grew)}" if grew else "  no growth beyond noise"
    )
    return "\n".join(lines)


def _growth(life: dict[str, Any]) -> str:
    base, last = life["baseline"], life["last"]
    trend = ", ".join(f"+{at:g}s {_mib(rss)} {fds}" for at, rss, fds in life["trend"])
    if base is None:
        return (
            f"not compared: no earlier sample with {last['children']} children and "
            f"{last['running']} running (its samples: {trend})"
        )
    return (
        f"from {base['at']:+.1f}s to {last['at']:+.1f}s at {last['children']} children, "
        f"{last['running']} running: RSS {_mib(base['rss'])} -> {_mib(last['rss'])} "
        f"({life['rss_growth'] / 1048576:+.1f} MiB), fds {base['fds']} -> {last['fds']} "
        f"({life['fd_growth']:+d}); over its life: {trend}"
    )
