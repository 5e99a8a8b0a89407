"""Retained publishes: the last word of each channel, for every worker started later.

A tree publish reaches the workers alive at that moment. A retained publish
(``publish(..., retain=True)``, ``procbus ctl publish --retain``; MQTT's
retained messages) is a tree publish like any other that the master also keeps
as its channel's last word, so that a worker started afterwards (respawn,
scale-up, reload, the workers of the next master) runs it before it serves:
`procbus.master.retainer` sends it, `procbus.worker.catchup` runs it.

This module is the store, and only that (no IO): one publish per channel,
the frame exactly as the workers got it, in publish order (a new publish on a
channel replaces its last one and moves it to the end). Each publish gets a
number of the store's own (`RetainedPublish.order`), which goes on across a
hand-over: the publish numbers on the wire (``seq``) are a master's, and a
restarted master starts its own again.

It is bounded: at most `MAX_CHANNELS` channels and `MAX_TOTAL_SIZE` bytes in
all, each publish within the wire's limit (`MAX_PUBLISH_SIZE`). `check` says
before anything runs whether a publish fits; past a bound it raises
``ValueError`` in one line and nothing is lost (the publish is not made, the
store is as it was). The channels that drive the master or stay on it
(`REFUSED_CHANNELS`) cannot be retained. While a hand-over takes the store to
the next master (``upgrade``), it is `sealed`: a change then would be lost.

`dump` and `restore` are its form across ``restart`` and ``upgrade``
(`procbus.master.handover` carries it in a memory file, not in the
environment).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from procbus import protocol
from procbus.worker.metrics import METRICS_CHANNEL

MAX_CHANNELS: Final = 1024
"""Channels retained at once, at most."""
MAX_TOTAL_SIZE: Final = 16 * 1024 * 1024
"""Bytes of every retained publish together, at most (the master keeps them in memory
and sends them to each new worker)."""
ENVELOPE: Final = 1024
"""Bytes kept free in a RETAINED message around the publishes it carries."""
MAX_PUBLISH_SIZE: Final = protocol.MAX_MESSAGE_SIZE - ENVELOPE
"""Bytes of one retained publish (its PUBLISH frame), at most: it must fit in the
RETAINED message that takes it to a new worker."""
FRAME_OVERHEAD: Final = 5
"""Bytes msgpack adds to each frame in a RETAINED message (a bin 32 header)."""
REFUSED_CHANNELS: Final = frozenset(
    {"start", "stop", "exit", "graceful", "log", "main", METRICS_CHANNEL}
)
"""Channels that drive the bus and the pool, stay on the master, or are procbus's own
(metrics scrapes): what they would do in a starting worker is not state to catch up on."""
FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class RetainedPublish:
    """One channel's last word."""

    channel: str
    order: int
    """The store's number for it: publish order, across hand-overs."""
    seq: int
    """Its number on the wire (of the master that published it)."""
    frame: bytes
    """The PUBLISH frame as the workers got it."""
    time: float
    """When it was published (``time.time``)."""
    publisher: str
    """Who published: ``ctl uid U pid P``, ``master code``, ``worker N``."""

    @property
    def size(self) -> int:
        return len(self.frame)


