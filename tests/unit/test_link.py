"""The worker's link: WELCOME, held-back publishes, sequence gap detection, the DRAIN
marker, and replies bounded as the master bounds them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import protocol
from procbus.bus import Bus, ListenerOutcome
from procbus.protocol import BusState, MsgType
from procbus.worker.link import WorkerLink
from tests.fake_master import FakeMaster
from tests.helpers import wait_until


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[FakeMaster, WorkerLink]]:
    context: zmq.Context[Any] = zmq.Context()
    master = FakeMaster(context, tmp_path)
    link = WorkerLink(context, 1, 1, master.publish_endpoint, master.reply_endpoint)
    try:
        master.wait_subscribed(link)
        yield master, link
    finally:
        link.close(0)
        master.close()
        context.term()


def receive_publishes(link: WorkerLink, count: int) -> list[protocol.Message]:
    got: list[protocol.Message] = []
    while len(got) < count:
        assert link.sub.poll(5000), f"only {len(got)} of {count} publishes arrived"
        message = link.receive_publish()
        if message is not None:
            got.append(message)
    return got


def reply_errors(master: FakeMaster, link: WorkerLink, seq: int) -> list[dict[str, str]]:
    link.reply(seq, [])
    message = master.receive()
    assert message.type is MsgType.REPLY
    assert message["seq"] == seq
    errors: list[dict[str, str]] = message["errors"]
    return errors


def test_publishes_before_welcome_are_held_then_filtered(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: publishes 1-3 arrive before WELCOME(next_seq=2).
    Expected: none is handled before WELCOME; afterwards 2 and 3 are, 1 is dropped."""
    master, link = tree
    for seq in (1, 2, 3):
        master.publish(seq)
    wait_until(lambda: link.sub.poll(10), 5)
    for _ in range(3):
        link.sub.poll(1000)
        assert link.receive_publish() is None
    master.welcome(link.topic, 2)
    assert link.dealer.poll(5000)
    assert link.receive_command() is not None
    assert [m["seq"] for m in link.take_held()] == [2, 3]
    assert link.next_seq == 4


