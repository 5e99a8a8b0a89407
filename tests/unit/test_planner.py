"""The pool planner: what to fork, drain, abort and kill, and when to look again.

`plan()` and `record_exit()` are pure: every test builds a `PoolView` by hand,
injects `now`, and where an action has a follow-up (ABORT sets
`abort_deadline`, DRAIN sets `stop_deadline`) sets the field itself as
`procbus.master.pool.Pool` would.
"""

from __future__ import annotations

import math

import pytest

from procbus.master.planner import (
    Action,
    ActionKind,
    Backoff,
    Plan,
    PoolView,
    RecycleReason,
    Rollout,
    RolloutFailure,
    RolloutFault,
    RolloutOutcome,
    Supervision,
    WorkerProc,
    WorkerSlot,
    WorkerState,
    plan,
    record_exit,
    rss_exceeded,
)

BACKOFF = Backoff(initial=0.1, factor=2.0, maximum=1.0, min_uptime=2.0, flap_after=100)
POLICY = Supervision(
    timeout=30.0,
    boot_timeout=60.0,
    graceful_timeout=30.0,
    abort_grace=2.0,
    backoff=BACKOFF,
)

_pids = iter(range(1000, 100000))


def worker(
    slot_id: int,
    state: WorkerState = WorkerState.RUNNING,
    *,
    started_at: float = 0.0,
    heartbeat: float | None = None,
    generation: int = 1,
) -> WorkerProc:
    """A worker process of slot `slot_id`; a RUNNING one has run and beats at `heartbeat`."""
    proc = WorkerProc(slot_id, generation, next(_pids), started_at, state=state)
    if state is WorkerState.RUNNING:
        proc.ran = True
        proc.last_heartbeat = started_at if heartbeat is None else heartbeat
    return proc


def slot_with(current: WorkerProc | None, replacement: WorkerProc | None = None) -> WorkerSlot:
    """The slot of `current` (or of `replacement` when there is no current worker)."""
    proc = current if current is not None else replacement
    assert proc is not None
    return WorkerSlot(proc.id, current=current, replacement=replacement)


def pool(
    *slots: WorkerSlot,
    target: int,
    active: bool = True,
    retired: list[WorkerProc] | None = None,
    rollout: Rollout | None = None,
    booted: bool = True,
) -> PoolView:
    return PoolView(
        {s.id: s for s in slots}, target, active, retired or [], rollout=rollout, booted=booted
    )


def summary(result: Plan) -> list[tuple[ActionKind, int, WorkerProc | None, bool]]:
    """The actions as (kind, slot, worker, replace), in order."""
    return [(a.kind, a.slot, a.worker, a.replace) for a in result.actions]


def only(result: Plan) -> Action:
    assert len(result.actions) == 1, result.actions
    return result.actions[0]


# -- filling and emptying slots ------------------------------------------------


def test_empty_active_pool_spawns_slots_one_to_target() -> None:
    """Steps: plan an active pool with no slots and target 3.
    Expected: SPAWN for slots 1, 2, 3 in order, none a replacement; nothing to wait for.
    """
    result = plan(pool(target=3), now=10.0, policy=POLICY)
    assert summary(result) == [
        (ActionKind.SPAWN, 1, None, False),
        (ActionKind.SPAWN, 2, None, False),
        (ActionKind.SPAWN, 3, None, False),
    ]
    assert result.next_check == math.inf


def test_only_empty_slots_below_target_are_spawned() -> None:
    """Steps: slot 2 runs a worker; target 3.
    Expected: SPAWN for slots 1 and 3 only.
    """
    view = pool(slot_with(worker(2, heartbeat=9.0)), target=3)
    result = plan(view, now=10.0, policy=POLICY)
    assert summary(result) == [
        (ActionKind.SPAWN, 1, None, False),
        (ActionKind.SPAWN, 3, None, False),
    ]


def test_inactive_pool_drains_every_worker_and_spawns_none() -> None:
    """Steps: a stopped pool (target 2) with a running worker in slot 1, a running
    current and a booting replacement in slot 2, and a running retired worker.
    Expected: DRAIN for each of the four workers; no SPAWN although slots 1..2 are wanted
    by the target.
    """
    w1 = worker(1)
    w2, w2_new = worker(2), worker(2, WorkerState.BOOTING, generation=2)
    retired = worker(3)
    view = pool(slot_with(w1), slot_with(w2, w2_new), target=2, active=False, retired=[retired])
    result = plan(view, now=1.0, policy=POLICY)
    assert summary(result) == [
        (ActionKind.DRAIN, 1, w1, False),
        (ActionKind.DRAIN, 2, w2, False),
        (ActionKind.DRAIN, 2, w2_new, False),
        (ActionKind.DRAIN, 3, retired, False),
    ]
    assert {a.reason for a in result.actions[:3]} == {"pool stopped"}


def test_inactive_pool_does_not_drain_a_worker_already_stopping() -> None:
    """Steps: a stopped pool whose only worker is already STOPPING (deadline at 30).
    Expected: no action; the next check is the worker's stop deadline.
    """
    draining = worker(1, WorkerState.STOPPING)
    draining.stop_deadline = 30.0
    result = plan(pool(slot_with(draining), target=1, active=False), now=1.0, policy=POLICY)
    assert result.actions == []
    assert result.next_check == 30.0


def test_scale_down_drains_the_highest_ids_and_keeps_one_to_target() -> None:
    """Steps: four running workers in slots 1..4; target lowered to 2.
    Expected: DRAIN (reason "scaled down") for slots 3 and 4 only; slots 1 and 2 untouched.
    """
    workers = {i: worker(i, heartbeat=9.0) for i in range(1, 5)}
    view = pool(*(slot_with(w) for w in workers.values()), target=2)
    result = plan(view, now=10.0, policy=POLICY)
    assert summary(result) == [
        (ActionKind.DRAIN, 3, workers[3], False),
        (ActionKind.DRAIN, 4, workers[4], False),
    ]
    assert {a.reason for a in result.actions} == {"scaled down"}


