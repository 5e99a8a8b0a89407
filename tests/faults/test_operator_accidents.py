"""Operators' accidents and faults in reload, restart and upgrade: the tree serves on.

A successor master that dies at any point of an upgrade, a release directory
removed under a running master, an exec that fails, a tmp cleaner that removes
the runtime directory, a runtime ``scale`` across restart and upgrade, and
``restart --adopt`` after an upgrade. Each ends with the tree serving, the
name answering, and what happened said in one place (the job's error).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.cli.hosting import RunProcess, running, write
from tests.helpers import wait_until
from tests.processes import Events, short_tempdir, supervised

pytestmark = pytest.mark.slow


def _successor(proc: RunProcess, workers: set[int]) -> psutil.Process:
    """The new master of an upgrade: the old master's child that is not one of its workers."""

    def found() -> psutil.Process | None:
        children = psutil.Process(proc.pid).children()
        return next((c for c in children if c.pid not in workers), None)

    return wait_until(found, 15)


def _failed_job(proc: RunProcess, kind: str) -> dict[str, Any] | None:
    """The last failed job of `kind` the master has on record, if any."""
    failed = [j for j in proc.call("jobs")["jobs"] if j["kind"] == kind and j["state"] == "failed"]
    return failed[-1] if failed else None


def _slow_request(proc: RunProcess, seconds: float, outcome: list[object]) -> threading.Thread:
    def request() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", proc.port(), timeout=30)
        try:
            conn.request("GET", f"/?seconds={seconds}")
            response = conn.getresponse()
            outcome.append((response.status, response.read()))
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=request)
    thread.start()
    return thread


def test_successor_killed_while_the_old_workers_drain_leaves_the_old_master_serving(
    tmp_path: Path,
) -> None:
    """Steps: one worker busy with a 3 s request (its drain takes that long); ``ctl
    upgrade``; when the old master reports "draining the old workers", SIGKILL the new
    master. Expected: the upgrade job fails naming the new master's death; the old
    master keeps its pid, the name and the pidfile, and forks a new worker that
    serves; the request in flight completed; no socket file of the dead master is left."""
    pidfile = tmp_path / "master.pid"
    with running(
        "tests.cli.apps:slow", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile), workers=1
    ) as proc:
        workers = {w["pid"] for w in proc.workers()}
        events = Events(proc)
        try:
            outcome: list[object] = []
            slow = _slow_request(proc, 3, outcome)
            wait_until(lambda: proc.call("stats")["workers"][0]["counters"]["in_flight"], 10)
            proc.call("upgrade", wait=False)
            successor = _successor(proc, workers)
            assert events.find(
                "job_progress", wait=20, message="new master ready; draining the old workers"
            )
            successor.kill()
            slow.join(20)
            job = wait_until(
                lambda: next(
                    (
                        j
                        for j in proc.call("jobs")["jobs"]
                        if j["kind"] == "upgrade" and j["state"] == "failed"
                    ),
                    None,
                ),
                30,
            )
        finally:
            events.close()
        assert f"the new master (pid {successor.pid}) exited" in job["error"]
        assert "keeps serving" in job["error"]
        assert outcome == [(200, b"slept 3.0")]
        assert proc.call("ping")["pid"] == proc.pid
        assert pidfile.read_text().strip() == str(proc.pid)
        (worker,) = proc.wait_running(1)
        assert worker["pid"] not in workers
        assert proc.get("/?seconds=0")[0] == 200
        names = sorted(p.name for p in proc.runtime_dir.iterdir())
        assert names == ["ctl", "evt", "master.lock", "w1.pub", "w1.rep"], names


