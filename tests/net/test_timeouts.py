"""The Deadline timer, on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tinspect.net.timeouts import Deadline


def make(busy=None):
    clock = Clock()
    fired = []
    return clock, fired, Deadline(clock, fired.append, busy)


def test_fires_once_after_exactly_its_period_without_kicks():
    clock, fired, d = make()
    d.start(30, "request head")
    clock.advance(29.9)
    assert fired == [] and d.running
    clock.advance(0.1)
    assert fired == ["request head"] and not d.running
    clock.advance(100)
    assert fired == ["request head"]


def test_stop_and_restart_replace_the_deadline():
    clock, fired, d = make()
    d.start(10, "a")
    clock.advance(5)
    d.start(10, "b")
    clock.advance(9)
    assert fired == []
    d.stop()
    clock.advance(100)
    assert fired == [] and clock.getDelayedCalls() == []


def test_busy_postpones_expiry():
    busy = [True]
    clock, fired, d = make(lambda: busy[0])
    d.start(10, "response")
    clock.pump([10] * 5)
    assert fired == []
    busy[0] = False
    clock.advance(10)
    assert fired == ["response"]


@given(st.lists(st.floats(min_value=0, max_value=9.99), min_size=1, max_size=50))
def test_never_fires_while_kicked_more_often_than_its_period(gaps):
    """Progress at least every period keeps it alive; silence afterwards ends it within two periods."""
    clock, fired, d = make()
    d.start(10, "idle")
    for gap in gaps:
        clock.advance(gap)
        d.kick()
    assert fired == []
    clock.pump([1] * 20)  # in steps: Clock runs a call late by the whole advance
    assert fired == ["idle"]


def test_a_keep_alive_connection_reuses_one_timer_and_stop_cancels_it():
    """start/suspend cycles (one per request) keep a single scheduled call; the deadlines still hold."""
    clock, fired, d = make()
    d.start(60, "idle")
    first = clock.getDelayedCalls()
    for _ in range(100):
        clock.advance(0.01)
        d.suspend()
        d.start(60, "response")
        d.start(60, "idle")
    assert clock.getDelayedCalls() == first
    clock.advance(59)  # t=60: the timer fires 60 s after the first start, finds the due time (61) later, waits on
    clock.advance(0.9)
    assert fired == [] and d.running
    clock.advance(0.2)
    assert fired == ["idle"] and not d.running
    d.start(30, "head")
    d.stop()
    assert clock.getDelayedCalls() == [] and not d.running


def test_a_shorter_deadline_moves_the_timer_earlier():
    clock, fired, d = make()
    d.start(60, "idle")
    clock.advance(5)
    d.start(30, "head")
    clock.advance(29.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["head"]


def test_moving_sooner_never_searches_the_reactors_timer_heap():
    """A shorter deadline replaces its timer rather than ``reset`` it sooner, which makes a
    real reactor search all its timers (linear in open connections)."""
    clock, fired, d = make()
    d.start(60, "idle")
    first = clock.getDelayedCalls()[0]

    def linear_search(call):
        raise AssertionError("a timer was moved sooner")

    first.resetter = linear_search
    clock.advance(5)
    d.start(30, "head")
    assert first.cancelled and len(clock.getDelayedCalls()) == 1
    clock.advance(30)
    assert fired == ["head"]


def test_a_suspended_deadline_does_not_fire():
    clock, fired, d = make()
    d.start(10, "idle")
    d.suspend()
    clock.advance(100)
    assert fired == [] and clock.getDelayedCalls() == []
