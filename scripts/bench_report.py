#!/usr/bin/env python3
"""Run the benchmarks and write bench/REPORT.md (see scripts/bench).

Each benchmark script writes its figures as JSON (``--json FILE``); this runs
them, repeated (``--repeat``, default 3, 1 with ``--quick``), and renders one
table: each figure of procbus, its baseline measured in the same run, the
ratio, the goal of issue 13 and whether it is met, with the spread over the
repeats (min-max of the ratio). Below the table, each script's own output of
the last repeat, for the detail. Every run is bounded (each script bounds its
own load; a script that runs past its time limit is stopped and reported).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass
class Row:
    """One line of the report: a figure, its baseline, the goal on their ratio."""

    what: str
    procbus: list[float]
    baseline: list[float]
    unit: str
    goal: str = ""
    """``<= 1.5`` or ``>= 0.5`` (on the ratio procbus / baseline), or empty."""
    baseline_name: str = ""

    def ratios(self) -> list[float]:
        return [p / b for p, b in zip(self.procbus, self.baseline, strict=True) if b]

    def verdict(self) -> str:
        if self.goal == "= 0":
            return "met" if max(self.procbus) == 0 else "NOT met"
        if not self.goal or not self.ratios():
            return ""
        op, bound = self.goal.split()
        ratio = statistics.median(self.ratios())
        met = ratio <= float(bound) if op == "<=" else ratio >= float(bound)
        return "met" if met else "NOT met"


@dataclass
class Section:
    name: str
    title: str
    commands: Callable[[bool], list[list[str]]]
    """The script runs for one repeat (quick or not); each writes JSON to {json}."""
    rows: Callable[[list[list[dict[str, Any]]]], list[Row]]
    """Rows from the JSON of every repeat (a list per repeat, one per command)."""
    limit: float = 1800.0
    outputs: list[str] = field(default_factory=list)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_section(section: Section, quick: bool, repeat: int) -> list[Row]:
    runs: list[list[dict[str, Any]]] = []
    for _ in range(repeat):
        figures: list[dict[str, Any]] = []
        for command in section.commands(quick):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
                path = handle.name
            argv = [sys.executable, *[part.replace("{json}", path) for part in command]]
            print(f"scripts/bench: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=section.limit, check=False
                )
            except subprocess.TimeoutExpired:
                section.outputs.append(f"$ {' '.join(command)}\n(stopped after {section.limit} s)")
                Path(path).unlink(missing_ok=True)
                return []
            section.outputs.append(f"$ {' '.join(command)}\n{done.stdout.rstrip()}")
            if done.returncode != 0:
                section.outputs.append(f"(exit {done.returncode})\n{done.stderr[-2000:]}")
                Path(path).unlink(missing_ok=True)
                return []
            figures.append(json.loads(Path(path).read_text()))
            Path(path).unlink(missing_ok=True)
        runs.append(figures)
    return section.rows(runs)


# -- the sections -------------------------------------------------------------


def _publish_commands(quick: bool) -> list[list[str]]:
    workers = ["1", "4", "16"] if quick else ["1", "4", "16", "64", "128"]
    rounds = "500" if quick else "1000"
    return [
        [str(SCRIPTS / "bench_publish.py"), "--rounds", rounds, "--workers", *workers,
         "--json", "{json}"]
    ]  # fmt: skip


def _publish_rows(runs: list[list[dict[str, Any]]]) -> list[Row]:
    sizes = list(runs[0][0]["workers"])
    rows: list[Row] = []

    def series(size: str, who: str, key: str) -> list[float]:
        return [float(run[0]["workers"][size][who][key]) for run in runs]

    for size in sizes:
        label = f"{size} worker{'s' if size != '1' else ''}"
        rows.append(
            Row(f"tree publish p50, {label}", series(size, "master", "p50_us"),
                series(size, "pyzmq", "p50_us"), "µs", "<= 1.5", "bare pyzmq fan-out + gather")
        )  # fmt: skip
        rows.append(
            Row(f"tree publish p99, {label}", series(size, "master", "p99_us"),
                series(size, "pyzmq", "p99_us"), "µs", "<= 2.0", "bare pyzmq")
        )  # fmt: skip
        rows.append(
            Row(f"tree publish throughput (64 in flight), {label}",
                series(size, "master", "per_s"), series(size, "pyzmq", "per_s"), "/s",
                ">= 0.5", "bare pyzmq")
        )  # fmt: skip
        rows.append(
            Row(f"master CPU per publish, {label}", series(size, "master", "cpu_us"),
                series(size, "pyzmq", "cpu_us"), "µs", "", "bare pyzmq")
        )  # fmt: skip
        rows.append(
            Row(f"publish from a worker p50, {label}", series(size, "worker", "p50_us"),
                series(size, "master", "p50_us"), "µs", "", "the same from the master")
        )  # fmt: skip
    last = sizes[-1]
    if "16" in sizes and int(last) > 16:
        per_worker_16 = [c / 16 for c in series("16", "master", "cpu_us")]
        per_worker_last = [c / int(last) for c in series(last, "master", "cpu_us")]
        rows.append(
            Row(f"master CPU per publish per worker, {last} vs 16 workers (linear: ~1)",
                per_worker_last, per_worker_16, "µs", "<= 1.5", "the same at 16 workers")
        )  # fmt: skip
    return rows


def _bus_commands(quick: bool) -> list[list[str]]:
    number = "5000" if quick else "20000"
    return [[str(SCRIPTS / "bench_bus.py"), "--number", number, "--json", "{json}"]]


def _bus_rows(runs: list[list[dict[str, Any]]]) -> list[Row]:
    return [
        Row(f"in-process Bus.publish, {count} no-op listener{'s' if count != '1' else ''}",
            [run[0][count]["procbus"] for run in runs], [run[0][count]["wspbus"] for run in runs],
            "µs", "<= 1.0", "CherryPy wspbus")
        for count in runs[0][0]
    ]  # fmt: skip


def _ctl_commands(quick: bool) -> list[list[str]]:
    runs, fleet = ("8", "8") if quick else ("20", "32")
    return [[str(SCRIPTS / "bench_ctl.py"), "--runs", runs, "--fleet", fleet,
             "--json", "{json}"]]  # fmt: skip


def _ctl_rows(runs: list[list[dict[str, Any]]]) -> list[Row]:
    def series(name: str) -> list[float]:
        return [float(run[0][name]) for run in runs]

    size = int(runs[0][0]["fleet size"])
    return [
        Row("`procbus ctl ping`, whole process", series("procbus ctl --ctl EP ping"),
            series('python -c "import zmq"'), "ms", "<= 1.3", '`python -c "import zmq"`'),
        Row(f"`procbus ctl status` on {size} masters at once", series("status, fleet at once"),
            series("status, 1 master"), "ms", "<= 2.0", "on one master"),
    ]  # fmt: skip


def _reload_commands(quick: bool) -> list[list[str]]:
    timing = ["--before", "1", "--seconds", "2"] if quick else []
    return [[str(SCRIPTS / "bench_reload.py"), "--keep-alive", *timing, "--cases",
             "procbus:hup", "gunicorn:hup", "--json", "{json}"]]  # fmt: skip


def _reload_rows(runs: list[list[dict[str, Any]]]) -> list[Row]:
    def series(case: str, key: str) -> list[float]:
        return [float(c[key] or 0.0) for run in runs for c in run[0] if c["case"] == case]

    procbus, gunicorn = "procbus:hup", "gunicorn:hup"
    return [
        Row("`reload` (HUP, the surge) of 4 workers under keep-alive load: until all are new",
            series(procbus, "all_new_s"), series(gunicorn, "all_new_s"), "s", "<= 1.0",
            "gunicorn HUP"),
        Row("failed requests during that reload", series(procbus, "failed"),
            series(gunicorn, "failed"), "", "= 0", "gunicorn HUP"),
        Row("longest gap without an answer during that reload", series(procbus, "gap_ms"),
            series(procbus, "steady_p99_ms"), "ms", "<= 2.0", "procbus's steady p99"),
        Row("gunicorn HUP's longest gap, for comparison", series(gunicorn, "gap_ms"),
            series(gunicorn, "steady_p99_ms"), "ms", "", "gunicorn's steady p99"),
    ]  # fmt: skip


SECTIONS: dict[str, Section] = {
    "bus": Section("bus", "In-process bus", _bus_commands, _bus_rows),
    "publish": Section("publish", "Tree publish", _publish_commands, _publish_rows),
    "ctl": Section("ctl", "procbus ctl and a fleet", _ctl_commands, _ctl_rows),
    "reload": Section("reload", "Reload against gunicorn", _reload_commands, _reload_rows),
}


# -- the report -----------------------------------------------------------------


def _figure(values: list[float], unit: str) -> str:
    value = _median(values)
    if unit == "/s":
        return f"{value:,.0f} /s"
    if unit == "µs":
        return f"{value:,.0f} µs" if value >= 10 else f"{value:.2f} µs"
    if unit == "ms":
        return f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:g} {unit}".strip()


def render(rows: dict[str, list[Row]], quick: bool, repeat: int, seconds: float) -> str:
    lines = [
        "# procbus benchmark report",
        "",
        f"Generated by `scripts/bench{' --quick' if quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
        f"`{_commit()}`, in {seconds / 60:.1f} min. Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}, {repeat} repeat(s) per figure "
        "(median shown; the ratio's min-max over the repeats in brackets). The machine "
        "is shared: rates vary by ±30 % between runs; ratios measured in the same run "
        "and the CPU per operation are what to trust.",
        "",
        "Where the time goes for each goal not met, and what meeting it would take: "
        "[PROFILE.md](PROFILE.md) (written by hand from profiles of this code).",
        "",
        "| what | procbus | baseline (same run) | ratio [spread] | goal | |",
        "|---|---|---|---|---|---|",
    ]
    for section_rows in rows.values():
        for row in section_rows:
            ratios = row.ratios()
            spread = f" [{min(ratios):.2f}-{max(ratios):.2f}]" if len(ratios) > 1 else ""
            ratio = f"{_median(ratios):.2f}{TIMES}{spread}" if ratios else ""
            baseline = f"{row.baseline_name}: {_figure(row.baseline, row.unit)}"
            goal = f"{row.goal.replace('<=', '≤').replace('>=', '≥')}{TIMES}" if row.goal else ""
            if row.goal == "= 0":
                goal = "0"
            lines.append(
                f"| {row.what} | {_figure(row.procbus, row.unit)} | {baseline} | {ratio} "
                f"| {goal} | {row.verdict()} |"
            )
    lines += ["", "## Each benchmark's own output (last repeat)", ""]
    for name in rows:
        section = SECTIONS[name]
        lines += [f"### {section.title}", "", "```"]
        lines += [section.outputs[-1] if section.outputs else "(no output)"]
        lines += ["```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark; write bench/REPORT.md.")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes")
    parser.add_argument("--repeat", type=int, help="runs of each benchmark (3; 1 with --quick)")
    parser.add_argument(
        "--only", help=f"comma-separated sections of: {', '.join(SECTIONS)} (default: all)"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "REPORT.md", help="the report to write"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r} (expected one of {', '.join(SECTIONS)})")
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be at least 1, got {repeat}")
    started = time.monotonic()
    rows = {name: run_section(SECTIONS[name], args.quick, repeat) for name in names}
    report = render(rows, args.quick, repeat, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)
    failed = [name for name, found in rows.items() if not found]
    if failed:
        print(f"scripts/bench: no figures from {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