def test_sequence_gap_is_reported_with_the_next_reply(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: welcomed at 1, the worker receives publishes 1, 2 and 5.
    Expected: the reply to 5 carries a SequenceGap error naming 3-4; the reply after
    it carries none."""
    master, link = tree
    master.welcome(link.topic, 1)
    assert link.dealer.poll(5000)
    link.receive_command()
    for seq in (1, 2, 5, 6):
        master.publish(seq)
    seqs = [m["seq"] for m in receive_publishes(link, 4)]
    assert seqs == [1, 2, 5, 6]
    (gap,) = reply_errors(master, link, 5)
    assert gap["type"] == "SequenceGap"
    assert gap["message"] == "missed publishes 3-4 before 5"
    assert reply_errors(master, link, 6) == []


def test_reply_carries_results_errors_and_unserializable_results(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: a bus with a listener returning 1, one raising, one returning object();
    the link replies with their outcomes. Expected: results [1, None, None]; a
    ValueError and a TypeError naming the unserializable listener."""
    master, link = tree
    bus = Bus()

    def one() -> int:
        return 1

    def bad() -> None:
        raise ValueError("no")

    def opaque() -> object:
        return object()

    for priority, listener in enumerate((one, bad, opaque)):
        bus.subscribe("ch", listener, priority=priority)
    link.reply(9, bus.run_listeners("ch"))
    message = master.receive()
    assert message["results"] == [1, None, None]
    types = [e["type"] for e in message["errors"]]
    assert types == ["ValueError", "TypeError"]
    assert "opaque is not serializable" in message["errors"][1]["message"]
    assert message["errors"][0]["listener"].endswith(".bad")


def test_each_gap_is_reported_with_the_reply_to_the_publish_after_it(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: welcomed at 1, the worker receives publishes 1, 3 and 6 before it answers
    any (they wait for its listeners), then answers 6, 1 and 3.
    Expected: the reply to 3 names the gap 2, the reply to 6 the gap 4-5, the reply to 1
    none."""
    master, link = tree
    master.welcome(link.topic, 1)
    assert link.dealer.poll(5000)
    link.receive_command()
    for seq in (1, 3, 6):
        master.publish(seq)
    assert [m["seq"] for m in receive_publishes(link, 3)] == [1, 3, 6]
    assert [e["message"] for e in reply_errors(master, link, 6)] == [
        "missed publishes 4-5 before 6"
    ]
    assert reply_errors(master, link, 1) == []
    assert [e["message"] for e in reply_errors(master, link, 3)] == ["missed publishes 2 before 3"]


def test_refused_publish_is_answered_with_a_backlog_error(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: the link refuses publish 4 with a reason.
    Expected: a reply to 4 with no results and one BacklogFull error carrying the reason."""
    master, link = tree
    link.refuse(4, "1000 publishes already wait")
    message = master.receive()
    assert message["seq"] == 4
    assert message["results"] == []
    (error,) = message["errors"]
    assert (error["type"], error["message"]) == ("BacklogFull", "1000 publishes already wait")


def welcome(master: FakeMaster, link: WorkerLink, next_seq: int) -> None:
    master.welcome(link.topic, next_seq)
    assert link.dealer.poll(5000), "no WELCOME arrived"
    assert link.receive_command() is not None


def wait_connection_lost(link: WorkerLink) -> None:
    """Read the link's monitor, as the worker's loop does, until it saw the loss."""
    assert link.monitor.poll(5000), "no monitor event"
    link.watch_connection()
    assert link.next_seq is None


def wait_reconnected(master: FakeMaster, link: WorkerLink) -> None:
    """Until both sockets of `link` reconnected to `master` (as a master proves it
    before it sends WELCOME: a WELCOME sent earlier would be dropped)."""
    master.wait_subscribed(link)
    link.heartbeat({}, BusState.STARTED)
    assert master.receive().type is MsgType.HEARTBEAT


def test_lost_connection_holds_publishes_until_the_new_masters_welcome(
    tree: tuple[FakeMaster, WorkerLink], tmp_path: Path
) -> None:
    """Steps: welcomed at 1, the worker answers 1 and 2; the master goes away (as in a
    re-exec) and a new one binds the same endpoints; while the worker re-subscribes,
    publishes 3 and 4 go out unseen; then 5, WELCOME(5), 6 and 8.
    Expected: once the loss is read from the monitor, the sequence is forgotten and 5 is
    held back; WELCOME(5) releases it; the replies to 5 and 6 carry no gap (3 and 4 were
    never meant for this worker), the reply to 8 still reports the real gap 7."""
    old, link = tree
    welcome(old, link, 1)
    old.publish(1)
    old.publish(2)
    assert [m["seq"] for m in receive_publishes(link, 2)] == [1, 2]
    old.close()
    wait_connection_lost(link)
    new = FakeMaster(link.sub.context, tmp_path)
    try:
        new.publish(3)
        new.publish(4)
        wait_reconnected(new, link)
        new.publish(5)
        assert link.sub.poll(5000)
        assert link.receive_publish() is None  # held back
        welcome(new, link, 5)
        assert [m["seq"] for m in link.take_held()] == [5]
        new.publish(6)
        new.publish(8)
        assert [m["seq"] for m in receive_publishes(link, 2)] == [6, 8]
        assert reply_errors(new, link, 5) == []
        assert reply_errors(new, link, 6) == []
        (gap,) = reply_errors(new, link, 8)
        assert gap["message"] == "missed publishes 7 before 8"
    finally:
        new.close()


def test_welcome_read_before_the_monitor_event_still_resets_the_sequence(
    tree: tuple[FakeMaster, WorkerLink], tmp_path: Path
) -> None:
    """Steps: welcomed at 1; a WELCOME(9) while connected; then the master goes away, a
    new one binds the same endpoints and sends WELCOME(20) before anyone read the link's
    monitor.
    Expected: the first extra WELCOME changes nothing (next_seq stays 1); the one after
    the loss sets next_seq to 20 (the link reads its monitor first)."""
    old, link = tree
    welcome(old, link, 1)
    welcome(old, link, 9)
    assert link.next_seq == 1
    old.close()
    assert link.monitor.poll(5000), "no monitor event"
    new = FakeMaster(link.sub.context, tmp_path)
    try:
        wait_reconnected(new, link)
        welcome(new, link, 20)
        assert link.next_seq == 20
    finally:
        new.close()


def read_all(link: WorkerLink, count: int) -> list[int | None]:
    """Read `count` messages off SUB as the worker does: the publish seq, or None."""
    seqs: list[int | None] = []
    for _ in range(count):
        assert link.sub.poll(5000), f"only {len(seqs)} of {count} messages arrived"
        message = link.receive_publish()
        seqs.append(None if message is None else message["seq"])
    return seqs


def test_publishes_after_the_drain_marker_are_dropped(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: welcomed at 1; publishes 1 and 2, the DRAIN marker (last_seq 2) on the
    worker's own topic, then publish 3.
    Expected: 1 and 2 are handled; the marker sets drain_seq 2; 3 is dropped."""
    master, link = tree
    welcome(master, link, 1)
    master.publish(1)
    master.publish(2)
    master.drain(link.topic, 2)
    master.publish(3)
    assert read_all(link, 4) == [1, 2, None, None]
    assert link.drain_seq == 2
    assert link.held == 0


def test_drain_marker_before_welcome_keeps_the_held_publishes_only(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: publishes 1 and 2, the marker (last_seq 2) and publish 3 arrive before
    WELCOME(2).
    Expected: 1 and 2 are held, 3 is not; WELCOME releases 2 only."""
    master, link = tree
    master.publish(1)
    master.publish(2)
    master.drain(link.topic, 2)
    master.publish(3)
    assert read_all(link, 4) == [None] * 4
    assert (link.drain_seq, link.held) == (2, 2)
    welcome(master, link, 2)
    assert [m["seq"] for m in link.take_held()] == [2]
    assert link.held == 0


def test_drain_marker_on_the_broadcast_topic_is_ignored(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: welcomed at 1; a DRAIN marker under the broadcast topic, then publish 1.
    Expected: the marker is dropped (a marker names one worker); publish 1 is handled."""
    master, link = tree
    welcome(master, link, 1)
    master.drain(protocol.BROADCAST_TOPIC, 5)
    master.publish(1)
    assert read_all(link, 2) == [None, 1]
    assert link.drain_seq is None


def test_no_publish_is_taken_after_stop_taking_publishes(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: welcomed at 1; publish 1; stop_taking_publishes; publish 2.
    Expected: 1 handled, 2 dropped (a stop that saw no marker)."""
    master, link = tree
    welcome(master, link, 1)
    master.publish(1)
    assert read_all(link, 1) == [1]
    link.stop_taking_publishes()
    master.publish(2)
    assert read_all(link, 1) == [None]


def outcome(result: Any) -> ListenerOutcome:
    return ListenerOutcome(listener=outcome, result=result)


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("result", "limit"),
    [
        ([{} for _ in range(protocol.WORKER_LIMITS.elements)], "elements"),
        (nested(protocol.WORKER_LIMITS.depth), "levels deep"),
    ],
    ids=["elements", "depth"],
)
def test_reply_beyond_the_masters_limits_becomes_one_error(
    tree: tuple[FakeMaster, WorkerLink], result: Any, limit: str
) -> None:
    """Steps: a listener returns a value that makes the reply hold more elements than
    WORKER_LIMITS allow (262144 empty maps), or nest deeper (a list 64 deep, in the
    results list, in the body); the next reply is small.
    Expected: the master receives a reply with a None result and one error naming the
    limit (not a frame it would drop); the next reply is whole."""
    master, link = tree
    link.reply(7, [outcome(result), outcome("fine")])
    message = protocol.decode(master.receive_frame(), limits=protocol.WORKER_LIMITS)
    assert message["results"] == [None, None]
    (error,) = message["errors"]
    assert error["type"] == "ValueError"
    assert error["message"].startswith("reply holds more than the master accepts")
    assert limit in error["message"]
    link.reply(8, [outcome(nested(protocol.WORKER_LIMITS.depth - 2))])
    assert master.receive()["results"] == [nested(protocol.WORKER_LIMITS.depth - 2)]


def test_reply_with_many_containers_within_the_limits_is_sent_whole(
    tree: tuple[FakeMaster, WorkerLink],
) -> None:
    """Steps: a listener returns 5000 small maps (checked against the limits, within them).
    Expected: the master receives them all."""
    master, link = tree
    result = [{"n": n} for n in range(5000)]
    link.reply(3, [outcome(result)])
    message = protocol.decode(master.receive_frame(), limits=protocol.WORKER_LIMITS)
    assert message["results"] == [result]
    assert message["errors"] == []
