"""Tree publish: one send per publish, replies gathered by number, and the answer.

The PUB socket is a fake that records what is sent; the loop is a real
`EventLoop` on a fake clock, moved past a deadline before `run_once(0)`.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import zmq

from procbus import protocol
from procbus.bus import ChannelFailures
from procbus.errors import RemoteError
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc, WorkerState
from procbus.master.relay import (
    Relay,
    TreeReply,
    WorkerResult,
    WorkerStatus,
    late_answer_fields,
)
from procbus.protocol import MsgType
from tests.helpers import FakeClock


class RecordingPub:
    """Stands in for the master's PUB socket: keeps every message sent, as its frames."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []
        self._frames: list[bytes] = []

    def send(self, frame: bytes, flags: int = 0) -> None:
        self._frames.append(frame)
        if not flags & zmq.SNDMORE:
            self.sent.append(self._frames)
            self._frames = []


class Done:
    """An `on_done` callback that keeps every reply it was given."""

    def __init__(self) -> None:
        self.calls: list[TreeReply] = []

    def __call__(self, reply: TreeReply) -> None:
        self.calls.append(reply)


@pytest.fixture
def pub() -> RecordingPub:
    return RecordingPub()


@pytest.fixture
def relay(pub: RecordingPub, loop: EventLoop) -> Relay:
    return Relay(cast("zmq.Socket[bytes]", pub), loop)


def worker(worker_id: int, generation: int = 1) -> WorkerProc:
    return WorkerProc(
        worker_id, generation, 4000 + 10 * worker_id + generation, 0.0, state=WorkerState.RUNNING
    )


def template(channel: str = "reconfigure") -> protocol.PublishTemplate:
    return protocol.PublishTemplate(channel, ["arg"], {"key": 1}, 5.0)


def reply_message(
    seq: int, results: list[Any] | None = None, errors: list[dict[str, str]] | None = None
) -> protocol.Message:
    """A REPLY as the master would read it off its socket."""
    body = {"seq": seq, "results": results or [], "errors": errors or []}
    return protocol.decode(protocol.encode(MsgType.REPLY, body))


def error(kind: str, message: str, listener: str = "app.reload") -> dict[str, str]:
    return {
        "type": kind,
        "message": message,
        "listener": listener,
        "traceback": f"Traceback (most recent call last):\n{kind}: {message}\n",
    }


def expire(loop: EventLoop, clock: FakeClock, at: float) -> None:
    """Move the fake clock to `at` and run the loop's due timers."""
    clock.now = at
    loop.run_once(0)


# -- sending -------------------------------------------------------------------


def test_each_publish_is_sent_once_with_an_increasing_sequence_number(
    relay: Relay, pub: RecordingPub
) -> None:
    """Steps: send two publishes to three targets each.
    Expected: exactly one PUB send per publish, on the broadcast topic, carrying a
    PUBLISH numbered 1 then 2 with the template's body; each reply carries its number;
    `next_seq` is 3 and `sent` is 2.
    """
    targets = [worker(1), worker(2), worker(3)]
    first = relay.send(template("one"), targets, 5.0, TreeReply("one", None))
    second = relay.send(template("two"), targets, 5.0, TreeReply("two", None))

    assert [frames[0] for frames in pub.sent] == [protocol.BROADCAST_TOPIC] * 2
    messages = [protocol.decode(frames[1]) for frames in pub.sent]
    assert [m.type for m in messages] == [MsgType.PUBLISH, MsgType.PUBLISH]
    assert [m.body for m in messages] == [
        {"seq": 1, "channel": "one", "args": ["arg"], "kwargs": {"key": 1}, "timeout": 5.0},
        {"seq": 2, "channel": "two", "args": ["arg"], "kwargs": {"key": 1}, "timeout": 5.0},
    ]
    assert (first.reply.seq, second.reply.seq) == (1, 2)
    assert (relay.next_seq, relay.sent) == (3, 2)


