"""A worker's tree publish through the master's hub, publisher and relay, on
``inproc://`` sockets with a real pool of two fake processes.

The test speaks for workers 1 and 2 (fake processes that say nothing by
themselves) through a DEALER and a SUB each, as `procbus.worker.link` would;
worker 1 publishes to the tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from procbus import protocol
from procbus.bus import Bus
from procbus.master import snapshot
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc, WorkerState
from procbus.master.pool import Pool
from procbus.master.publisher import TreePublisher
from procbus.master.relay import TreeReply
from procbus.master.retainer import Retainer
from procbus.master.worker_publishes import MAX_IN_FLIGHT, WorkerPublishes
from procbus.protocol import Message, MsgType
from tests.component.fakes import FakeProcesses, Fate, Recorder, fake_pool
from tests.helpers import FakeClock, Sockets, keep_time_moving


@dataclass
class Peer:
    """One fake worker's sockets."""

    proc: WorkerProc
    dealer: zmq.Socket[bytes]
    sub: zmq.Socket[bytes]

    def publish(self, request_id: int, channel: str, *args: Any, **fields: Any) -> None:
        """Send a TREE_PUBLISH."""
        body = {"id": request_id, "channel": channel, "args": list(args), "kwargs": {}}
        self.dealer.send(protocol.encode(MsgType.TREE_PUBLISH, {**body, **fields}))

    def answer(self, publish: Message, *results: Any) -> None:
        """Reply to a publish read on the SUB."""
        body = {"seq": publish["seq"], "results": list(results), "errors": []}
        self.dealer.send(protocol.encode(MsgType.REPLY, body))


@dataclass
class Tree:
    """The master's side and two running workers."""

    loop: EventLoop
    pool: Pool
    hub: Hub
    publishes: WorkerPublishes
    bus: Bus
    peers: dict[int, Peer]
    exiting: list[bool] = field(default_factory=lambda: [False])

    def settle(self, predicate: Any) -> None:
        assert self.loop.run_until(predicate, 5.0)

    def next_message(self, sock: zmq.Socket[bytes]) -> Message:
        """The next message on `sock`, running the master's loop meanwhile."""
        self.settle(lambda: sock.poll(0))
        return protocol.decode(sock.recv_multipart()[-1])

    def silent(self, sock: zmq.Socket[bytes]) -> bool:
        """True if nothing arrives on `sock` while the loop turns a few times."""
        for _ in range(20):
            self.loop.run_once(0)
        return not sock.poll(50)


@pytest.fixture
def tree(
    loop: EventLoop,
    clock: FakeClock,
    sockets: Sockets,
    processes: FakeProcesses,
    recorder: Recorder,
) -> Iterator[Tree]:
    xpub = sockets.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    xpub.bind("inproc://publish")
    router = sockets.socket(zmq.ROUTER)
    router.bind("inproc://replies")
    for worker_id in (1, 2):
        processes.plan(worker_id, 1, Fate.HANG)
    pool = fake_pool(loop, processes, recorder.emit, target=2)
    hub = Hub(xpub, router, loop, pool)
    pool.on_ready, pool.on_gone = hub.welcome, hub.worker_gone
    loop.add_reader(xpub, hub.on_xpub)
    loop.add_reader(router, hub.on_router)
    bus = Bus()
    publisher = TreePublisher(
        bus, pool, loop, deadline=lambda: 5.0, emit=recorder.emit, request_exit=lambda: None
    )
    publisher.hub = hub
    exiting = [False]
    publishes = WorkerPublishes(
        publisher.publish_async,
        send=hub.send_to,
        alive=lambda worker: pool.by_topic.get(worker.topic) is worker,
        emit=recorder.emit,
        exiting=lambda: exiting[0],
    )
    hub.on_tree_publish = publishes.receive
    keep_time_moving(loop, clock, 0.001)
    pool.activate()
    made = Tree(loop, pool, hub, publishes, bus, {}, exiting)
    for proc in sorted(pool.by_pid.values(), key=lambda w: w.id):
        dealer = sockets.socket(zmq.DEALER, identity=proc.topic)
        dealer.connect("inproc://replies")
        body = {"worker": proc.id, "generation": 1, "pid": proc.pid, "topic": proc.topic}
        dealer.send(protocol.encode(MsgType.HELLO, body))
        sub = sockets.socket(zmq.SUB)
        sub.connect("inproc://publish")
        sub.subscribe(protocol.BROADCAST_TOPIC)
        sub.subscribe(proc.topic)
        made.settle(lambda proc=proc: proc.hello and proc.subscribed)
        dealer.send(protocol.encode(MsgType.STATE, {"state": "running"}))
        made.settle(lambda proc=proc: proc.state is WorkerState.RUNNING)
        snapshot = made.next_message(dealer)  # the retained publishes: none
        assert (snapshot.type, snapshot["frames"]) == (MsgType.RETAINED, [])
        assert made.next_message(dealer).type is MsgType.WELCOME
        made.peers[proc.id] = Peer(proc, dealer, sub)
    yield made
    loop.remove_reader(xpub)
    loop.remove_reader(router)


