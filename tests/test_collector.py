"""The proxy's `Collector`: closed connections' reference cycles freed within
seconds, over what was made after start only."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.task import Clock

from tinspect.h2_conn import new_connection
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


def test_the_twistd_proxy_runs_one():
    proxy = TwistdProxy(reactor=Clock())
    assert [type(s) for s in proxy if isinstance(s, Collector)] == [Collector]