def test_publish_without_targets_completes_at_once(relay: Relay, pub: RecordingPub) -> None:
    """Steps: send a publish to no worker.
    Expected: still one PUB send; the gather is done before `send` returns, `on_done` was
    called once with an empty worker map, and nothing is pending.
    """
    done = Done()
    gather = relay.send(template(), [], 5.0, TreeReply("reconfigure", None), done)
    assert len(pub.sent) == 1
    assert gather.done
    assert done.calls == [gather.reply]
    assert gather.reply.workers == {}
    assert relay.pending == {}


def test_drain_marker_goes_to_one_worker_with_the_last_sequence_number_sent(
    relay: Relay, pub: RecordingPub
) -> None:
    """Steps: send two publishes, then a drain marker for worker 2 (generation 3).
    Expected: a third PUB send, under that worker's topic only, carrying a DRAIN whose
    last_seq is 2; no publish number was used by it."""
    for _ in range(2):
        relay.send(template(), [worker(2, 3)], 5.0, TreeReply("reconfigure", None))
    relay.send_drain(worker(2, 3).topic)
    topic, frame = pub.sent[-1]
    assert topic == b"w.2.3."
    message = protocol.decode(frame)
    assert (message.type, message.body) == (MsgType.DRAIN, {"last_seq": 2})
    assert relay.next_seq == 3


# -- gathering -----------------------------------------------------------------


def test_replies_complete_the_gather_with_ok_and_error_statuses(
    relay: Relay, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: publish to workers 1 and 2; worker 1 replies with a result; worker 2 replies
    with a result and an error; then the deadline passes.
    Expected: not done after the first reply; done after the second with on_done called
    once; worker 1 ok, worker 2 error with the error rebuilt as a RemoteError naming it;
    the passing deadline changes nothing.
    """
    w1, w2 = worker(1), worker(2)
    done = Done()
    gather = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None), done)

    relay.on_reply(w1, reply_message(1, results=["reloaded"]))
    assert not gather.done
    assert done.calls == []

    relay.on_reply(w2, reply_message(1, results=[None, 3], errors=[error("KeyError", "'db'")]))
    assert gather.done
    assert done.calls == [gather.reply]

    workers = gather.reply.workers
    assert workers[1] == WorkerResult(1, w1.pid, 1, WorkerStatus.OK, ["reloaded"], [])
    assert (workers[2].status, workers[2].results) == (WorkerStatus.ERROR, [None, 3])
    [remote] = workers[2].errors
    assert (remote.worker, remote.type_name, remote.message, remote.listener) == (
        2,
        "KeyError",
        "'db'",
        "app.reload",
    )
    assert remote.traceback.endswith("KeyError: 'db'\n")

    expire(loop, clock, 1010.0)
    assert len(done.calls) == 1
    assert workers[1].status is WorkerStatus.OK
    assert relay.late_replies == 0


def test_replies_are_matched_to_their_publish_by_sequence_number(relay: Relay) -> None:
    """Steps: two overlapping publishes (1 and 2) to workers 1 and 2; worker 1 answers 2
    then 1, worker 2 answers 2.
    Expected: publish 2 completes first, with worker 1's second answer; publish 1 still
    waits for worker 2 and holds worker 1's first answer.
    """
    w1, w2 = worker(1), worker(2)
    first = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None))
    second = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None))

    relay.on_reply(w1, reply_message(2, results=["to 2"]))
    relay.on_reply(w1, reply_message(1, results=["to 1"]))
    relay.on_reply(w2, reply_message(2, results=["to 2"]))

    assert second.done
    assert not first.done
    assert second.reply.workers[1].results == ["to 2"]
    assert first.reply.workers[1].results == ["to 1"]
    assert 2 not in first.reply.workers
    assert list(relay.pending) == [1]


def test_worker_that_does_not_answer_by_the_deadline_is_reported_timeout(
    relay: Relay, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: publish to workers 1 and 2 with a 5 s deadline; worker 1 answers; move the
    clock to 4.9 s, then to 5 s.
    Expected: still waiting at 4.9 s; at 5 s done, on_done called once, worker 2 reported
    `timeout` with its pid and generation and no results.
    """
    w1, w2 = worker(1), worker(2, generation=3)
    done = Done()
    gather = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None), done)
    relay.on_reply(w1, reply_message(1))

    expire(loop, clock, 1004.9)
    assert not gather.done

    expire(loop, clock, 1005.0)
    assert gather.done
    assert done.calls == [gather.reply]
    assert gather.reply.workers[2] == WorkerResult(2, w2.pid, 3, WorkerStatus.TIMEOUT)
    assert gather.reply.workers[1].status is WorkerStatus.OK