# -- backoff and flapping ------------------------------------------------------


@pytest.mark.parametrize(
    ("early_deaths", "delay"),
    [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (6, 1.0), (60, 1.0)],
)
def test_backoff_delay_doubles_from_initial_and_is_capped(early_deaths: int, delay: float) -> None:
    """Steps: ask a Backoff(initial 0.1, factor 2, maximum 1.0) for its delay.
    Expected: 0 without early deaths, then 0.1, 0.2, 0.4, 0.8, then 1.0 for ever.
    """
    assert BACKOFF.delay(early_deaths) == pytest.approx(delay, rel=1e-12)


def test_backoff_delay_stays_at_maximum_after_very_many_early_deaths() -> None:
    """Steps: ask the default Backoff for its delay after 5000 early deaths (a slot whose
    forks keep failing counts that many over hours).
    Expected: the maximum, not an OverflowError from the exponent.
    """
    assert Backoff().delay(5000) == Backoff().maximum


def test_early_deaths_back_off_and_next_check_is_the_spawn_time() -> None:
    """Steps: six times: a booting worker of slot 1 dies 0.5 s after its fork; plan just
    before and at the slot's next spawn time.
    Expected: the respawn waits 0.1, 0.2, 0.4, 0.8, 1.0, 1.0 s (capped); before it no
    action and `next_check` is exactly the spawn time; at it, one SPAWN of slot 1.
    """
    slot = WorkerSlot(1)
    now = 100.0
    for deaths, delay in enumerate([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], start=1):
        proc = worker(1, WorkerState.BOOTING, started_at=now, generation=deaths)
        slot.current = proc
        now += 0.5
        record_exit(slot, proc, now, POLICY)
        assert slot.current is None
        assert (slot.early_deaths, slot.restarts) == (deaths, deaths)
        assert slot.next_spawn_at == now + delay

        waiting = plan(pool(slot, target=1), now=now, policy=POLICY)
        assert waiting.actions == []
        assert waiting.next_check == slot.next_spawn_at

        now = slot.next_spawn_at
        assert summary(plan(pool(slot, target=1), now=now, policy=POLICY)) == [
            (ActionKind.SPAWN, 1, None, False)
        ]
    assert not slot.flapping


def test_slot_flaps_after_flap_after_early_deaths_and_is_not_respawned() -> None:
    """Steps: with flap_after 3, a worker of slot 1 dies early three times in a row.
    Expected: not flapping after the second death; flapping after the third, after which
    planning (even much later) forks nothing and has nothing to wait for.
    """
    policy = Supervision(backoff=Backoff(flap_after=3))
    slot = WorkerSlot(1)
    now = 0.0
    for deaths in range(1, 4):
        assert not slot.flapping
        proc = worker(1, WorkerState.STARTING, started_at=now, generation=deaths)
        slot.current = proc
        now += 0.1
        record_exit(slot, proc, now, policy)
    assert slot.flapping
    assert slot.early_deaths == 3
    for later in (now, now + 60.0, now + 3600.0):
        result = plan(pool(slot, target=1), now=later, policy=policy)
        assert result.actions == []
        assert result.next_check == math.inf


def test_death_after_min_uptime_resets_backoff_and_respawns_at_once() -> None:
    """Steps: slot 1 has 3 early deaths; its worker runs, then dies 10 s after its fork
    (min_uptime 2 s) without being asked to stop; plan at that moment.
    Expected: early_deaths back to 0, restarts counted, next spawn time is now, and the
    plan spawns slot 1 immediately.
    """
    proc = worker(1, started_at=50.0)
    slot = WorkerSlot(1, current=proc, early_deaths=3, restarts=3, next_spawn_at=49.0)
    proc.last_error = "boom"
    record_exit(slot, proc, 60.0, POLICY)
    assert (slot.early_deaths, slot.restarts) == (0, 4)
    assert slot.next_spawn_at == 60.0
    assert slot.last_error == "boom"
    assert summary(plan(pool(slot, target=1), now=60.0, policy=POLICY)) == [
        (ActionKind.SPAWN, 1, None, False)
    ]


def test_worker_that_never_ran_died_early_however_long_it_lived() -> None:
    """Steps: a worker still STARTING dies 30 s after its fork (min_uptime 2 s).
    Expected: counted as an early death; the respawn waits the first backoff delay.
    """
    proc = worker(1, WorkerState.STARTING, started_at=0.0)
    slot = WorkerSlot(1, current=proc)
    record_exit(slot, proc, 30.0, POLICY)
    assert slot.early_deaths == 1
    assert slot.next_spawn_at == 30.0 + BACKOFF.initial


def test_exit_of_a_worker_asked_to_stop_is_not_a_restart() -> None:
    """Steps: the current worker of slot 1 was asked to drain (stop_requested) and dies
    0.5 s after its fork.
    Expected: the slot is emptied but neither restarts nor early_deaths change and the
    next spawn time is untouched.
    """
    proc = worker(1, WorkerState.STOPPING, started_at=10.0)
    proc.stop_requested = True
    slot = WorkerSlot(1, current=proc, restarts=2, early_deaths=1, next_spawn_at=5.0)
    record_exit(slot, proc, 10.5, POLICY)
    assert slot.current is None
    assert (slot.restarts, slot.early_deaths, slot.next_spawn_at) == (2, 1, 5.0)


