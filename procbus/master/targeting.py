"""Which workers a tree publish goes to (``to``, ``to_generation``): a pure choice.

By default a publish goes to every worker that is a target (running and
subscribed, `Pool.publish_targets`); the workers still starting are listed
as ``starting``. ``to`` keeps the workers of those slots, ``to_generation``
those of that generation, with the same split. A slot that exists but has no
process at the moment (refilled after a crash) reaches nobody, as it would
in a broadcast. A slot or generation that does not exist is a ``ValueError``
naming it and what exists, raised before anything runs (the master's own
listeners included): a typo is not a silent empty reply.

The master's own listeners run whatever the targets: it owns the bus. A
publish that comes from a worker (`procbus.master.worker_publishes`) with
``include_self=False`` leaves that worker out, after the rest of the choice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import NamedTuple

from procbus.master.planner import WorkerProc
from procbus.publishing import PublishOptions


class Selection(NamedTuple):
    targets: list[WorkerProc]
    """The workers the publish waits for."""
    starting: list[WorkerProc]
    """Named (or, without ``to``, current) workers not subscribed yet: not targets."""


def select(
    options: PublishOptions,
    targets: Sequence[WorkerProc],
    starting: Sequence[WorkerProc],
    slots: Collection[int],
    origin: WorkerProc | None = None,
) -> Selection:
    """The workers of `targets` and `starting` that `options` names.

    `slots` are the ids of the pool's wanted slots; `origin` the worker the publish
    comes from, if any. Raises ``ValueError`` for a worker id no slot has, or a
    generation none of the workers has.
    """
    chosen = _named(options, targets, starting, slots)
    if origin is None or options.include_self:
        return chosen
    return Selection(
        [w for w in chosen.targets if w is not origin],
        [w for w in chosen.starting if w is not origin],
    )


def _named(
    options: PublishOptions,
    targets: Sequence[WorkerProc],
    starting: Sequence[WorkerProc],
    slots: Collection[int],
) -> Selection:
    if options.to is not None:
        unknown = sorted(set(options.to) - set(slots))
        if unknown:
            noun = "worker" if len(unknown) == 1 else "workers"
            raise ValueError(f"no {noun} {ranges(unknown)} ({_listing('workers', slots)})")
        wanted = set(options.to)
        return Selection(
            [w for w in targets if w.id in wanted], [w for w in starting if w.id in wanted]
        )
    if options.to_generation is not None:
        generation = options.to_generation
        known = {w.generation for w in (*targets, *starting)}
        if generation not in known:
            raise ValueError(
                f"no worker of generation {generation} ({_listing('generations', known)})"
            )
        return Selection(
            [w for w in targets if w.generation == generation],
            [w for w in starting if w.generation == generation],
        )
    return Selection(list(targets), list(starting))


def _listing(what: str, numbers: Collection[int]) -> str:
    return f"{what}: {ranges(numbers)}" if numbers else "no workers"


def ranges(numbers: Iterable[int]) -> str:
    """``1-3, 5, 7-8`` for 1, 2, 3, 5, 7, 8 (in any order)."""
    parts: list[str] = []
    ordered = sorted(set(numbers))
    start = 0
    for index, number in enumerate(ordered):
        last = index + 1 == len(ordered) or ordered[index + 1] != number + 1
        if last:
            first = ordered[start]
            parts.append(str(first) if first == number else f"{first}-{number}")
            start = index + 1
    return ", ".join(parts)
