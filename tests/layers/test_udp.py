"""UDP sessions (tinspect/layers/udp.py): what a listener says when --spoof-source cannot bind a client's address."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

import tinspect.layers.udp as udp
from tinspect.chain import TapChain
from tinspect.context import ProxyContext, Settings
from tinspect.net.sockets import SocketError


@pytest.fixture
def unbindable(monkeypatch):
    """A forward UDP listener with --spoof-source whose sessions' upstream sockets can never be bound."""

    def refuse(*args, **kwargs):
        raise SocketError("cannot bind 192.0.2.2:0: Operation not permitted")

    monkeypatch.setattr(udp, "transparent_socket", refuse)
    reactor = MemoryReactorClock()
    ctx = ProxyContext(TapChain([]), Settings(spoof_source=True), reactor=reactor)
    return udp.ForwardUDP(ctx, "forward=198.51.100.7:53@5353", ("198.51.100.7", 53)), reactor


def spoof_lines(log_events):
    return [e for e in log_events if "--spoof-source" in e.get("log_format", "")]


def test_a_flood_of_unspoofable_datagrams_logs_one_line_then_a_count(unbindable, log_events):
    """1000 datagrams whose session cannot be bound: the first is logged with its flow, the rest as one count."""
    listener, reactor = unbindable
    for n in range(1000):
        listener.datagramReceived(b"q", ("192.0.2.2", 40000 + n % 7))
    first = spoof_lines(log_events)
    assert len(first) == 1 and first[0]["flow_id"] and "Operation not permitted" in first[0]["err"]
    reactor.advance(udp._Unspoofable.INTERVAL)
    lines = spoof_lines(log_events)
    assert len(lines) == 2 and lines[1]["n"] == 999
    assert listener.ctx.flows == {}


def test_after_a_quiet_interval_the_next_failure_is_logged_in_full(unbindable, log_events):
    """Counting stops when the failures do: one failure after a quiet interval names its own flow again."""
    listener, reactor = unbindable
    listener.datagramReceived(b"q", ("192.0.2.2", 40000))
    reactor.advance(udp._Unspoofable.INTERVAL)
    reactor.advance(udp._Unspoofable.INTERVAL)
    listener.datagramReceived(b"q", ("192.0.2.3", 40000))
    ids = [e.get("flow_id") for e in spoof_lines(log_events)]
    assert len(ids) == 2 and None not in ids and ids[0] != ids[1]


def test_stopping_the_listener_says_the_count_at_once(unbindable, log_events):
    """Drops counted in an unfinished interval are said when the listener stops, and no timer is left."""
    listener, reactor = unbindable
    for _ in range(3):
        listener.datagramReceived(b"q", ("192.0.2.2", 40000))
    listener.doStop()
    assert spoof_lines(log_events)[-1]["n"] == 2
    assert reactor.getDelayedCalls() == []
