"""Retained publishes on the master's side, over the hub on ``inproc://`` sockets: what is
kept, what is refused before anything runs, and what a new worker is sent before it
runs (its catch-up), whatever is retained while it starts.

The test speaks for worker 1 through its DEALER and SUB (`tests.component.wiring`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq

from procbus import protocol
from procbus.master.loop import EventLoop
from procbus.master.relay import TreeReply, WorkerStatus
from procbus.protocol import MsgType
from procbus.publishing import PublishOptions
from tests.component.fakes import FakeProcesses, Fate, Recorder
from tests.component.wiring import Wired, received, wire
from tests.helpers import FakeClock, Sockets

RETAIN = PublishOptions(retain=True)
CLEAR = PublishOptions(retain=True, clear=True)


@pytest.fixture
def wired(
    loop: EventLoop,
    clock: FakeClock,
    sockets: Sockets,
    processes: FakeProcesses,
    recorder: Recorder,
) -> Iterator[Wired]:
    with wire(loop, clock, sockets, processes, recorder, feed=True) as made:
        yield made


def publishes(message: protocol.Message) -> list[tuple[str, list[object]]]:
    """(channel, args) of each PUBLISH frame a RETAINED message carries."""
    assert message.type is MsgType.RETAINED, message
    decoded = [protocol.decode(f, expect=frozenset({MsgType.PUBLISH})) for f in message["frames"]]
    return [(p["channel"], p["args"]) for p in decoded]


def nothing_more(dealer: zmq.Socket[bytes]) -> bool:
    return not dealer.poll(50)


def test_a_retained_publish_is_a_tree_publish_the_master_also_keeps(
    wired: Wired, recorder: Recorder
) -> None:
    """Steps: worker 1 runs; a listener on the master; publish 'flags' "on" retained, then
    "off" retained, by ctl.
    Expected: each ran on the master and reached the worker as any publish does; the
    store keeps one publish for 'flags', the last ("off", its seq 2, who published);
    each stored is a ``retained_stored`` event naming the channel only."""
    _, sub = wired.run_worker()
    ran: list[str] = []
    wired.publisher.bus.subscribe("flags", ran.append)
    for value in ("on", "off"):
        wired.publisher.publish_async("flags", [value], options=RETAIN, publisher="ctl uid 0")
        assert received(sub)["args"] == [value]
    assert ran == ["on", "off"]
    (kept,) = wired.retainer.store
    assert (kept.channel, kept.seq, kept.publisher) == ("flags", 2, "ctl uid 0")
    assert protocol.decode(kept.frame)["args"] == ["off"]
    assert recorder.named("retained_stored") == [{"channel": "flags"}, {"channel": "flags"}]


def test_clear_drops_it_publishes_nothing_and_says_whether_there_was_one(
    wired: Wired, recorder: Recorder
) -> None:
    """Steps: worker 1 runs; retain 'flags'; a listener on the master; clear 'flags'
    twice.
    Expected: the first reply says cleared, the second that there was none; neither ran
    a listener or sent anything (one publish went out in all); one ``retained_cleared``
    event."""
    _, sub = wired.run_worker()
    wired.publisher.publish_async("flags", ["on"], options=RETAIN)
    received(sub)
    ran: list[object] = []
    wired.publisher.bus.subscribe("flags", ran.append)
    replies: list[TreeReply] = []
    for _ in range(2):
        wired.publisher.publish_async("flags", options=CLEAR, on_done=replies.append)
    assert [(r.cleared, r.seq, r.workers, r.ok) for r in replies] == [
        (True, None, {}, True),
        (False, None, {}, True),
    ]
    assert ran == []
    assert wired.hub.relay.sent == 1
    assert list(wired.retainer.store) == []
    assert recorder.named("retained_cleared") == [{"channel": "flags"}]
    assert replies[0].to_dict()["cleared"] is True


@pytest.mark.parametrize(("args", "kwargs"), [(["on"], {}), ([], {"value": "on"})])
def test_a_clear_with_arguments_is_refused_and_keeps_the_retained_publish(
    wired: Wired, args: list[object], kwargs: dict[str, object]
) -> None:
    """Steps: retain 'flags'; clear 'flags' giving an argument (positional, keyword).
    Expected: ValueError in one line (a clear publishes nothing: an argument is a
    mistake, perhaps a publish meant); 'flags' is still kept, nothing more was sent."""
    wired.run_worker()
    wired.publisher.publish_async("flags", ["on"], options=RETAIN)
    with pytest.raises(ValueError, match="clear takes no arguments"):
        wired.publisher.publish_async("flags", args, kwargs, options=CLEAR)
    assert [p.channel for p in wired.retainer.store] == ["flags"]
    assert wired.hub.relay.sent == 1


@pytest.mark.parametrize("channel", ["start", "stop", "exit", "log", "main", "procbus.metrics"])
def test_retain_on_the_masters_own_channels_is_refused_before_anything_runs(
    wired: Wired, channel: str
) -> None:
    """Expected: ValueError in one line naming the channel, for a retain and for a clear;
    nothing ran, nothing was sent or kept."""
    ran: list[object] = []
    wired.publisher.bus.subscribe(channel, lambda *a: ran.append(a))
    for options in (RETAIN, CLEAR):
        with pytest.raises(ValueError, match=f"channel {channel!r} cannot be retained"):
            wired.publisher.publish_async(channel, options=options)
    assert (ran, wired.hub.relay.sent, len(wired.retainer.store)) == ([], 0, 0)


def test_a_retained_publish_past_the_bounds_is_refused_before_anything_runs(
    wired: Wired,
) -> None:
    """Steps: the store may hold one channel; retain 'a'; a listener on 'b'; retain 'b'.
    Expected: ValueError in one line naming 'b' and the bound; 'b''s listener did not
    run, nothing more was sent, 'a' is still kept."""
    wired.retainer.store.max_channels = 1
    wired.run_worker()
    wired.publisher.publish_async("a", options=RETAIN)
    ran: list[object] = []
    wired.publisher.bus.subscribe("b", lambda: ran.append("b"))
    with pytest.raises(ValueError, match=r"1 channels are retained already .* retaining 'b'"):
        wired.publisher.publish_async("b", options=RETAIN)
    assert (ran, wired.hub.relay.sent) == ([], 1)
    assert [p.channel for p in wired.retainer.store] == ["a"]


def test_a_new_worker_gets_the_snapshot_then_each_retained_publish_until_its_welcome(
    wired: Wired,
) -> None:
    """Steps: retain 'a' 1, 'b' 2, 'a' 3 with no worker running; worker 1 says hello;
    retain 'c' 4 while it starts; it subscribes and runs; retain 'd' 5.
    Expected: on its DEALER, in this order: the snapshot (b 2, a 3: one per channel, in
    publish order; complete), then c 4 alone (at once, while it starts), then its
    WELCOME at publish 5; d 5 is not sent on the DEALER (it is a target: d comes on
    SUB, answered as any publish)."""
    for channel, value in (("a", 1), ("b", 2), ("a", 3)):
        wired.publisher.publish_async(channel, [value], options=RETAIN)
    dealer = wired.say_hello()
    snapshot = received(dealer)
    assert publishes(snapshot) == [("b", [2]), ("a", [3])]
    assert snapshot["more"] is False
    wired.publisher.publish_async("c", [4], options=RETAIN)
    during = received(dealer)
    assert (publishes(during), during["more"]) == ([("c", [4])], False)
    sub = wired.run(dealer)
    welcome = received(dealer)
    assert (welcome.type, welcome["next_seq"]) == (MsgType.WELCOME, 5)
    replies: list[TreeReply] = []
    wired.publisher.publish_async("d", [5], options=RETAIN, on_done=replies.append)
    assert received(sub)["args"] == [5]
    assert nothing_more(dealer)
    assert replies == [] and wired.hub.relay.pending  # it waits for worker 1's answer


def test_a_cleared_channel_is_not_in_the_snapshot_and_a_worker_gone_is_sent_nothing(
    wired: Wired,
) -> None:
    """Steps: retain 'a' and 'b', clear 'a'; worker 1 says hello; its process dies;
    retain 'c'.
    Expected: the snapshot holds b only; after the worker is gone nothing more is sent
    to it, and the feed forgot it."""
    wired.publisher.publish_async("a", options=RETAIN)
    wired.publisher.publish_async("b", options=RETAIN)
    wired.publisher.publish_async("a", options=CLEAR)
    dealer = wired.say_hello()
    assert publishes(received(dealer)) == [("b", [])]
    wired.processes.exit(wired.worker.pid, -9)
    wired.settle(lambda: wired.worker.pid not in wired.pool.by_pid)
    wired.publisher.publish_async("c", options=RETAIN)
    assert nothing_more(dealer)
    assert not wired.retainer.owes(wired.worker)


def test_an_adopted_worker_is_sent_before_its_welcome_only_what_was_retained_since(
    wired: Wired,
) -> None:
    """Steps: retain 'a' (the previous master's); the worker is adopted (it has 'a'
    already: it said hello to the previous master); retain 'b'; it is heard and
    subscribed, and runs.
    Expected: no snapshot (it said no hello here); just before its WELCOME, one RETAINED
    with b alone; then the WELCOME."""
    wired.publisher.publish_async("a", options=RETAIN)
    wired.pool.view.target = 2  # a second slot, for the worker a previous master forked
    wired.processes.plan(2, 4, Fate.HANG)
    adopted = wired.pool.adopt(2, 4, wired.processes.spawn(2, 4))
    assert adopted is not None
    wired.retainer.adopted(adopted)
    wired.publisher.publish_async("b", [2], options=RETAIN)
    dealer = wired.dealer(adopted.topic)
    dealer.send(protocol.encode(MsgType.HEARTBEAT, {"counters": {}}))
    sub = wired.sockets.socket(zmq.SUB)
    sub.connect("inproc://publish")
    sub.subscribe(adopted.topic)
    wired.settle(lambda: adopted.subscribed and adopted.lifecycle is not None)
    caught_up = received(dealer)
    assert publishes(caught_up) == [("b", [2])]
    welcome = received(dealer)
    assert (welcome.type, welcome["next_seq"]) == (MsgType.WELCOME, 3)
    assert nothing_more(dealer)


def test_a_large_snapshot_goes_in_several_messages_in_order(wired: Wired) -> None:
    """Steps: retain six publishes of about 3 MiB each (18 MiB with a store bound of 32
    MiB); worker 1 says hello.
    Expected: the snapshot comes in several RETAINED messages, each within the wire's
    limit, all but the last saying more; together the six in publish order."""
    wired.retainer.store.max_size = 32 * 1024 * 1024
    blob = "x" * (3 * 1024 * 1024)
    for index in range(6):
        wired.publisher.publish_async(f"c{index}", [index, blob], options=RETAIN)
    dealer = wired.say_hello()
    parts = [received(dealer)]
    while parts[-1]["more"]:
        parts.append(received(dealer))
    assert len(parts) > 1
    assert [channel for part in parts for channel, _ in publishes(part)] == [
        f"c{index}" for index in range(6)
    ]
    assert all(sum(map(len, part["frames"])) < protocol.MAX_MESSAGE_SIZE for part in parts)


def test_a_worker_that_died_before_answering_a_retained_publish_is_lost_as_for_any(
    wired: Wired,
) -> None:
    """Steps: worker 1 runs; retain 'a'; the worker dies before answering.
    Expected: the reply reports it lost; the publish is kept all the same (a worker
    started later gets it)."""
    wired.run_worker()
    replies: list[TreeReply] = []
    wired.publisher.publish_async("a", options=RETAIN, on_done=replies.append)
    wired.processes.exit(wired.worker.pid, -9)
    wired.settle(lambda: bool(replies))
    assert replies[0].workers[1].status is WorkerStatus.LOST
    assert [p.channel for p in wired.retainer.store] == ["a"]