def test_worker_that_dies_before_answering_is_reported_lost(
    relay: Relay, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: publish to workers 1 and 2; worker 3 (not a target) dies; worker 2 dies;
    worker 1 answers; then the deadline passes.
    Expected: worker 3's death changes nothing; worker 2 `lost`; done on worker 1's
    answer with on_done called once, and not again at the deadline.
    """
    w1, w2, w3 = worker(1), worker(2), worker(3)
    done = Done()
    gather = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None), done)

    relay.on_worker_gone(w3)
    assert 3 not in gather.reply.workers
    relay.on_worker_gone(w2)
    assert gather.reply.workers[2] == WorkerResult(2, w2.pid, 1, WorkerStatus.LOST)
    assert not gather.done

    relay.on_reply(w1, reply_message(1))
    assert done.calls == [gather.reply]
    expire(loop, clock, 1005.0)
    assert done.calls == [gather.reply]


def test_last_target_dying_completes_every_publish_waiting_for_it(relay: Relay) -> None:
    """Steps: two publishes to worker 1 only; worker 1 dies.
    Expected: both complete, each reporting worker 1 `lost`, each on_done called once.
    """
    w1 = worker(1)
    done_1, done_2 = Done(), Done()
    first = relay.send(template(), [w1], 5.0, TreeReply("reconfigure", None), done_1)
    second = relay.send(template(), [w1], 5.0, TreeReply("reconfigure", None), done_2)
    relay.on_worker_gone(w1)
    assert (done_1.calls, done_2.calls) == ([first.reply], [second.reply])
    assert first.reply.workers[1].status is WorkerStatus.LOST
    assert second.reply.workers[1].status is WorkerStatus.LOST
    assert relay.pending == {}


def test_reply_after_the_deadline_is_counted_late_and_dropped(
    relay: Relay, loop: EventLoop, clock: FakeClock
) -> None:
    """Steps: publish to worker 1; the deadline passes; worker 1 answers publish 1; a
    reply to a publish never sent (99) arrives.
    Expected: worker 1 stays `timeout`; `late_replies` counts both; on_done was called
    once.
    """
    w1 = worker(1)
    done = Done()
    gather = relay.send(template(), [w1], 5.0, TreeReply("reconfigure", None), done)
    expire(loop, clock, 1005.0)

    relay.on_reply(w1, reply_message(1, results=["too late"]))
    relay.on_reply(w1, reply_message(99))

    assert relay.late_replies == 2
    assert gather.reply.workers[1] == WorkerResult(1, w1.pid, 1, WorkerStatus.TIMEOUT)
    assert done.calls == [gather.reply]


def test_reply_from_a_worker_not_in_the_gather_is_dropped(relay: Relay) -> None:
    """Steps: publish to workers 1 and 2; worker 3 replies; a new generation of worker 2
    (same id, another process) replies; worker 1 replies twice.
    Expected: none of worker 3's, the new generation's or worker 1's second reply is
    recorded (each counted in `late_replies`); the gather still waits for worker 2.
    """
    w1, w2 = worker(1), worker(2)
    gather = relay.send(template(), [w1, w2], 5.0, TreeReply("reconfigure", None))

    relay.on_reply(worker(3), reply_message(1, results=["intruder"]))
    relay.on_reply(worker(2, generation=2), reply_message(1, results=["new generation"]))
    relay.on_reply(w1, reply_message(1, results=["first"]))
    relay.on_reply(w1, reply_message(1, results=["again"]))

    assert relay.late_replies == 3
    assert set(gather.reply.workers) == {1}
    assert gather.reply.workers[1].results == ["first"]
    assert not gather.done
    assert list(gather.waiting) == [w2]


# -- the tree's answer ---------------------------------------------------------


def failed_reply() -> TreeReply:
    """Master error, worker 1 error, worker 2 timeout, worker 3 lost, worker 4 ok."""
    remote = RemoteError(1, "KeyError", "'db'", listener="app.reload", traceback="tb")
    return TreeReply(
        "reconfigure",
        7,
        master=[None],
        master_errors=[ValueError("bad value")],
        workers={
            3: WorkerResult(3, 303, 1, WorkerStatus.LOST),
            1: WorkerResult(1, 101, 2, WorkerStatus.ERROR, ["partial"], [remote]),
            4: WorkerResult(4, 404, 1, WorkerStatus.OK, ["fine"]),
            2: WorkerResult(2, 202, 1, WorkerStatus.TIMEOUT),
        },
    )


def test_raise_for_failures_names_every_failing_worker() -> None:
    """Steps: raise_for_failures on a reply with a master error, a worker error, a
    timeout and a lost worker.
    Expected: ChannelFailures whose instances are the master's ValueError, then
    RemoteErrors in worker order: worker 1's KeyError, worker 2 "Timeout", worker 3 "Lost",
    each naming its worker.
    """
    reply = failed_reply()
    assert not reply.ok
    with pytest.raises(ChannelFailures) as caught:
        reply.raise_for_failures()
    master_error, *remote = caught.value.get_instances()
    assert isinstance(master_error, ValueError)
    assert all(isinstance(exc, RemoteError) for exc in remote)
    remote_errors = cast("list[RemoteError]", remote)
    assert [(e.worker, e.type_name) for e in remote_errors] == [
        (1, "KeyError"),
        (2, "Timeout"),
        (3, "Lost"),
    ]
    assert [str(e) for e in remote_errors] == [
        "worker 1: KeyError: 'db' in listener app.reload",
        "worker 2: Timeout: worker 2 (pid 202) did not answer in time",
        "worker 3: Lost: worker 3 (pid 303) died before answering",
    ]


def test_raise_for_failures_returns_the_reply_when_all_went_well() -> None:
    """Steps: raise_for_failures on a reply whose workers are ok or still starting.
    Expected: no exception; the reply itself is returned and is `ok`.
    """
    reply = TreeReply(
        "reconfigure",
        1,
        workers={
            1: WorkerResult(1, 101, 1, WorkerStatus.OK),
            2: WorkerResult(2, 202, 1, WorkerStatus.STARTING),
        },
    )
    assert reply.ok
    assert reply.raise_for_failures() is reply


def test_tree_reply_to_dict_is_plain_data_keyed_by_worker_id_string() -> None:
    """Steps: to_dict on a reply with a master error, an error, a timeout, a lost and an
    ok worker.
    Expected: exactly the documented shape, workers keyed "1".."4" in order, errors as
    maps of type, message, listener, traceback, master errors as "Type: message"; the
    requirement (all, by default), not met, and why.
    """
    assert failed_reply().to_dict() == {
        "channel": "reconfigure",
        "seq": 7,
        "require": "all",
        "met": False,
        "reason": "3 of 4 target workers failed",
        "master": [None],
        "master_errors": ["ValueError: bad value"],
        "workers": {
            "1": {
                "status": "error",
                "pid": 101,
                "generation": 2,
                "results": ["partial"],
                "errors": [
                    {
                        "type": "KeyError",
                        "message": "'db'",
                        "listener": "app.reload",
                        "traceback": "tb",
                    }
                ],
            },
            "2": {"status": "timeout", "pid": 202, "generation": 1, "results": [], "errors": []},
            "3": {"status": "lost", "pid": 303, "generation": 1, "results": [], "errors": []},
            "4": {"status": "ok", "pid": 404, "generation": 1, "results": ["fine"], "errors": []},
        },
    }
    assert list(failed_reply().to_dict()["workers"]) == ["1", "2", "3", "4"]


# -- quorum (require) ------------------------------------------------------------


class LateAnswers:
    """The relay's `on_late_answer` hook: keeps (seq, worker id, status) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int | None, int, WorkerStatus]] = []
        self.results: list[WorkerResult] = []

    def __call__(self, reply: TreeReply, result: WorkerResult) -> None:
        self.calls.append((reply.seq, result.worker, result.status))
        self.results.append(result)


@pytest.fixture
def late(relay: Relay) -> LateAnswers:
    hook = LateAnswers()
    relay.on_late_answer = hook
    return hook


def statuses(reply: TreeReply) -> dict[int, str]:
    return {wid: result.status.value for wid, result in sorted(reply.workers.items())}


def test_any_replies_at_the_first_answer_without_error_and_stragglers_go_to_the_hook(
    relay: Relay, loop: EventLoop, clock: FakeClock, late: LateAnswers
) -> None:
    """Steps: require "any" of workers 1-4; worker 2 answers with an error, then worker 3
    without; then worker 1 answers, worker 4 dies.
    Expected: no reply after the error; the reply goes back once, at worker 3's answer:
    met and ok, 2 error, 3 ok, 1 and 4 pending. The gather stays pending for the
    stragglers: worker 1's answer and worker 4's death go to the hook (ok, lost), the
    reply already given is not changed; then nothing is pending, no timer is left, and
    the deadline passing changes nothing."""
    w = [worker(i) for i in (1, 2, 3, 4)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require="any"), done)
    relay.on_reply(w[1], reply_message(1, errors=[error("KeyError", "'db'")]))
    assert done.calls == []
    relay.on_reply(w[2], reply_message(1, results=["fine"]))
    assert done.calls == [gather.reply]
    reply = gather.reply
    assert (reply.met, reply.ok, reply.reason) == (True, True, None)
    assert statuses(reply) == {1: "pending", 2: "error", 3: "ok", 4: "pending"}
    assert list(relay.pending) == [1]

    relay.on_reply(w[0], reply_message(1, results=["late"]))
    relay.on_worker_gone(w[3])
    assert late.calls == [(1, 1, WorkerStatus.OK), (1, 4, WorkerStatus.LOST)]
    assert late.results[0].results == ["late"]
    assert statuses(reply) == {1: "pending", 2: "error", 3: "ok", 4: "pending"}
    assert relay.pending == {}
    assert gather.timer is not None and gather.timer.cancelled
    expire(loop, clock, 1005.0)
    assert len(done.calls) == 1
    assert len(late.calls) == 2


