"""A worker's graceful stop: when it may stop, as a function of the clock and what it owes."""

from __future__ import annotations

from procbus.worker.drain import Drain

START = 100.0


def drain(grace: float = 1.0, graceful_timeout: float = 30.0) -> Drain:
    return Drain(START, graceful_timeout, grace)


def test_marked_drain_ends_once_every_publish_before_the_marker_is_answered() -> None:
    """Steps: the marker was read; 2 publishes unanswered, then 0.
    Expected: not done while they wait (even past the marker grace); done at once when
    they are answered; no more publishes are taken after the marker."""
    d = drain()
    assert not d.done(START + 0.1, marked=True, unanswered=2, held=0)
    assert not d.done(START + 5.0, marked=True, unanswered=2, held=0)
    assert d.done(START + 0.1, marked=True, unanswered=0, held=0)
    assert not d.taking_publishes(START + 0.1, marked=True)


def test_held_publishes_keep_a_marked_drain_waiting_for_the_welcome() -> None:
    """Steps: the marker was read while a publish is held back (no WELCOME yet).
    Expected: not done until the WELCOME released it and it was answered."""
    d = drain()
    assert not d.done(START + 2.0, marked=True, unanswered=0, held=1)
    assert not d.done(START + 2.0, marked=True, unanswered=1, held=0)
    assert d.done(START + 2.0, marked=True, unanswered=0, held=0)


def test_without_a_marker_the_worker_waits_the_grace_then_answers_what_it_took() -> None:
    """Steps: no marker comes (a TERM the master did not send); nothing unanswered, then
    one publish unanswered after the grace.
    Expected: publishes are taken and the drain goes on until the grace ends; then no
    more are taken, and it ends once those taken are answered; publishes held back
    (their WELCOME never came) are not waited for."""
    d = drain(grace=1.0)
    assert d.taking_publishes(START + 0.5, marked=False)
    assert not d.done(START + 0.5, marked=False, unanswered=0, held=0)
    assert d.next_check(START + 0.5, marked=False) == START + 1.0
    assert not d.taking_publishes(START + 1.0, marked=False)
    assert not d.done(START + 1.0, marked=False, unanswered=1, held=0)
    assert d.done(START + 1.0, marked=False, unanswered=0, held=3)


def test_a_worker_that_owes_nothing_stops_at_once() -> None:
    """Steps: a drain with no grace (the worker never said it runs).
    Expected: done at its start; it takes no publish."""
    d = drain(grace=0.0)
    assert d.done(START, marked=False, unanswered=0, held=0)
    assert not d.taking_publishes(START, marked=False)


def test_the_graceful_timeout_ends_every_drain() -> None:
    """Steps: graceful timeout 3 s; publishes still unanswered and held at 3 s, marked or
    not. Expected: done at 3 s, not before; the next check is then the deadline; a
    grace longer than the timeout is cut to it."""
    d = drain(grace=1.0, graceful_timeout=3.0)
    assert not d.done(START + 2.9, marked=True, unanswered=1, held=1)
    assert d.done(START + 3.0, marked=True, unanswered=1, held=1)
    assert d.done(START + 3.0, marked=False, unanswered=1, held=0)
    assert d.next_check(START + 1.5, marked=False) == START + 3.0
    assert d.next_check(START + 0.5, marked=True) == START + 3.0
    assert drain(grace=5.0, graceful_timeout=3.0).marker_deadline == START + 3.0
