"""``procbus ctl publish --require`` and ``--to``/``--to-generation`` on real masters and
workers: a quorum returns early with pending workers whose answers reach the event
stream; a targeted publish runs in its targets only; a bad option is one line, exit 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.hosting import running
from tests.helpers import wait_until
from tests.processes import Events, MasterProcess, procbus, running_master, short_tempdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree() -> Iterator[MasterProcess]:
    """Four echo workers, for tests that leave them as they found them."""
    with running_master(workers=4) as running:
        yield running


def ctl(master: MasterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return procbus("ctl", "--ctl", master.endpoint, *args)


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def statuses(reply: dict[str, Any]) -> dict[str, str]:
    return {wid: answer["status"] for wid, answer in reply["workers"].items()}


def test_quorum_returns_before_the_sleeper_which_is_pending_then_on_the_event_stream(
    tree: MasterProcess,
) -> None:
    """Steps: watch the event stream; worker 2's listener sleeps 3 s, the others answer
    at once: ``ctl --json publish hang 2 3 --require 3``.
    Expected: exit 0; the reply is met with workers 1, 3 and 4 ok and worker 2
    ``pending`` (it had not answered: the reply did not wait for it); then a
    ``publish_late_answer`` event for that publish says worker 2 answered ok, with no
    result in it."""
    events = Events(tree)
    try:
        done = ctl(tree, "--json", "publish", "hang", "2", "3", "--require", "3")
        assert done.returncode == 0, done.stderr
        reply = as_json(done)
        assert (reply["require"], reply["met"], reply["ok"]) == (3, True, True)
        assert statuses(reply) == {"1": "ok", "2": "pending", "3": "ok", "4": "ok"}
        late = events.find("publish_late_answer", wait=20, seq=reply["seq"])
        assert late is not None, events.seen
        assert (late["worker"], late["status"], late["errors"]) == (2, "ok", [])
        assert late["channel"] == "hang"
        assert "results" not in late
    finally:
        events.close()


def test_requirement_beyond_the_workers_is_not_met_at_once_and_shows_them_pending(
    tree: MasterProcess,
) -> None:
    """Steps: ``ctl publish echo --require 5`` on four workers (human output).
    Expected: exit 1 (the requirement is not met); the output says why and lists the
    four workers as pending."""
    done = ctl(tree, "publish", "echo", "--require", "5")
    assert done.returncode == 1, done.stderr
    assert "require 5: NOT MET, the publish has only 4 target workers" in done.stdout
    assert "pending 1, 2, 3, 4" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    assert [(row[0], row[2]) for row in rows] == [(w, "pending") for w in "1234"]


def test_publish_to_one_worker_of_four_runs_there_only_and_leaves_no_gap(
    tree: MasterProcess,
) -> None:
    """Steps: ``ctl --json publish hold MARKER 0 --to 3`` (the listener creates
    MARKER.<worker id>); then ``ctl --json publish whoami --to 3``; then a publish to
    every worker.
    Expected: only MARKER.3 exists; the reply lists worker 3 alone, with the pid
    ``status`` shows for it; the publish to all is ok everywhere, no worker reporting a
    sequence gap (the publishes for worker 3 were counted by the others)."""
    directory = short_tempdir()
    try:
        marker = str(directory / "m")
        done = ctl(tree, "--json", "publish", "hold", json.dumps(marker), "0", "--to", "3")
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in Path(directory).iterdir()) == ["m.3"]
        who = as_json(ctl(tree, "--json", "publish", "whoami", "--to", "3"))
        pids = {w["id"]: w["pid"] for w in tree.workers()}
        assert list(who["workers"]) == ["3"]
        assert who["workers"]["3"]["results"][0]["pid"] == pids[3] == who["workers"]["3"]["pid"]
        everyone = ctl(tree, "--json", "publish", "whoami")
        assert everyone.returncode == 0, everyone.stdout
        assert set(statuses(as_json(everyone)).values()) == {"ok"}
    finally:
        for path in Path(directory).iterdir():
            path.unlink()
        directory.rmdir()


BAD = [  # the options, what the one line says
    (["--require", "most"], 'require must be "all", "any" or a number of workers >= 1'),
    (["--require", "0"], 'require must be "all", "any" or a number of workers >= 1, got 0'),
    (["--require=-1"], 'require must be "all", "any" or a number of workers >= 1, got \'-1\''),
    (["--to", "x"], "to must be 1 to 4096 worker ids >= 1 (as 1,3), got 'x'"),
    (["--to", ""], "to must be 1 to 4096 worker ids >= 1 (as 1,3), got ''"),
    (["--to", "0"], "to must be 1 to 4096 worker ids >= 1 (as 1,3), got '0'"),
    (["--to", "9"], "no worker 9 (workers: 1-4)"),
    (["--to", "2,9,7"], "no workers 7, 9 (workers: 1-4)"),
    (["--to-generation", "9"], "no worker of generation 9 (generations: 1)"),
    (["--to", "1", "--to-generation", "1"], "to and to_generation exclude each other"),
]


@pytest.mark.parametrize(("options", "message"), BAD, ids=[" ".join(c[0]) for c in BAD])
def test_bad_publish_options_exit_2_with_one_line(
    tree: MasterProcess, options: list[str], message: str
) -> None:
    """Steps: ``ctl publish echo`` with a bad requirement or target.
    Expected: exit 2, nothing on stdout, one line on stderr saying what is wrong."""
    done = ctl(tree, "publish", "echo", *options)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert message in line
    assert line.count("publish:") == 1, line  # the command named once


def test_to_generation_after_a_reload_and_a_respawn(tmp_path: Path) -> None:
    """Steps: two workers; ``ctl reload`` (every worker becomes generation 2); kill
    worker 1 (its replacement is generation 3); publish whoami to generation 2, then 1.
    Expected: generation 2 reaches worker 2 alone; generation 1 is exit 2 naming the
    generations there are (2-3)."""
    with running_master(workers=2) as master:
        assert ctl(master, "reload").returncode == 0
        wait_until(lambda: {w["generation"] for w in master.workers()} == {2}, 20)
        old = {w["id"]: w["pid"] for w in master.workers()}
        assert ctl(master, "kill", "1").returncode == 0

        def respawned() -> bool:
            workers = master.wait_running(2)
            return {w["id"]: w["pid"] for w in workers}[1] != old[1]

        wait_until(respawned, 20)
        done = ctl(master, "--json", "publish", "whoami", "--to-generation", "2")
        assert done.returncode == 0, done.stderr
        reply = as_json(done)
        assert list(reply["workers"]) == ["2"]
        assert reply["workers"]["2"]["results"][0]["generation"] == 2
        wrong = ctl(master, "publish", "whoami", "--to-generation", "1")
        assert wrong.returncode == 2
        assert "no worker of generation 1 (generations: 2-3)" in wrong.stderr


def test_targeted_publishes_across_restart_adopt_and_upgrade_leave_no_gap() -> None:
    """Steps: ``procbus run`` with 2 generic workers; twice: restart --adopt, then, as
    soon as the new master answers, publishes to worker 1, worker 2 and every worker in
    turn (the adopted workers are re-subscribing), then, once both run, more of them;
    then a publish to worker 1 whose listener holds 1 s is in flight when the tree
    upgrades to a new master, and publishes go on to the new master's workers.
    Expected: no reply has an error, a timeout or a loss: a worker answers ok, or is
    starting while its subscription is not proven; each targeted reply lists its target
    alone; the same worker pids across the restarts; the publish in flight during the
    upgrade is answered ok by worker 1; the new workers answer targeted publishes."""
    with running("--worker", "tests.tree.apps:echo", workers=2) as proc:
        pids = [w["pid"] for w in proc.workers()]
        bad: list[str] = []

        def publish(n: int, allowed: set[str]) -> None:
            target = {0: None, 1: "1", 2: "2"}[n % 3]
            options = {"to": target} if target else {}
            reply = proc.call("publish", "echo", n, timeout=10, **options)
            if target and list(reply["workers"]) != [target]:
                bad.append(f"seq {reply['seq']} to {target}: {list(reply['workers'])}")
            for worker, answer in reply["workers"].items():
                if answer["status"] not in allowed or answer["errors"]:
                    errors = [f"{e['type']}: {e['message']}" for e in answer["errors"]]
                    bad.append(f"seq {reply['seq']} worker {worker} {answer['status']} {errors}")

        for _ in range(2):
            assert proc.call("restart", adopt=True, timeout=60)["result"]["adopted"] == 2
            proc.wait_answering()
            for n in range(12):
                publish(n, {"ok", "starting"})
            assert [w["pid"] for w in proc.wait_running(2)] == pids
            for n in range(6):
                publish(n, {"ok"})

        held: list[dict[str, Any]] = []
        directory = short_tempdir()
        marker = str(directory / "held")
        in_flight = threading.Thread(
            target=lambda: held.append(proc.call("publish", "hold", marker, 1.0, to="1"))
        )
        in_flight.start()
        try:
            wait_until(lambda: Path(f"{marker}.1").exists(), 10)
            new_pid = proc.call("upgrade", timeout=60)["result"]["new_master"]
        finally:
            in_flight.join(30)
            for path in directory.iterdir():
                path.unlink()
            directory.rmdir()
        assert proc.proc.wait(20) == 0
        try:
            (reply,) = held
            assert reply["workers"]["1"]["status"] == "ok", reply
            assert proc.call("status")["master"]["pid"] == new_pid
            proc.wait_running(2)
            for n in range(6):
                publish(n, {"ok"})
        finally:
            os.kill(new_pid, signal.SIGTERM)
        assert bad == []