def test_require_n_replies_once_n_targets_answered_without_error(
    relay: Relay, loop: EventLoop, clock: FakeClock, late: LateAnswers
) -> None:
    """Steps: require 3 of workers 1-4; 1, 2 and 4 answer ok; the deadline passes.
    Expected: the reply at the third answer, met, worker 3 pending; at the deadline
    worker 3 goes to the hook as a timeout; nothing is left pending."""
    w = [worker(i) for i in (1, 2, 3, 4)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require=3), done)
    relay.on_reply(w[0], reply_message(1))
    relay.on_reply(w[1], reply_message(1))
    assert done.calls == []
    relay.on_reply(w[3], reply_message(1))
    assert done.calls == [gather.reply]
    assert gather.reply.met
    assert statuses(gather.reply) == {1: "ok", 2: "ok", 3: "pending", 4: "ok"}
    expire(loop, clock, 1005.0)
    assert late.calls == [(1, 3, WorkerStatus.TIMEOUT)]
    assert relay.pending == {}


def test_require_n_replies_as_soon_as_it_can_no_longer_be_met(
    relay: Relay, late: LateAnswers
) -> None:
    """Steps: require 3 of workers 1-4; worker 1 answers with an error, worker 2 dies.
    Expected: the reply at the death (only 2 can still answer): not met, not ok, with
    the reason; 3 and 4 pending; `raise_for_failures` raises ChannelFailures holding
    worker 1's error, worker 2's loss and the unmet requirement."""
    w = [worker(i) for i in (1, 2, 3, 4)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require=3), done)
    relay.on_reply(w[0], reply_message(1, errors=[error("KeyError", "'db'")]))
    assert done.calls == []
    relay.on_worker_gone(w[1])
    assert done.calls == [gather.reply]
    reply = gather.reply
    assert (reply.met, reply.ok) == (False, False)
    assert reply.reason == "2 of 4 target workers failed, at most 2 can answer"
    assert statuses(reply) == {1: "error", 2: "lost", 3: "pending", 4: "pending"}
    with pytest.raises(ChannelFailures) as caught:
        reply.raise_for_failures()
    assert [str(e) for e in caught.value.get_instances()] == [
        "worker 1: KeyError: 'db' in listener app.reload",
        f"worker 2: Lost: worker 2 (pid {w[1].pid}) died before answering",
        "require 3: 2 of 4 target workers failed, at most 2 can answer",
    ]


