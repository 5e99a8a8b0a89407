"""The retained store: one publish per channel in publish order, its bounds, its one-line
refusals, and its form across a hand-over (restart, upgrade)."""

from __future__ import annotations

import msgpack
import pytest

from procbus import protocol
from procbus.master.retained import (
    MAX_PUBLISH_SIZE,
    REFUSED_CHANNELS,
    RetainedStore,
    chunks,
)


def frame(channel: str, seq: int, *args: object) -> bytes:
    return protocol.PublishTemplate(channel, list(args), {}, 5.0).frame(seq)


def put(store: RetainedStore, channel: str, seq: int, *args: object) -> None:
    store.put(channel, seq, frame(channel, seq, *args), f"ctl {seq}", 1000.0 + seq)


def test_a_channel_keeps_its_last_publish_and_moves_to_the_end_of_publish_order() -> None:
    """Steps: retain on a, b, then a again (a new value), then c.
    Expected: one publish per channel (a's last), in publish order b, a, c; the
    numbers of the store's order go on (a's second is 3); `since` gives the publishes
    made after an order number, in order."""
    store = RetainedStore()
    put(store, "a", 1, "old")
    put(store, "b", 2)
    put(store, "a", 3, "new")
    put(store, "c", 4)
    assert [(p.channel, p.seq, p.order) for p in store] == [("b", 2, 2), ("a", 3, 3), ("c", 4, 4)]
    assert protocol.decode(store.get("a").frame)["args"] == ["new"]
    assert [p.channel for p in store.since(2)] == ["a", "c"]
    assert store.since(4) == []
    assert store.last_order == 4
    assert store.size == sum(len(p.frame) for p in store)


def test_clear_drops_a_channel_and_says_whether_there_was_one() -> None:
    """Steps: retain on a and b; clear a; clear a again; clear never.
    Expected: True, then False, False; only b is left and the size is b's."""
    store = RetainedStore()
    put(store, "a", 1)
    put(store, "b", 2)
    assert store.clear("a") is True
    assert store.clear("a") is False
    assert store.clear("never") is False
    assert [p.channel for p in store] == ["b"]
    assert store.size == len(store.get("b").frame)


def test_listing_says_channel_when_seq_size_and_who_but_no_argument_values() -> None:
    """Steps: retain 'secret-value' on flags; list at time 1010.
    Expected: one entry: channel, time, age 9 s, seq, size in bytes and publisher; the
    argument value appears nowhere in it."""
    store = RetainedStore()
    put(store, "flags", 1, "secret-value")
    (entry,) = store.listing(now=1010.0)
    assert entry == {
        "channel": "flags",
        "time": 1001.0,
        "age": 9.0,
        "seq": 1,
        "size": len(frame("flags", 1, "secret-value")),
        "publisher": "ctl 1",
    }
    assert "secret-value" not in repr(entry)


@pytest.mark.parametrize("channel", sorted(REFUSED_CHANNELS))
def test_the_masters_own_channels_cannot_be_retained(channel: str) -> None:
    """Expected: check refuses each of them in one line naming it."""
    with pytest.raises(ValueError, match=f"channel {channel!r} cannot be retained") as info:
        RetainedStore().check(channel)
    assert "\n" not in str(info.value)
    assert set(REFUSED_CHANNELS) >= {"start", "stop", "exit", "log", "main", "procbus.metrics"}


def test_a_channel_past_the_bound_is_refused_and_nothing_is_lost() -> None:
    """Steps: a store of at most 2 channels holds a and b; check c; check a (a
    replacement).
    Expected: c is refused in one line naming it and the bound; a and b are still
    there; replacing a is allowed (no new channel)."""
    store = RetainedStore(max_channels=2)
    put(store, "a", 1)
    put(store, "b", 2)
    with pytest.raises(ValueError) as info:
        store.check("c", 10)
    assert str(info.value) == (
        "2 channels are retained already (at most 2): clear one (--retain --clear) "
        "before retaining 'c'"
    )
    store.check("a", 10)
    assert [p.channel for p in store] == ["a", "b"]


