"""The proxy's `Collector`: closed connections' reference cycles freed within
seconds, over what was made after start only."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.task import Clock

from tinspect.layers.http.h2.conn import new_connection
from tinspect.proxy import Collector, TwistdProxy


@pytest.fixture
def no_automatic_gc():
    """Only the collector under test collects; the frozen objects are thawed afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was:
            gc.enable()


def test_a_closed_h2_connection_is_freed_at_the_next_tick(no_automatic_gc):
    clock = Clock()
    collector = Collector(clock, interval=2.0)
    collector.startService()
    try:
        assert gc.get_freeze_count() > 0  # what existed at start is out of the collections
        conn = new_connection(client_side=False, max_header_list_size=65536)
        alive = weakref.ref(conn)
        del conn
        assert alive() is not None  # a reference cycle: no reference count frees it
        clock.advance(1.9)
        assert alive() is not None
        clock.advance(0.1)
        assert alive() is None
    finally:
        collector.stopService()
    assert not clock.getDelayedCalls()


def test_a_slow_collection_spaces_out_the_next(no_automatic_gc):
    """With many connections open a collection takes longer: the next waits 100 times as long as
    it took (at most 1% of the time), never less than the interval."""
    clock = Clock()
    now = [0.0]
    spent = [0.001]
    ticks = []

    def collect():
        ticks.append(clock.seconds())
        now[0] += spent[0]

    collector = Collector(clock, interval=2.0, collect=collect, clock=lambda: now[0])
    collector.startService()
    try:
        clock.pump([2.0, 2.0])
        assert ticks == [2.0, 4.0]  # 1 ms: every 2 s
        spent[0] = 0.05
        clock.pump([2.0, 1.0, 4.0])
        assert ticks == [2.0, 4.0, 6.0, 11.0]  # 50 ms took: 5 s until the next
        spent[0] = 0.0
        clock.pump([1.0] * 8)
        assert ticks == [2.0, 4.0, 6.0, 11.0, 16.0, 18.0]  # quick again: every 2 s
    finally:
        collector.stopService()
    assert not clock.getDelayedCalls()


def test_the_twistd_proxy_runs_one():
    proxy = TwistdProxy(reactor=Clock())
    assert [type(s) for s in proxy if isinstance(s, Collector)] == [Collector]