def test_require_beyond_the_targets_replies_at_once_not_met(
    relay: Relay, loop: EventLoop, clock: FakeClock, late: LateAnswers, pub: RecordingPub
) -> None:
    """Steps: require 5 of workers 1-4.
    Expected: the publish is still sent once; the reply comes back from `send` itself,
    not met, with the reason naming the 4 targets (no exception), every worker pending;
    their answers (two ok, then the deadline for the others) go to the hook; nothing is
    left pending."""
    w = [worker(i) for i in (1, 2, 3, 4)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require=5), done)
    assert len(pub.sent) == 1
    assert done.calls == [gather.reply]
    assert not gather.reply.met
    assert gather.reply.reason == "the publish has only 4 target workers"
    assert set(statuses(gather.reply).values()) == {"pending"}
    relay.on_reply(w[0], reply_message(1))
    relay.on_reply(w[2], reply_message(1))
    expire(loop, clock, 1005.0)
    assert late.calls == [
        (1, 1, WorkerStatus.OK),
        (1, 3, WorkerStatus.OK),
        (1, 2, WorkerStatus.TIMEOUT),
        (1, 4, WorkerStatus.TIMEOUT),
    ]
    assert relay.pending == {}


def test_any_without_targets_replies_at_once_not_met(relay: Relay) -> None:
    """Steps: require "any" with no target (every worker still starting).
    Expected: the reply at once, not met, reason "no target worker"; nothing pending."""
    done = Done()
    gather = relay.send(template(), [], 5.0, TreeReply("x", None, require="any"), done)
    assert done.calls == [gather.reply]
    assert gather.reply.reason == "the publish has no target worker"
    assert relay.pending == {}