class RetainedStore:
    """The retained publishes of one tree (see the module docstring)."""

    def __init__(self, max_channels: int = MAX_CHANNELS, max_size: int = MAX_TOTAL_SIZE) -> None:
        self.max_channels = max_channels
        self.max_size = max_size
        self._by_channel: dict[str, RetainedPublish] = {}
        """In publish order (a replaced channel moves to the end)."""
        self.last_order = 0
        """The order number of the last publish retained (0: none yet)."""
        self.size = 0
        """Bytes of every retained publish together."""
        self.sealed: str | None = None
        """Why the store cannot change now (a hand-over takes it), or None."""

    def __iter__(self) -> Iterator[RetainedPublish]:
        return iter(list(self._by_channel.values()))

    def __len__(self) -> int:
        return len(self._by_channel)

    def get(self, channel: str) -> RetainedPublish | None:
        return self._by_channel.get(channel)

    def since(self, order: int) -> list[RetainedPublish]:
        """The publishes retained after order number `order`, in publish order."""
        return [p for p in self._by_channel.values() if p.order > order]

    def check(self, channel: str, size: int | None = None) -> None:
        """Raise ``ValueError`` (one line) unless a publish of `size` bytes on `channel`
        may be retained now (`size` None: only whether the channel may change)."""
        if channel in REFUSED_CHANNELS:
            raise ValueError(
                f"channel {channel!r} cannot be retained (start, stop, exit, graceful, log, "
                f"main and {METRICS_CHANNEL} are the master's own)"
            )
        if self.sealed is not None:
            raise ValueError(f"retained publishes cannot change now: {self.sealed}")
        if size is None:
            return
        if size > MAX_PUBLISH_SIZE:
            raise ValueError(
                f"a retained publish on {channel!r} of {size} bytes exceeds the limit of "
                f"{MAX_PUBLISH_SIZE} bytes"
            )
        old = self._by_channel.get(channel)
        if old is None and len(self._by_channel) >= self.max_channels:
            raise ValueError(
                f"{len(self._by_channel)} channels are retained already (at most "
                f"{self.max_channels}): clear one (--retain --clear) before retaining {channel!r}"
            )
        total = self.size - (old.size if old else 0) + size
        if total > self.max_size:
            raise ValueError(
                f"retaining {size} bytes on {channel!r} would take the retained publishes to "
                f"{total} bytes (at most {self.max_size})"
            )

    def put(
        self, channel: str, seq: int, frame: bytes, publisher: str, time: float
    ) -> RetainedPublish:
        """Keep `frame` (publish `seq` on `channel`) as the channel's last word.

        Call `check` first, before the publish runs anywhere: this stores what it
        is given (a listener of the master that retains meanwhile could take the
        store a publish past its bounds).
        """
        old = self._by_channel.pop(channel, None)
        if old is not None:
            self.size -= old.size
        self.last_order += 1
        publish = RetainedPublish(channel, self.last_order, seq, frame, time, publisher)
        self._by_channel[channel] = publish
        self.size += publish.size
        return publish

    def clear(self, channel: str) -> bool:
        """Drop `channel`'s retained publish; whether there was one."""
        self.check(channel)
        old = self._by_channel.pop(channel, None)
        if old is None:
            return False
        self.size -= old.size
        return True

    def listing(self, now: float) -> list[dict[str, Any]]:
        """What ``ctl retained`` shows: channel, when, seq, size, who; never the
        arguments (read-only peers may list)."""
        return [
            {
                "channel": p.channel,
                "time": p.time,
                "age": max(0.0, now - p.time),
                "seq": p.seq,
                "size": p.size,
                "publisher": p.publisher,
            }
            for p in self._by_channel.values()
        ]

    # -- across a hand-over -------------------------------------------------------

    def dump(self) -> bytes:
        """The store as bytes, for the next master (`restore`)."""
        return protocol.pack(
            {
                "version": FORMAT_VERSION,
                "order": self.last_order,
                "publishes": [
                    [p.channel, p.order, p.seq, p.time, p.publisher, p.frame]
                    for p in self._by_channel.values()
                ],
            }
        )

    def restore(self, data: bytes) -> None:
        """Take the publishes a previous master dumped (into an empty store).

        Raises ``ValueError`` in one line when `data` is not what `dump` makes.
        """
        try:
            state = msgpack.unpackb(data, raw=False, strict_map_key=False)
            if state.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {state.get('version')!r}")
            publishes = [_publish(entry) for entry in state["publishes"]]
            last_order = state["order"]
            if not isinstance(last_order, int) or any(p.order > last_order for p in publishes):
                raise ValueError(f"order {last_order!r} is behind its publishes")
        except Exception as exc:  # msgpack raises many types for bad input
            raise ValueError(
                f"not a retained store ({type(exc).__name__}: {exc})".replace("\n", " ")[:300]
            ) from None
        self._by_channel = {p.channel: p for p in publishes}
        self.last_order = last_order
        self.size = sum(p.size for p in publishes)


def _publish(entry: Any) -> RetainedPublish:
    channel, order, seq, time, publisher, frame = entry
    if not (
        isinstance(channel, str)
        and isinstance(order, int)
        and isinstance(seq, int)
        and isinstance(time, (int, float))
        and isinstance(publisher, str)
        and isinstance(frame, bytes)
    ):
        raise TypeError(f"malformed entry for channel {str(channel)[:80]!r}")
    return RetainedPublish(channel, order, seq, frame, float(time), publisher)


def chunks(
    frames: Sequence[bytes], budget: int = protocol.MAX_MESSAGE_SIZE - 64
) -> list[list[bytes]]:
    """`frames` in order, in as few runs as fit a message of `budget` bytes each (at least
    one run, maybe empty: a snapshot with nothing in it still says it is complete)."""
    runs: list[list[bytes]] = [[]]
    used = 0
    for frame in frames:
        cost = len(frame) + FRAME_OVERHEAD
        if runs[-1] and used + cost > budget:
            runs.append([])
            used = 0
        runs[-1].append(frame)
        used += cost
    return runs