def test_a_workers_publish_runs_as_the_masters_and_its_reply_goes_back(
    tree: Tree, recorder: Recorder
) -> None:
    """Steps: a listener on the master's bus; worker 1 sends a TREE_PUBLISH on
    'cache.clear' with a secret key; both workers read the publish and answer.
    Expected: the master's listener ran with the key; the publish reached both workers
    (the caller included) with the key; worker 1 gets a TREE_REPLY with its id whose
    reply, rebuilt, is ok and lists both workers' results and the master's; a
    worker_publish event names worker 1 and the channel, without the key."""
    ran: list[str] = []
    tree.bus.subscribe("cache.clear", lambda key: ran.append(key) or "master dropped")
    one, two = tree.peers[1], tree.peers[2]
    one.publish(5, "cache.clear", "s3cret")
    for peer in (one, two):
        publish = tree.next_message(peer.sub)
        assert (publish["channel"], publish["args"]) == ("cache.clear", ["s3cret"])
        peer.answer(publish, f"dropped by {peer.proc.id}")
    answer = tree.next_message(one.dealer)
    assert (answer.type, answer["id"]) == (MsgType.TREE_REPLY, 5)
    reply = TreeReply.from_dict(answer["reply"])
    assert reply.ok and ran == ["s3cret"] and reply.master == ["master dropped"]
    assert {k: w.results for k, w in reply.workers.items()} == {
        1: ["dropped by 1"],
        2: ["dropped by 2"],
    }
    (event,) = recorder.named("worker_publish")
    assert event == {
        "worker": 1,
        "pid": one.proc.pid,
        "generation": 1,
        "channel": "cache.clear",
        "allowed": True,
        "reason": None,
    }
    assert "s3cret" not in repr(recorder.events)
    assert tree.publishes.in_flight == {}


def test_without_include_self_the_caller_is_no_target_and_not_listed(
    tree: Tree,
) -> None:
    """Steps: worker 1 publishes with include_self false; worker 2 answers.
    Expected: the publish goes out once, naming worker 2 alone as its target (worker 1's
    link counts it and drops it unread); the reply lists worker 2 only, ok."""
    one, two = tree.peers[1], tree.peers[2]
    one.publish(1, "cache.clear", options={"include_self": False})
    publish = tree.next_message(two.sub)
    assert publish["to"] == [two.proc.topic]
    assert tree.next_message(one.sub)["to"] == [two.proc.topic]
    two.answer(publish, "ok")
    reply = TreeReply.from_dict(tree.next_message(one.dealer)["reply"])
    assert (reply.ok, sorted(reply.workers)) == (True, [2])
    assert tree.hub.relay.sent == 1


