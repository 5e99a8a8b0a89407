"""`procbus run` with ASGI apps: the interface choice, the lifespan, async listeners.

The hosting promises that hold for both interfaces (reload, restart, upgrade,
TERM and QUIT, keep-alive drains, counters) are the tests of ``test_run.py``,
run once per interface.
"""

from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.cli.hosting import Apps, Load, RunProcess, each_interface, running, write
from tests.helpers import wait_until
from tests.processes import ROOT, procbus, short_tempdir, supervised

pytestmark = pytest.mark.slow

LIFECYCLE = "tests.cli.asgi_lifecycle:app"


# -- which interface --------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "interface", "expected"),
    [
        ("examples.asgi_app:app", "auto", "ASGI (detected), served by uvicorn"),
        ("tests.cli.apps:slow_asgi", "asgi", "ASGI (as configured), served by uvicorn"),
        ("tests.cli.apps:slow", "auto", "WSGI (detected), served by waitress"),
    ],
)
def test_check_says_which_interface_serves_the_app(
    app: str, interface: str, expected: str
) -> None:
    done = procbus("run", "--check", app, "--interface", interface)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"app {app}: {expected}"
    assert f'interface           = "{interface}"' in done.stdout


@pytest.mark.parametrize(
    ("app", "interface", "expected"),
    [
        ("examples.asgi_app:app", "wsgi", "is an ASGI app"),
        ("tests.cli.apps:slow", "asgi", "cannot be called as app(scope, receive, send)"),
    ],
)
def test_wrong_interface_is_refused_with_one_line_and_exit_1(
    app: str, interface: str, expected: str
) -> None:
    """Steps: --check, then --preload (the master imports), then a plain start (the
    workers import) with an --interface that contradicts the app.
    Expected: each exits 1 with the reason naming the app on the last line of stderr
    (the only line for the first two); a plain start forks no second generation."""
    for mode in ("--check", "--preload"):
        done = procbus("run", mode, app, "--interface", interface, "-w", "1", "-b", "127.0.0.1:0")
        assert done.returncode == 1, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert expected in done.stderr and app in done.stderr
    with running(app, "--interface", interface, "-b", "127.0.0.1:0", wait=False) as proc:
        assert proc.proc.wait(20) == 1
        last = proc.log().strip().splitlines()[-1]
        assert last.startswith("procbus run: worker") and expected in last, last


# -- the lifespan -----------------------------------------------------------------


def test_worker_runs_only_once_the_lifespan_startup_completed(tmp_path) -> None:
    """Steps: an app whose lifespan startup waits for a gate file; start 1 worker.
    Expected: while the gate is shut the worker stays 'starting' (checked twice,
    0.3 s apart); once the gate file exists it runs and serves."""
    gate = tmp_path / "gate"
    env = {"PROCBUS_TEST_GATE": str(gate)}
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=1, wait=False, env=env) as proc:
        proc.wait_answering()
        wait_until(lambda: [w["state"] for w in proc.workers()] == ["starting"], 10)
        time.sleep(0.3)  # the gate stays shut: nothing may change meanwhile
        assert [w["state"] for w in proc.workers()] == ["starting"]
        write(gate, "")
        proc.wait_running(1)
        status, body = proc.get("/")
        assert status == 200 and body.startswith(b"up ")


def test_term_during_the_lifespan_startup_cancels_it_and_stops_at_once(tmp_path) -> None:
    """Steps: an app whose lifespan startup waits for a gate that never opens; TERM the
    master while the worker is starting. Expected: the master exits 0 without killing
    the worker at the graceful timeout (5 s); the worker says it cancelled the startup."""
    env = {"PROCBUS_TEST_GATE": str(tmp_path / "never")}
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=1, wait=False, env=env) as proc:
        wait_until(lambda: list(tmp_path.glob("never.*.waiting")), 10)
        assert [w["state"] for w in proc.workers()] == ["starting"]
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0
        assert "startup cancelled" in proc.log()
        assert "killing" not in proc.log()  # the master did not have to kill it