def test_successor_killed_while_it_boots_leaves_no_trace(tmp_path: Path) -> None:
    """Steps: an app that takes 2 s to import; ``ctl upgrade``; SIGKILL the new master
    while its workers boot. Expected: the job fails ("keeps serving"), the old worker
    never stopped serving, and the dead master's worker sockets are gone."""
    env = {"PROCBUS_TEST_IMPORT_DELAY": "2"}
    with running("tests.cli.apps:versioned", "--bind", "127.0.0.1:0", workers=1, env=env) as proc:
        workers = {w["pid"] for w in proc.workers()}
        proc.call("upgrade", wait=False)
        successor = _successor(proc, workers)
        wait_until((proc.runtime_dir / "w2.pub").exists, 15)
        successor.kill()
        job = wait_until(
            lambda: next(
                (
                    j
                    for j in proc.call("jobs")["jobs"]
                    if j["kind"] == "upgrade" and j["state"] == "failed"
                ),
                None,
            ),
            30,
        )
        assert "keeps serving" in job["error"]
        assert {w["pid"] for w in proc.workers()} == workers
        assert not (proc.runtime_dir / "w2.pub").exists()
        assert proc.get("/")[0] == 200


def test_restart_adopt_after_an_upgrade_keeps_every_worker() -> None:
    """Steps: upgrade (the new master's workers use its own sockets), then ``restart
    --adopt`` on the new master, then a publish. Expected: the adopted workers are the
    same processes, running, answering the publish; none was killed or replaced."""
    with running("--bind", "127.0.0.1:0", "--timeout", "5", workers=2) as proc:
        result = proc.call("upgrade", timeout=60)
        new_pid = result["result"]["new_master"]
        assert proc.proc.wait(20) == 0
        wait_until(lambda: proc.call("ping")["pid"] == new_pid, 20)
        workers = sorted(w["pid"] for w in proc.wait_running(2))
        adopted = proc.call("restart", adopt=True, timeout=60)
        assert adopted["result"]["adopted"] == 2
        wait_until(lambda: proc.call("ping")["generation"] == 3, 20)
        assert sorted(w["pid"] for w in proc.wait_running(2, timeout=20)) == workers
        reply = proc.call("publish", "demo.message", "after both")
        assert {w["status"] for w in reply["workers"].values()} == {"ok"}
        assert "did not reconnect" not in Path(proc.log_path).read_text()
        os.kill(new_pid, signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(new_pid), 20)


def test_runtime_scale_survives_restart_and_upgrade_unless_the_config_changes(
    tmp_path: Path,
) -> None:
    """Steps: a config file with workers = 1; ``scale 3``; restart; upgrade; then the
    config says 2 and the master restarts. Expected: 3 workers after the restart and
    after the upgrade; 2 after the config changed (the file wins again)."""
    config = write(tmp_path / "p.toml", "[procbus]\nworkers = 1\n")
    with running("--bind", "127.0.0.1:0", "--config", str(config), workers=None) as proc:
        proc.wait_answering()
        proc.wait_running(1)
        proc.call("scale", 3, timeout=60)
        proc.call("restart", timeout=60)
        wait_until(lambda: proc.call("ping")["generation"] == 2, 20)
        proc.wait_running(3, timeout=20)
        result = proc.call("upgrade", timeout=60)
        assert proc.proc.wait(20) == 0
        new_pid = result["result"]["new_master"]
        wait_until(lambda: proc.call("ping")["pid"] == new_pid, 20)
        proc.wait_running(3, timeout=20)
        write(config, "[procbus]\nworkers = 2\n")
        proc.call("restart", timeout=60)
        wait_until(lambda: proc.call("ping")["generation"] == 4, 20)
        proc.wait_running(2, timeout=20)
        os.kill(new_pid, signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(new_pid), 20)