@pytest.mark.parametrize(
    ("fields", "code", "message"),
    [
        ({"channel": "stop"}, "forbidden", "worker 1 cannot publish 'stop' to the tree: "),
        ({"timeout": 0}, "bad_arguments", "timeout must be a finite number of seconds > 0"),
        ({"options": {"to": [9]}}, "bad_arguments", "no worker 9 (workers: 1-2)"),
        (
            {"options": {"retain": True, "to": [2]}},
            "bad_arguments",
            "a retained publish goes to every worker started later",
        ),
        (
            {"channel": "procbus.metrics", "options": {"retain": True}},
            "forbidden",
            "worker 1 cannot publish 'procbus.metrics' to the tree: ",
        ),
        ({"options": {"wait": 1}}, "bad_arguments", "unknown publish option 'wait'"),
    ],
)
def test_a_refused_publish_is_answered_at_once_with_one_line_and_nothing_runs(
    tree: Tree, recorder: Recorder, fields: dict[str, Any], code: str, message: str
) -> None:
    """Steps: a listener on the master's bus for the channel; worker 1 sends a publish
    the master must refuse (a forbidden channel, a bad timeout, a worker that does not
    exist, a retained publish with targets, an unknown option).
    Expected: a TREE_REPLY error with the code and one line; the master's listener did
    not run, nothing went out to the workers; the event says not allowed, and why."""
    channel = fields.pop("channel", "cache.clear")
    ran: list[str] = []
    tree.bus.subscribe(channel, lambda *a: ran.append(channel))
    one = tree.peers[1]
    one.publish(3, channel, **fields)
    answer = tree.next_message(one.dealer)
    assert answer["id"] == 3 and answer["error"]["code"] == code
    assert answer["error"]["message"].startswith(message)
    assert "\n" not in answer["error"]["message"]
    assert ran == [] and tree.hub.relay.sent == 0
    (event,) = recorder.named("worker_publish")
    assert (event["allowed"], event["reason"], event["channel"]) == (False, code, channel)


def test_a_workers_retained_publish_is_kept_as_that_workers_and_it_may_clear_it(
    tree: Tree,
) -> None:
    """Steps: worker 1 publishes 'feature.flags' "on" with retain; both workers answer;
    then worker 1 clears it (retain and clear).
    Expected: the publish ran in both workers and its reply is ok; the master keeps it
    with worker 1 as the publisher (``ctl retained`` shows it), without the argument;
    the clear's reply says it dropped one, and nothing more went out."""
    one, two = tree.peers[1], tree.peers[2]
    one.publish(7, "feature.flags", "on", options={"retain": True})
    for peer in (one, two):
        publish = tree.next_message(peer.sub)
        peer.answer(publish, "set")
    reply = TreeReply.from_dict(tree.next_message(one.dealer)["reply"])
    assert reply.ok and sorted(reply.workers) == [1, 2]
    retainer = tree.hub.feed
    assert isinstance(retainer, Retainer)
    (kept,) = retainer.listing()
    assert (kept["channel"], kept["seq"], kept["publisher"]) == (
        "feature.flags",
        reply.seq,
        "worker 1",
    )
    assert "on" not in repr(kept)
    one.publish(8, "feature.flags", options={"retain": True, "clear": True})
    cleared = tree.next_message(one.dealer)
    assert cleared["id"] == 8 and cleared["reply"]["cleared"] is True
    assert retainer.listing() == [] and tree.hub.relay.sent == 1