@pytest.mark.parametrize(
    ("startup", "expected"),
    [
        ("fail", "ASGI lifespan startup failed: the database is down"),
        ("raise", "ASGI lifespan startup raised ConnectionRefusedError: no database at db:5432"),
    ],
)
def test_lifespan_startup_failure_stops_the_master_at_start(startup: str, expected: str) -> None:
    """Steps: an app whose lifespan startup fails (sends .failed, or raises); 2 workers.
    Expected: procbus run exits 1, its last line names the worker and the failure; no
    worker was forked more than twice (no respawn loop)."""
    env = {"PROCBUS_TEST_STARTUP": startup}
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=2, wait=False, env=env) as proc:
        assert proc.proc.wait(20) == 1
        log = proc.log()
        last = log.strip().splitlines()[-1]
        assert "could not boot" in last and expected in last, last
        assert log.count("] INFO procbus.master: worker") <= 2


def test_reload_to_a_lifespan_that_fails_rolls_back_and_keeps_serving(tmp_path) -> None:
    """Steps: 2 workers whose lifespan startup succeeds; make it fail; reload under load.
    Expected: the reload fails naming the lifespan failure; the same workers serve on;
    no request failed."""
    startup = write(tmp_path / "startup", "complete")
    env = {"PROCBUS_TEST_STARTUP_FILE": str(startup)}
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=2, env=env) as proc:
        before = {w["pid"] for w in proc.workers()}
        write(startup, "fail")
        with Load(proc.port(), clients=2, path="/") as load:
            load.wait_for(20)
            reply = proc.request("reload", timeout=60)
            load.wait_for(20)
        assert not reply["ok"], reply
        assert "the database is down" in reply["error"]["message"]
        assert {w["pid"] for w in proc.wait_running(2)} == before
        assert load.failures == []


def test_lifespan_shutdown_runs_after_the_requests_in_flight_on_term(tmp_path) -> None:
    """Steps: 2 workers of an app recording its lifespan shutdown; TERM the master.
    Expected: exit 0; each worker's pid is recorded once."""
    record = tmp_path / "shutdowns"
    env = {"PROCBUS_TEST_SHUTDOWN_FILE": str(record)}
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=2, env=env) as proc:
        pids = {w["pid"] for w in proc.workers()}
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0
    assert sorted(record.read_text().splitlines()) == sorted(f"{pid} shutdown" for pid in pids)


def test_lifespan_shutdown_that_hangs_is_given_up_at_the_graceful_timeout() -> None:
    """Steps: an app whose lifespan shutdown never completes, --graceful-timeout 1; TERM.
    Expected: the master exits 0 within a few seconds; the worker logged the give-up."""
    env = {"PROCBUS_TEST_SHUTDOWN": "hang"}
    with running(
        LIFECYCLE, "-b", "127.0.0.1:0", "--graceful-timeout", "1", workers=1, env=env
    ) as proc:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(10) == 0
        assert "lifespan shutdown not complete" in proc.log()


# -- async listeners --------------------------------------------------------------


def test_async_listener_runs_on_the_apps_loop_and_answers_from_every_worker() -> None:
    """Steps: 2 workers; publish loop.check (async), listener.sync, cache.clear (the
    example's async listener, in another run). Expected: every worker answers ok; the
    async listener ran on the loop of the app's lifespan, on the app thread, while the
    sync one ran on the listener thread."""
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=2) as proc:
        reply = proc.call("publish", "loop.check")
        answers = {wid: w["results"][0] for wid, w in reply["workers"].items()}
        assert sorted(answers) == ["1", "2"]
        assert all(a["same_loop"] and a["thread"] == "app" for a in answers.values()), answers
        sync = proc.call("publish", "listener.sync")
        assert {w["results"][0] for w in sync["workers"].values()} == {"listeners"}


