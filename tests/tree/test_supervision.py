"""Supervision with real processes: respawn, backoff, flapping, timeouts, scaling."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.processes import group_members, running_master

pytestmark = pytest.mark.slow


def test_killed_worker_is_replaced_with_same_id_and_new_generation() -> None:
    """Steps: kill -9 worker 2 while a publish waits on it (its listener sleeps).
    Expected: the publish reports worker 2 'lost'; worker 2 comes back with a new pid,
    generation + 1 and one restart; worker 1 is untouched."""
    with running_master(workers=2) as master:
        before = {w["id"]: w for w in master.workers()}
        answer: dict[str, Any] = {}

        def publish() -> None:
            answer.update(master.call("publish", "hang", 2, 30.0, timeout=20))

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            wait_until(lambda: master.call("stats")["master"]["in_flight"] == 1, 5)
            os.kill(before[2]["pid"], signal.SIGKILL)
        finally:
            thread.join(20)
        assert answer["workers"]["2"]["status"] == "lost"
        assert answer["workers"]["1"]["status"] == "ok"
        after = {w["id"]: w for w in master.wait_running(2)}
        assert after[2]["pid"] != before[2]["pid"]
        assert after[2]["generation"] == before[2]["generation"] + 1
        assert after[2]["restarts"] == 1
        assert after[1]["pid"] == before[1]["pid"]


def test_killed_master_takes_every_worker_with_it() -> None:
    """Steps: kill -9 the master of 4 workers (heartbeat 0.2 s).
    Expected: no process of the tree is left shortly after (parent-death signal)."""
    with running_master(workers=4, heartbeat=0.2) as master:
        pids = [w["pid"] for w in master.workers()]
        os.kill(master.pid, signal.SIGKILL)
        master.proc.wait(5)
        wait_until(lambda: not group_members(master.pgid), 2 * 0.2 + 3.0)
        for pid in pids:
            assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


def test_app_failing_at_import_flaps_instead_of_forking_in_a_loop() -> None:
    """Steps: 2 workers whose app module raises at import; flap_after 3.
    Expected: each slot is marked flapping after 3 early deaths, with the import error
    as last error, and no further fork happens afterwards."""
    with running_master(
        app="tests.tree.broken_app:main", workers=2, wait=False, flap_after=3
    ) as master:
        master.wait_answering()

        def flapping() -> list[dict[str, Any]] | None:
            workers = master.workers()
            return workers if all(w["state"] == "flapping" for w in workers) else None

        workers = wait_until(flapping, 20)
        for worker in workers:
            assert worker["restarts"] == 3
            assert "broken_app cannot be imported" in worker["last_error"]
        generations = [w["generation"] for w in workers]
        assert generations == [3, 3]
        # Let well over the maximum backoff pass: still no new fork.
        stop = threading.Event()
        stop.wait(1.5)
        assert [w["generation"] for w in master.workers()] == generations


@pytest.mark.parametrize(
    ("app", "error"),
    [
        ("tests.tree.apps:returns_at_once", "app returned"),
        ("tests.tree.apps:raises_at_once", "RuntimeError: the app gave up"),
    ],
)
def test_worker_whose_app_ends_exits_and_master_records_why(app: str, error: str) -> None:
    """Steps: a worker whose app returns (or raises) right away.
    Expected: the worker exits, the master records the reason as last error and keeps
    respawning it with backoff."""
    with running_master(app=app, workers=1, wait=False, flap_after=50) as master:
        master.wait_answering()

        def recorded() -> dict[str, Any] | None:
            (worker,) = master.workers()
            return worker if worker["restarts"] >= 2 and worker["last_error"] else None

        worker = wait_until(recorded, 15)
        assert error in worker["last_error"]


def test_hung_worker_is_aborted_with_a_stack_dump_and_replaced() -> None:
    """Steps: worker 1's listener hangs the whole process for 30 s (stuck in C code
    holding the GIL); heartbeat timeout 1.5 s.
    Expected: the master aborts it (SIGABRT: faulthandler dumps the stack into the log),
    then replaces it; last error names the missing heartbeat."""
    with running_master(workers=2, timeout=1.5, abort_grace=1.0) as master:
        before = {w["id"]: w for w in master.workers()}
        with master.client(timeout=1.0) as client:
            client.request("publish", ["freeze", 1, 30], timeout=1.0)

        def replaced() -> dict[int, dict[str, Any]] | None:
            workers = {w["id"]: w for w in master.workers()}
            new = workers[1]
            return (
                workers if new["pid"] != before[1]["pid"] and new["state"] == "running" else None
            )

        after = wait_until(replaced, 20)
        assert "no heartbeat" in after[1]["last_error"]
        assert after[2]["pid"] == before[2]["pid"]
        log = master.log()
        assert "Fatal Python error: Aborted" in log
        assert "in freeze" in log


def test_scale_keeps_ids_one_to_n() -> None:
    """Steps: 2 workers; scale to 4, then decr 3, then incr 1.
    Expected: ids 1..4, then 1, then 1..2; removed workers were drained and reaped."""
    with running_master(workers=2) as master:
        job = master.call("scale", 4, timeout=30)
        assert job["state"] == "done"
        assert [w["id"] for w in master.workers()] == [1, 2, 3, 4]
        removed = [w["pid"] for w in master.workers()[1:]]
        master.call("decr", 3, timeout=30)
        assert [w["id"] for w in master.workers()] == [1]
        for pid in removed:
            assert not _alive(pid)
        master.call("incr", timeout=30)
        workers = master.wait_running(2)
        assert [w["id"] for w in workers] == [1, 2]


def test_worker_is_recycled_after_max_requests() -> None:
    """Steps: max_requests 5; each worker counts 3 requests, then 2 more.
    Expected: after 3 nothing happens; after 5 each worker is replaced by a new
    generation whose request count starts at 0, and no restart is counted (recycling
    is not a crash)."""
    with running_master(workers=2, max_requests=5) as master:
        before = {w["id"]: w for w in master.workers()}
        master.call("publish", "serve", 3)
        wait_until(lambda: all(w["requests"] == 3 for w in master.workers()), 5)
        assert [w["generation"] for w in master.workers()] == [1, 1]
        master.call("publish", "serve", 2)

        def recycled() -> dict[int, dict[str, Any]] | None:
            workers = {w["id"]: w for w in master.workers()}
            ok = all(
                w["generation"] == before[i]["generation"] + 1 and w["state"] == "running"
                for i, w in workers.items()
            )
            return workers if ok else None

        after = wait_until(recycled, 15)
        assert [w["restarts"] for w in after.values()] == [0, 0]
        assert [w["requests"] for w in after.values()] == [0, 0]


def test_worker_is_recycled_after_max_age() -> None:
    """Steps: max_age 1.5 s. Expected: both workers get a new generation, one at a time,
    with no restart counted."""
    with running_master(workers=2, max_age=1.5) as master:
        before = {w["id"]: w["generation"] for w in master.workers()}

        def aged() -> bool:
            return all(
                w["generation"] > before[w["id"]] and w["state"] == "running"
                for w in master.workers()
            )

        wait_until(aged, 15)
        assert all(w["restarts"] == 0 for w in master.workers())


PUBLISH_DEADLINE = 4.25
"""A control request's timeout: the master keeps 0.25 s of it for the answer to come
back, so the publish's deadline is 4 s."""


