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
    Supervision,
    WorkerProc,
    WorkerSlot,
    WorkerState,
    plan,
    record_exit,
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
    recycling: bool = True,
) -> PoolView:
    return PoolView({s.id: s for s in slots}, target, active, retired or [], recycling)


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
    """Steps: slot 1 is being replaced (replace_requested); its booting replacement dies
    0.5 s after its fork; plan then, and at the spawn time.
    Expected: the current worker stays; no action until the backoff delay passed
    (`next_check` is that time), then SPAWN of a replacement.
    """
    current = worker(1, started_at=0.0, heartbeat=99.0)
    replacement = worker(1, WorkerState.BOOTING, started_at=100.0, generation=2)
    slot = WorkerSlot(1, current=current, replacement=replacement, replace_requested=True)
    record_exit(slot, replacement, 100.5, POLICY)
    assert slot.current is current
    assert slot.replacement is None
    waiting = plan(pool(slot, target=1), now=100.5, policy=POLICY)
    assert waiting.actions == []
    assert waiting.next_check == 100.6
    assert summary(plan(pool(slot, target=1), now=100.6, policy=POLICY)) == [
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


def test_recycling_paused_in_the_view_suspends_max_requests_and_max_age() -> None:
    """Steps: max_requests 10 and max_age 100; a worker forked at 0 served 50 requests and
    beats at 190; plan at 200 with recycling=False, then with recycling=True.
    Expected: paused: no action and the next check is the heartbeat deadline (220), not a
    recycling time; resumed: SPAWN with replace=True.
    """
    policy = Supervision(max_requests=10, max_age=100.0, backoff=BACKOFF)
    current = worker(1, heartbeat=190.0)
    current.counters["requests"] = 50
    slot = slot_with(current)
    paused = plan(pool(slot, target=1, recycling=False), now=200.0, policy=policy)
    assert paused.actions == []
    assert paused.next_check == 220.0
    resumed = only(plan(pool(slot, target=1, recycling=True), now=200.0, policy=policy))
    assert (resumed.kind, resumed.replace) == (ActionKind.SPAWN, True)


@pytest.mark.parametrize("recycling", [True, False])
def test_requested_replacement_spawns_a_replacement(recycling: bool) -> None:
    """Steps: slot 1's running worker has replace_requested (a reload), with automatic
    recycling on or paused.
    Expected: SPAWN with replace=True, reason "replace requested", either way.
    """
    slot = slot_with(worker(1, heartbeat=9.0))
    slot.replace_requested = True
    spawn = only(plan(pool(slot, target=1, recycling=recycling), now=10.0, policy=POLICY))
    assert (spawn.kind, spawn.slot, spawn.replace, spawn.reason) == (
        ActionKind.SPAWN,
        1,
        True,
        "replace requested",
    )


def test_requested_replacement_waits_for_the_slot_backoff() -> None:
    """Steps: slot 1 must be replaced but its next spawn time is 12 (an earlier
    replacement died early); plan at 10.
    Expected: no action; next check 12.
    """
    slot = slot_with(worker(1, heartbeat=9.0))
    slot.replace_requested = True
    slot.next_spawn_at = 12.0
    result = plan(pool(slot, target=1), now=10.0, policy=POLICY)
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
    """Steps: during a reload (replace_requested) slot 1's old worker died; its running
    replacement is alone in the slot.
    Expected: only PROMOTE of the replacement; no second replacement is spawned for it,
    since the replacement itself is what the reload asked for.
    """
    replacement = worker(1, started_at=9.0, generation=2)
    slot = slot_with(None, replacement)
    slot.replace_requested = True
    promote = only(plan(pool(slot, target=1), now=10.0, policy=POLICY))
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