def test_worker_that_stops_on_its_own_counts_as_an_early_death() -> None:
    """Steps: the current worker of slot 1 reports 'failed' (its app did not boot), so
    the pool marks it STOPPING without having asked; it dies 0.5 s after its fork.
    Expected: a restart and an early death are counted and the respawn backs off.
    """
    proc = worker(1, WorkerState.STOPPING, started_at=10.0)
    slot = WorkerSlot(1, current=proc)
    record_exit(slot, proc, 10.5, POLICY)
    assert slot.current is None
    assert (slot.restarts, slot.early_deaths) == (1, 1)
    assert slot.next_spawn_at == 10.5 + BACKOFF.initial


def test_exit_of_a_worker_no_longer_in_its_slot_changes_nothing() -> None:
    """Steps: record the exit of a retired worker of slot 1 whose slot holds another worker.
    Expected: the slot keeps its current worker and its counters.
    """
    retired = worker(1, started_at=0.0)
    current = worker(1, started_at=5.0, generation=2)
    slot = WorkerSlot(1, current=current)
    record_exit(slot, retired, 5.5, POLICY)
    assert slot.current is current
    assert (slot.restarts, slot.early_deaths) == (0, 0)


def test_replacement_that_dies_early_is_respawned_after_backoff() -> None:
    """Steps: slot 1 is being replaced (its worker served max_requests); its booting
    replacement dies 0.5 s after its fork; plan then, and at the spawn time.
    Expected: the current worker stays; no action until the backoff delay passed
    (`next_check` is that time), then SPAWN of a replacement.
    """
    policy = Supervision(max_requests=10, backoff=BACKOFF)
    current = worker(1, started_at=0.0, heartbeat=99.0)
    current.counters["requests"] = 10
    replacement = worker(1, WorkerState.BOOTING, started_at=100.0, generation=2)
    slot = WorkerSlot(1, current=current, replacement=replacement)
    record_exit(slot, replacement, 100.5, policy)
    assert slot.current is current
    assert slot.replacement is None
    waiting = plan(pool(slot, target=1), now=100.5, policy=policy)
    assert waiting.actions == []
    assert waiting.next_check == 100.6
    assert summary(plan(pool(slot, target=1), now=100.6, policy=policy)) == [
        (ActionKind.SPAWN, 1, None, True)
    ]


# -- deadlines -----------------------------------------------------------------


def test_silent_worker_is_aborted_then_killed_after_abort_grace() -> None:
    """Steps: a running worker last beat at 10 (timeout 30, abort_grace 2); plan at 39,
    at 40; set abort_deadline as the executor does; plan at 41, at 42; mark it killed;
    plan at 43.
    Expected: at 39 nothing, next check 40; at 40 ABORT naming the silence; at 41 nothing,
    next check 42; at 42 KILL; once killed, no action and nothing to wait for.
    """
    proc = worker(1, started_at=0.0, heartbeat=10.0)
    view = pool(slot_with(proc), target=1)

    early = plan(view, now=39.0, policy=POLICY)
    assert early.actions == []
    assert early.next_check == 40.0

    abort = only(plan(view, now=40.0, policy=POLICY))
    assert (abort.kind, abort.slot, abort.worker) == (ActionKind.ABORT, 1, proc)
    assert abort.reason == "no heartbeat for 30.0s (timeout 30s)"
    proc.abort_deadline = 40.0 + POLICY.abort_grace

    grace = plan(view, now=41.0, policy=POLICY)
    assert grace.actions == []
    assert grace.next_check == 42.0

    kill = only(plan(view, now=42.0, policy=POLICY))
    assert (kill.kind, kill.slot, kill.worker) == (ActionKind.KILL, 1, proc)
    proc.killed = True

    after = plan(view, now=43.0, policy=POLICY)
    assert after.actions == []
    assert after.next_check == math.inf


def test_heartbeat_timeout_counts_from_the_fork_before_the_first_beat() -> None:
    """Steps: a running worker forked at 5 that never sent a heartbeat; plan at 20 and 35.
    Expected: next check at 35 (fork + timeout); ABORT at 35.
    """
    proc = worker(1, started_at=5.0)
    proc.last_heartbeat = None
    view = pool(slot_with(proc), target=1)
    assert plan(view, now=20.0, policy=POLICY).next_check == 35.0
    assert only(plan(view, now=35.0, policy=POLICY)).kind is ActionKind.ABORT


@pytest.mark.parametrize("state", [WorkerState.BOOTING, WorkerState.STARTING])
def test_worker_not_running_after_boot_timeout_is_killed(state: WorkerState) -> None:
    """Steps: a worker forked at 5 is still booting/starting (boot_timeout 60); plan at
    64.5 and at 65.
    Expected: at 64.5 no action and next check 65; at 65 KILL naming the boot timeout.
    """
    proc = worker(1, state, started_at=5.0)
    view = pool(slot_with(proc), target=1)
    early = plan(view, now=64.5, policy=POLICY)
    assert early.actions == []
    assert early.next_check == 65.0
    kill = only(plan(view, now=65.0, policy=POLICY))
    assert (kill.kind, kill.worker) == (ActionKind.KILL, proc)
    assert kill.reason == "not running 60s after fork"


def test_draining_worker_past_its_stop_deadline_is_killed() -> None:
    """Steps: a retired worker STOPPING with stop_deadline 50; plan at 49.9 and at 50.
    Expected: at 49.9 no action (it is not drained again) and next check 50; at 50 KILL
    for "graceful timeout expired".
    """
    proc = worker(2, WorkerState.STOPPING, started_at=0.0)
    proc.stop_deadline = 50.0
    view = pool(target=0, retired=[proc])
    early = plan(view, now=49.9, policy=POLICY)
    assert early.actions == []
    assert early.next_check == 50.0
    kill = only(plan(view, now=50.0, policy=POLICY))
    assert (kill.kind, kill.slot, kill.worker) == (ActionKind.KILL, 2, proc)
    assert kill.reason == "graceful timeout expired"


