"""The bus's listener table: what a publish runs when the table changes.

A publish runs the listeners subscribed when it began, in priority order (ties
in subscription order): one subscribed or unsubscribed meanwhile, by a listener
of that publish or by another thread, counts from the next publish on, as on
wspbus (which sorts a copy of the set before calling anyone). These tests pin
that, and that the table publish reads from follows every way of changing it:
subscribe, unsubscribe, a new priority, and the ``listeners`` sets and mapping
changed directly, as wspbus code may do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from procbus import Bus, ChannelFailures
from procbus.bus import ListenerOutcome


def recorder(calls: list[str], name: str, result: Any = None) -> Callable[..., Any]:
    """A listener that appends `name` to `calls` and returns `result`."""

    def listener(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return result

    listener.__name__ = name
    return listener


def test_listener_subscribed_by_a_listener_runs_from_the_next_publish() -> None:
    """Steps: listener A (priority 10) subscribes B at priority 20 during a publish.
    Expected: that publish runs A only (B came after it began); the next runs A and B."""
    bus = Bus()
    calls: list[str] = []
    b = recorder(calls, "b")

    def a() -> None:
        calls.append("a")
        bus.subscribe("ch", b, priority=20)

    bus.subscribe("ch", a, priority=10)
    bus.publish("ch")
    assert calls == ["a"]
    bus.publish("ch")
    assert calls == ["a", "a", "b"]


def test_listener_unsubscribed_by_a_listener_still_runs_in_that_publish() -> None:
    """Steps: listener A (priority 10) unsubscribes B (priority 20) during a publish.
    Expected: B still runs in that publish (it was subscribed when it began), not in
    the next one."""
    bus = Bus()
    calls: list[str] = []
    b = recorder(calls, "b")

    def a() -> None:
        calls.append("a")
        bus.unsubscribe("ch", b)

    bus.subscribe("ch", a, priority=10)
    bus.subscribe("ch", b, priority=20)
    bus.publish("ch")
    assert calls == ["a", "b"]
    bus.publish("ch")
    assert calls == ["a", "b", "a"]


def test_changes_from_another_thread_during_a_publish_count_from_the_next() -> None:
    """Steps: a publish in a thread blocks in its first listener; meanwhile this thread
    subscribes C, unsubscribes B and publishes (which does not wait for the first);
    then the first publish is released.
    Expected: the publish made meanwhile runs first and C (not B); the blocked one
    goes on with B (not C); no publish waited for another."""
    bus = Bus()
    calls: list[str] = []
    entered, release = threading.Event(), threading.Event()
    b, c = recorder(calls, "b"), recorder(calls, "c")

    def first() -> None:
        calls.append("first")
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            assert release.wait(10)

    bus.subscribe("ch", first, priority=1)
    bus.subscribe("ch", b, priority=2)
    thread = threading.Thread(target=bus.publish, args=("ch",))
    thread.start()
    try:
        assert entered.wait(10)
        bus.subscribe("ch", c, priority=3)
        bus.unsubscribe("ch", b)
        bus.publish("ch")
        assert calls == ["first", "first", "c"]
    finally:
        release.set()
        thread.join(10)
    assert calls == ["first", "first", "c", "b"]


def test_new_priority_of_a_subscribed_listener_counts_at_the_next_publish() -> None:
    """Steps: A at 10 and B at 20; publish; subscribe A again at 30; publish; subscribe
    B again with its own priority unchanged; publish.
    Expected: A, B; then B, A; then B, A again (subscribing again keeps the tie order)."""
    bus = Bus()
    calls: list[str] = []
    a, b = recorder(calls, "a"), recorder(calls, "b")
    bus.subscribe("ch", a, priority=10)
    bus.subscribe("ch", b, priority=20)
    bus.publish("ch")
    bus.subscribe("ch", a, priority=30)
    bus.publish("ch")
    bus.subscribe("ch", b, priority=20)
    bus.publish("ch")
    assert calls == ["a", "b", "b", "a", "b", "a"]


def test_ties_keep_subscription_order_across_priorities_and_resubscribing() -> None:
    """Steps: listeners subscribed at 50, 10, 50, 10, 50 (named in that order); the
    second one at 50 subscribed again at 50; one added to the set directly, then one
    more subscribed at 50.
    Expected: the two at 10 in their order, then the ones at 50 in the order they were
    first subscribed, the direct one when publish first saw it (after those before it)."""
    bus = Bus()
    calls: list[str] = []
    listeners = {name: recorder(calls, name) for name in ("p50a", "p10a", "p50b", "p10b", "p50c")}
    for name, listener in listeners.items():
        bus.subscribe("ch", listener, priority=int(name[1:3]))
    bus.subscribe("ch", listeners["p50b"], priority=50)
    bus.listeners["ch"].add(recorder(calls, "direct"))
    bus.publish("ch")
    bus.subscribe("ch", recorder(calls, "later"))
    calls.clear()
    bus.publish("ch")
    assert calls == ["p10a", "p10b", "p50a", "p50b", "p50c", "direct", "later"]


def test_listener_sets_changed_directly_after_a_publish_are_followed() -> None:
    """wspbus code may change ``bus.listeners`` without subscribe. After a publish has
    seen the channel, each of these is followed by the next publish: add to the set;
    discard from it; swap one member for another (same size); replace the set; delete
    the channel; clear the whole mapping.
    Expected: each publish runs exactly the listeners the table holds at that moment."""
    bus = Bus()
    calls: list[str] = []
    a, b, c = recorder(calls, "a", 1), recorder(calls, "b", 2), recorder(calls, "c", 3)
    bus.subscribe("ch", a, priority=10)
    assert bus.publish("ch") == [1]
    bus.listeners["ch"].add(b)
    assert bus.publish("ch") == [1, 2]
    bus.listeners["ch"].discard(a)
    assert bus.publish("ch") == [2]
    bus.listeners["ch"].discard(b)
    bus.listeners["ch"].add(c)
    assert bus.publish("ch") == [3]
    bus.listeners["ch"] = {a, c}
    assert bus.publish("ch") == [1, 3]
    del bus.listeners["ch"]
    assert bus.publish("ch") == []
    bus.listeners["ch"] = {b}
    assert bus.publish("ch") == [2]
    bus.listeners.clear()
    assert bus.publish("ch") == []
    assert calls == ["a", "a", "b", "b", "c", "a", "c", "b"]


def test_unsubscribe_after_a_publish_is_followed_and_resubscribe_restores() -> None:
    """Steps: A at 10 and B at 20; publish; unsubscribe A; publish; subscribe A (default
    priority 50); publish.
    Expected: [a, b], [b], [b, a]."""
    bus = Bus()
    calls: list[str] = []
    a, b = recorder(calls, "a", "a"), recorder(calls, "b", "b")
    bus.subscribe("ch", a, priority=10)
    bus.subscribe("ch", b, priority=20)
    assert bus.publish("ch") == ["a", "b"]
    bus.unsubscribe("ch", a)
    assert bus.publish("ch") == ["b"]
    bus.subscribe("ch", a)
    assert bus.publish("ch") == ["b", "a"]


def test_publishes_racing_subscriptions_always_run_in_priority_order() -> None:
    """Steps: two threads subscribe and unsubscribe listeners at priorities 0..39 in
    scrambled order while two threads publish 2000 times; each listener records its
    priority in the publishing thread's list for that publish.
    Expected: no error, and every publish ran its listeners in non-decreasing priority."""
    bus = Bus()
    errors: list[BaseException] = []
    unordered: list[list[int]] = []
    local = threading.local()
    stop = threading.Event()

    def make(priority: int) -> Callable[[], None]:
        def listener() -> None:
            local.seen.append(priority)

        return listener

    def churn(offset: int) -> None:
        callbacks = [(make(p), p) for p in range(offset, 40, 2)]
        scrambled = callbacks[::3] + callbacks[1::3] + callbacks[2::3]
        try:
            while not stop.is_set():
                for callback, priority in scrambled:
                    bus.subscribe("ch", callback, priority=priority)
                for callback, _ in scrambled:
                    bus.unsubscribe("ch", callback)
        except BaseException as exc:
            errors.append(exc)

    def publish() -> None:
        try:
            for _ in range(2000):
                local.seen = []
                bus.publish("ch")
                if local.seen != sorted(local.seen):
                    unordered.append(local.seen)
        except BaseException as exc:
            errors.append(exc)

    churners = [threading.Thread(target=churn, args=(n,)) for n in range(2)]
    publishers = [threading.Thread(target=publish) for _ in range(2)]
    for thread in churners + publishers:
        thread.start()
    for thread in publishers:
        thread.join(30)
    stop.set()
    for thread in churners:
        thread.join(30)
    assert errors == []
    assert unordered == []


def test_failures_keep_order_results_and_forwarded_errors_come_last() -> None:
    """Steps: listeners at 1 (returns 1), 2 (raises ValueError), 3 (returns 3), 4 (raises
    KeyError); a forward hook that records its call and returns one RuntimeError for
    this channel (none for ``log``, which stays local, as on a master).
    Expected: publish raises ChannelFailures with ValueError, KeyError, RuntimeError in
    that order, every listener ran, forward got (channel, args, kwargs) after the local
    listeners; run_listeners gives one outcome per listener in order (results and
    errors in place) and does not forward."""
    bus = Bus()
    calls: list[str] = []

    def value_error(*args: Any, **kwargs: Any) -> None:
        calls.append("value_error")
        raise ValueError("v")

    def key_error(*args: Any, **kwargs: Any) -> None:
        calls.append("key_error")
        raise KeyError("k")

    def forward(
        channel: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[BaseException]:
        if channel == "log":
            return []
        calls.append(f"forward {channel} {args} {kwargs}")
        return [RuntimeError("remote")]

    bus.subscribe("ch", recorder(calls, "one", 1), priority=1)
    bus.subscribe("ch", value_error, priority=2)
    bus.subscribe("ch", recorder(calls, "three", 3), priority=3)
    bus.subscribe("ch", key_error, priority=4)
    bus.subscribe("log", lambda msg, level: None)
    bus.forward = forward
    with pytest.raises(ChannelFailures) as info:
        bus.publish("ch", 7, k=8)
    assert [type(e) for e in info.value.get_instances()] == [ValueError, KeyError, RuntimeError]
    assert calls == ["one", "value_error", "three", "key_error", "forward ch (7,) {'k': 8}"]
    calls.clear()
    outcomes = bus.run_listeners("ch")
    assert calls == ["one", "value_error", "three", "key_error"]
    assert [(o.result, type(o.error)) for o in outcomes] == [
        (1, type(None)),
        (None, ValueError),
        (3, type(None)),
        (None, KeyError),
    ]
    assert all(isinstance(o, ListenerOutcome) for o in outcomes)


def test_forward_runs_for_a_channel_without_listeners() -> None:
    """Steps: a forward hook returning nothing; publish on a channel nobody subscribed
    to locally, then on one whose only listener returns 5.
    Expected: [] then [5]; forward was called for both."""
    bus = Bus()
    forwarded: list[str] = []
    bus.forward = lambda channel, args, kwargs: forwarded.append(channel) or []
    assert bus.publish("nobody") == []
    bus.subscribe("one", lambda: 5)
    assert bus.publish("one") == [5]
    assert forwarded == ["nobody", "one"]


def test_reset_after_fork_forgets_the_listeners_a_publish_saw() -> None:
    """Steps: subscribe and publish (the table is read); reset_after_fork; publish.
    Expected: the second publish runs nothing."""
    bus = Bus()
    calls: list[str] = []
    bus.subscribe("ch", recorder(calls, "a"))
    bus.publish("ch")
    bus.reset_after_fork()
    assert bus.publish("ch") == []
    assert calls == ["a"]