def test_timeouts_and_losses_count_as_failures_of_the_requirement(
    relay: Relay, loop: EventLoop, clock: FakeClock, late: LateAnswers
) -> None:
    """Steps: require 2 of workers 1-3; worker 1 dies, worker 2 answers; the deadline
    passes for worker 3.
    Expected: no reply until the deadline; then not met, worker 3 `timeout` (not
    pending: its outcome is known), nothing goes to the hook, nothing left pending."""
    w = [worker(i) for i in (1, 2, 3)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require=2), done)
    relay.on_worker_gone(w[0])
    relay.on_reply(w[1], reply_message(1))
    assert done.calls == []
    expire(loop, clock, 1005.0)
    assert done.calls == [gather.reply]
    assert statuses(gather.reply) == {1: "lost", 2: "ok", 3: "timeout"}
    assert not gather.reply.met
    assert late.calls == []
    assert relay.pending == {}


def test_require_all_still_waits_for_every_target_after_a_failure(
    relay: Relay, late: LateAnswers
) -> None:
    """Steps: the default requirement (all) of workers 1-3; worker 1 answers with an
    error, worker 2 ok, worker 3 ok.
    Expected: no reply until worker 3 answered (every outcome is listed, nobody is
    pending); then not met, not ok; nothing went to the hook."""
    w = [worker(i) for i in (1, 2, 3)]
    done = Done()
    gather = relay.send(template(), w, 5.0, TreeReply("reconfigure", None), done)
    relay.on_reply(w[0], reply_message(1, errors=[error("KeyError", "'db'")]))
    relay.on_reply(w[1], reply_message(1))
    assert done.calls == []
    relay.on_reply(w[2], reply_message(1))
    assert done.calls == [gather.reply]
    assert statuses(gather.reply) == {1: "error", 2: "ok", 3: "ok"}
    assert (gather.reply.met, gather.reply.ok) == (False, False)
    assert late.calls == []