def test_a_publish_past_the_total_size_is_refused_counting_the_one_it_replaces() -> None:
    """Steps: a store of at most 300 bytes holds a (about 40 bytes); check b of 270
    bytes, then a of 290 bytes (it replaces a's).
    Expected: b is refused in one line with the sizes; a of 290 fits."""
    store = RetainedStore(max_size=300)
    put(store, "a", 1)
    used = store.size
    with pytest.raises(ValueError) as info:
        store.check("b", 270)
    assert str(info.value) == (
        f"retaining 270 bytes on 'b' would take the retained publishes to {used + 270} "
        "bytes (at most 300)"
    )
    store.check("a", 290)


def test_a_publish_beyond_the_wire_is_refused() -> None:
    """Expected: a publish one byte over MAX_PUBLISH_SIZE is refused naming both sizes,
    one at the limit is not."""
    store = RetainedStore()
    store.check("big", MAX_PUBLISH_SIZE)
    with pytest.raises(ValueError, match=f"exceeds the limit of {MAX_PUBLISH_SIZE} bytes"):
        store.check("big", MAX_PUBLISH_SIZE + 1)


def test_a_sealed_store_refuses_changes_until_unsealed() -> None:
    """Steps: seal with a reason; check a channel; clear one; unseal; check again.
    Expected: both refused with the reason; allowed after unsealing."""
    store = RetainedStore()
    put(store, "a", 1)
    store.sealed = "an upgrade hands them over"
    with pytest.raises(ValueError, match="retained publishes cannot change now: an upgrade"):
        store.check("a")
    with pytest.raises(ValueError, match="cannot change now"):
        store.clear("a")
    store.sealed = None
    store.check("a")


def test_the_hand_over_form_restores_the_same_store() -> None:
    """Steps: retain a, b, a again; dump; restore into a new store; retain c there.
    Expected: the same publishes in the same order (channel, order, seq, frame, time,
    publisher); c is numbered after them."""
    store = RetainedStore()
    put(store, "a", 1)
    put(store, "b", 2, {"x": [1, 2]})
    put(store, "a", 3)
    restored = RetainedStore()
    restored.restore(store.dump())
    assert list(restored) == list(store)
    assert (restored.last_order, restored.size) == (store.last_order, store.size)
    put(restored, "c", 1)
    assert restored.get("c").order == store.last_order + 1


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"version": 99, "order": 1, "publishes": []}),
        msgpack.packb({"version": 1, "order": 1, "publishes": [["a", 1, 1, 1.0, "x"]]}),
        msgpack.packb({"version": 1, "order": 1, "publishes": [["a", 1, 1, 1.0, "x", "f"]]}),
        msgpack.packb({"version": 1, "order": 0, "publishes": [["a", 1, 1, 1.0, "x", b"f"]]}),
    ],
    ids=["garbage", "list", "version", "short", "frame-text", "order-behind"],
)
def test_a_malformed_hand_over_is_refused_in_one_line(data: bytes) -> None:
    """Expected: restore raises ValueError saying the data is no retained store."""
    with pytest.raises(ValueError, match="not a retained store") as info:
        RetainedStore().restore(data)
    assert "\n" not in str(info.value)


def test_chunks_split_frames_within_a_budget_in_order() -> None:
    """Steps: chunk frames of 40, 50 and 30 bytes under a budget of 99 bytes (each
    frame costs 5 bytes more in its message).
    Expected: [40], then [50, 30] (45 + 55 is over the budget, 55 + 35 is not); no frame
    gives one empty chunk (the snapshot still ends)."""
    frames = [b"a" * 40, b"b" * 50, b"c" * 30]
    assert chunks(frames, budget=99) == [[frames[0]], [frames[1], frames[2]]]
    assert chunks([], budget=99) == [[]]