def test_retired_worker_not_yet_stopping_is_drained() -> None:
    """Steps: a running worker sits in the retired list (its slot was given a replacement).
    Expected: one DRAIN for it, reason "retired".
    """
    proc = worker(1, heartbeat=9.0)
    action = only(plan(pool(target=0, retired=[proc]), now=10.0, policy=POLICY))
    assert (action.kind, action.slot, action.worker, action.reason) == (
        ActionKind.DRAIN,
        1,
        proc,
        "retired",
    )


def test_next_check_is_the_earliest_deadline_of_all_workers() -> None:
    """Steps: slot 1 beats at 20 (timeout 30: due 50), slot 2 boots since 0 (boot
    timeout 60: due 60), a retired worker must be dead by 45; plan at 30.
    Expected: no action; next check 45.
    """
    draining = worker(3, WorkerState.STOPPING)
    draining.stop_deadline = 45.0
    view = pool(
        slot_with(worker(1, heartbeat=20.0)),
        slot_with(worker(2, WorkerState.BOOTING)),
        target=2,
        retired=[draining],
    )
    result = plan(view, now=30.0, policy=POLICY)
    assert result.actions == []
    assert result.next_check == 45.0


# -- recycling and replacement -------------------------------------------------


def test_worker_that_served_max_requests_is_replaced_then_promoted() -> None:
    """Steps: max_requests 100; the running worker of slot 1 served 99, then 100 requests;
    the executor adds a booting replacement; the replacement runs.
    Expected: at 99 nothing; at 100 SPAWN with replace=True (reason names max_requests);
    while the replacement boots no new SPAWN nor PROMOTE; once it runs, PROMOTE of the
    replacement.
    """
    policy = Supervision(max_requests=100, backoff=BACKOFF)
    current = worker(1, heartbeat=10.0)
    slot = slot_with(current)
    view = pool(slot, target=1)

    current.counters["requests"] = 99
    assert plan(view, now=10.0, policy=policy).actions == []

    current.counters["requests"] = 100
    spawn = only(plan(view, now=10.0, policy=policy))
    assert (spawn.kind, spawn.slot, spawn.replace) == (ActionKind.SPAWN, 1, True)
    assert spawn.reason == "served 100 requests (max_requests 100)"
    assert spawn.recycle is RecycleReason.MAX_REQUESTS

    replacement = worker(1, WorkerState.BOOTING, started_at=10.0, generation=2)
    slot.replacement = replacement
    assert plan(view, now=11.0, policy=policy).actions == []

    replacement.state = WorkerState.RUNNING
    promote = only(plan(view, now=12.0, policy=policy))
    assert (promote.kind, promote.slot, promote.worker) == (ActionKind.PROMOTE, 1, replacement)


def test_request_jitter_moves_each_workers_limit() -> None:
    """Steps: max_requests 100, jitter 20; a worker drawn jitter 15 served 110, then 115.
    Expected: at 110 nothing (its limit is 115); at 115 SPAWN naming max_requests.
    """
    policy = Supervision(max_requests=100, max_requests_jitter=20, backoff=BACKOFF)
    current = worker(1, heartbeat=10.0)
    current.request_jitter = 15
    view = pool(slot_with(current), target=1)
    current.counters["requests"] = 110
    assert plan(view, now=10.0, policy=policy).actions == []
    current.counters["requests"] = 115
    assert only(plan(view, now=10.0, policy=policy)).kind is ActionKind.SPAWN


def test_worker_older_than_max_age_is_replaced() -> None:
    """Steps: max_age 100; a running worker forked at 0 beats at 90; plan at 95 and 100.
    Expected: at 95 no action and next check exactly 100 (the recycling time); at 100
    SPAWN with replace=True, reason naming max_age.
    """
    policy = Supervision(max_age=100.0, backoff=BACKOFF)
    view = pool(slot_with(worker(1, heartbeat=90.0)), target=1)
    early = plan(view, now=95.0, policy=policy)
    assert early.actions == []
    assert early.next_check == 100.0
    spawn = only(plan(view, now=100.0, policy=policy))
    assert (spawn.kind, spawn.replace) == (ActionKind.SPAWN, True)
    assert spawn.reason == "100s old (max_age 100s)"
    assert spawn.recycle is RecycleReason.MAX_AGE


MIB = 2**20


@pytest.mark.parametrize(
    ("samples", "recycled"),
    [
        ([], False),
        ([200 * MIB, 200 * MIB], False),
        ([200 * MIB, 200 * MIB, 200 * MIB], True),
        ([50 * MIB, 200 * MIB, 200 * MIB, 200 * MIB], True),
        ([200 * MIB, 200 * MIB, 100 * MIB], False),
        ([200 * MIB, 100 * MIB, 200 * MIB, 200 * MIB], False),
        ([100 * MIB + 1, 100 * MIB + 1, 100 * MIB + 1], True),
    ],
    ids=["none", "two-over", "three-over", "three-over-after-one-under",
         "last-under", "one-under-among-the-last-three", "one-byte-over"],
)  # fmt: skip
def test_worker_above_max_rss_in_rss_samples_samples_in_a_row_is_replaced(
    samples: list[int], recycled: bool
) -> None:
    """Steps: max_rss 100 MiB, rss_samples 3; slot 1's running worker has `samples` (oldest
    first); plan.
    Expected: SPAWN of a replacement (replace=True, recycle MAX_RSS, the reason naming the
    last sample, the limit and the count) exactly when its last 3 samples are all above
    100 MiB; else no action."""
    policy = Supervision(max_rss=100 * MIB, rss_samples=3, backoff=BACKOFF)
    current = worker(1, heartbeat=10.0)
    current.rss = list(samples)
    result = plan(pool(slot_with(current), target=1), now=10.0, policy=policy)
    assert rss_exceeded(current, policy) is recycled
    if not recycled:
        assert result.actions == []
        return
    spawn = only(result)
    assert (spawn.kind, spawn.slot, spawn.replace, spawn.recycle) == (
        ActionKind.SPAWN,
        1,
        True,
        RecycleReason.MAX_RSS,
    )
    last = f"{samples[-1] / MIB:.1f}M"
    assert spawn.reason == f"RSS {last} above max_rss 100.0M in 3 samples in a row"