def test_met_requirement_is_success_despite_failures_but_a_master_error_is_not() -> None:
    """Steps: a reply requiring 1 with worker 1 ok, worker 2 error, worker 3 pending;
    the same with a master listener error.
    Expected: the first is met and ok, `raise_for_failures` returns it, its failures
    still list worker 2's error (pending is no failure); the second is met but not ok
    and raises with the master's error."""
    remote = RemoteError(2, "KeyError", "'db'")
    workers = {
        1: WorkerResult(1, 101, 1, WorkerStatus.OK),
        2: WorkerResult(2, 202, 1, WorkerStatus.ERROR, errors=[remote]),
        3: WorkerResult(3, 303, 1, WorkerStatus.PENDING),
    }
    reply = TreeReply("reconfigure", 1, workers=workers, require=1)
    assert (reply.met, reply.ok) == (True, True)
    assert reply.raise_for_failures() is reply
    assert reply.failures() == [remote]
    failing = TreeReply(
        "reconfigure", 1, master_errors=[ValueError("m")], workers=workers, require=1
    )
    assert (failing.met, failing.ok) == (True, False)
    with pytest.raises(ChannelFailures):
        failing.raise_for_failures()


def test_to_dict_shows_the_requirement_whether_met_and_pending_workers() -> None:
    """Steps: to_dict of a reply requiring 2 of 3 with one ok and two pending (unmet).
    Expected: require 2, met false, the reason, pending statuses."""
    reply = TreeReply(
        "reconfigure",
        4,
        workers={
            1: WorkerResult(1, 101, 1, WorkerStatus.OK, ["r"]),
            2: WorkerResult(2, 202, 1, WorkerStatus.PENDING),
            3: WorkerResult(3, 303, 1, WorkerStatus.ERROR),
        },
        require=3,
    )
    document = reply.to_dict()
    assert (document["require"], document["met"]) == (3, False)
    assert document["reason"] == "1 of 3 target workers failed, at most 2 can answer"
    assert document["workers"]["2"]["status"] == "pending"


def test_quorum_meter_counts_each_workers_outcome_once_when_it_is_known(
    relay: Relay, loop: EventLoop, clock: FakeClock, late: LateAnswers
) -> None:
    """Steps: require "any" of workers 1-3; worker 1 answers ok 2 ms after the send;
    worker 2 answers with an error later; the deadline passes for worker 3.
    Expected: one duration (2 ms: the reply's time), and the outcomes ok 1, error 1,
    timeout 1: a pending worker is counted once, by its final outcome."""
    w = [worker(i) for i in (1, 2, 3)]
    relay.send(template(), w, 5.0, TreeReply("reconfigure", None, require="any"))
    clock.now += 0.002
    relay.on_reply(w[0], reply_message(1))
    assert (relay.meter.durations.count, relay.meter.durations.total) == (1, pytest.approx(0.002))
    assert dict(relay.meter.outcomes) == {"ok": 1}
    relay.on_reply(w[1], reply_message(1, errors=[error("KeyError", "'db'")]))
    expire(loop, clock, 1005.0)
    assert dict(relay.meter.outcomes) == {"ok": 1, "error": 1, "timeout": 1}
    assert relay.meter.durations.count == 1


def test_late_answer_event_carries_status_and_errors_but_no_results() -> None:
    """Steps: the event fields of a straggler that answered with a result and an error.
    Expected: channel, seq, worker, pid, generation, status and each error's type and
    message; no results and no traceback (read-only watchers see the event stream)."""
    remote = RemoteError(2, "KeyError", "'db'", listener="app.reload", traceback="secret tb")
    result = WorkerResult(2, 202, 3, WorkerStatus.ERROR, ["secret value"], [remote])
    assert late_answer_fields(TreeReply("reconfigure", 9, require="any"), result) == {
        "channel": "reconfigure",
        "seq": 9,
        "worker": 2,
        "pid": 202,
        "generation": 3,
        "status": "error",
        "errors": [{"type": "KeyError", "message": "'db'"}],
    }