def test_runtime_directory_removed_under_a_running_master_is_made_again() -> None:
    """Steps: ``rm -rf`` the runtime directory of a running master (a tmp cleaner).
    Expected: within a few seconds ``ctl`` reaches it again, the directory is 0700
    with every socket; a worker killed afterwards is replaced by one that runs, and a
    publish reaches both workers."""
    with running("--bind", "127.0.0.1:0", workers=2) as proc:
        shutil.rmtree(proc.runtime_dir)
        wait_until((proc.runtime_dir / "ctl").exists, 10)
        assert proc.call("ping")["pid"] == proc.pid
        names = sorted(p.name for p in proc.runtime_dir.iterdir())
        assert names == ["ctl", "evt", "master.lock", "w1.pub", "w1.rep"], names
        victim = proc.workers()[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced() -> bool:
            # One status: two could see the victim (not reaped yet), then its successor.
            workers = proc.workers()
            states = [w["state"] for w in workers]
            return states == ["running", "running"] and workers[0]["pid"] != victim["pid"]

        wait_until(replaced, 20)
        reply = proc.call("publish", "demo.message", "after")
        assert {w["status"] for w in reply["workers"].values()} == {"ok"}, (reply, proc.workers())
        assert "making it again" in proc.log()


def test_restart_from_a_release_directory_replaced_by_a_deploy(tmp_path: Path) -> None:
    """Steps: the app lives in releases/1, started from the link ``current`` (as a deploy
    tool leaves it); a deploy adds releases/2 with new code, points ``current`` at it,
    and removes releases/1; ``ctl restart``. Expected: the restart succeeds and the new
    workers serve release 2's code (the master went back to ``current``, not to the
    removed directory)."""
    base = short_tempdir()
    releases = base / "releases"
    for version in ("1", "2"):
        (releases / version).mkdir(parents=True)
        write(
            releases / version / "relapp.py",
            "def app(environ, start_response):\n"
            f"    body = b'release {version}'\n"
            "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
            "    return [body]\n",
        )
    current = base / "current"
    current.symlink_to(releases / "1")
    argv = [
        sys.executable, "-m", "procbus", "run", "relapp:app", "-w", "1",
        "--bind", "127.0.0.1:0", "--runtime-dir", str(base / "rt"),
        "--heartbeat-interval", "0.2", "--graceful-timeout", "5",
    ]  # fmt: skip
    proc = RunProcess(argv, base / "rt", base / "run.log", {"PWD": str(current)}, cwd=current)
    with supervised(proc, base, 1):
        assert proc.get("/") == (200, b"release 1")
        (base / "next").symlink_to(releases / "2")
        os.replace(base / "next", current)
        shutil.rmtree(releases / "1")
        proc.call("restart", timeout=60)
        wait_until(lambda: proc.call("ping")["generation"] == 2, 20)
        proc.wait_running(1)
        assert proc.get("/") == (200, b"release 2")


EXEC_FAILS_ONCE = """
import os, runpy, sys
real_execv = os.execv
def execv(path, args):
    if os.environ.get("PROCBUS_TEST_EXEC_FAILED") is None:
        os.environ["PROCBUS_TEST_EXEC_FAILED"] = "1"
        raise OSError(8, "Exec format error")
    real_execv(path, args)
os.execv = execv
sys.argv = ["procbus", *sys.argv[1:]]
runpy.run_module("procbus", run_name="__main__")
"""


def test_restart_whose_exec_fails_serves_on_and_says_so(tmp_path: Path) -> None:
    """Steps: a master whose first ``execv`` fails (as a vanished or broken interpreter
    would); ``ctl restart``. Expected: the process serves on (same pid, next
    generation, new workers running), and ``ctl jobs`` shows a failed restart naming
    the exec error."""
    shim = write(tmp_path / "shim.py", EXEC_FAILS_ONCE)
    directory = short_tempdir()
    argv = [
        sys.executable, str(shim), "run", "-w", "1", "--bind", "127.0.0.1:0",
        "--runtime-dir", str(directory / "rt"), "--heartbeat-interval", "0.2",
    ]  # fmt: skip
    with supervised(
        RunProcess(argv, directory / "rt", directory / "run.log"), directory, 1
    ) as proc:
        proc.call("restart", timeout=60)
        wait_until(lambda: proc.call("ping")["generation"] == 2, 20)
        assert proc.call("ping")["pid"] == proc.pid
        proc.wait_running(1)
        jobs = proc.call("jobs")["jobs"]
        failed = _failed_job(proc, "restart")
        assert failed is not None and "Exec format error" in failed["error"], jobs
        assert proc.get("/health") == (200, b"ok")
        assert json.loads(proc.get("/worker")[1])["generation"] == 2