def test_max_rss_zero_never_recycles_and_one_sample_suffices_when_asked() -> None:
    """Steps: a running worker with one 1 GiB sample; plan with max_rss 0 (off), then with
    max_rss 100 MiB and rss_samples 1.
    Expected: off, no action; with rss_samples 1, SPAWN with recycle MAX_RSS."""
    current = worker(1, heartbeat=10.0)
    current.rss = [1024 * MIB]
    view = pool(slot_with(current), target=1)
    assert plan(view, 10.0, Supervision(backoff=BACKOFF)).actions == []
    policy = Supervision(max_rss=100 * MIB, rss_samples=1, backoff=BACKOFF)
    assert only(plan(view, 10.0, policy)).recycle is RecycleReason.MAX_RSS


def test_max_rss_replaces_only_a_running_current_worker_once() -> None:
    """Steps: max_rss 100 MiB, rss_samples 2; slot 1's worker is starting with two samples
    above it; slot 2's worker runs above it with its replacement already booting.
    Expected: no action for either (a worker is judged once it runs, and a slot whose
    replacement is on its way waits for it)."""
    policy = Supervision(max_rss=100 * MIB, rss_samples=2, backoff=BACKOFF)
    starting = worker(1, WorkerState.STARTING, started_at=9.0)
    starting.rss = [200 * MIB, 200 * MIB]
    running = worker(2, heartbeat=10.0)
    running.rss = [200 * MIB, 200 * MIB]
    booting = worker(2, WorkerState.BOOTING, started_at=9.5, generation=2)
    view = pool(slot_with(starting), slot_with(running, booting), target=2)
    assert plan(view, 10.0, policy).actions == []


@pytest.mark.parametrize(("field", "value"), [("max_rss", -1), ("rss_samples", 0)])
def test_supervision_refuses_a_negative_max_rss_or_no_sample(field: str, value: int) -> None:
    """Steps: build a Supervision with max_rss -1, or rss_samples 0.
    Expected: ValueError naming the field and the value."""
    with pytest.raises(ValueError, match=f"{field} must be .*, got {value}"):
        Supervision(**{field: value})  # type: ignore[arg-type]


def test_recycling_is_paused_while_a_rollout_runs() -> None:
    """Steps: max_requests 10, max_age 100 and max_rss 1 MiB; slot 1's worker, forked at 0,
    served 50 requests, is above max_rss in 3 samples and beats at 190; a rollout replaces
    slot 2 (its replacement boots since 195); plan at 200, then the same pool without the
    rollout.
    Expected: with the rollout, no action and the next check is the heartbeat deadline
    (220), not a recycling time; without, SPAWN of a replacement for slot 1.
    """
    policy = Supervision(max_requests=10, max_age=100.0, max_rss=MIB, backoff=BACKOFF)
    current = worker(1, heartbeat=190.0)
    current.counters["requests"] = 50
    current.rss = [2 * MIB] * 3
    second = worker(2, heartbeat=190.0)
    slots = (
        slot_with(current),
        slot_with(second, worker(2, WorkerState.BOOTING, started_at=195.0)),
    )
    rollout = Rollout((2,), 1, next_index=1, batch={2: second}, batch_started_at=195.0)
    paused = plan(pool(*slots, target=2, rollout=rollout), now=200.0, policy=policy)
    assert paused.actions == []
    assert paused.next_check == 220.0
    resumed = only(plan(pool(*slots, target=2), now=200.0, policy=policy))
    assert (resumed.kind, resumed.slot, resumed.replace) == (ActionKind.SPAWN, 1, True)


def test_rollout_spawns_a_replacement_for_its_batch() -> None:
    """Steps: slot 1 runs; a rollout of slot 1 starts.
    Expected: SPAWN with replace=True, reason "replace requested"; slot 1 is its batch.
    """
    current = worker(1, heartbeat=9.0)
    rollout = Rollout((1,), 1)
    spawn = only(plan(pool(slot_with(current), target=1, rollout=rollout), 10.0, POLICY))
    assert (spawn.kind, spawn.slot, spawn.replace, spawn.reason) == (
        ActionKind.SPAWN,
        1,
        True,
        "replace requested",
    )
    assert rollout.batch == {1: current}


def test_rollout_replacement_waits_for_the_slot_backoff() -> None:
    """Steps: slot 1 is the batch of a rollout since 9, but its next spawn time is 12
    (the fork of its replacement failed); plan at 10.
    Expected: no action; next check 12.
    """
    current = worker(1, heartbeat=9.0)
    slot = slot_with(current)
    slot.next_spawn_at = 12.0
    rollout = Rollout((1,), 1, next_index=1, batch={1: current}, batch_started_at=9.0)
    result = plan(pool(slot, target=1, rollout=rollout), now=10.0, policy=POLICY)
    assert result.actions == []
    assert result.next_check == 12.0