def test_a_worker_past_its_limit_in_flight_is_refused_until_answers_come(tree: Tree) -> None:
    """Steps: worker 1 sends MAX_IN_FLIGHT publishes to worker 2 (which does not answer
    yet), then one more; worker 2 answers the first; worker 1 publishes again.
    Expected: the one past the limit is refused at once as unavailable; once one reply
    went back, a new publish is accepted (it reaches worker 2)."""
    one, two = tree.peers[1], tree.peers[2]
    for request_id in range(MAX_IN_FLIGHT):
        one.publish(request_id, "work", options={"to": [2]})
    seen = [tree.next_message(two.sub) for _ in range(MAX_IN_FLIGHT)]
    one.publish(MAX_IN_FLIGHT, "work", options={"to": [2]})
    refused = tree.next_message(one.dealer)
    assert (refused["id"], refused["error"]["code"]) == (MAX_IN_FLIGHT, "unavailable")
    two.answer(seen[0], "done")
    assert tree.next_message(one.dealer)["id"] == 0
    one.publish(100, "work", options={"to": [2]})
    assert tree.next_message(two.sub)["channel"] == "work"
    assert tree.publishes.in_flight == {one.proc: MAX_IN_FLIGHT}


def test_a_caller_that_died_before_its_answer_is_not_answered(
    tree: Tree, processes: FakeProcesses
) -> None:
    """Steps: worker 1 publishes to worker 2; worker 1's process dies; worker 2 answers.
    Expected: no TREE_REPLY goes to worker 1's identity; the answer is counted as dropped
    and nothing is left in flight."""
    one, two = tree.peers[1], tree.peers[2]
    one.publish(1, "work", options={"to": [2]})
    publish = tree.next_message(two.sub)
    processes.exit(one.proc.pid, -9)
    tree.settle(lambda: tree.pool.by_topic.get(one.proc.topic) is None)
    two.answer(publish, "done")
    tree.settle(lambda: tree.publishes.dropped_answers == 1)
    assert tree.publishes.in_flight == {}
    assert tree.silent(one.dealer)


def test_a_master_that_is_exiting_refuses_a_workers_publish(tree: Tree) -> None:
    tree.exiting[0] = True
    one = tree.peers[1]
    one.publish(1, "cache.clear")
    error = tree.next_message(one.dealer)["error"]
    assert error == {"code": "unavailable", "message": "the master is exiting"}


def test_a_reply_that_cannot_travel_back_becomes_an_error_saying_why(tree: Tree) -> None:
    """Steps: the master's listener returns an object msgpack cannot carry; worker 1
    publishes to no worker but itself excluded (so only the master answers).
    Expected: the TREE_REPLY is an error 'failed' naming the worker and the reason."""
    tree.bus.subscribe("odd", object)
    one = tree.peers[1]
    one.publish(1, "odd", options={"to": [1], "include_self": False})
    error = tree.next_message(one.dealer)["error"]
    assert error["code"] == "failed"
    assert error["message"].startswith("the tree's reply cannot go back to worker 1: ")


def test_tree_publishes_that_break_the_wire_or_come_from_strangers_are_dropped(
    tree: Tree, sockets: Sockets
) -> None:
    """Steps: a TREE_PUBLISH from an identity that never said hello; one without a
    channel from worker 1; one whose kwargs are keyed by a number.
    Expected: all three dropped and counted, none answered; the master runs on (worker
    1's next, good publish is answered)."""
    stranger = sockets.socket(zmq.DEALER, identity=b"w.9.1.")
    stranger.connect("inproc://replies")
    good = {"id": 1, "channel": "c", "args": [], "kwargs": {}}
    stranger.send(protocol.encode(MsgType.TREE_PUBLISH, good))
    one = tree.peers[1]
    header = bytes((protocol.VERSION, MsgType.TREE_PUBLISH))
    one.dealer.send(header + protocol.pack({"id": 2, "args": [], "kwargs": {}}))
    one.dealer.send(header + protocol.pack({**good, "kwargs": {1: 2}}))
    tree.settle(lambda: tree.hub.dropped_messages == 3)
    assert snapshot.counters(tree.hub, None)["dropped_messages"] == 3
    one.publish(4, "c", options={"to": [1], "include_self": False})
    assert tree.next_message(one.dealer)["id"] == 4
    assert tree.silent(stranger)
