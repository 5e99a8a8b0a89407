"""A worker's graceful stop, its loop driven against a fake master in this process.

The worker (`Worker.serve`) runs on a thread against `FakeMaster`'s sockets;
the test plays the master: it welcomes the worker, publishes, sends the DRAIN
marker and asks the worker to stop as a signal would (`Worker.request_stop`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus.protocol import MsgType
from procbus.worker.worker import ExitCode
from tests.served import Served


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    worker = Served(tmp_path)
    try:
        yield worker
    finally:
        worker.close()


def test_term_answers_the_running_and_queued_publishes_up_to_the_marker(
    served: Served,
) -> None:
    """Steps: publish 1 ('gated': its listener blocks) and 2 ('echo', queued behind it);
    once 1 runs, TERM; the master sends the DRAIN marker (last_seq 2) and publish 3;
    then the listener is let go.
    Expected: the worker says it is stopping, answers 1 and 2 (in order, with their
    results), never 3, then stops with exit code OK."""
    served.start_running()
    served.master.publish(1, "gated")
    served.master.publish(2, "echo", "queued")
    assert served.gated.wait(10)
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.master.drain(served.link.topic, 2)
    served.master.publish(3, "echo", "too late")
    served.gate.set()
    assert served.replies_until_stopped() == [(1, ["passed"]), (2, ["queued"])]
    assert served.code is ExitCode.OK


def test_term_without_a_marker_answers_what_came_within_the_grace(served: Served) -> None:
    """Steps: TERM with no DRAIN marker ever (an operator's TERM, a master that does not
    answer); publish 1 right after the worker says it is stopping.
    Expected: publish 1 is answered (it came within the marker grace); the worker then
    stops on its own."""
    served.start_running()
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.master.publish(1, "echo", "in the grace")
    assert served.replies_until_stopped() == [(1, ["in the grace"])]
    assert served.code is ExitCode.OK


def test_quit_during_a_drain_stops_without_answering(served: Served) -> None:
    """Steps: publish 1 ('gated') runs; TERM, then QUIT before the listener returns.
    Expected: the worker stops at once, without answering publish 1."""
    served.start_running()
    served.master.publish(1, "gated")
    assert served.gated.wait(10)
    served.worker.request_stop(signal.SIGTERM)
    served.expect(MsgType.STATE, state="stopping")
    served.worker.request_stop(signal.SIGQUIT)
    assert served.replies_until_stopped() == []
    assert served.code is ExitCode.OK


def test_worker_that_never_ran_stops_at_once_on_term(tmp_path: Path) -> None:
    """Steps: an app that never says it is ready; the marker grace and graceful timeout
    are 60 s; TERM.
    Expected: the worker, nobody's target, stops without waiting for a marker (well
    within the 10 s the test waits for its 'stopped')."""
    served = Served(tmp_path, ready=False, marker_grace=60.0, graceful_timeout=60.0)
    try:
        served.start()
        served.worker.request_stop(signal.SIGTERM)
        served.expect(MsgType.STATE, state="stopping")
        assert served.replies_until_stopped() == []
        assert served.code is ExitCode.OK
    finally:
        served.close()
