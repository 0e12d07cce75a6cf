"""take_over, Handoff.release and relay_raw: one layer handing a connection to the next."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.memnet import Record, Transport
from tinspect.chain import TapChain
from tinspect.flow import Flow
from tinspect.layers.raw import Leg, PauseReason, RawRelay
from tinspect.net.handoff import Handoff, Upstream, relay_raw, take_over
from tinspect.net.shells import ClientConnection, ServerConnection
from tinspect.units import TO_CLIENT, TO_SERVER


class _Layer:
    """A layer that writes down what each shell tells it, in order."""

    def __init__(self, events: list, name: str = "new") -> None:
        self.events = events
        self.name = name

    def client_data(self, data):
        self.events.append((self.name, "client_data", data))

    def client_eof(self):
        self.events.append((self.name, "client_eof"))

    def client_lost(self, reason):
        self.events.append((self.name, "client_lost"))

    def server_data(self, data):
        self.events.append((self.name, "server_data", data))

    def server_eof(self):
        self.events.append((self.name, "server_eof"))

    def server_lost(self, reason):
        self.events.append((self.name, "server_lost"))


class _Producer:
    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def _handoff(**early) -> Handoff:
    client = ClientConnection()
    client.transport = Transport()
    server = ServerConnection(None)
    server.transport = Transport()
    flow = Flow(("192.0.2.2", 5555), ("192.0.2.10", 80))
    return Handoff(flow, client, Upstream(server, transport=server.transport), lambda: None, **early)


def test_take_over_replays_what_was_read_early_in_order():
    """Server bytes, server EOF, client bytes, client EOF, then the server's loss reach the new layer."""
    lost = Failure(ConnectionDone())
    handoff = _handoff(client_early=b"GET", server_early=b"220", client_eof=True, server_eof=True,
                       server_lost=lost)
    events: list = []
    layer = _Layer(events)
    take_over(handoff, layer, layer)
    assert handoff.client.handler is layer and handoff.upstream.shell.handler is layer
    assert events == [
        ("new", "server_data", b"220"),
        ("new", "server_eof"),
        ("new", "client_data", b"GET"),
        ("new", "client_eof"),
        ("new", "server_lost"),
    ]
    assert (handoff.client_early, handoff.server_early, handoff.client_eof, handoff.server_eof,
            handoff.server_lost) == (b"", b"", False, False, None)


def test_a_layer_handing_on_while_replayed_passes_on_only_the_rest():
    """A layer that hands the connection on from inside the replay: the next one gets what is
    left, once, and the first hears nothing more."""
    handoff = _handoff(server_early=b"banner", client_early=b"hello", client_eof=True)
    events: list = []
    last = _Layer(events, "last")

    class Deciding(_Layer):
        def server_data(self, data):
            super().server_data(data)
            handoff.server_early += data  # kept for the next layer, as the sniffer does
            take_over(handoff, last, last)

    first = Deciding(events, "first")
    take_over(handoff, first, first)
    assert events == [
        ("first", "server_data", b"banner"),
        ("last", "server_data", b"banner"),
        ("last", "client_data", b"hello"),
        ("last", "client_eof"),
    ]


def test_take_over_leaves_the_server_handler_the_new_layer_put_there():
    """With no server handler given, the server shell keeps the one the new layer set (its
    upstream connection), and the server's early bytes go there."""
    handoff = _handoff(server_early=b"x")
    events: list = []
    own = _Layer(events, "own")
    handoff.upstream.shell.handler = own
    take_over(handoff, _Layer(events), None)
    assert handoff.upstream.shell.handler is own and events == [("own", "server_data", b"x")]


def test_release_unregisters_the_old_layers_producers_and_lifts_every_pause_once():
    """The old layer's legs are freed: no producer on their transports, reading resumed whatever
    paused it; a second release does nothing."""
    handoff = _handoff()
    legs = (Leg(handoff.client.transport, "client"), Leg(handoff.upstream.transport, "server"))
    for leg in legs:
        leg.transport.registerProducer(_Producer(), True)
        leg.pause(PauseReason.WAIT)
        leg.pause(PauseReason.SINK)
    handoff.legs = legs
    handoff.release()
    assert [leg.paused for leg in legs] == [False, False]
    assert [leg.transport.producer for leg in legs] == [None, None]
    assert [leg.transport.producerState for leg in legs] == ["producing", "producing"]
    legs[0].pause(PauseReason.TAPS)
    handoff.release()
    assert handoff.legs == () and legs[0].paused


def test_relay_raw_makes_a_raw_relay_of_a_connected_upstream_and_replays_into_it():
    """relay_raw: the flow is 'tcp', both shells' handler is the relay, and the early bytes are
    relayed as Data once the relay has its server leg."""
    record = Record()
    handoff = _handoff(server_early=b"220 hi\r\n", client_early=b"EHLO\r\n")
    handoff.flow.protocol = "http/1.1"
    relay = relay_raw(TapChain([record]), handoff)
    assert isinstance(relay, RawRelay) and handoff.flow.protocol == "tcp"
    assert handoff.client.handler is relay and handoff.upstream.shell.handler is relay
    assert [(u.direction, u.data) for u in record.units] == [(TO_CLIENT, b"220 hi\r\n"), (TO_SERVER, b"EHLO\r\n")]
    assert handoff.client.transport.value() == b"220 hi\r\n"
    assert handoff.upstream.transport.value() == b"EHLO\r\n"


def test_pause_reasons_are_distinct_bits_and_all_covers_each():
    """Every reason is one bit of its own, and ALL is every one of them."""
    reasons = [r for r in PauseReason if r is not PauseReason.ALL]
    assert all(r.bit_count() == 1 for r in reasons)
    assert len({int(r) for r in reasons}) == len(reasons)
    assert all(r in PauseReason.ALL for r in reasons) and PauseReason.ALL == sum(reasons)


def test_a_leg_keeps_its_reasons_as_a_plain_int():
    """The leg's bits are an int, not an enum (the hot path's arithmetic stays cheap), and one
    reason ending leaves the others in force."""
    leg = Leg(Transport(), "client")
    leg.pause(PauseReason.TAPS)
    leg.pause(PauseReason.SINK)
    leg.resume(PauseReason.TAPS)
    assert type(leg._paused) is int and leg.paused
    leg.resume(PauseReason.SINK)
    assert not leg.paused and leg.transport.producerState == "producing"
