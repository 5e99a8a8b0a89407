"""`procbus run` end to end: a real master, real workers, real HTTP on loopback."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import psutil
import pytest

from tests.cli.hosting import Apps, Load, RunProcess, each_interface, running, write
from tests.helpers import wait_until
from tests.processes import (
    ROOT,
    Events,
    child_environment,
    procbus,
    short_tempdir,
    supervised,
)

pytestmark = pytest.mark.slow


# -- refusing to start ---------------------------------------------------------


def test_check_prints_the_effective_config_and_where_each_value_came_from(tmp_path) -> None:
    config = write(tmp_path / "p.toml", "[procbus]\nthreads = 8\n")
    done = procbus(
        "run", "--check", "-w", "3", "--config", str(config), env={"PROCBUS_TIMEOUT": "9"}
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split("=")[0].strip(): line for line in done.stdout.splitlines()}
    assert rows["workers"].endswith("(cli)") and "= 3" in rows["workers"]
    assert rows["threads"].endswith("(file)") and "= 8" in rows["threads"]
    assert rows["timeout"].endswith("(env)") and "= 9.0" in rows["timeout"]
    assert rows["bind"].endswith("(default)")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-w", "many"], "'many'"),
        (["--bind", "nowhere"], "'nowhere'"),
        (["--timeout", "-1"], "'-1'"),
        (["--log-level", "loud"], "'loud'"),
        (["--config", "/nonexistent/procbus.toml"], "/nonexistent/procbus.toml"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_value(
    args: list[str], expected: str
) -> None:
    done = procbus("run", "--check", *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("tests.tree.broken_app:app", "broken_app cannot be imported"),
        ("tests.cli.apps:not_callable", "not callable"),
        ("tests.cli.apps:missing", "missing"),
        ("no_such_module:app", "no_such_module"),
    ],
)
def test_app_that_cannot_load_fails_check_with_exit_1(app: str, expected: str) -> None:
    done = procbus("run", "--check", app)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr


def test_config_file_with_an_unknown_key_or_a_wrong_type_exits_2(tmp_path) -> None:
    for text, expected in (("wokers = 2", "wokers"), ("workers = 'two'", "'two'")):
        config = write(tmp_path / "p.toml", f"[procbus]\n{text}\n")
        done = procbus("run", "--check", "--config", str(config))
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert expected in done.stderr


def test_address_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = procbus("run", "-w", "1", "--bind", f"127.0.0.1:{port}")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr


@pytest.mark.parametrize(
    "address", ["no-such-host.invalid:8000", "unix:/nonexistent-dir-pb/web.sock"]
)
def test_address_that_cannot_be_bound_is_one_line_and_exit_2(address: str) -> None:
    done = procbus("run", "-w", "1", "--bind", address)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert address.removeprefix("unix:") in done.stderr


def test_app_failing_in_every_worker_stops_the_master_with_exit_1() -> None:
    with running(
        "tests.tree.broken_app:app", "--bind", "127.0.0.1:0", "--preload", workers=2, wait=False
    ) as proc:
        # --preload imports in the master: refused before any fork.
        assert proc.proc.wait(20) == 1
        assert "broken_app cannot be imported" in proc.log()
    with running("tests.tree.broken_app:app", "--bind", "127.0.0.1:0", wait=False) as proc:
        # Imported after fork: the first worker that cannot boot stops the
        # master at once (no worker ever served), with the import error.
        assert proc.proc.wait(20) == 1
        log = proc.log()
        assert log.count("] INFO procbus.master: worker") <= 2  # no respawn loop
        final = log.strip().splitlines()
        assert any(
            "procbus run: worker" in line and "could not boot" in line for line in final[-10:]
        )
        assert "broken_app cannot be imported" in log


def test_second_master_with_the_same_name_is_refused_and_the_first_untouched() -> None:
    with running("--bind", "127.0.0.1:0", workers=1) as first:
        done = procbus(
            "run", "--runtime-dir", str(first.runtime_dir), "-w", "1", "--bind", "127.0.0.1:0"
        )
        assert done.returncode == 1
        assert "already running" in done.stderr
        assert first.get("/health") == (200, b"ok")


# -- serving -------------------------------------------------------------------


@each_interface
def test_demo_is_served_by_every_worker_and_term_stops_cleanly(tmp_path, apps: Apps) -> None:
    pidfile = tmp_path / "master.pid"
    with running(
        *apps.demo, "--bind", "127.0.0.1:0", "--pidfile", str(pidfile), workers=3
    ) as proc:
        assert pidfile.read_text().strip() == str(proc.pid)
        workers = {w["pid"] for w in proc.workers()}
        with Load(proc.port(), clients=6) as load:
            load.wait_for(300)
        assert not load.failures
        assert load.pids <= workers and len(load.pids) >= 2
        status, page = proc.get("/")
        assert status == 200 and b"procbus" in page
        assert proc.get("/boom")[0] == 500
        assert proc.get("/health") == (200, b"ok")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    assert not pidfile.exists()


def test_generic_worker_runs_without_listening_sockets() -> None:
    with running("--worker", "tests.tree.apps:echo", workers=2) as proc:
        reply = proc.call("publish", "whoami")
        assert sorted(reply["workers"]) == ["1", "2"]
        assert "listening on" not in proc.log()


def test_unix_socket_bind(tmp_path) -> None:
    path = short_tempdir() / "web.sock"
    try:
        with running("--bind", f"unix:{path}", workers=1):
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                client.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := client.recv(4096):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"ok")
    finally:
        path.unlink(missing_ok=True)
        path.parent.rmdir()


def test_socket_activation_uses_the_systemd_socket(tmp_path) -> None:
    # A shim that does what systemd does: bind, hand the socket over as fd 3
    # with LISTEN_FDS=1 and LISTEN_PID = the pid that will run procbus.
    shim = write(
        tmp_path / "shim.py",
        "import os, socket, sys\n"
        "s = socket.socket()\n"
        "s.bind(('127.0.0.1', 0))\n"
        "s.listen()\n"
        "print('shim bound', s.getsockname()[1], flush=True)\n"
        "os.dup2(s.fileno(), 3)\n"
        "os.set_inheritable(3, True)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'procbus', *sys.argv[1:]])\n",
    )
    directory = short_tempdir()
    argv = [sys.executable, str(shim), "run", "-w", "1", "--runtime-dir", str(directory / "rt")]
    with supervised(
        RunProcess(argv, directory / "rt", directory / "run.log"), directory, 1
    ) as proc:
        bound = re.search(r"shim bound (\d+)", proc.log())
        assert bound is not None
        assert proc.port() == int(bound.group(1))
        assert proc.get("/health") == (200, b"ok")


# -- recycling, and each worker's bus state -------------------------------------------

MAX_RSS = 64 * 2**20


def test_a_worker_over_max_rss_is_recycled_under_load_and_no_request_fails() -> None:
    """Steps: 2 workers of an app that keeps 4 MiB per request (up to 96 MiB), max_rss
    64M over 2 samples (one per 0.2 s heartbeat); watch the events; run a load of 4
    clients until a worker was recycled for max_rss and drained, and 50 requests more.
    Expected: fresh workers are under the limit; no request failed; the `recycle` event
    names one of them, max_rss and its RSS; its slot's replacement was ready before the
    old worker was drained; the status shows a new running worker in that slot and the
    slot's last recycle (max_rss, seconds ago); the master logged the recycle."""
    options = ("--bind", "127.0.0.1:0", "--max-rss", "64M", "--rss-samples", "2")
    with running("tests.cli.apps:leaky", *options, workers=2) as proc:
        fresh = proc.workers()
        assert all(w["rss"] < MAX_RSS for w in fresh), fresh
        events = Events(proc)
        try:
            with Load(proc.port(), clients=4) as load:
                event = events.find("recycle", wait=30, reason="max_rss")
                assert event is not None, events.seen
                worker, old = event["worker"], event["pid"]
                assert events.find("drain", wait=15, pid=old) is not None, events.seen
                load.wait_for(50)
        finally:
            events.close()
        assert load.failures == []
        assert old in {w["pid"] for w in fresh}
        assert event["detail"].endswith("above max_rss 64.0M in 2 samples in a row")
        names = [(e["event"], e.get("worker"), e.get("pid")) for e in events.seen]
        recycled, drained = (
            names.index(("recycle", worker, old)),
            names.index(("drain", worker, old)),
        )
        assert any(name == "ready" and w == worker for name, w, _ in names[recycled:drained])
        now = {w["id"]: w for w in proc.workers()}[worker]
        assert (now["state"], now["last_recycle"]["reason"]) == ("running", "max_rss")
        assert now["pid"] != old
        assert 0 <= now["last_recycle"]["age"] < 30
        assert f"(pid {old}) is recycled: RSS" in proc.log()


