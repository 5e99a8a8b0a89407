"""The hub on ``inproc://`` sockets with a real pool: the workers' handshake, what is
dropped, and replies completing a tree publish.

The test speaks for worker 1 (a fake process the pool forked, which says nothing
by itself) through a DEALER and a SUB, as `procbus.worker.link` would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from procbus import protocol
from procbus.master import snapshot
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerState
from procbus.master.relay import TreeReply, WorkerStatus
from procbus.protocol import MsgType
from procbus.publishing import PublishOptions
from tests.component.fakes import FakeProcesses, Recorder
from tests.component.wiring import BOOT_FAILED, Wired, received, wire
from tests.helpers import FakeClock, Sockets


@pytest.fixture
def wired(
    loop: EventLoop,
    clock: FakeClock,
    sockets: Sockets,
    processes: FakeProcesses,
    recorder: Recorder,
) -> Iterator[Wired]:
    with wire(loop, clock, sockets, processes, recorder) as made:
        yield made


def test_the_worker_the_pool_forked_is_accepted_and_welcomed_once_it_runs(
    wired: Wired,
) -> None:
    """Steps: worker 1 says hello from its own identity; it subscribes to its topic; it
    reports running.
    Expected: hello makes it starting; the subscription is seen; running makes it a
    target of publishes, and it is sent WELCOME with the next publish's number (1);
    nothing was dropped."""
    dealer, _ = wired.run_worker()
    welcome = received(dealer)
    assert (welcome.type, welcome["next_seq"]) == (MsgType.WELCOME, 1)
    assert wired.pool.publish_targets() == ([wired.worker], [])
    assert wired.hub.dropped_messages == 0


def test_hellos_that_do_not_match_what_the_pool_forked_are_dropped_and_counted(
    wired: Wired,
) -> None:
    """Steps: a rogue DEALER (identity w.9.1.) says hello as worker 1, then as a pid the
    pool never forked, sends a heartbeat and a reply without hello, garbage, and three
    frames; from worker 1's identity, a hello with another pid, and one with another
    generation; then worker 1's true hello.
    Expected: the first eight are dropped and counted (also in the master's counters);
    the worker stayed unheard until its true hello, which is accepted."""
    rogue = wired.dealer(b"w.9.1.")
    rogue.send(wired.hello())
    rogue.send(wired.hello(pid=wired.worker.pid + 100))
    rogue.send(protocol.encode(MsgType.HEARTBEAT, {"counters": {}}))
    rogue.send(protocol.encode(MsgType.REPLY, {"seq": 1, "results": [], "errors": []}))
    rogue.send(b"\x00garbage")
    rogue.send_multipart([b"a", b"b", b"c"])
    own = wired.dealer(wired.worker.topic)
    own.send(wired.hello(pid=wired.worker.pid + 1))
    own.send(wired.hello(generation=2))
    wired.settle(lambda: wired.hub.dropped_messages == 8)
    assert not wired.worker.hello
    assert snapshot.counters(wired.hub, None)["dropped_messages"] == 8
    own.send(wired.hello())
    wired.settle(lambda: wired.worker.hello)
    assert wired.worker.state is WorkerState.STARTING
    assert wired.hub.dropped_messages == 8


def test_a_reply_goes_to_the_relay_and_completes_the_publish(wired: Wired) -> None:
    """Steps: worker 1 runs; publish 'echo' on the tree; the worker reads it and replies
    with a result; then it sends the same reply again.
    Expected: the publish reached the worker once (channel, arguments, number 1); the
    tree's reply says worker 1 ok with its result; nothing is left in flight; the
    duplicate is counted as a late reply."""
    dealer, sub = wired.run_worker()
    replies: list[TreeReply] = []
    wired.publisher.publish_async("echo", ["hi"], on_done=replies.append)
    topic, frame = sub.recv_multipart()
    publish = protocol.decode(frame)
    assert topic == protocol.BROADCAST_TOPIC
    assert (publish["seq"], publish["channel"], publish["args"]) == (1, "echo", ["hi"])
    answer = {"seq": 1, "results": ["hi from 1"], "errors": []}
    dealer.send(protocol.encode(MsgType.REPLY, answer))
    wired.settle(lambda: bool(replies))
    (reply,) = replies
    assert reply.ok
    assert (reply.workers[1].status, reply.workers[1].results) == (WorkerStatus.OK, ["hi from 1"])
    dealer.send(protocol.encode(MsgType.REPLY, answer))
    relay = wired.hub.relay
    wired.settle(lambda: relay.late_replies == 1)
    counters = snapshot.counters(wired.hub, None)
    assert (counters["publishes"], counters["in_flight"]) == (1, 0)


def test_the_error_of_a_worker_that_could_not_boot_is_heard_even_after_its_exit(
    wired: Wired, recorder: Recorder
) -> None:
    """Steps: worker 1 says hello, reports FAILED with its error and exits as unable
    to boot; its exit reaches the pool (SIGCHLD) before the loop reads its message.
    Expected: the pool still records the error: on the exit event and the slot."""
    dealer = wired.dealer(wired.worker.topic)
    dealer.send(wired.hello())
    wired.settle(lambda: wired.worker.hello)
    failed = {"state": "failed", "error": "boot: broken_app cannot be imported"}
    dealer.send(protocol.encode(MsgType.STATE, failed))
    wired.processes.exit(wired.worker.pid, BOOT_FAILED)
    wired.settle(lambda: bool(recorder.named("exit")))
    (exited,) = recorder.named("exit")
    assert exited["error"] == "boot: broken_app cannot be imported"
    assert wired.pool.view.slots[1].last_error == "boot: broken_app cannot be imported"


def test_a_worker_that_dies_before_answering_is_reported_lost_at_once(wired: Wired) -> None:
    """Steps: worker 1 runs; publish 'echo' (deadline 5 s); the worker's process dies
    without answering.
    Expected: the publish completes when the death is reaped, long before its deadline,
    with worker 1 lost."""
    wired.run_worker()
    replies: list[TreeReply] = []
    wired.publisher.publish_async("echo", on_done=replies.append)
    began = wired.loop.clock()
    wired.processes.exit(wired.worker.pid, -9)
    wired.settle(lambda: bool(replies))
    assert replies[0].workers[1].status is WorkerStatus.LOST
    assert wired.loop.clock() - began < 1.0


def test_a_worker_drained_is_sent_its_marker_after_the_publishes_it_owes(wired: Wired) -> None:
    """Steps: worker 1 runs; publish 'echo'; the pool stops (drains it).
    Expected: on its SUB the worker reads the publish, then its DRAIN marker naming that
    publish as the last it owes."""
    _, sub = wired.run_worker()
    wired.publisher.publish_async("echo")
    wired.pool.deactivate()
    first = received(sub)
    marker = received(sub)
    assert (first.type, first["seq"]) == (MsgType.PUBLISH, 1)
    assert (marker.type, marker["last_seq"]) == (MsgType.DRAIN, 1)


def test_a_target_that_does_not_exist_is_refused_before_anything_runs(wired: Wired) -> None:
    """Steps: worker 1 runs; a listener on the master's bus; publish 'echo' to worker 9,
    to generation 7, and 'stop' and 'log' to worker 1.
    Expected: each raises ValueError in one line naming what is wrong (and, for a
    worker or generation, what exists); the master's listener never ran; nothing was
    sent."""
    wired.run_worker()
    ran: list[str] = []
    wired.publisher.bus.subscribe("echo", lambda: ran.append("echo"))
    bad = [
        (PublishOptions(to=(9,)), "echo", "no worker 9 (workers: 1)"),
        (PublishOptions(to_generation=7), "echo", "no worker of generation 7 (generations: 1)"),
        (PublishOptions(to=(1,)), "stop", "publish on 'stop' stays on the master: it takes "),
        (PublishOptions(require="any"), "log", "publish on 'log' stays on the master: it takes "),
    ]
    for options, channel, message in bad:
        with pytest.raises(ValueError) as caught:
            wired.publisher.publish_async(channel, options=options)
        assert str(caught.value).startswith(message)
    assert ran == []
    assert wired.hub.relay.sent == 0


def test_a_targeted_publish_names_its_workers_and_runs_the_masters_listeners(
    wired: Wired,
) -> None:
    """Steps: worker 1 runs; a listener on the master's bus; publish 'echo' to worker 1
    and to generation 1.
    Expected: the master's listener ran for both (the master owns the bus); each
    publish reached the worker's SUB on the broadcast topic, naming the worker's topic
    in ``to``."""
    _, sub = wired.run_worker()
    ran: list[str] = []
    wired.publisher.bus.subscribe("echo", lambda: ran.append("echo"))
    for options in (PublishOptions(to=(1,)), PublishOptions(to_generation=1)):
        wired.publisher.publish_async("echo", options=options)
        topic, frame = sub.recv_multipart()
        assert topic == protocol.BROADCAST_TOPIC
        assert protocol.decode(frame)["to"] == [wired.worker.topic]
    assert ran == ["echo", "echo"]


def test_a_straggler_answer_goes_to_the_event_stream_without_its_results(
    wired: Wired, recorder: Recorder
) -> None:
    """Steps: worker 1 runs; publish 'echo' requiring 2 workers (there is one); the
    worker then answers with a secret result and an error.
    Expected: the reply comes back at once, not met, worker 1 pending; the answer is a
    ``publish_late_answer`` event with its status and error type and message, and no
    result or traceback; nothing is left in flight."""
    dealer, _ = wired.run_worker()
    replies: list[TreeReply] = []
    wired.publisher.publish_async("echo", on_done=replies.append, options=PublishOptions(2))
    (reply,) = replies
    assert (reply.met, reply.workers[1].status) == (False, WorkerStatus.PENDING)
    error = {"type": "KeyError", "message": "'db'", "listener": "l", "traceback": "tb"}
    answer = {"seq": 1, "results": ["s3cret"], "errors": [error]}
    dealer.send(protocol.encode(MsgType.REPLY, answer))
    wired.settle(lambda: bool(recorder.named("publish_late_answer")))
    (event,) = recorder.named("publish_late_answer")
    assert event == {
        "channel": "echo",
        "seq": 1,
        "worker": 1,
        "pid": wired.worker.pid,
        "generation": 1,
        "status": "error",
        "errors": [{"type": "KeyError", "message": "'db'"}],
    }
    assert "s3cret" not in repr(recorder.events)
    assert wired.hub.relay.pending == {}
