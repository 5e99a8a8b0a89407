"""``procbus ctl`` and ``procbus top`` as a user runs them: real subprocesses, real masters.

Output is parsed and checked field by field; exit statuses are part of the
contract (0 ok, 1 failed in the tree, 2 usage error, 3 master unreachable).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import cli, top
from procbus import ctl as ctl_command
from tests.helpers import wait_until
from tests.processes import ROOT, MasterProcess, procbus, running_master, short_tempdir

pytestmark = pytest.mark.slow

MASTER_FIELDS = {"pid", "name", "state", "generation", "uptime", "endpoints"}
WORKER_FIELDS = {
    "id",
    "pid",
    "state",
    "bus_state",
    "generation",
    "age",
    "heartbeat_age",
    "cpu_percent",
    "rss",
    "requests",
    "restarts",
    "last_error",
    "last_recycle",
}
ENDPOINT_ROLES = {"control", "events", "publish", "replies"}


@pytest.fixture(scope="module")
def master() -> Iterator[MasterProcess]:
    """One tree of two echo workers for the tests that leave it as they found it."""
    with running_master(workers=2, stats_interval=0.2) as running:
        yield running


def ctl(
    master: MasterProcess, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return procbus("ctl", "--ctl", master.endpoint, *args, timeout=timeout)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    """The one JSON document a ``--json`` command printed."""
    return json.loads(done.stdout)


@pytest.fixture
def nowhere() -> Iterator[Path]:
    """A short private directory where no master runs (removed afterwards)."""
    directory = short_tempdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- status, publish -----------------------------------------------------------------


def test_status_json_has_exactly_the_documented_fields(master: MasterProcess) -> None:
    """Steps: ``ctl status --json`` against a running tree of two workers.
    Expected: exit 0; the master has exactly pid, name, state, generation, uptime and
    endpoints (one per role), every worker exactly the documented fields, each of its
    documented type: running, its own bus STARTED, never recycled."""
    done = ctl(master, "status", "--json")
    assert done.returncode == 0, done.stderr
    status = as_json(done)
    assert set(status) == {"master", "workers"}
    head = status["master"]
    assert set(head) == MASTER_FIELDS
    assert head["pid"] == master.pid
    assert head["name"] == "test"
    assert head["state"] == "STARTED"
    assert head["generation"] == 1
    assert isinstance(head["uptime"], float) and head["uptime"] > 0
    assert set(head["endpoints"]) == ENDPOINT_ROLES
    assert head["endpoints"]["control"] == master.endpoint
    assert all(isinstance(e, str) for e in head["endpoints"].values())

    workers = status["workers"]
    assert [w["id"] for w in workers] == [1, 2]
    for worker in workers:
        assert set(worker) == WORKER_FIELDS
        assert isinstance(worker["pid"], int) and worker["pid"] != master.pid
        assert worker["state"] == "running"
        assert worker["bus_state"] == "STARTED"
        assert worker["generation"] == 1
        assert isinstance(worker["age"], float) and worker["age"] > 0
        assert isinstance(worker["heartbeat_age"], float) and worker["heartbeat_age"] < 2
        assert worker["cpu_percent"] is None or isinstance(worker["cpu_percent"], float)
        assert isinstance(worker["rss"], int) and worker["rss"] > 1_000_000
        assert isinstance(worker["requests"], int)
        assert worker["restarts"] == 0
        assert worker["last_error"] is None
        assert worker["last_recycle"] is None


def test_global_options_are_accepted_after_the_command(master: MasterProcess) -> None:
    """Steps: ``ctl status --json --ctl ENDPOINT`` (options after the command) and
    ``ctl --json --ctl ENDPOINT status``. Expected: both print the same workers."""
    after = procbus("ctl", "status", "--json", "--ctl", master.endpoint)
    before = procbus("ctl", "--json", "--ctl", master.endpoint, "status")
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    pids = [w["pid"] for w in as_json(after)["workers"]]
    assert pids == [w["pid"] for w in as_json(before)["workers"]]


def test_status_human_output_is_a_table_of_the_workers(master: MasterProcess) -> None:
    """Steps: ``ctl status`` without --json. Expected: exit 0, a header naming the
    master's pid and one row per worker with its pid; no colour when not a terminal."""
    done = ctl(master, "status")
    assert done.returncode == 0, done.stderr
    assert f"master {master.pid}" in done.stdout
    assert "\033[" not in done.stdout
    for worker in master.workers():
        assert str(worker["pid"]) in done.stdout


