"""Which workers a tree publish goes to: every subscribed one, or those it names."""

from __future__ import annotations

import pytest

from procbus.master.planner import WorkerProc, WorkerState
from procbus.master.targeting import Selection, ranges, select
from procbus.publishing import DEFAULT, PublishOptions


def worker(
    worker_id: int, generation: int, state: WorkerState = WorkerState.RUNNING
) -> WorkerProc:
    return WorkerProc(worker_id, generation, 100 * worker_id + generation, 0.0, state=state)


RUNNING = [worker(1, 2), worker(2, 1), worker(4, 2)]
STARTING = [worker(3, 3, WorkerState.STARTING)]
SLOTS = [1, 2, 3, 4]


def ids(selection: Selection) -> tuple[list[int], list[int]]:
    return [w.id for w in selection.targets], [w.id for w in selection.starting]


def test_without_to_every_running_worker_is_a_target() -> None:
    """Steps: select with the default options.
    Expected: the running workers are targets, the starting one is starting."""
    assert ids(select(DEFAULT, RUNNING, STARTING, SLOTS)) == ([1, 2, 4], [3])


def test_to_keeps_the_named_workers_only_starting_ones_as_starting() -> None:
    """Steps: select to 2 and 3. Expected: 2 a target, 3 starting, nobody else."""
    assert ids(select(PublishOptions(to=(2, 3)), RUNNING, STARTING, SLOTS)) == ([2], [3])


def test_to_a_slot_without_a_process_is_no_error_and_reaches_nobody() -> None:
    """Steps: slot 5 exists (being refilled after a crash) but has no process; select to 5.
    Expected: no target, no starting worker, no error: the slot exists."""
    assert ids(select(PublishOptions(to=(5,)), RUNNING, STARTING, [*SLOTS, 5])) == ([], [])


def test_to_generation_keeps_the_workers_of_that_generation() -> None:
    """Steps: select generation 2, then 3.
    Expected: workers 1 and 4 (generation 2); then worker 3, starting."""
    assert ids(select(PublishOptions(to_generation=2), RUNNING, STARTING, SLOTS)) == ([1, 4], [])
    assert ids(select(PublishOptions(to_generation=3), RUNNING, STARTING, SLOTS)) == ([], [3])


@pytest.mark.parametrize(
    ("options", "slots", "message"),
    [
        (PublishOptions(to=(9,)), SLOTS, "no worker 9 (workers: 1-4)"),
        (PublishOptions(to=(1, 9, 7)), SLOTS, "no workers 7, 9 (workers: 1-4)"),
        (PublishOptions(to=(2,)), [1, 3, 4, 5, 7], "no worker 2 (workers: 1, 3-5, 7)"),
        (PublishOptions(to=(1,)), [], "no worker 1 (no workers)"),
        (PublishOptions(to_generation=5), SLOTS, "no worker of generation 5 (generations: 1-3)"),
    ],
)
def test_a_target_that_does_not_exist_is_an_error_naming_it(
    options: PublishOptions, slots: list[int], message: str
) -> None:
    """Steps: name a worker or generation that no slot or worker has.
    Expected: ValueError naming it and what exists."""
    with pytest.raises(ValueError) as caught:
        select(options, RUNNING, STARTING, slots)
    assert str(caught.value) == message


def test_to_generation_with_no_worker_at_all_says_so() -> None:
    with pytest.raises(ValueError, match=r"^no worker of generation 1 \(no workers\)$"):
        select(PublishOptions(to_generation=1), [], [], SLOTS)


def test_ranges_compress_consecutive_numbers() -> None:
    assert [ranges(v) for v in ([], [3], [1, 2, 3], [5, 1, 2, 9, 10, 7])] == [
        "",
        "3",
        "1-3",
        "1-2, 5, 7, 9-10",
    ]


def test_a_publish_from_a_worker_leaves_it_out_only_without_include_self() -> None:
    """Steps: select for a publish from worker 2 (running) and from worker 3 (starting),
    with and without include_self, and with to naming 2.
    Expected: with include_self (the default) nothing changes; without it the origin is
    neither a target nor listed as starting, whatever else the options say."""
    without = PublishOptions(include_self=False)
    origin, starting = RUNNING[1], STARTING[0]
    assert ids(select(DEFAULT, RUNNING, STARTING, SLOTS, origin)) == ([1, 2, 4], [3])
    assert ids(select(without, RUNNING, STARTING, SLOTS, origin)) == ([1, 4], [3])
    assert ids(select(without, RUNNING, STARTING, SLOTS, starting)) == ([1, 2, 4], [])
    named = PublishOptions(to=(1, 2), include_self=False)
    assert ids(select(named, RUNNING, STARTING, SLOTS, origin)) == ([1], [])