def test_async_listener_error_is_that_listeners_error_in_the_tree_publish() -> None:
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=2) as proc:
        reply = proc.request("publish", "listener.fail")
        workers = reply["result"]["workers"]
        assert {w["status"] for w in workers.values()} == {"error"}
        for worker in workers.values():
            (error,) = worker["errors"]
            assert error["type"] == "LookupError"
            assert error["message"] == "the async listener failed"
            assert error["listener"].endswith("listener_fail")


def test_async_listener_past_the_publish_deadline_is_cancelled_and_the_next_one_runs() -> None:
    """Steps: 1 worker; publish listener.sleep 30 with a 1 s timeout, then at once
    listener.sleep 0 with a 10 s timeout. Expected: the first is a timeout; the second
    is answered ok (it could not be before the first's 30 s, had the first not been
    cancelled at its deadline)."""
    with running(LIFECYCLE, "-b", "127.0.0.1:0", workers=1) as proc:
        first = proc.request("publish", "listener.sleep", 30, timeout=1.0)
        assert first["result"]["workers"]["1"]["status"] == "timeout", first
        second = proc.call("publish", "listener.sleep", 0, timeout=10.0)
        assert second["workers"]["1"]["status"] == "ok", second
        assert second["workers"]["1"]["results"] == ["slept 0"]


def test_async_listener_in_a_worker_without_an_event_loop_is_an_error_saying_so() -> None:
    """Steps: a generic worker (no event loop) whose module subscribes async listeners;
    publish to one. Expected: that worker's answer is an error naming the cause (not
    an unsendable coroutine); a sync listener of the same module answers ok."""
    with running("--worker", "tests.cli.asgi_lifecycle:generic", workers=1) as proc:
        reply = proc.request("publish", "listener.sleep", 0)
        (error,) = reply["result"]["workers"]["1"]["errors"]
        assert error["type"] == "TypeError"
        assert "process without an event loop" in error["message"]
        assert proc.call("publish", "listener.sync")["workers"]["1"]["status"] == "ok"


def test_example_app_cache_clear_answers_from_every_worker() -> None:
    with running("examples.asgi_app:app", "-b", "127.0.0.1:0", workers=2) as proc:
        with Load(proc.port(), clients=2, path="/items/7") as load:
            load.wait_for(20)
        reply = proc.call("publish", "cache.clear")
        results = [w["results"][0] for w in reply["workers"].values()]
        assert sorted(r["worker"] for r in results) == [1, 2]
        assert sum(r["dropped"] for r in results) >= 1
        assert all(r["pid"] for r in results)


# -- recycling ----------------------------------------------------------------------


@each_interface
def test_max_requests_recycles_every_worker_under_load_without_a_failed_request(
    apps: Apps,
) -> None:
    """Steps: 2 workers, --max-requests 40; 4 clients until both first workers left.
    Expected: both replaced, no failed request."""
    with running(*apps.demo, "-b", "127.0.0.1:0", "--max-requests", "40", workers=2) as proc:
        first = {w["pid"] for w in proc.workers()}
        with Load(proc.port(), clients=4) as load:
            wait_until(lambda: not first & {w["pid"] for w in proc.workers()}, 30)
            proc.wait_running(2)
        assert load.failures == []
        assert load.ok >= 80


def test_cd_examples_and_run_asgi_app_by_its_short_name() -> None:
    """`cd examples && procbus run asgi_app:app` (the README's line): served."""
    directory = short_tempdir()
    argv = [sys.executable, "-m", "procbus", "run", "asgi_app:app", "-w", "1", "-b", "127.0.0.1:0"]
    argv += ["--runtime-dir", str(directory / "rt")]
    proc = RunProcess(argv, directory / "rt", directory / "run.log", cwd=ROOT / "examples")
    with supervised(proc, directory, 1) as started:
        assert started.get("/health") == (200, b"ok")
