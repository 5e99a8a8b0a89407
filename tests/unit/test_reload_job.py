"""The reload job (`reload_tree`): it starts the planner's rollout and reports it.

A fake `Tree` holds a real `Pool` whose forks and exits are simulated: each new
worker boots and runs, fails to boot, or hangs, as the test says, and a worker
told to stop exits. Its `wait_until` plays that world forward, a second of a
fake clock at a time, instead of pumping an event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from procbus.master.jobs.queue import Job, JobFailed
from procbus.master.jobs.workers import reload_tree
from procbus.master.loop import EventLoop
from procbus.master.planner import Supervision, WorkerProc, WorkerState
from procbus.master.pool import Pool
from procbus.master.settings import TreeSettings
from procbus.protocol import WorkerBusState

BOOT_FAILED = 12


class FakeTree:
    """The tree as the reload job sees it, over a simulated world."""

    def __init__(self, workers: int = 2) -> None:
        self.now = 0.0
        self.loop = EventLoop(lambda: self.now)
        self.settings = TreeSettings(workers=workers, supervision=Supervision(boot_timeout=10.0))
        self.behaviour: dict[tuple[int, int], str] = {}
        """(worker id, generation) -> "fails" or "hangs" at boot ("runs" otherwise)."""
        self.fork_fails_from = 0
        """From this generation on, forks fail (0: never)."""
        self.exits: list[tuple[int, int]] = []
        self.progress: list[str] = []
        self.reloaded = 0
        self.pool = Pool(
            self.loop,
            policy=self.settings.supervision,
            spawn=self._spawn,
            emit=lambda event, **data: None,
            target=workers,
            kill=lambda pid, signum: None,
            waitpid=lambda pid, flags: self.exits.pop(0) if self.exits else (0, 0),
            boot_failed_status=BOOT_FAILED,
        )
        self.pool.activate()
        self._play()

    def reload_config(self) -> None:
        self.reloaded += 1

    def _spawn(self, worker_id: int, generation: int) -> int:
        if self.fork_fails_from and generation >= self.fork_fails_from:
            raise OSError("Resource temporarily unavailable")
        return 1000 * worker_id + generation

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = self.now + timeout
        while not predicate() and self.now < deadline:
            if not self._play():
                self.now += 1.0
                self.pool.replan()  # what the pool's timer does
        return predicate()

    def _play(self) -> bool:
        """Let every worker do its next thing; False if none had anything to do."""
        moved = False
        for worker in list(self.pool.by_pid.values()):
            if worker.state is WorkerState.STOPPING:
                self._exit(worker, 0)
            elif worker.state is WorkerState.BOOTING:
                behaviour = self.behaviour.get((worker.id, worker.generation), "runs")
                if behaviour == "hangs":
                    continue
                self.pool.hello(worker)
                if behaviour == "fails":
                    error = "boot: ImportError: no module named app"
                    self.pool.worker_state(worker, WorkerBusState.FAILED, error)
                    self._exit(worker, BOOT_FAILED)
                else:
                    self.pool.subscribed(worker.topic)
                    self.pool.worker_state(worker, WorkerBusState.RUNNING, None)
            else:
                continue
            moved = True
        return moved

    def _exit(self, worker: WorkerProc, code: int) -> None:
        self.exits.append((worker.pid, code << 8))
        self.pool.reap()

    def current(self) -> list[WorkerProc | None]:
        return [slot.current for slot in self.pool.slots()]

    def job(self) -> Job:
        return Job("reload-1", "reload", {}, emit=self._emit)

    def _emit(self, event: str, **data: Any) -> None:
        if event == "job_progress":
            self.progress.append(data["message"])


@pytest.fixture
def tree() -> Iterator[FakeTree]:
    fake = FakeTree()
    try:
        yield fake
    finally:
        fake.loop.close()


def test_reload_reports_each_new_worker_and_lists_them_in_its_result(tree: FakeTree) -> None:
    """Steps: 2 running workers; reload, batch 1.
    Expected: the configuration is re-read first; the result lists both new workers
    (generation 2) in order with the worker count; one progress line each; the old
    workers are gone and the rollout is out of the pool's view."""
    olds = tree.current()
    result = reload_tree(tree, tree.job(), 1)
    assert tree.reloaded == 1
    news = tree.current()
    assert result == {
        "replaced": [
            {"worker": w.id, "pid": w.pid, "generation": 2} for w in news if w is not None
        ],
        "workers": 2,
        "batch": 1,
    }
    assert tree.progress == [
        "worker 1 replaced (generation 2, pid 1002)",
        "worker 2 replaced (generation 2, pid 2002)",
    ]
    assert all(w is not None and not w.alive for w in olds)
    assert tree.pool.view.rollout is None


def test_reload_whose_replacement_fails_to_boot_stops_with_its_error(tree: FakeTree) -> None:
    """Steps: 2 running workers; reload, batch 1; the new worker of slot 2 fails to boot.
    Expected: JobFailed "reload stopped: the replacement of worker 2 failed to boot: "
    and its error, with the failed worker and the error as the result; worker 1 was
    replaced (and reported), worker 2's old worker still serves."""
    tree.behaviour[(2, 2)] = "fails"
    old2 = tree.current()[1]
    with pytest.raises(JobFailed) as failed:
        reload_tree(tree, tree.job(), 1)
    error = "boot: ImportError: no module named app"
    assert str(failed.value) == (
        f"reload stopped: the replacement of worker 2 failed to boot: {error}"
    )
    assert failed.value.result == {"failed_worker": 2, "error": error}
    assert tree.progress == ["worker 1 replaced (generation 2, pid 1002)"]
    assert tree.current()[1] is old2 and old2 is not None and old2.alive
    assert tree.pool.view.rollout is None


def test_reload_whose_replacement_hangs_stops_at_the_boot_timeout(tree: FakeTree) -> None:
    """Steps: reload, batch 2; the new worker of slot 1 never runs (boot timeout 10 s),
    slot 2's runs.
    Expected: JobFailed "reload stopped: the replacement of worker 1 was not ready
    within 10s"; slot 1's old worker still serves, slot 2 keeps its new one (it ran
    and was promoted); the batch was not done, so nothing was reported replaced."""
    tree.behaviour[(1, 2)] = "hangs"
    olds = tree.current()
    with pytest.raises(JobFailed) as failed:
        reload_tree(tree, tree.job(), 2)
    assert (
        str(failed.value) == "reload stopped: the replacement of worker 1 was not ready within 10s"
    )
    assert failed.value.result == {"failed_worker": 1, "error": None}
    first, second = tree.current()
    assert first is olds[0]
    assert second is not None and second.generation == 2 and second.state is WorkerState.RUNNING
    assert tree.progress == []


def test_reload_whose_replacement_cannot_be_forked_stops_at_the_boot_timeout(
    tree: FakeTree,
) -> None:
    """Steps: reload, batch 1; every fork fails from now on.
    Expected: JobFailed "reload stopped: the replacement of worker 1 could not be
    started"; the old workers still serve."""
    tree.fork_fails_from = 2
    olds = tree.current()
    with pytest.raises(JobFailed) as failed:
        reload_tree(tree, tree.job(), 1)
    assert str(failed.value) == "reload stopped: the replacement of worker 1 could not be started"
    assert tree.current() == olds


def test_reload_with_a_negative_batch_is_refused(tree: FakeTree) -> None:
    """A batch below 0 fails the job at once, naming the value; nothing is re-read."""
    with pytest.raises(JobFailed, match=r"batch must be >= 0 \(0: the surge\), got -1$"):
        reload_tree(tree, tree.job(), -1)
    assert tree.reloaded == 0