def test_a_worker_finishing_a_slow_request_shows_its_bus_stopping() -> None:
    """Steps: one worker of the slow app; a request of 4 s; once it is in flight, SIGTERM
    the worker (``ctl kill 1``); read the status, as JSON and for people, until its bus
    state changes.
    Expected: before, the worker's bus is STARTED and the table has no BUS column; while
    the request finishes, the worker is stopping with its bus STOPPING and the table has a
    BUS column showing it; the request completes (200); then a new worker runs, its bus
    STARTED."""
    with running("tests.cli.apps:slow", "--bind", "127.0.0.1:0", workers=1) as proc:
        (worker,) = proc.workers()
        assert worker["bus_state"] == "STARTED"
        assert "BUS" not in procbus("ctl", "--ctl", proc.endpoint, "status").stdout
        outcome: list[object] = []

        def slow_request() -> None:
            try:
                outcome.append(proc.get("/?seconds=4", timeout=10))
            except (OSError, http.client.HTTPException) as exc:
                outcome.append(exc)

        client = threading.Thread(target=slow_request)
        client.start()
        try:
            wait_until(lambda: proc.call("stats")["workers"][0]["counters"]["in_flight"] == 1, 10)
            proc.call("kill", 1)
            stopping = wait_until(
                lambda: (w := proc.workers()[0])["bus_state"] == "STOPPING" and w, 10
            )
            table = procbus("ctl", "--ctl", proc.endpoint, "status").stdout
        finally:
            client.join(15)
        assert (stopping["pid"], stopping["state"]) == (worker["pid"], "stopping")
        header, row = table.splitlines()[1:3]
        assert header.split()[:4] == ["ID", "PID", "STATE", "BUS"]
        assert row.split()[:4] == ["1", str(worker["pid"]), "stopping", "STOPPING"]
        assert outcome == [(200, b"slept 4.0")]
        (new,) = proc.wait_running(1)
        assert new["pid"] != worker["pid"]
        wait_until(lambda: proc.workers()[0]["bus_state"] == "STARTED", 10)


