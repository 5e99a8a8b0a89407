"""The listener runner: publishes run on one thread, in order, with a bounded backlog."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from procbus.bus import Bus
from procbus.protocol import Message, MsgType
from procbus.worker.runner import Finished, ListenerRunner, publish_deadline
from tests.helpers import wait_until


def publish(seq: int, channel: str = "ch", *args: Any) -> Message:
    return Message(
        MsgType.PUBLISH,
        {"seq": seq, "channel": channel, "args": list(args), "kwargs": {}, "timeout": 1.0},
    )


class Harness:
    """A runner on a fresh bus, whose wake-ups are counted, and what it finished."""

    def __init__(self, max_backlog: int = 100) -> None:
        self.bus = Bus()
        self.wakes = 0
        self.runner = ListenerRunner(self.bus, self._wake, max_backlog)
        self.done: list[Finished] = []
        self.gate = threading.Event()
        """Set to let the 'gated' listener return."""

        @self.bus.subscribe("gated")
        def gated() -> str:
            assert self.gate.wait(5), "the gate was never opened"
            return "passed"

    def _wake(self) -> None:
        self.wakes += 1

    def collect(self, count: int) -> list[Finished]:
        def enough() -> bool:
            self.done.extend(self.runner.finished())
            return len(self.done) >= count

        wait_until(enough, 5)
        return self.done


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(max_backlog=3)
    h.runner.start()
    try:
        yield h
    finally:
        h.gate.set()
        h.runner.stop()
        assert h.runner.join(5)


def test_publishes_run_one_at_a_time_in_order_off_the_calling_thread(harness: Harness) -> None:
    """Steps: two listeners on 'ch' (priorities 60 and 40) record their thread and
    argument; publishes 1, 2, 3 are submitted.
    Expected: finished in order 1, 2, 3, each with the priority-40 listener first; they
    ran on the runner thread, never two at once; the loop was woken for them."""
    calls: list[tuple[str, int]] = []
    threads: set[str] = set()
    running = threading.Semaphore(1)

    def listener(name: str) -> Any:
        def run(n: int) -> str:
            assert running.acquire(blocking=False), "two publishes ran at once"
            try:
                threads.add(threading.current_thread().name)
                calls.append((name, n))
                return f"{name}{n}"
            finally:
                running.release()

        return run

    harness.bus.subscribe("ch", listener("late"), priority=60)
    harness.bus.subscribe("ch", listener("early"), priority=40)
    assert harness.runner.submit([publish(1, "ch", 10)]) == []
    assert harness.runner.submit([publish(2, "ch", 20), publish(3, "ch", 30)]) == []
    done = harness.collect(3)
    assert [d.seq for d in done] == [1, 2, 3]
    assert [[o.result for o in d.outcomes] for d in done] == [
        ["early10", "late10"],
        ["early20", "late20"],
        ["early30", "late30"],
    ]
    assert threads == {"listeners"}
    assert 1 <= harness.wakes <= 3  # outcomes that finish together share a wake-up
    assert harness.runner.backlog == 0


def test_a_full_backlog_refuses_a_publish_until_outcomes_are_collected(
    harness: Harness,
) -> None:
    """Steps: a backlog of 3; publish 1 blocks in its listener; 2, 3 and 4 are submitted
    together, then 5; then the listener is let go and the outcomes collected; 6 is
    submitted.
    Expected: 4 and 5 are refused (nothing queued for them); 1-3 finish; 6 is accepted
    and runs."""
    assert harness.runner.submit([publish(1, "gated")]) == []
    refused = harness.runner.submit([publish(seq, "gated") for seq in (2, 3, 4)])
    assert [m["seq"] for m in refused] == [4]
    assert [m["seq"] for m in harness.runner.submit([publish(5, "gated")])] == [5]
    assert harness.runner.backlog == 3
    harness.gate.set()
    assert [d.seq for d in harness.collect(3)] == [1, 2, 3]
    assert harness.runner.submit([publish(6, "gated")]) == []
    assert [d.seq for d in harness.collect(4)] == [1, 2, 3, 6]


def test_an_outcome_after_the_last_collection_wakes_the_loop_again(harness: Harness) -> None:
    """Steps: publish 1 runs and is collected; then publish 2 runs.
    Expected: each of them woke the loop (wake-ups are shared only by outcomes waiting
    together for one collection)."""
    assert harness.runner.submit([publish(1)]) == []
    wait_until(lambda: harness.wakes == 1, 5)
    assert [d.seq for d in harness.collect(1)] == [1]
    assert harness.runner.submit([publish(2)]) == []
    wait_until(lambda: harness.wakes == 2, 5)
    assert [d.seq for d in harness.collect(2)] == [1, 2]


def test_stop_finishes_the_running_publish_and_drops_the_waiting_ones() -> None:
    """Steps: publish 1 blocks in its listener, 2 waits (submitted with it), 3 waits
    (submitted later); stop; the listener is let go.
    Expected: the runner thread ends; 1 finished with its result, 2 and 3 never ran."""
    harness = Harness()
    harness.runner.start()
    ran: list[int] = []
    harness.bus.subscribe("gated", lambda: ran.append(1), priority=10)
    assert harness.runner.submit([publish(1, "gated"), publish(2, "gated")]) == []
    assert harness.runner.submit([publish(3, "gated")]) == []
    wait_until(lambda: ran, 5)
    harness.runner.stop()
    harness.gate.set()
    assert harness.runner.join(5)
    (done,) = harness.runner.finished()
    assert done.seq == 1
    assert [o.result for o in done.outcomes] == [None, "passed"]
    assert ran == [1]


def test_system_exit_in_a_listener_is_handed_back_and_ends_the_runner() -> None:
    """Steps: a listener raises SystemExit(3); publish 1 runs it, then 2 is submitted.
    Expected: publish 1 comes back with the SystemExit as `raised`; the runner thread
    ended, so publish 2 never comes back."""
    harness = Harness()

    @harness.bus.subscribe("quit")
    def leave() -> None:
        raise SystemExit(3)

    harness.runner.start()
    assert harness.runner.submit([publish(1, "quit")]) == []
    (done,) = harness.collect(1)
    assert isinstance(done.raised, SystemExit) and done.raised.code == 3
    assert harness.runner.join(5)
    assert harness.runner.submit([publish(2, "quit")]) == []
    assert harness.runner.finished() == []


def test_backlog_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_backlog must be at least 1, got 0"):
        ListenerRunner(Bus(), lambda: None, 0)


def test_listeners_see_their_publish_deadline_and_none_outside(harness: Harness) -> None:
    """Steps: a listener that records publish_deadline(); submit a publish with a 1 s
    timeout, noting the clock around the submit. Expected: the listener saw a deadline
    1 s after the submit (within the time the submit took); outside the runner's
    publishes there is none."""
    seen: list[float | None] = []
    harness.bus.subscribe("deadline", lambda: seen.append(publish_deadline()))
    before = time.monotonic()
    harness.runner.submit([publish(1, "deadline")])
    after = time.monotonic()
    harness.collect(1)
    (deadline,) = seen
    assert deadline is not None and before + 1.0 <= deadline <= after + 1.0
    assert publish_deadline() is None
