"""``procbus top`` frames: pure rendering of a stats sample, and the terminal guard."""

from __future__ import annotations

import io
from typing import Any

from procbus import top


def worker(worker_id: int, **figures: Any) -> dict[str, Any]:
    return {
        "id": worker_id,
        "generation": 1,
        "state": "running",
        "age": 75.0,
        "pid": 1000 + worker_id,
        "cpu_percent": 1.5,
        "rss": 20 * 1024 * 1024,
        "uss": None,
        "threads": 4,
        "fds": 14,
        "connections": 0,
        "counters": {
            "requests": 7,
            "in_flight": 1,
            "publishes": 3,
            "publish_errors": 1,
            "errors": 2,
        },
        **figures,
    }


def sample(*workers: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "stats",
        "time": 1_700_000_000.0,
        "master": {
            "name": "web",
            "state": "STARTED",
            "uptime": 3700.0,
            "target_workers": 3,
            "pid": 42,
            "cpu_percent": 0.5,
            "rss": 30 * 1024 * 1024,
            "publishes": 9,
        },
        "workers": list(workers),
    }


def rows(lines: list[str]) -> list[list[str]]:
    return [line.split() for line in lines if line[:1].isdigit()]


def test_frame_has_a_header_and_one_row_per_worker_in_id_order() -> None:
    """Steps: render a sample with workers 2 and 1. Expected: a header naming the
    master, its state, uptime and running/target workers, worker totals, and one
    row per worker in id order: id, pid, state, generation, CPU, RSS, requests, in
    flight, errors (requests and publishes), age."""
    lines = top.frame(sample(worker(2), worker(1)))
    assert lines[0].startswith("procbus top - master 42 (web) STARTED  up 1h01m  workers 2/3")
    assert "requests 14" in lines[2] and "in flight 2" in lines[2] and "errors 6" in lines[2]
    assert rows(lines) == [
        ["1", "1001", "running", "1", "1.5%", "20.0M", "7", "1", "3", "1m15s"],
        ["2", "1002", "running", "1", "1.5%", "20.0M", "7", "1", "3", "1m15s"],
    ]


def test_unknown_figures_show_as_dashes() -> None:
    """Steps: a worker whose CPU and RSS could not be read (None), no counters yet.
    Expected: dashes for the figures, zeros for the counters; totals still render."""
    lines = top.frame(sample(worker(1, cpu_percent=None, rss=None, counters={})))
    assert rows(lines) == [["1", "1001", "running", "1", "-", "-", "0", "0", "0", "1m15s"]]
    assert "cpu -" in lines[2]


def test_frame_fits_the_terminal() -> None:
    """Steps: render 30 workers for a 40x10 terminal. Expected: no line longer than
    40, 10 lines, the last one saying how many workers are not shown."""
    lines = top.frame(sample(*(worker(i) for i in range(1, 31))), width=40, height=10)
    assert len(lines) == 10
    assert all(len(line) <= 40 for line in lines)
    assert lines[-1] == "... 26 more workers"


def test_no_workers() -> None:
    """Steps: a sample without workers. Expected: a frame that says so."""
    assert top.frame(sample())[-1] == "no workers"


def test_keyboard_is_left_alone_when_not_a_terminal() -> None:
    """Steps: enter cbreak mode on a stream that is not a terminal. Expected: no fd."""
    with top._cbreak(io.StringIO()) as fd:
        assert fd is None


def test_frame_escapes_control_characters_from_the_sample() -> None:
    """A stats sample is another process's data; top draws it on the operator's
    terminal.

    Steps: render a sample whose master name and state and a worker's state hold
    ESC [2J, a CSI (0x9b) and a CR, for a 60-column terminal.
    Expected: every one escaped (\\x1b, \\x9b, \\r); no line holds a control
    character; lines still fit the width.
    """
    hostile = sample(worker(1, state="run\x1b[2J\x9b\r"))
    hostile["master"]["name"] = "web\x1b]0;owned\x07"
    hostile["master"]["state"] = "\x9b2J"
    for lines in (top.frame(hostile), top.frame(hostile, width=60, height=20)):
        assert not [
            line for line in lines if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in line)
        ]
    lines = top.frame(hostile)
    assert lines[0].startswith("procbus top - master 42 (web\\x1b]0;owned\\x07) \\x9b2J  up")
    assert rows(lines)[0][2] == "run\\x1b[2J\\x9b\\r"
    assert all(len(line) <= 60 for line in top.frame(hostile, width=60))