# -- reload, restart, signals --------------------------------------------------


@each_interface
def test_reload_under_load_loses_no_request_and_serves_new_workers(apps: Apps) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=2) as proc:
        before = {w["pid"] for w in proc.workers()}
        with Load(proc.port(), clients=4) as load:
            load.wait_for(100)
            reply = proc.call("reload", timeout=60)
            load.wait_for(100)
        assert reply["state"] == "done", reply
        after = {w["pid"] for w in proc.workers()}
        assert not before & after
        assert load.ok > 200
        assert load.failures == []
        assert load.pids & after


@each_interface
@pytest.mark.parametrize("command", ["reload", "upgrade"])
def test_keep_alive_clients_lose_nothing_while_workers_drain(command: str, apps: Apps) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=2) as proc:
        with Load(proc.port(), clients=4, keep_alive=True) as load:
            load.wait_for(100)
            assert proc.call(command, timeout=60)["state"] == "done"
            if command == "upgrade":
                assert proc.proc.wait(20) == 0
            load.wait_for(100, timeout=20)
        assert load.failures == []
        if command == "upgrade":
            os.kill(proc.call("status")["master"]["pid"], signal.SIGTERM)


@each_interface
def test_hup_reloads_and_ttin_ttou_scale(apps: Apps) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=2) as proc:
        before = {w["pid"] for w in proc.workers()}
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: not before & {w["pid"] for w in proc.workers()}, 30)
        proc.wait_running(2)
        os.kill(proc.pid, signal.SIGTTIN)
        proc.wait_running(3)
        os.kill(proc.pid, signal.SIGTTOU)
        proc.wait_running(2)