# -- targeting -------------------------------------------------------------------


def test_targeted_publish_is_one_send_naming_its_targets_topics(
    relay: Relay, pub: RecordingPub
) -> None:
    """Steps: send a targeted publish to workers 1 (generation 2) and 3.
    Expected: one PUB send on the broadcast topic (every worker counts it) whose PUBLISH
    names the two workers' topics in ``to``; an untargeted send names none."""
    relay.send(template(), [worker(1, 2), worker(3)], 5.0, TreeReply("x", None), targeted=True)
    relay.send(template(), [worker(1, 2)], 5.0, TreeReply("x", None))
    assert [frames[0] for frames in pub.sent] == [protocol.BROADCAST_TOPIC] * 2
    first, second = (protocol.decode(frames[1]) for frames in pub.sent)
    assert first["to"] == [b"w.1.2.", b"w.3.1."]
    assert "to" not in second.body


def sample_reply(require: Any = "all") -> TreeReply:
    """A reply with every kind of outcome: a master result and error, an ok worker, one
    with a remote error, a timeout, a lost one, a starting one and a pending one."""
    reply = TreeReply("cache.clear", 12, require=require)
    reply.master.append({"dropped": 2})
    reply.master_errors.append(KeyError("price:42"))
    error = RemoteError(2, "ValueError", "bad key", listener="app.clear", traceback="tb")
    reply.workers = {
        1: WorkerResult(1, 101, 1, WorkerStatus.OK, [{"dropped": 1}, None]),
        2: WorkerResult(2, 102, 1, WorkerStatus.ERROR, [None], [error]),
        3: WorkerResult(3, 103, 2, WorkerStatus.TIMEOUT),
        4: WorkerResult(4, 104, 2, WorkerStatus.LOST),
        5: WorkerResult(5, 105, 2, WorkerStatus.STARTING),
        6: WorkerResult(6, 106, 2, WorkerStatus.PENDING),
    }
    return reply


@pytest.mark.parametrize("require", ["all", "any", 2])
def test_tree_reply_from_dict_gives_back_what_to_dict_gave(require: Any) -> None:
    """Steps: a reply with every outcome, as dict; rebuild it from the dict.
    Expected: the rebuilt reply's dict is the same; ok, met, reason and pending are the
    same; its failures read the same, each error naming its worker (the master's as
    remote errors of their type)."""
    reply = sample_reply(require)
    rebuilt = TreeReply.from_dict(reply.to_dict())
    assert rebuilt.to_dict() == reply.to_dict()
    assert (rebuilt.ok, rebuilt.met, rebuilt.reason, rebuilt.pending) == (
        reply.ok, reply.met, reply.reason, reply.pending,
    )  # fmt: skip
    assert [str(e) for e in rebuilt.failures()][1:] == [str(e) for e in reply.failures()][1:]
    master_error = rebuilt.master_errors[0]
    assert isinstance(master_error, RemoteError)
    assert (master_error.type_name, master_error.message) == ("KeyError", "'price:42'")
    remote = rebuilt.workers[2].errors[0]
    assert (remote.worker, remote.listener, remote.traceback) == (2, "app.clear", "tb")
    with pytest.raises(ChannelFailures):
        rebuilt.raise_for_failures()


def test_tree_reply_from_dict_ignores_fields_it_does_not_know_and_defaults_missing_ones() -> None:
    """Steps: a dict with an unknown top-level field and an unknown worker field, and
    without require, met or reason (an older master's); an all-ok one.
    Expected: the unknown fields are ignored; require is "all"; the all-ok reply is ok
    and raise_for_failures returns it."""
    data = {
        "channel": "c",
        "seq": 1,
        "master": [],
        "master_errors": [],
        "workers": {"1": {"status": "ok", "pid": 9, "generation": 1, "results": [1],
                          "errors": [], "cpu": 3}},
        "retained": True,
    }  # fmt: skip
    reply = TreeReply.from_dict(data)
    assert (reply.require, reply.ok, reply.workers[1].results) == ("all", True, [1])
    assert reply.raise_for_failures() is reply