def test_replacement_is_promoted_when_the_slot_has_no_current_worker() -> None:
    """Steps: slot 1 has no current worker but a booting replacement (the old one died).
    Expected: PROMOTE of the replacement, reason "slot empty"; no SPAWN.
    """
    replacement = worker(1, WorkerState.BOOTING, started_at=9.0, generation=2)
    promote = only(plan(pool(slot_with(None, replacement), target=1), now=10.0, policy=POLICY))
    assert (promote.kind, promote.slot, promote.worker, promote.reason) == (
        ActionKind.PROMOTE,
        1,
        replacement,
        "slot empty",
    )


def test_promoting_a_requested_replacement_into_an_empty_slot_does_not_replace_it_again() -> None:
    """Steps: during a rollout of slot 1, its old worker died; its running replacement is
    alone in the slot.
    Expected: only PROMOTE of the replacement; no second replacement is spawned for it,
    since the replacement itself is what the rollout asked for.
    """
    replacement = worker(1, started_at=9.0, generation=2)
    slot = slot_with(None, replacement)
    old = worker(1, WorkerState.EXITED)
    rollout = Rollout((1,), 1, next_index=1, batch={1: old}, batch_started_at=8.0)
    promote = only(plan(pool(slot, target=1, rollout=rollout), now=10.0, policy=POLICY))
    assert (promote.kind, promote.worker) == (ActionKind.PROMOTE, replacement)


def test_adopted_worker_that_never_reconnects_is_replaced_not_killed() -> None:
    """An adopted worker (restart --adopt) still STARTING at its boot deadline.

    Before the deadline: nothing, a look again at the deadline. At it: a
    replacement is forked, the adopted worker is not killed (it may be serving
    requests); once the replacement runs it is promoted and the adopted one
    drained.
    """
    adopted = worker(1, WorkerState.STARTING, started_at=0.0)
    adopted.adopted = True
    slot = slot_with(adopted)
    early = plan(pool(slot, target=1), 10.0, POLICY)
    assert early.actions == [] and early.next_check == POLICY.boot_timeout
    due = plan(pool(slot, target=1), POLICY.boot_timeout, POLICY)
    assert summary(due) == [(ActionKind.SPAWN, 1, None, True)]
    assert "did not reconnect" in due.actions[0].reason
    slot.replacement = worker(1, WorkerState.RUNNING, started_at=61.0, generation=2)
    promoted = plan(pool(slot, target=1), 62.0, POLICY)
    assert summary(promoted) == [(ActionKind.PROMOTE, 1, slot.replacement, False)]


# -- rollouts (reload) ---------------------------------------------------------