def test_reload_rereads_the_config_and_a_broken_one_aborts_it(tmp_path) -> None:
    config = write(tmp_path / "p.toml", "[procbus]\nworkers = 2\n")
    # No --workers on the command line (workers=None): it would win over the file.
    with running("--config", str(config), "--bind", "127.0.0.1:0", workers=None) as proc:
        proc.wait_answering()
        before = {w["pid"] for w in proc.wait_running(2)}
        write(config, "[procbus]\nworkers = 'three'\n")
        reply = proc.request("reload", timeout=30)
        assert not reply["ok"], reply
        assert "'three'" in reply["error"]["message"]
        assert {w["pid"] for w in proc.workers()} == before
        write(config, "[procbus]\nworkers = 3\n")
        proc.call("reload", timeout=60)
        after = proc.wait_running(3)
        assert not before & {w["pid"] for w in after}


@each_interface
def test_restart_keeps_pid_port_and_every_connection(apps: Apps) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=2) as proc:
        port = proc.port()
        status = proc.status()
        generation = status["master"]["generation"]
        with Load(port, clients=4) as load:
            load.wait_for(50)
            proc.call("restart", timeout=60)
            proc.wait_answering()
            proc.wait_running(2)
            load.wait_for(100, timeout=20)
        assert load.failures == []
        status = proc.status()
        assert status["master"]["pid"] == proc.pid
        assert status["master"]["generation"] == generation + 1
        assert proc.port() == port
        # Worker generations go on from the previous master's: none repeats.
        assert [w["generation"] for w in status["workers"]] == [2, 2]
        assert json.loads(proc.get("/worker")[1])["pid"] in {w["pid"] for w in status["workers"]}


@each_interface
def test_upgrade_hands_over_to_a_new_master_without_losing_a_request(tmp_path, apps: Apps) -> None:
    pidfile = tmp_path / "master.pid"
    with running(
        *apps.demo, "--bind", "127.0.0.1:0", "--pidfile", str(pidfile), workers=2
    ) as proc:
        port = proc.port()
        generation = proc.status()["master"]["generation"]
        with Load(port, clients=4) as load:
            load.wait_for(50)
            result = proc.call("upgrade", timeout=60)
            assert proc.proc.wait(20) == 0  # the old master drained and left
            load.wait_for(100, timeout=20)
        assert load.failures == []
        new_pid = result["result"]["new_master"]
        status = wait_until(lambda: proc.call("status") if pidfile.exists() else None, 10)
        assert status["master"]["pid"] == new_pid != proc.pid
        assert status["master"]["generation"] == generation + 1
        assert [w["generation"] for w in status["workers"]] == [2, 2]
        assert pidfile.read_text().strip() == str(new_pid)
        assert json.loads(proc.get("/worker")[1])["pid"] in {w["pid"] for w in status["workers"]}
        os.kill(new_pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 20)


def test_upgrade_to_a_master_that_cannot_boot_keeps_the_old_one_serving(tmp_path) -> None:
    config = write(tmp_path / "p.toml", "[procbus]\nworkers = 1\n")
    with running("--bind", "127.0.0.1:0", "--config", str(config), workers=None) as proc:
        proc.wait_answering()
        proc.wait_running(1)
        before = proc.workers()
        write(config, '[procbus]\nworkers = 1\napp = "tests.tree.broken_app:app"\n')
        reply = proc.request("upgrade", timeout=60)
        assert not reply["ok"], reply
        assert "keeps serving" in reply["error"]["message"]
        assert [w["pid"] for w in proc.workers()] == [w["pid"] for w in before]
        assert proc.get("/health") == (200, b"ok")
        assert proc.proc.poll() is None