def test_publish_json_shape_and_arguments_parsed_as_json_literals(
    master: MasterProcess,
) -> None:
    """Steps: ``ctl publish echo 42 '"a"' '{"k": 1}' word --kw n=3 --json``.
    Expected: exit 0; channel, seq, master and workers {ID: {status, results, errors}};
    each worker's echo got 42, "a", {"k": 1}, the plain string "word" and n=3."""
    done = ctl(master, "publish", "echo", "42", '"a"', '{"k": 1}', "word", "--kw", "n=3", "--json")
    assert done.returncode == 0, done.stderr
    reply = as_json(done)
    assert {"channel", "seq", "master", "workers"} <= set(reply)
    assert reply["channel"] == "echo"
    assert isinstance(reply["seq"], int)
    assert reply["master"] == []
    assert set(reply["workers"]) == {"1", "2"}
    for worker_id, answer in reply["workers"].items():
        assert {"status", "results", "errors"} <= set(answer)
        assert answer["status"] == "ok"
        assert answer["errors"] == []
        assert answer["results"] == [
            {"worker": int(worker_id), "args": [42, "a", {"k": 1}, "word"], "kwargs": {"n": 3}}
        ]


def test_peer_text_reaches_the_terminal_escaped_and_json_intact(master: MasterProcess) -> None:
    """What the master sends back is printed on the operator's terminal.

    Steps: ``ctl publish CHANNEL`` where the channel (echoed in the reply) holds
    ESC [2J, a CSI (0x9b), a CR and a newline, in human form and with ``--json``.
    Expected: the human output shows them escaped and holds no control character
    but line breaks; the JSON document escapes them too and parses back to the
    same channel.
    """
    hostile = "x\x1b[2Jy\x9bz\rw\nv"
    controls = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
    human = ctl(master, "publish", hostile)
    assert human.returncode == 0, human.stderr
    assert not controls.search(human.stdout)
    assert human.stdout.startswith("x\\x1b[2Jy\\x9bz\\rw\\nv (seq ")
    done = ctl(master, "--json", "publish", hostile)
    assert done.returncode == 0, done.stderr
    assert not controls.search(done.stdout)
    assert as_json(done)["channel"] == hostile


def test_double_dash_passes_a_negative_number(master: MasterProcess) -> None:
    """Steps: ``ctl --json publish echo -- -5``. Expected: every worker got the int -5."""
    done = ctl(master, "--json", "publish", "echo", "--", "-5")
    assert done.returncode == 0, done.stderr
    for answer in as_json(done)["workers"].values():
        assert answer["results"][0]["args"] == [-5]


def test_listener_failure_in_the_tree_exits_1_with_the_errors(master: MasterProcess) -> None:
    """Steps: ``ctl publish boom --json`` (every worker's listener raises).
    Expected: exit 1; each worker's status is error with the exception's type, message,
    listener name and traceback; a human ``publish boom`` exits 1 too."""
    done = ctl(master, "publish", "boom", "--json")
    assert done.returncode == 1, done.stderr
    reply = as_json(done)
    for worker_id, answer in reply["workers"].items():
        assert answer["status"] == "error"
        (error,) = answer["errors"]
        assert error["type"] == "ValueError"
        assert error["message"] == f"boom in worker {worker_id}"
        assert error["listener"].endswith("boom")
        assert "Traceback" in error["traceback"]
    assert ctl(master, "publish", "boom").returncode == 1