def test_listener_longer_than_the_heartbeat_timeout_does_not_get_its_worker_killed() -> None:
    """Steps: 2 workers, heartbeat every 0.2 s, heartbeat timeout 2 s, publish timeout
    4 s; publish 'nap' whose listener sleeps 3 s in every worker.
    Expected: every worker answers ok with its listener's result; no worker was aborted
    or replaced (same pids, no restart, no error, no 'no heartbeat' in the log)."""
    with running_master(workers=2, timeout=2, heartbeat=0.2, publish_timeout=4) as master:
        before = {w["id"]: w["pid"] for w in master.workers()}
        result = master.call("publish", "nap", 3.0, timeout=PUBLISH_DEADLINE)
        for worker_id in ("1", "2"):
            answer = result["workers"][worker_id]
            assert answer["status"] == "ok", answer
            assert answer["results"] == [{"worker": int(worker_id), "slept": 3.0}]
        after = master.workers()
        assert {w["id"]: w["pid"] for w in after} == before
        assert [(w["restarts"], w["last_error"]) for w in after] == [(0, None), (0, None)]
        assert "no heartbeat" not in master.log()


def test_listener_past_its_deadline_times_out_and_its_worker_answers_the_next() -> None:
    """Steps: 2 workers, heartbeat timeout 2 s, publish timeout 4 s; publish 'nap' whose
    listener sleeps 5 s, then, without waiting, publish 'echo'.
    Expected: 'nap' is a timeout in both workers; 'echo' (queued behind the nap in each
    worker) is answered ok; the workers were neither aborted nor replaced."""
    with running_master(workers=2, timeout=2, heartbeat=0.2, publish_timeout=4) as master:
        before = {w["id"]: w["pid"] for w in master.workers()}
        slow = master.call("publish", "nap", 5.0, timeout=PUBLISH_DEADLINE)
        assert {k: v["status"] for k, v in slow["workers"].items()} == {
            "1": "timeout",
            "2": "timeout",
        }
        after = master.call("publish", "echo", "after", timeout=10)
        assert {k: v["status"] for k, v in after["workers"].items()} == {"1": "ok", "2": "ok"}
        assert after["workers"]["1"]["results"][0]["args"] == ["after"]
        workers = master.workers()
        assert {w["id"]: w["pid"] for w in workers} == before
        assert [w["restarts"] for w in workers] == [0, 0]
        assert "no heartbeat" not in master.log()


@pytest.mark.parametrize(("signame", "status"), [("TERM", "ok"), ("QUIT", "lost")])
def test_term_lets_the_running_listener_answer_and_quit_does_not(
    signame: str, status: str, tmp_path: Path
) -> None:
    """Steps: 1 worker; publish 'hold' whose listener sleeps 1.5 s; once it runs, the
    worker is sent TERM (or QUIT).
    Expected: after TERM the listener finishes and its publish is answered ok; after QUIT
    the worker leaves at once and the publish reports it lost. Either way the worker is
    replaced."""
    with running_master(workers=1) as master:
        (before,) = master.workers()
        marker = tmp_path / "running"
        answer: dict[str, Any] = {}

        def publish() -> None:
            answer.update(master.call("publish", "hold", str(marker), 1.5, timeout=20))

        thread = threading.Thread(target=publish)
        thread.start()
        try:
            wait_until(lambda: Path(f"{marker}.1").exists(), 10)
            master.call("kill", 1, signal=signame)
        finally:
            thread.join(20)
        assert answer["workers"]["1"]["status"] == status, answer
        if status == "ok":
            assert answer["workers"]["1"]["results"] == ["held"]
        (after,) = master.wait_running(1)
        assert after["pid"] != before["pid"]