@each_interface
def test_restart_adopt_renews_the_master_and_keeps_every_worker(apps: Apps) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=2) as proc:
        before = proc.status()
        first = proc.call("publish", "demo.message", "before")
        with Load(proc.port(), clients=4) as load:
            load.wait_for(50)
            result = proc.call("restart", adopt=True, timeout=60)
            assert result["result"]["adopted"] == 2
            proc.wait_answering()
            proc.wait_running(2)
            load.wait_for(100, timeout=20)
        assert load.failures == []
        after = proc.status()
        assert after["master"]["pid"] == before["master"]["pid"]
        assert after["master"]["generation"] == before["master"]["generation"] + 1
        assert [w["pid"] for w in after["workers"]] == [w["pid"] for w in before["workers"]]
        # The publish numbers go on: the workers see no gap and answer.
        second = proc.call("publish", "demo.message", "after")
        assert second["seq"] == first["seq"] + 1
        assert all(w["status"] == "ok" for w in second["workers"].values()), second
        assert "adopting 2 live workers" in proc.log()


def test_publishes_right_after_restart_adopt_are_answered_without_a_gap() -> None:
    """Steps: 2 generic workers; three times: restart --adopt, then, as soon as the new
    master answers, 10 publishes back to back (the adopted workers are still
    re-subscribing to it), then, once both run again, 5 more.
    Expected: no reply has an error or a worker timed out or lost: each worker answers ok,
    or is reported starting while its subscription is not proven yet (no SequenceGap
    for a publish it could not see); once running, both answer ok; the same worker pids
    throughout."""
    with running("--worker", "tests.tree.apps:echo", workers=2) as proc:
        pids = [w["pid"] for w in proc.workers()]
        bad: list[str] = []

        def publish(n: int, allowed: set[str]) -> None:
            reply = proc.call("publish", "echo", n, timeout=10)
            for worker, answer in reply["workers"].items():
                if answer["status"] not in allowed or answer["errors"]:
                    errors = [f"{e['type']}: {e['message']}" for e in answer["errors"]]
                    bad.append(f"seq {reply['seq']} worker {worker} {answer['status']} {errors}")

        for _ in range(3):
            result = proc.call("restart", adopt=True, timeout=60)
            assert result["result"]["adopted"] == 2
            proc.wait_answering()
            for n in range(10):
                publish(n, {"ok", "starting"})
            assert [w["pid"] for w in proc.wait_running(2)] == pids
            for n in range(5):
                publish(n, {"ok"})
        assert bad == []


@each_interface
def test_request_that_makes_the_app_raise_is_a_500_counted_and_the_worker_survives(
    apps: Apps,
) -> None:
    with running(*apps.demo, "--bind", "127.0.0.1:0", workers=1) as proc:
        pid = proc.workers()[0]["pid"]
        assert proc.get("/boom")[0] == 500
        assert proc.get("/health") == (200, b"ok")

        def counted() -> dict[str, int] | None:
            counters = proc.call("stats")["workers"][0]["counters"]
            return counters if counters.get("errors") == 1 else None

        counters = wait_until(counted, 10)
        assert counters["requests"] >= 2
        assert proc.workers()[0]["pid"] == pid


@each_interface
def test_reload_serves_new_code_and_a_broken_version_rolls_back(tmp_path, apps: Apps) -> None:
    version = write(tmp_path / "version", "v1")
    env = {"PROCBUS_TEST_VERSION_FILE": str(version)}
    with running(apps.versioned, "--bind", "127.0.0.1:0", workers=2, env=env) as proc:
        assert proc.get("/")[1].startswith(b"v1 ")
        write(version, "v2")
        with Load(proc.port(), clients=3, path="/") as load:
            load.wait_for(30)
            assert proc.call("reload", timeout=60)["state"] == "done"
        assert load.failures == []
        new_pids = {w["pid"] for w in proc.workers()}
        with Load(proc.port(), clients=3, path="/") as after:
            after.wait_for(50)
        assert after.failures == []
        assert after.bodies == {b"v2"}  # every response after the reload: new code
        assert after.pids <= new_pids

        write(version, "broken")
        reply = proc.request("reload", timeout=60)
        assert not reply["ok"]
        assert "version file says broken" in reply["error"]["message"]
        assert {w["pid"] for w in proc.workers()} == new_pids
        assert proc.get("/")[1].startswith(b"v2 ")


