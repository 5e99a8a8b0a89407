"""Tree publish against real masters and workers: results, errors, timeouts, losses."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.processes import running_master

pytestmark = pytest.mark.slow


def test_publish_returns_every_workers_results() -> None:
    """Steps: 4 workers; publish 'echo' with args and kwargs.
    Expected: one ok entry per worker id 1..4, each with its own result."""
    with running_master(workers=4) as master:
        result = master.call("publish", "echo", 1, "two", kw={"k": [3]})
        assert result["ok"] is True
        assert result["channel"] == "echo"
        assert sorted(result["workers"]) == ["1", "2", "3", "4"]
        for worker_id, answer in result["workers"].items():
            assert answer["status"] == "ok"
            assert answer["errors"] == []
            assert answer["results"] == [
                {"worker": int(worker_id), "args": [1, "two"], "kwargs": {"k": [3]}}
            ]


def test_raising_listener_is_reported_with_worker_and_traceback() -> None:
    """Steps: publish 'boom', whose listener raises in every worker.
    Expected: status error per worker, with type, message naming the worker, the
    listener's name and a remote traceback; the tree keeps working."""
    with running_master(workers=2) as master:
        result = master.call("publish", "boom")
        assert result["ok"] is False
        for worker_id, answer in result["workers"].items():
            assert answer["status"] == "error"
            (error,) = answer["errors"]
            assert error["type"] == "ValueError"
            assert error["message"] == f"boom in worker {worker_id}"
            assert error["listener"].endswith("echo.<locals>.boom")
            assert "Traceback (most recent call last)" in error["traceback"]
            assert 'raise ValueError(f"boom in worker {ctx.worker_id}")' in error["traceback"]
        assert master.call("publish", "echo")["ok"] is True


def test_hanging_listener_times_out_while_others_answer() -> None:
    """Steps: 3 workers; publish 'hang' where only worker 2's listener sleeps 3 s, with a
    1 s timeout. Expected: worker 2 is 'timeout', workers 1 and 3 'ok', and the answer
    comes back within the timeout (not after the sleep)."""
    with running_master(workers=3) as master:
        with master.client(timeout=1.0) as client:
            reply = client.request("publish", ["hang", 2, 3.0], timeout=1.0)
        result = reply["result"]
        statuses = {k: v["status"] for k, v in result["workers"].items()}
        assert statuses == {"1": "ok", "2": "timeout", "3": "ok"}
        # The late reply arrives and is dropped; the next publish is matched correctly.
        wait_until(lambda: master.call("stats")["master"]["late_replies"] >= 1, 10)
        assert master.call("publish", "echo", "after")["ok"] is True


def test_listener_that_exits_the_process_is_lost_and_replaced() -> None:
    """Steps: publish 'die' whose listener calls os._exit in worker 1 only.
    Expected: worker 1 'lost', worker 2 'ok'; worker 1 comes back with a new pid and
    generation."""
    with running_master(workers=2) as master:
        before = {w["id"]: w for w in master.workers()}
        result = master.call("publish", "die", 1)
        assert result["workers"]["1"]["status"] == "lost"
        assert result["workers"]["2"] == {**result["workers"]["2"], "status": "ok"}
        after = {w["id"]: w for w in master.wait_running(2)}
        assert after[1]["pid"] != before[1]["pid"]
        assert after[1]["generation"] == before[1]["generation"] + 1
        assert after[1]["restarts"] == 1
        assert after[2]["pid"] == before[2]["pid"]


def test_unserializable_result_is_an_error_of_that_listener() -> None:
    """Steps: publish 'unserializable' whose listener returns object().
    Expected: status error, a TypeError naming the listener; the worker survives."""
    with running_master(workers=1) as master:
        pid = master.workers()[0]["pid"]
        result = master.call("publish", "unserializable")
        answer = result["workers"]["1"]
        assert answer["status"] == "error"
        assert answer["results"] == [None]
        (error,) = answer["errors"]
        assert error["type"] == "TypeError"
        assert error["message"].startswith("result of listener ")
        assert "unserializable is not serializable" in error["message"]
        assert master.workers()[0]["pid"] == pid


def test_back_to_back_publishes_are_matched_by_sequence() -> None:
    """Steps: 4 clients publish 'echo' 25 times each, concurrently, with distinct args.
    Expected: every reply carries its own args from every worker: no mix-up."""
    failures: list[str] = []

    with running_master(workers=3) as master:

        def publisher(client_id: int) -> None:
            with master.client() as client:
                for n in range(25):
                    result = client.call("publish", "echo", client_id, n)
                    for worker_id, answer in result["workers"].items():
                        got = answer["results"][0]["args"] if answer["results"] else None
                        if answer["status"] != "ok" or got != [client_id, n]:
                            failures.append(f"{client_id}/{n} worker {worker_id}: {answer}")

        threads = [threading.Thread(target=publisher, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert master.call("stats")["master"]["publishes"] == 100


def test_graceful_reaches_every_worker() -> None:
    """Steps: graceful through the control socket.
    Expected: a publish-shaped answer with every worker ok (no listeners: empty results)."""
    with running_master(workers=2) as master:
        result: dict[str, Any] = master.call("graceful")
        assert result["channel"] == "graceful"
        assert {k: v["status"] for k, v in result["workers"].items()} == {"1": "ok", "2": "ok"}


def test_new_worker_is_starting_not_lost_until_subscribed() -> None:
    """Steps: scale 2 -> 4 without waiting, publish at once, then after the new
    workers run. Expected: new workers are 'starting' or 'ok' (never lost or timeout)
    on the first publish, and 'ok' once running."""
    with running_master(workers=2) as master:
        master.call("scale", 4, wait=False)
        first = master.call("publish", "whoami")
        assert {v["status"] for v in first["workers"].values()} <= {"ok", "starting"}
        assert first["workers"]["1"]["status"] == "ok"
        master.wait_running(4)
        second = master.call("publish", "whoami")
        assert {k: v["status"] for k, v in second["workers"].items()} == dict.fromkeys(
            ["1", "2", "3", "4"], "ok"
        )


def test_worker_pid_in_results_matches_status() -> None:
    """Steps: publish 'whoami'. Expected: each worker reports the pid and generation the
    master's status shows for its id."""
    with running_master(workers=2) as master:
        status = {w["id"]: w for w in master.workers()}
        result = master.call("publish", "whoami")
        for worker_id, answer in result["workers"].items():
            me = answer["results"][0]
            assert me["pid"] == status[int(worker_id)]["pid"] == answer["pid"]
            assert me["generation"] == status[int(worker_id)]["generation"]
            assert me["pid"] not in (os.getpid(), master.pid)


def test_reply_beyond_the_masters_limits_is_an_error_not_a_timeout() -> None:
    """Steps: 2 workers; publish 'huge' whose listener returns 300000 empty maps (more
    elements than the master decodes from a worker), with a 20 s timeout.
    Expected: each worker's status is 'error' (not 'timeout': the worker saw that its
    reply is too much and said so), with a None result and one error naming the limit;
    the master answers status afterwards with both workers running."""
    with running_master(workers=2) as master:
        result = master.call("publish", "huge", 300000, timeout=20)
        for answer in result["workers"].values():
            assert answer["status"] == "error", answer["status"]
            assert answer["results"] == [None]
            (error,) = answer["errors"]
            assert error["message"] == (
                "reply holds more than the master accepts from a worker: "
                "message holds more than 262144 elements"
            )
        assert [w["state"] for w in master.workers()] == ["running", "running"]
