#!/usr/bin/env python3
"""In-process ``Bus.publish``: procbus's `Bus` against CherryPy's wspbus, same run.

For each listener count (``--listeners``, default 1 and 10 no-op listeners on
one channel), both buses publish on that channel `--number` times per sample;
the two are sampled in turn (procbus first on even rounds, wspbus first on odd
ones) `--repeat` times, so that the load other processes put on a shared
machine falls on both alike. Printed: each bus's median and spread (the
fastest and the slowest sample) in microseconds per publish, and the ratio of
the medians, procbus / wspbus, from this run. Nothing here asserts a time.

``--profile`` also runs procbus's publish under pyinstrument (the ``bench``
extra) for a second per listener count and prints where the time went.

Needs CherryPy (``pip install -e '.[bench]'``).
Run: ``.venv/bin/python scripts/bench_bus.py [--listeners 1 10] [--repeat 21]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cherrypy.process import wspbus

from procbus.bus import Bus


def listeners(count: int) -> list[Callable[[], None]]:
    """`count` distinct no-op listeners (a set keeps one of the same function):
    what a publish then costs is the bus's own."""
    return [lambda: None for _ in range(count)]


def bus_with(kind: type[Any], count: int) -> Any:
    bus = kind()
    for listener in listeners(count):
        bus.subscribe("bench", listener)
    return bus


def sample(publish: Callable[..., Any], number: int) -> float:
    """Seconds per publish over `number` publishes."""
    start = time.perf_counter()
    for _ in range(number):
        publish("bench")
    return (time.perf_counter() - start) / number


def compare(count: int, number: int, repeat: int) -> dict[str, list[float]]:
    buses = {"procbus": bus_with(Bus, count), "wspbus": bus_with(wspbus.Bus, count)}
    for bus in buses.values():
        sample(bus.publish, number)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in buses}
    names = list(buses)
    for round_ in range(repeat):
        for name in names if round_ % 2 == 0 else reversed(names):
            samples[name].append(sample(buses[name].publish, number))
    return samples


def profile(count: int, seconds: float = 1.0) -> None:
    from pyinstrument import Profiler  # noqa: PLC0415 - only with --profile

    bus = bus_with(Bus, count)
    profiler = Profiler(interval=0.0001)
    deadline = time.perf_counter() + seconds
    with profiler:
        while time.perf_counter() < deadline:
            sample(bus.publish, 1000)
    print(f"-- procbus Bus.publish, {count} listener(s), pyinstrument:")
    print(profiler.output_text(unicode=False, color=False, show_all=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listeners", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--number", type=int, default=20000, help="publishes per sample")
    parser.add_argument("--repeat", type=int, default=21, help="samples of each bus")
    parser.add_argument("--profile", action="store_true", help="profile procbus's publish")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the medians (µs) to FILE"
    )
    args = parser.parse_args()
    found: dict[str, dict[str, float]] = {}
    print(
        f"Bus.publish on one channel, {args.repeat} samples of {args.number} publishes "
        "each, the two buses in turn (us per publish: median [fastest, slowest])"
    )
    for count in args.listeners:
        samples = compare(count, args.number, args.repeat)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        row = "   ".join(
            f"{name} {medians[name] * 1e6:5.2f} "
            f"[{min(values) * 1e6:5.2f}, {max(values) * 1e6:5.2f}]"
            for name, values in samples.items()
        )
        ratio = medians["procbus"] / medians["wspbus"]
        print(f"  {count:3d} listener(s): {row}   ratio {ratio:.2f}x")
        found[str(count)] = {name: median * 1e6 for name, median in medians.items()}
    if args.json:
        args.json.write_text(json.dumps(found))
    if args.profile:
        for count in args.listeners:
            profile(count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