def test_usr2_upgrades(tmp_path) -> None:
    pidfile = tmp_path / "master.pid"
    with running("--bind", "127.0.0.1:0", "--pidfile", str(pidfile), workers=1) as proc:
        os.kill(proc.pid, signal.SIGUSR2)
        assert proc.proc.wait(30) == 0
        wait_until(lambda: pidfile.exists() and int(pidfile.read_text()) != proc.pid, 10)
        new_pid = int(pidfile.read_text())
        assert proc.call("status")["master"]["pid"] == new_pid
        assert proc.get("/health") == (200, b"ok")
        os.kill(new_pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 20)


class NotifySocket:
    """A fake systemd notify socket that records every datagram."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> str:
        def seen() -> str | None:
            return next((m for m in self.collect() if predicate(m)), None)

        return wait_until(seen, timeout)


def test_systemd_notifications_through_reload_upgrade_and_stop(tmp_path) -> None:
    notify = NotifySocket(str(short_tempdir() / "notify"))
    env = {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
    try:
        with running("--bind", "127.0.0.1:0", workers=2, env=env) as proc:
            ready = notify.wait_for(lambda m: m.startswith("READY=1"))
            assert "STATUS=2 workers" in ready
            notify.wait_for(lambda m: m == "WATCHDOG=1")
            notify.messages.clear()
            proc.call("reload", timeout=60)
            notify.wait_for(lambda m: m.startswith("READY=1"))
            reloading = [m for m in notify.messages if m.startswith("RELOADING=1")]
            assert len(reloading) == 1
            assert re.search(r"MONOTONIC_USEC=\d+", reloading[0])
            assert notify.messages.index(reloading[0]) < len(notify.messages) - 1
            notify.wait_for(lambda m: m == "STATUS=2 of 2 workers running, generation 1")

            notify.messages.clear()
            new_pid = proc.call("upgrade", timeout=60)["result"]["new_master"]
            assert proc.proc.wait(20) == 0
            notify.wait_for(lambda m: m == f"MAINPID={new_pid}")
            notify.wait_for(lambda m: m.startswith("READY=1"))
            assert not any(m.startswith("STOPPING=1") for m in notify.messages)
            notify.messages.clear()
            # The watchdog is the new master's now.
            notify.wait_for(lambda m: m == "WATCHDOG=1")
            os.kill(new_pid, signal.SIGTERM)
            notify.wait_for(lambda m: m.startswith("STOPPING=1"), 20)
    finally:
        notify.sock.close()
        os.unlink(notify.path)
        os.rmdir(os.path.dirname(notify.path))


def test_tcp_control_with_curve_keys(tmp_path) -> None:
    keys = tmp_path / "keys"
    made = procbus("keys", "generate", str(keys), "--client", "ops", "--role", "admin")
    assert made.returncode == 0, made.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    with running(
        "--bind",
        "127.0.0.1:0",
        "--ctl",
        endpoint,
        "--curve-keys",
        str(keys),
        workers=1,
        wait=False,
    ) as proc:

        def status() -> subprocess.CompletedProcess[str] | None:
            done = procbus(
                "ctl",
                "--ctl",
                endpoint,
                "--curve-keys",
                str(keys),
                "--json",
                "--timeout",
                "2",
                "status",
            )
            return done if done.returncode == 0 else None

        done = wait_until(status, 20)
        assert json.loads(done.stdout)["master"]["pid"] == proc.pid
        keyless = procbus("ctl", "--ctl", endpoint, "--timeout", "1", "ping")
        assert keyless.returncode == 2
        assert "CURVE" in keyless.stderr

        # The event stream over TCP, with the same keys: watch and top work remotely.
        env = child_environment({"PROCBUS_CURVE_KEYS": str(keys)})
        watcher = subprocess.Popen(
            [sys.executable, "-m", "procbus", "ctl", "--ctl", endpoint, "--json", "watch",
             "--count", "1", "--duration", "20"],
            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:

            def audited() -> bool:
                procbus("ctl", "--ctl", endpoint, "--curve-keys", str(keys), "ping")
                return watcher.poll() is not None

            wait_until(audited, 20)
            event = json.loads(watcher.communicate(timeout=10)[0])
            assert event["event"] == "command" and event["command"] == "ping", event
            assert "(ops)" in event["peer"]
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        top = procbus("top", "--ctl", endpoint, "--curve-keys", str(keys), "--count", "1")
        assert top.returncode == 0, top.stderr
        assert str(json.loads(done.stdout)["workers"][0]["pid"]) in top.stdout


def test_daemon_detaches_writes_pidfile_and_logs_to_the_log_file() -> None:
    directory = short_tempdir()
    pidfile, logfile = directory / "master.pid", directory / "procbus.log"
    daemon_pid = None
    try:
        done = procbus(
            "run", "-w", "1", "--bind", "127.0.0.1:0", "--runtime-dir", str(directory / "rt"),
            "--daemon", "--pidfile", str(pidfile), "--log-file", str(logfile),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(pidfile.exists, 10)
        daemon_pid = int(pidfile.read_text())
        wait_until(lambda: "ready: 1 workers" in logfile.read_text(), 15)
        status = procbus("ctl", "--runtime-dir", str(directory / "rt"), "--json", "status")
        assert json.loads(status.stdout)["master"]["pid"] == daemon_pid
        os.kill(daemon_pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), 20)
        wait_until(lambda: "Bus EXITED" in logfile.read_text(), 10)
        daemon_pid = None
    finally:
        if daemon_pid is not None:  # the daemon is in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(daemon_pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_workers_switch_user_and_group_the_master_does_not() -> None:
    # --preload: here the interpreter's own files are root's only, so the
    # workers could not import anything more once they are nobody.
    with running(
        "--bind", "127.0.0.1:0", "--user", "65534", "--group", "65534", "--preload", workers=1,
        directory_mode=0o711,
    ) as proc:  # fmt: skip
        worker = psutil.Process(proc.workers()[0]["pid"])
        assert worker.uids().real == worker.uids().effective == 65534
        assert worker.gids().real == 65534
        assert psutil.Process(proc.pid).uids().real == 0
        assert proc.get("/health") == (200, b"ok")


def test_old_master_killed_during_an_upgrade_leaves_the_new_one_in_charge(tmp_path) -> None:
    pidfile = tmp_path / "master.pid"
    env = {"PROCBUS_TEST_IMPORT_DELAY": "2"}
    with running(
        "tests.cli.apps:versioned", "--bind", "127.0.0.1:0", "--pidfile", str(pidfile),
        workers=1, env=env,
    ) as proc:  # fmt: skip
        port = proc.port()
        workers = {w["pid"] for w in proc.workers()}
        proc.call("upgrade", wait=False)

        def new_master() -> psutil.Process | None:
            # The old master's children: its workers, and the new master.
            children = psutil.Process(proc.pid).children()
            return next((c for c in children if c.pid not in workers), None)

        successor = wait_until(new_master, 10)
        os.kill(proc.pid, signal.SIGKILL)  # while the new one still boots its workers
        assert proc.proc.wait(10) == -signal.SIGKILL
        # The new master finishes booting, finds the name free and takes it over.
        wait_until(lambda: pidfile.exists() and int(pidfile.read_text()) == successor.pid, 30)
        status = proc.call("status")
        assert status["master"]["pid"] == successor.pid
        assert [w["state"] for w in status["workers"]] == ["running"]
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.close()
        assert proc.get("/")[0] == 200
        successor.terminate()
        successor.wait(20)


@each_interface
@pytest.mark.parametrize(
    ("signum", "completes"), [(signal.SIGTERM, True), (signal.SIGQUIT, False)]
)
def test_term_finishes_requests_in_flight_and_quit_does_not(
    signum: int, completes: bool, apps: Apps
) -> None:
    with running(apps.slow, "--bind", "127.0.0.1:0", workers=1) as proc:
        outcome: list[object] = []

        def slow_request() -> None:
            try:
                outcome.append(proc.get("/?seconds=1.5", timeout=10))
            except (OSError, http.client.HTTPException) as exc:
                outcome.append(exc)

        client = threading.Thread(target=slow_request)
        client.start()
        wait_until(lambda: proc.call("stats")["workers"][0]["counters"]["in_flight"] == 1, 10)
        os.kill(proc.pid, signum)
        assert proc.proc.wait(20) == 0
        client.join(15)
        if completes:
            assert outcome == [(200, b"slept 1.5")]
        else:
            assert outcome and not isinstance(outcome[0], tuple), outcome
