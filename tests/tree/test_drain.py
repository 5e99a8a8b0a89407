"""Draining workers answer every publish the master sent them before it drained them.

A worker the master drains (scale down, reload, recycling, stop) is sent a
DRAIN marker on the publish socket, in order with the publishes, before its
SIGTERM: it answers everything up to the marker, then stops. Only a worker that
dies or is cut short (SIGKILL, SIGQUIT) is reported lost.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.processes import MasterProcess, running_master

pytestmark = pytest.mark.slow


class PublishLoop:
    """A client thread that publishes `channel` over and over and keeps every reply."""

    def __init__(
        self,
        master: MasterProcess,
        channel: str,
        args: Callable[[int], list[Any]] = lambda n: [n],
        options: Callable[[int], dict[str, Any]] = lambda n: {},
    ) -> None:
        self.master = master
        self.channel = channel
        self.args = args
        """The arguments of the n-th publish."""
        self.options = options
        """The publish options of the n-th publish (``to``, ``require``)."""
        self.replies: list[dict[str, Any]] = []
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher")

    def _run(self) -> None:
        try:
            with self.master.client(timeout=30) as client:
                n = 0
                while not self._stop.is_set():
                    n += 1
                    self.replies.append(
                        client.call(
                            "publish", self.channel, *self.args(n), timeout=30, **self.options(n)
                        )
                    )
        except BaseException as exc:  # reported by the test thread
            self.failure = exc

    def wait_for(self, count: int) -> None:
        """Until `count` more replies came back (the loop is running)."""
        target = len(self.replies) + count
        wait_until(lambda: len(self.replies) >= target or self.failure, 15)

    @contextmanager
    def running(self) -> Iterator[PublishLoop]:
        self._thread.start()
        try:
            self.wait_for(1)
            yield self
        finally:
            self._stop.set()
            self._thread.join(60)
        assert self.failure is None, repr(self.failure)

    def bad_replies(self) -> list[str]:
        """Every reply in which a worker did not answer ok (a new worker may be starting)."""
        bad = []
        for reply in self.replies:
            statuses = {k: v["status"] for k, v in reply["workers"].items()}
            if not reply["ok"] or set(statuses.values()) - {"ok", "starting"}:
                bad.append(f"seq {reply['seq']}: {statuses}")
        return bad


def churn(steps: list[Callable[[], Any]], loop: PublishLoop) -> None:
    """Run each step (a control command that drains workers), with publishes between."""
    for step in steps:
        result = step()
        assert result["state"] == "done", result
        loop.wait_for(3)


def test_publishes_in_flight_while_scaling_are_answered_by_the_drained_workers() -> None:
    """Steps: 4 workers; a client publishes 'echo' in a loop while the test scales
    4 -> 1 -> 4 -> 1 -> 4 -> 1.
    Expected: no reply has a lost (or timed out) worker: every worker drained by a
    scale down answered the publishes it was a target of; the tree ends with 1 worker."""
    with running_master(workers=4, graceful_timeout=10) as master:
        with PublishLoop(master, "echo").running() as loop:
            steps = [lambda n=n: master.call("scale", n, timeout=30) for n in (1, 4, 1, 4, 1)]
            churn(steps, loop)
        assert loop.bad_replies() == []
        assert len(loop.replies) > 15
        assert [w["id"] for w in master.workers()] == [1]


def test_publishes_in_flight_during_a_reload_are_answered_by_the_replaced_workers() -> None:
    """Steps: 3 workers; a client publishes 'echo' in a loop while the tree is reloaded
    twice (each old worker drained once its replacement runs).
    Expected: no reply has a lost or timed out worker."""
    with running_master(workers=3, graceful_timeout=10) as master:
        before = {w["pid"] for w in master.workers()}
        with PublishLoop(master, "echo").running() as loop:
            churn([lambda: master.call("reload", timeout=60)] * 2, loop)
        assert loop.bad_replies() == []
        assert before.isdisjoint(w["pid"] for w in master.workers())


def test_targeted_publishes_in_flight_during_a_reload_are_answered_by_their_targets() -> None:
    """Steps: 3 workers; a client publishes 'echo' in a loop, to worker 1, 2, 3, then to
    every worker, in turn, while the tree is reloaded twice.
    Expected: no reply has a lost or timed out worker, or an error (a worker that
    skipped the publishes for others saw no gap); each targeted reply lists its
    target alone (answering, or starting)."""
    with running_master(workers=3, graceful_timeout=10) as master:
        to = {n: str(n % 4) for n in range(1, 10_000) if n % 4}
        loop = PublishLoop(master, "echo", options=lambda n: {"to": to[n]} if n in to else {})
        with loop.running():
            churn([lambda: master.call("reload", timeout=60)] * 2, loop)
        assert loop.bad_replies() == []
        errors = [r["seq"] for r in loop.replies for w in r["workers"].values() if w["errors"]]
        assert errors == []
        targeted = [(n, r) for n, r in enumerate(loop.replies, 1) if n in to]
        assert len(targeted) > 10
        assert all(list(r["workers"]) == [to[n]] for n, r in targeted)


def test_publishes_in_flight_while_workers_are_recycled_are_answered() -> None:
    """Steps: 2 workers recycled after 10 requests; a client publishes 'serve' (one
    request per worker) in a loop until every worker was recycled twice.
    Expected: no reply has a lost or timed out worker."""
    with running_master(workers=2, max_requests=10, graceful_timeout=10) as master:
        with PublishLoop(master, "serve", lambda n: [1]).running() as loop:
            wait_until(lambda: all(w["generation"] >= 3 for w in master.workers()), 60)
        assert loop.bad_replies() == []


def test_worker_terminated_by_an_operator_answers_what_it_was_sent() -> None:
    """Steps: 3 workers; a client publishes 'echo' in a loop; worker 2 is sent TERM
    (``ctl kill``, not a drain the master decided), then worker 3.
    Expected: no reply has a lost worker: a worker that stops on its own is sent the
    marker too once the master hears it stops; both are replaced."""
    with running_master(workers=3, graceful_timeout=10) as master:
        before = {w["id"]: w["pid"] for w in master.workers()}
        with PublishLoop(master, "echo").running() as loop:
            for worker_id in (2, 3):
                master.call("kill", worker_id, signal="TERM")
                wait_until(
                    lambda worker_id=worker_id: any(
                        w["id"] == worker_id
                        and w["pid"] != before[worker_id]
                        and w["state"] == "running"
                        for w in master.workers()
                    ),
                    20,
                )
                loop.wait_for(3)
        assert loop.bad_replies() == []


def test_draining_worker_answers_its_running_and_its_queued_publish(tmp_path: Path) -> None:
    """Steps: 2 workers; publish 'hold' (its listener sleeps 1.5 s in every worker);
    once it runs, publish 'echo' (queued behind it in every worker); once both are sent,
    scale to 1 (worker 2 drains while 'hold' runs and 'echo' waits).
    Expected: both publishes are answered ok by both workers, worker 2 included, with
    their results; worker 2 exited after answering them."""
    with running_master(workers=2, graceful_timeout=10) as master:
        marker = tmp_path / "running"
        answers: dict[str, dict[str, Any]] = {}

        def publish(name: str, *args: Any) -> None:
            answers[name] = master.call("publish", name, *args, timeout=20)

        sent_before = master.call("stats")["master"]["publishes"]
        hold = threading.Thread(target=publish, args=("hold", str(marker), 1.5))
        echo = threading.Thread(target=publish, args=("echo", "queued"))
        hold.start()
        try:
            wait_until(lambda: Path(f"{marker}.2").exists(), 10)
            echo.start()
            wait_until(lambda: master.call("stats")["master"]["publishes"] >= sent_before + 2, 10)
            job = master.call("scale", 1, timeout=30)
            assert job["state"] == "done"
        finally:
            hold.join(30)
            if echo.ident is not None:
                echo.join(30)
        for name, result in (("hold", "held"), ("echo", None)):
            workers = answers[name]["workers"]
            assert {k: v["status"] for k, v in workers.items()} == {"1": "ok", "2": "ok"}, name
            if result is not None:
                assert workers["2"]["results"] == [result]
        assert answers["echo"]["workers"]["2"]["results"][0]["args"] == ["queued"]
        assert [w["id"] for w in master.workers()] == [1]