def test_kill_of_an_unknown_worker_exits_1(master: MasterProcess) -> None:
    """Steps: ``ctl kill 99``. Expected: exit 1 and a message naming worker 99."""
    done = ctl(master, "kill", "99")
    assert done.returncode == 1
    assert "99" in done.stderr


def test_stats_json_has_process_figures_and_worker_counters(master: MasterProcess) -> None:
    """Steps: ``ctl publish boom``, then ``ctl stats --json`` until the next heartbeat
    carried the counters. Expected: master and workers have CPU, RSS, USS, threads,
    fds and connections; every worker reports requests, in_flight, publishes,
    publish_errors and errors, publish_errors at least 1."""
    ctl(master, "publish", "boom")

    def stats() -> dict[str, Any] | None:
        done = ctl(master, "stats", "--json")
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = as_json(done)
        counted = all(w["counters"]["publish_errors"] >= 1 for w in result["workers"])
        return result if counted else None

    result = wait_until(stats, 15)
    figures = {"pid", "cpu_percent", "rss", "uss", "threads", "fds", "connections"}
    assert figures <= set(result["master"])
    assert result["master"]["pid"] == master.pid
    assert result["master"]["publishes"] >= 1
    for worker in result["workers"]:
        assert figures | {"id", "generation", "state", "age", "counters"} <= set(worker)
        assert isinstance(worker["rss"], int) and isinstance(worker["threads"], int)
        assert isinstance(worker["fds"], int) and worker["fds"] > 3
        assert set(worker["counters"]) >= {
            "requests",
            "in_flight",
            "publishes",
            "publish_errors",
            "errors",
        }


