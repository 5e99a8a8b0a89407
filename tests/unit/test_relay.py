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
from procbus.master.relay import Relay, TreeReply, WorkerResult, WorkerStatus
from procbus.protocol import MsgType
from tests.helpers import FakeClock


class RecordingPub:
    """Stands in for the master's PUB socket: keeps every multipart send."""

    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames: list[bytes], copy: bool = True) -> None:
        assert copy is False
        self.sent.append(list(frames))


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
    maps of type, message, listener, traceback, master errors as "Type: message".
    """
    assert failed_reply().to_dict() == {
        "channel": "reconfigure",
        "seq": 7,
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