class Executor:
    """Carries out plans on a hand-built view as `procbus.master.pool.Pool` would, with
    no process: SPAWN adds a booting worker, PROMOTE and DRAIN retire, and `replan`
    plans again until nothing is left to do."""

    def __init__(self, view: PoolView, policy: Supervision = POLICY) -> None:
        self.view, self.policy = view, policy
        self.done: list[Action] = []

    def replan(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while result := plan(self.view, now, self.policy).actions:
            for action in result:
                self._execute(action, now)
            actions += result
        self.done += actions
        return actions

    def _execute(self, action: Action, now: float) -> None:
        slot = self.view.slots[action.slot]
        if action.kind is ActionKind.SPAWN:
            slot.generation += 1
            new = worker(slot.id, WorkerState.BOOTING, started_at=now, generation=slot.generation)
            if action.replace:
                slot.replacement = new
            else:
                slot.current = new
        elif action.kind is ActionKind.PROMOTE:
            old, slot.current, slot.replacement = slot.current, action.worker, None
            if old is not None:
                self._retire(old, now)
        elif action.kind is ActionKind.DRAIN:
            assert action.worker is not None
            if slot.replacement is action.worker:
                slot.replacement = None
            if slot.current is action.worker:
                slot.current = None
            self._retire(action.worker, now)

    def _retire(self, proc: WorkerProc, now: float) -> None:
        proc.stop_requested = True
        proc.state = WorkerState.STOPPING
        proc.stop_deadline = now + self.policy.graceful_timeout
        self.view.retired.append(proc)

    def runs(self, proc: WorkerProc, now: float) -> None:
        """`proc` says it runs; the pool plans again."""
        proc.state, proc.ran, proc.last_heartbeat = WorkerState.RUNNING, True, now
        self.replan(now)

    def reaped(self, proc: WorkerProc, now: float, error: str | None = None) -> None:
        """`proc` exited (with `error` as its last word); the pool plans again."""
        proc.state, proc.last_error = WorkerState.EXITED, error
        if proc in self.view.retired:
            self.view.retired.remove(proc)
        record_exit(self.view.slots[proc.id], proc, now, self.policy)
        self.replan(now)

    def serving(self) -> int:
        """How many slots have a running current worker (the tree's capacity)."""
        return sum(
            1
            for slot in self.view.slots.values()
            if slot.current is not None and slot.current.state is WorkerState.RUNNING
        )

    def replacement(self, slot_id: int) -> WorkerProc:
        proc = self.view.slots[slot_id].replacement
        assert proc is not None
        return proc


def running_pool(count: int, rollout: Rollout) -> tuple[Executor, dict[int, WorkerProc]]:
    """`count` slots with a running worker each (forked at 0, beating at 9), and `rollout`."""
    olds = {i: worker(i, heartbeat=9.0) for i in range(1, count + 1)}
    view = pool(*(slot_with(w) for w in olds.values()), target=count, rollout=rollout)
    return Executor(view), olds


def test_rollout_of_three_slots_in_batches_of_two_never_drops_below_three_running() -> None:
    """Steps: 3 running workers; a rollout of slots 1, 2, 3 in batches of 2 starts at 10;
    the replacements of slots 1 and 2 run (at 11 and 12), their old workers are reaped
    (13, 14); the replacement of slot 3 runs (15) and its old worker is reaped (16).
    Expected: at 10 replacements are forked for slots 1 and 2 only; each is promoted (its
    old worker drained) once it runs; slot 3's replacement is forked only once both old
    workers of the first batch are gone; the rollout is then done, out of the view,
    and lists the three new workers in order; at every step 3 slots serve."""
    rollout = Rollout((1, 2, 3), 2)
    pool_, olds = running_pool(3, rollout)
    spawned = pool_.replan(10.0)
    assert summary(Plan(spawned, math.inf)) == [
        (ActionKind.SPAWN, 1, None, True),
        (ActionKind.SPAWN, 2, None, True),
    ]
    new1, new2 = pool_.replacement(1), pool_.replacement(2)
    assert pool_.serving() == 3

    pool_.runs(new1, 11.0)
    assert pool_.view.slots[1].current is new1 and olds[1].state is WorkerState.STOPPING
    assert pool_.serving() == 3
    pool_.runs(new2, 12.0)
    assert pool_.view.slots[2].current is new2
    assert pool_.serving() == 3
    pool_.reaped(olds[1], 13.0)
    assert pool_.view.slots[3].replacement is None  # old 2 still drains
    assert rollout.replaced == []
    pool_.reaped(olds[2], 14.0)
    assert rollout.replaced == [new1, new2]
    new3 = pool_.replacement(3)
    assert pool_.serving() == 3

    pool_.runs(new3, 15.0)
    assert pool_.serving() == 3
    assert rollout.outcome is RolloutOutcome.RUNNING
    pool_.reaped(olds[3], 16.0)
    assert rollout.outcome is RolloutOutcome.DONE
    assert rollout.failure is None
    assert rollout.replaced == [new1, new2, new3]
    assert pool_.view.rollout is None
    assert pool_.serving() == 3
    assert [a.kind for a in pool_.done].count(ActionKind.SPAWN) == 3


def test_replacement_that_dies_rolls_its_batch_back_and_fails_the_rollout() -> None:
    """Steps: 3 running workers; a rollout of slots 1..3 in batches of 2; slot 1's
    replacement runs and is promoted; slot 2's replacement dies (import error).
    Expected: the rollout failed, naming slot 2, DIED and the error; slot 2 keeps its old
    worker, slot 1 its promoted new one; no batch follows (slot 3 untouched); the slot of
    the dead replacement is not given another; every slot still serves."""
    rollout = Rollout((1, 2, 3), 2)
    pool_, olds = running_pool(3, rollout)
    pool_.replan(10.0)
    new1, new2 = pool_.replacement(1), pool_.replacement(2)
    pool_.runs(new1, 11.0)
    pool_.reaped(new2, 11.5, error="boot: ImportError: no module named app")
    assert rollout.outcome is RolloutOutcome.FAILED
    assert rollout.failure == RolloutFailure(
        2, RolloutFault.DIED, "boot: ImportError: no module named app"
    )
    assert pool_.view.rollout is None
    assert pool_.view.slots[1].current is new1
    assert pool_.view.slots[2].current is olds[2]
    assert pool_.view.slots[3].current is olds[3]
    after = pool_.replan(30.0)
    assert after == []  # once the backoff passed, still nobody is forked
    assert pool_.serving() == 3


def test_batch_replacements_still_booting_are_drained_when_one_of_them_dies() -> None:
    """Steps: 2 running workers; a rollout of both in one batch; slot 1's replacement
    dies while slot 2's still boots.
    Expected: slot 2's replacement is drained ("replacement abandoned"); both old
    workers stay current; the rollout failed naming slot 1."""
    rollout = Rollout((1, 2), 2)
    pool_, olds = running_pool(2, rollout)
    pool_.replan(10.0)
    new1, new2 = pool_.replacement(1), pool_.replacement(2)
    pool_.reaped(new1, 10.5, error="boot: RuntimeError: nope")
    drains = [a for a in pool_.done if a.kind is ActionKind.DRAIN and a.worker is new2]
    assert [a.reason for a in drains] == ["replacement abandoned"]
    assert new2.stop_requested
    assert [s.current for s in pool_.view.slots.values()] == [olds[1], olds[2]]
    assert [s.replacement for s in pool_.view.slots.values()] == [None, None]
    assert rollout.failure is not None and rollout.failure.slot == 1


def test_replacement_not_running_within_boot_timeout_fails_the_rollout() -> None:
    """Steps: 1 running worker; a rollout of it starts at 10; its replacement still boots;
    plan at 69.5 and at 70 (boot_timeout 60).
    Expected: at 69.5 nothing, next check 70; at 70 the replacement is drained (and
    killed, past its boot deadline), the old worker stays, and the rollout failed:
    slot 1, NOT_READY, with the replacement's last error."""
    rollout = Rollout((1,), 1)
    pool_, olds = running_pool(1, rollout)
    pool_.replan(10.0)
    new = pool_.replacement(1)
    new.last_error = "still importing"
    olds[1].last_heartbeat = 69.0
    early = plan(pool_.view, 69.5, POLICY)
    assert early.actions == [] and early.next_check == 70.0
    due = plan(pool_.view, 70.0, POLICY)
    assert summary(due) == [(ActionKind.DRAIN, 1, new, False), (ActionKind.KILL, 1, new, False)]
    assert rollout.failure == RolloutFailure(1, RolloutFault.NOT_READY, "still importing")
    assert pool_.view.rollout is None
    assert pool_.view.slots[1].current is olds[1]


def test_slot_whose_replacement_cannot_be_forked_fails_the_rollout_at_the_boot_timeout() -> None:
    """Steps: 1 running worker; a rollout of it starts at 10, but no replacement appears
    (every fork fails); plan at 70 (boot_timeout 60).
    Expected: the rollout failed: slot 1, NOT_STARTED; the old worker stays."""
    current = worker(1, heartbeat=60.0)
    rollout = Rollout((1,), 1)
    view = pool(slot_with(current), target=1, rollout=rollout)
    plan(view, 10.0, POLICY)  # its SPAWN is not carried out: the fork failed
    assert plan(view, 69.0, POLICY).next_check == 70.0
    plan(view, 70.0, POLICY)
    assert rollout.failure == RolloutFailure(1, RolloutFault.NOT_STARTED, None)
    assert view.slots[1].current is current


def test_rollout_refills_an_empty_flapping_slot_with_the_new_code() -> None:
    """Steps: slot 1 runs; slot 2 flaps (no worker, 5 early deaths); a rollout of both
    in one batch starts.
    Expected: slot 2's backoff is forgiven and a worker is forked for it (as its current
    worker), beside the replacement of slot 1; once both run and slot 1's old worker is
    gone, the rollout is done."""
    current = worker(1, heartbeat=9.0)
    flapping = WorkerSlot(2, flapping=True, early_deaths=5, next_spawn_at=99.0)
    rollout = Rollout((1, 2), 2)
    pool_ = Executor(pool(slot_with(current), flapping, target=2, rollout=rollout))
    assert summary(Plan(pool_.replan(10.0), math.inf)) == [
        (ActionKind.SPAWN, 1, None, True),
        (ActionKind.SPAWN, 2, None, False),
    ]
    assert not flapping.flapping
    new2 = flapping.current
    assert new2 is not None
    pool_.runs(pool_.replacement(1), 11.0)
    pool_.runs(new2, 11.0)
    pool_.reaped(current, 12.0)
    assert rollout.outcome is RolloutOutcome.DONE
    assert [w.id for w in rollout.replaced] == [1, 2]


def test_rollout_of_an_empty_pool_is_done_at_once() -> None:
    """Steps: a rollout of no slot. Expected: done at the first plan, nothing to do."""
    rollout = Rollout((), 1)
    view = pool(target=0, rollout=rollout)
    assert plan(view, 1.0, POLICY).actions == []
    assert rollout.outcome is RolloutOutcome.DONE and view.rollout is None


def test_rollout_batch_must_not_be_negative() -> None:
    """A rollout of batch -1 is refused, naming the value (0 is the surge)."""
    with pytest.raises(ValueError, match=r"batch must be >= 0 \(0: the surge\), got -1$"):
        Rollout((1,), -1)


# -- giving up at boot (HALT) ----------------------------------------------------


def boot_failure(slot: WorkerSlot, now: float, error: str | None, policy: Supervision) -> None:
    """A booting worker of `slot` exits with the boot-failure status at `now`."""
    proc = worker(slot.id, WorkerState.BOOTING, started_at=now - 0.2)
    proc.last_error = error
    proc.boot_failed = True
    slot.current = proc
    record_exit(slot, proc, now, policy)


def test_first_worker_that_cannot_boot_halts_the_pool() -> None:
    """Steps: a pool that never came up (2 slots; slot 2 still boots); slot 1's worker
    exits with the boot-failure status, its last error "boot: ImportError: x"; plan
    then, and after the slot's backoff, with the view halted as the pool records it.
    Expected: HALT for slot 1, reason "worker 1 could not boot: ImportError: x", and no
    SPAWN; once halted, no second HALT and still no SPAWN."""
    first = WorkerSlot(1)
    second = slot_with(worker(2, WorkerState.BOOTING, started_at=9.0))
    boot_failure(first, 10.0, "boot: ImportError: x", POLICY)
    view = pool(first, second, target=2, booted=False)
    result = plan(view, 10.0, POLICY)
    assert [(a.kind, a.slot, a.reason) for a in result.actions] == [
        (ActionKind.HALT, 1, "worker 1 could not boot: ImportError: x")
    ]
    view.halted = result.actions[0].reason
    later = plan(view, 20.0, POLICY)
    assert later.actions == []


def test_slot_that_flaps_before_the_pool_came_up_halts_it() -> None:
    """Steps: flap_after 3; a pool that never came up; slot 1's worker returns (no boot
    failure status) three times in a row, right after its fork.
    Expected: no HALT after the first two deaths (backoff as usual); HALT once the slot
    flaps, naming its last error."""
    policy = Supervision(backoff=Backoff(flap_after=3))
    slot = WorkerSlot(1)
    view = pool(slot, target=1, booted=False)
    for death in range(1, 4):
        proc = worker(1, WorkerState.STARTING, started_at=float(death), generation=death)
        proc.last_error = "app returned"
        slot.current = proc
        record_exit(slot, proc, death + 0.1, policy)
        kinds = [a.kind for a in plan(view, death + 0.1, policy).actions]
        assert (ActionKind.HALT in kinds) is (death == 3)
    halt = plan(view, 5.0, policy).actions[0]
    assert (halt.kind, halt.reason) == (ActionKind.HALT, "worker 1 could not boot: app returned")


@pytest.mark.parametrize("case", ["booted", "not a boot failure", "policy off"])
def test_no_halt_once_the_pool_came_up_nor_for_other_deaths_nor_when_off(case: str) -> None:
    """Steps: slot 1's worker dies right after its fork, with the boot-failure status,
    after the pool came up once (as after a reload); or before, with another status
    (its app raised); or before, with halt_at_boot off.
    Expected: no HALT: the slot is forked again after its backoff."""
    policy = Supervision(backoff=BACKOFF, halt_at_boot=case != "policy off")
    slot = WorkerSlot(1)
    boot_failure(slot, 10.0, "boot: ImportError: x", policy)
    slot.boot_failed = case != "not a boot failure"
    view = pool(slot, target=1, booted=case == "booted")
    assert plan(view, 10.0, policy).actions == []
    assert summary(plan(view, 10.1, policy)) == [(ActionKind.SPAWN, 1, None, False)]