# -- exit statuses without a master -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["bogus"],
        ["scale", "-1"],
        ["scale", "abc"],
        ["scale"],
        ["kill", "0"],
        ["reload", "--batch", "-1"],
        ["publish"],
        ["status", "--timeout", "0"],
        ["publish", "ch", "--kw", "novalue"],
        ["--name", "a/b", "ping"],
    ],
    ids=" ".join,
)
def test_usage_errors_exit_2_without_any_master(args: list[str], nowhere: Path) -> None:
    """Steps: ``ctl`` with a bad command or bad arguments, pointed at a runtime
    directory where no master runs. Expected: exit 2 and a message on stderr."""
    done = procbus("ctl", "--runtime-dir", str(nowhere), *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip()


def run_in_process(*argv: str) -> tuple[int, str, str]:
    """Parse and run ``procbus ARGV`` (ctl or top) here; (status, stdout, stderr)."""
    args = cli.build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    runner = ctl_command.run if args.command == "ctl" else top.run
    return runner(args, out, err), out.getvalue(), err.getvalue()


SECONDS = "finite number of seconds > 0"
BAD_NUMBERS = [  # argv, the option, the value named, what is expected
    (["ctl", "--timeout", "inf", "status"], "--timeout", "inf", SECONDS),
    (["ctl", "--timeout", "nan", "ping"], "--timeout", "nan", SECONDS),
    (["ctl", "--timeout", "-1", "status"], "--timeout", "-1", SECONDS),
    (["ctl", "--timeout", "0", "reload"], "--timeout", "0", SECONDS),
    (["ctl", "watch", "--timeout", "inf"], "--timeout", "inf", SECONDS),
    (["ctl", "watch", "--duration", "nan"], "--duration", "nan", SECONDS),
    (["ctl", "watch", "--duration", "inf"], "--duration", "inf", SECONDS),
    (["ctl", "watch", "--duration", "0"], "--duration", "0", SECONDS),
    (["ctl", "watch", "--count", "0"], "--count", "0", "whole number > 0"),
    (["ctl", "watch", "--count", "-2"], "--count", "-2", "whole number > 0"),
    (["top", "--timeout", "inf"], "--timeout", "inf", SECONDS),
    (["top", "--timeout", "nan"], "--timeout", "nan", SECONDS),
    (["top", "--timeout", "0"], "--timeout", "0", SECONDS),
    (["top", "--interval", "nan"], "--interval", "nan", "finite number of seconds >= 0"),
    (["top", "--interval", "inf"], "--interval", "inf", "finite number of seconds >= 0"),
    (["top", "--interval", "-1"], "--interval", "-1", "finite number of seconds >= 0"),
    (["top", "--count", "0"], "--count", "0", "whole number > 0"),
]


@pytest.mark.parametrize(
    ("argv", "flag", "value", "expected"),
    BAD_NUMBERS,
    ids=[" ".join(case[0]) for case in BAD_NUMBERS],
)
def test_bad_seconds_and_counts_are_one_line_usage_errors(
    argv: list[str], flag: str, value: str, expected: str, nowhere: Path
) -> None:
    """An infinite or NaN timeout became an infinite deadline (an OverflowError, or a
    wait forever); a zero or negative one, or a count below 1, is no better.

    Steps: run ``procbus ctl``/``top`` in-process with each bad value, pointed at a
    runtime directory where no master runs.
    Expected: exit 2 at once, before connecting, with one line on stderr naming
    the option, the value and what is expected; nothing on stdout.
    """
    where = ["--runtime-dir", str(nowhere)]
    status, out, err = run_in_process(argv[0], *where, *argv[1:])
    assert status == 2
    assert out == ""
    (line,) = err.splitlines()
    assert f"{flag} must be a {expected}, got {value}" in line


def test_bad_timeout_with_json_is_a_json_usage_error(nowhere: Path) -> None:
    """Steps: ``ctl --json --timeout inf status`` in-process.
    Expected: exit 2, one line on stderr, and a bad_arguments error document on stdout."""
    status, out, err = run_in_process(
        "ctl", "--runtime-dir", str(nowhere), "--json", "--timeout", "inf", "status"
    )
    assert status == 2
    assert len(err.splitlines()) == 1
    error = json.loads(out)["error"]
    assert error["code"] == "bad_arguments"
    assert "--timeout" in error["message"] and "inf" in error["message"]


def test_missing_endpoint_exits_3_with_one_line_and_a_json_error(nowhere: Path) -> None:
    """Steps: ``ctl --json ping`` at an ipc endpoint without a socket file.
    Expected: exit 3 within the timeout, one line on stderr, and
    {"error": {"code": "unreachable", ...}} on stdout."""
    started = time.monotonic()
    done = procbus("ctl", "--ctl", f"ipc://{nowhere}/ctl", "--json", "--timeout", "2", "ping")
    assert done.returncode == 3
    assert time.monotonic() - started < 20
    assert len(done.stderr.strip().splitlines()) == 1
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "unreachable"
    assert error["message"]


def test_dead_master_socket_file_exits_3_within_the_timeout(nowhere: Path) -> None:
    """Steps: a Unix socket file nobody listens on (what a killed master leaves), then
    ``ctl ping --timeout 1``. Expected: exit 3 with one line on stderr, no hang."""
    path = nowhere / "ctl"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    started = time.monotonic()
    done = procbus("ctl", "--ctl", f"ipc://{path}", "--timeout", "1", "ping")
    assert done.returncode == 3
    assert time.monotonic() - started < 20
    assert len(done.stderr.strip().splitlines()) == 1


def test_master_that_never_answers_exits_3_within_the_timeout(nowhere: Path) -> None:
    """Steps: a ROUTER bound on the endpoint that reads requests and never replies;
    ``ctl status --timeout 1``. Expected: exit 3 with one line on stderr, no hang."""
    endpoint = f"ipc://{nowhere}/ctl"
    context = zmq.Context()
    mute = context.socket(zmq.ROUTER)
    mute.linger = 0
    try:
        mute.bind(endpoint)
        started = time.monotonic()
        done = procbus("ctl", "--ctl", endpoint, "--timeout", "1", "status")
        assert done.returncode == 3
        assert time.monotonic() - started < 20
        assert "1s" in done.stderr
        assert mute.poll(0), "the request reached the mute master"
    finally:
        mute.close(0)
        context.term()


# -- watch and top --------------------------------------------------------------------


def test_watch_json_prints_one_event_per_line(master: MasterProcess) -> None:
    """Steps: ``ctl watch --json --count 3``; meanwhile ping the master until the
    watcher has seen three events (each command is audited on the stream).
    Expected: exit 0, three lines, each a JSON object with event and time; the
    command events say which command and who asked; no stats samples."""
    argv = ["ctl", "--ctl", master.endpoint, "watch", "--json", "--count", "3"]
    watcher = subprocess.Popen(
        [sys.executable, "-m", "procbus", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:

        def finished() -> bool:
            if watcher.poll() is not None:
                return True
            master.call("ping")
            return False

        wait_until(finished, 20)
        out, err = watcher.communicate(timeout=10)
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait(10)
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 3
    for event in events:
        assert isinstance(event["event"], str) and isinstance(event["time"], float)
        assert event["event"] != "stats"
    commands = [e for e in events if e["event"] == "command"]
    assert commands and all(e["command"] in ("ping", "status") for e in commands)
    assert all(e["peer"].startswith("uid ") for e in commands)


def test_top_count_prints_frames_with_every_worker(master: MasterProcess) -> None:
    """Steps: ``procbus top --count 2`` with stdout a pipe. Expected: exit 0, two plain
    frames (no escape sequences), each with a row per worker: id, pid, state."""
    workers = master.workers()
    done = procbus("top", "--ctl", master.endpoint, "--count", "2")
    assert done.returncode == 0, done.stderr
    assert "\033" not in done.stdout
    frames = re.split(r"(?m)^(?=procbus top )", done.stdout)[1:]
    assert len(frames) == 2
    for frame in frames:
        assert f"master {master.pid}" in frame
        rows = [line.split() for line in frame.splitlines() if line[:1].isdigit()]
        assert [(r[0], r[1], r[2]) for r in rows] == [
            (str(w["id"]), str(w["pid"]), "running") for w in workers
        ]


def test_top_exits_3_when_no_master_answers(nowhere: Path) -> None:
    """Steps: ``procbus top --timeout 1`` at a missing endpoint. Expected: exit 3 and
    one line on stderr, quickly."""
    started = time.monotonic()
    done = procbus("top", "--ctl", f"ipc://{nowhere}/ctl", "--timeout", "1", "--count", "1")
    assert done.returncode == 3
    assert len(done.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 20


def test_top_usage_errors_exit_2(nowhere: Path) -> None:
    """Steps: ``procbus top --count 0`` and ``procbus top --interval x``.
    Expected: exit 2 for both, before connecting anywhere."""
    for args in (["--count", "0"], ["--interval", "x"]):
        done = procbus("top", "--ctl", f"ipc://{nowhere}/ctl", *args)
        assert done.returncode == 2, (args, done.stderr)


def test_timeout_bounds_the_publish_and_reports_the_slow_worker(master: MasterProcess) -> None:
    """Steps: worker 1's listener sleeps 5 s; ``ctl --timeout 1 --json publish hang 1 5``.
    Expected: exit 1 before the listener ends (worker 1 is ``timeout``, which it
    would not be had the master waited for it), worker 2 ``ok``.
    """
    done = ctl(master, "--timeout", "1", "--json", "publish", "hang", "1", "5")
    assert done.returncode == 1, done.stderr
    reply = as_json(done)
    assert reply["workers"]["1"]["status"] == "timeout"
    assert reply["workers"]["2"]["status"] == "ok"
    assert reply["workers"]["2"]["results"] == ["done"]
    # The tree is fine afterwards (worker 1 answers once its listener is done).
    wait_until(lambda: ctl(master, "--json", "publish", "whoami").returncode == 0, 15)
