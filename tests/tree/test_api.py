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


def test_script_runs_two_trees_in_sequence_on_the_process_bus() -> None:
    directory = short_tempdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.tree.api_script", str(directory)],
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
    assert proc.returncode == 0, err
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
    # The first master left the bus when it closed: the second is alone on it.
    assert lines[0]["listeners"] == lines[1]["listeners"]
    assert lines[2] == {"state": "states.EXITING"}
