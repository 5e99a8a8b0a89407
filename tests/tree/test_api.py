"""The Python API as a user's script uses it, in a process of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers import wait_until
from tests.processes import ROOT, child_environment, group_members, short_tempdir

pytestmark = pytest.mark.slow


def run_script(module: str) -> tuple[int, str, str]:
    """Run `module` with a fresh directory; (status, stdout, stderr), every process reaped."""
    directory = short_tempdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", module, str(directory)],
        cwd=ROOT,
        env=child_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        wait_until(lambda: not group_members(proc.pid), 10)
        shutil.rmtree(directory, ignore_errors=True)
    return proc.returncode, out, err


def test_script_runs_two_trees_in_sequence_on_the_process_bus() -> None:
    status, out, err = run_script("tests.tree.api_script")
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("round") for line in lines[:2]] == [1, 2]
    for line in lines[:2]:
        assert line["ok"] is True
        assert sorted(line["workers"]) == ["1", "2", "3", "4"]
        for wid, (status, results) in line["workers"].items():
            assert status == "ok"
            assert results[0]["worker"] == int(wid)
        assert len(line["failures"]) == 4
        assert all("ValueError" in f and "boom in worker" in f for f in line["failures"])
        (async_error,) = line["async_on_master"]
        assert "process without an event loop" in async_error, async_error
    # The first master left the bus when it closed: the second is alone on it.
    assert lines[0]["listeners"] == lines[1]["listeners"]
    assert lines[2] == {"state": "states.EXITING"}


def test_master_from_python_gives_up_when_no_worker_can_boot() -> None:
    """Steps: a script starts a Master (2 workers, boot timeout 600 s) whose app raises at
    import, with `start()`; then another with `run()`.
    Expected: `start()` returns False as soon as a worker failed to boot (not after the
    boot timeout: the script ends within the test's wait), the master is exiting, and
    says why; `run()` returns 1 with the same reason."""
    status, out, err = run_script("tests.tree.halting_script")
    assert status == 0, err
    started, ran = (json.loads(line) for line in out.splitlines())
    assert started["started"] is False
    assert started["exiting"] is True
    assert ran["run"] == 1
    for result in (started, ran):
        assert result["halted"].startswith("worker ")
        assert "could not boot: " in result["halted"]
        assert "broken_app cannot be imported" in result["halted"]


def test_script_publishes_with_a_requirement_and_to_chosen_workers() -> None:
    """Steps: a script's master with four workers publishes 'hang' (worker 2 sleeps 3 s)
    requiring 3; 'whoami' to worker 3; 'whoami' to worker 9; 'boom' (every worker
    raises) requiring any.
    Expected: the first reply is met and ok with worker 2 pending; the second lists
    worker 3 alone, its own answer; the third raises ValueError naming worker 9 and the
    workers there are; the last is not met, and `raise_for_failures` raises the four
    errors and a QuorumError saying none can answer."""
    status, out, err = run_script("tests.tree.quorum_script")
    assert status == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    quorum, targeted, refused, failed = lines
    assert (quorum["quorum"]["ok"], quorum["quorum"]["pending"]) == (True, [2])
    assert targeted["targeted"]["workers"] == {"3": "ok"}
    assert targeted["targeted"]["results"]["3"][0]["worker"] == 3
    assert refused == {"refused": "no worker 9 (workers: 1-4)"}
    assert (failed["failed"]["ok"], failed["failed"]["met"]) == (False, False)
    assert failed["raised"][-1] == (
        "QuorumError: require any: 4 of 4 target workers failed, none can answer"
    )
    assert sum(line.startswith("RemoteError: worker") for line in failed["raised"]) == 4
