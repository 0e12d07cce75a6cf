"""An in-memory network for glue tests: a proxy context, clients, dialled servers.

Nothing here opens a socket. A `Net` owns a `MemoryReactorClock` whose
``connectTCP`` also enforces the connect timeout the way a real connector does
(a `TimeoutError` through ``clientConnectionFailed`` once the clock passes
it), and records each connect as a `Dial` the test completes or refuses. Both
ends are `Peer` objects: a protocol on a `StringTransport`, with short verbs
for what a test does to it (``send``, ``eof``, ``close``, ``reset``) and reads
from it (``take``). Transports are lenient: a real transport does not mind
``pauseProducing`` after ``loseConnection``, so neither do these.

`Net.settle` plays the part of the reactor after a close: each transport the
proxy closed or aborted gets its ``connectionLost``, as the OS would deliver.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport, _FakeConnector
from twisted.python.failure import Failure

from tinspect.chain import Tap, TapChain
from tinspect.context import ProxyContext, Settings
from tinspect.flow import Flow
from tinspect.layers.dispatch import Sniffer, compose
from tinspect.listen.accept import Destination, ExplicitProxyFactory, TCPProxyFactory
from tinspect.net.handoff import Handoff, Upstream
from tinspect.net.shells import open_upstream
from tinspect.units import TO_SERVER, BodyChunk, MessageEnd, Request, Response, WebSocketClose, WebSocketMessage

__all__ = ["Net", "Peer", "Dial", "Transport", "InterceptedFactory", "Record", "describe", "CLIENT_ADDR", "PROXY_ADDR",
           "SERVER_ADDR"]

CLIENT_ADDR = IPv4Address("TCP", "192.0.2.2", 5555)
PROXY_ADDR = IPv4Address("TCP", "192.0.2.1", 8080)
SERVER_ADDR = ("192.0.2.10", 80)


class Transport(StringTransport):
    """A `StringTransport` that behaves like TCP transports where it differs:
    it can half-close, and unregistering no producer is not an error."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class Peer:
    """One end of an in-memory connection: a protocol on a `StringTransport`.

    Args:
        proto: the protocol the proxy's side of the connection runs.
        transport: its transport; what the proxy writes collects there.
    """

    def __init__(self, proto: Any, transport: Transport) -> None:
        self.proto = proto
        self.transport = transport
        self.lost = False

    def send(self, data: bytes) -> None:
        """The remote end sends ``data`` to the proxy."""
        self.proto.dataReceived(data)

    def take(self) -> bytes:
        """What the proxy wrote to this end since the last `take`."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def eof(self) -> None:
        """The remote end half-closes (FIN)."""
        self.proto.readConnectionLost()

    def close(self) -> None:
        """The connection ends cleanly."""
        self._lose(ConnectionDone())

    def reset(self) -> None:
        """The connection is reset (RST)."""
        self._lose(ConnectionLost())

    def _lose(self, reason: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.transport.connected = False
            self.proto.connectionLost(Failure(reason))

    @property
    def closed(self) -> bool:
        """The proxy closed this end (gracefully or not)."""
        return self.transport.disconnecting

    @property
    def half_closed(self) -> bool:
        """The proxy sent this end EOF (shut its write side)."""
        return self.transport.write_closed

    @property
    def aborted(self) -> bool:
        """The proxy aborted this end (RST)."""
        return self.transport.disconnected

    @property
    def paused(self) -> bool:
        """The proxy stopped reading from this end."""
        return self.transport.producerState == "paused"


class InterceptedFactory(TCPProxyFactory):
    """A forward listener whose connections arrive as the TLS layer hands them
    to the `Sniffer` once interception is done: decrypted, with the flow's TLS
    facts set (``tls_version``, ``sni``, and ``alpn``, which is what both the
    client and the server agreed on). There is no TLS in memory; the bytes are
    what the decrypting layer would pass on.
    """

    def __init__(self, ctx: ProxyContext, dst: tuple[str, int], alpn: str | None, sni: str = "a.example") -> None:
        super().__init__(ctx, "test", Destination("forward", dst))
        self.alpn = alpn
        self.sni = sni

    def start(self, client: Any) -> None:
        ctx = self.ctx
        peer = client.transport.getPeer()
        flow = Flow((peer.host, peer.port), self.destination.fixed, listener=self.listener, mode="forward")
        flow.tls_version = "TLSv1.3"
        flow.sni = self.sni
        flow.alpn = self.alpn
        if not ctx.open_flow(flow):
            client.transport.abortConnection()
            ctx.close_flow(flow)
            return
        shell, d = open_upstream(ctx, flow.dst, None)
        Sniffer(ctx, Handoff(flow, client, Upstream(shell, connecting=d), lambda: ctx.close_flow(flow)))


class _Connector(_FakeConnector):
    """A connector that also drops its timeout when the connect is cancelled."""

    dial: Dial | None = None

    def stopConnecting(self) -> None:
        super().stopConnecting()
        if self.dial is not None:
            self.dial.settle()


class Dial:
    """One upstream connect the proxy started, for the test to complete."""

    def __init__(self, net: Net, host: str, port: int, factory: Any, timeout: float, connector: _Connector) -> None:
        self.net = net
        self.host = host
        self.port = port
        self.factory = factory
        self.connector = connector
        self.done = False
        self._timer = net.reactor.callLater(timeout, self._time_out)

    @property
    def dst(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def cancelled(self) -> bool:
        return self.connector.stoppedConnecting

    def settle(self) -> None:
        self.done = True
        if self._timer.active():
            self._timer.cancel()

    def accept(self) -> Peer:
        """The server accepts: the proxy's connection is up."""
        assert not self.done, "this connect is over"
        self.settle()
        transport = Transport(hostAddress=PROXY_ADDR, peerAddress=IPv4Address("TCP", self.host, self.port),
                              lenient=True)
        proto = self.factory.buildProtocol(None)
        peer = Peer(proto, transport)
        self.net.peers.append(peer)
        proto.makeConnection(transport)
        return peer

    def refuse(self) -> None:
        """Nothing listens there."""
        assert not self.done, "this connect is over"
        self.settle()
        self.factory.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))

    def _time_out(self) -> None:
        self.done = True
        self.factory.clientConnectionFailed(self.connector, Failure(ConnectTimeoutError()))


class _Reactor(MemoryReactorClock):
    def __init__(self, net: Net) -> None:
        super().__init__()
        self._net = net

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.tcpClients.append((host, port, factory, timeout, bindAddress))
        connector = _Connector(IPv4Address("TCP", host, port))
        factory.startedConnecting(connector)
        self.connectors.append(connector)
        connector.dial = Dial(self._net, host, port, factory, timeout, connector)
        self._net.dials.append(connector.dial)
        return connector


class Net:
    """A proxy context on a memory reactor, and every connection made through it.

    Args:
        taps: the tap chain.
        **settings: `Settings` fields to change.
    """

    def __init__(self, taps=(), **settings: Any) -> None:
        self.reactor = _Reactor(self)
        settings.setdefault("allow_clients", ("192.0.2.0/24",))  # CLIENT_ADDR is no private address
        self.ctx = compose(ProxyContext(TapChain(taps), Settings(**settings), reactor=self.reactor))
        self.dials: list[Dial] = []
        self.peers: list[Peer] = []

    def connect(self, factory: Any) -> Peer:
        """A client connects to a listener built by ``factory``."""
        transport = Transport(hostAddress=PROXY_ADDR, peerAddress=CLIENT_ADDR, lenient=True)
        proto = factory.buildProtocol(CLIENT_ADDR)
        peer = Peer(proto, transport)
        self.peers.append(peer)
        proto.makeConnection(transport)
        return peer

    def transparent(self, dst: tuple[str, int] = SERVER_ADDR) -> Peer:
        """A client of a forward listener (transparent path, fixed destination)."""
        return self.connect(TCPProxyFactory(self.ctx, "test", Destination("forward", dst)))

    def intercepted(self, alpn: str | None = "h2", dst: tuple[str, int] = SERVER_ADDR) -> Peer:
        """A client whose TLS was intercepted (see `InterceptedFactory`), ALPN ``alpn`` agreed."""
        return self.connect(InterceptedFactory(self.ctx, dst, alpn))

    def explicit(self) -> Peer:
        """A client of the explicit proxy."""
        return self.connect(ExplicitProxyFactory(self.ctx, "test"))

    def pending(self) -> list[Dial]:
        """Connects neither completed, refused, timed out nor cancelled."""
        return [d for d in self.dials if not d.done and not d.cancelled]

    @property
    def flow(self):
        """The one live flow."""
        (flow,) = self.ctx.flows.values()
        return flow

    def settle(self) -> None:
        """Deliver ``connectionLost`` to every end the proxy closed or aborted."""
        progress = True
        while progress:
            progress = False
            for peer in self.peers:
                if not peer.lost and peer.transport.disconnecting:
                    peer._lose(ConnectionAborted() if peer.transport.disconnected else ConnectionDone())
                    progress = True

    def leftovers(self) -> dict[str, Any]:
        """After `settle`: live flows, open connections, pending timers (all empty when clean)."""
        self.settle()
        return {
            "flows": dict(self.ctx.flows),
            "open": [p for p in self.peers if not p.lost],
            "timers": self.reactor.getDelayedCalls(),
        }

    def shutdown(self) -> None:
        """Teardown: end every connection and timer, whatever the test left."""
        for peer in self.peers:
            if not peer.lost:
                peer.close()
        self.settle()
        for call in self.reactor.getDelayedCalls():
            if call.active():
                call.cancel()


class Record(Tap):
    """Keeps every unit it sees (``units``, and as short tuples in ``seen``), the flows
    it saw open (``flows``) and each closed flow's error (``closed``); passes units on."""

    def __init__(self):
        self.units = []
        self.seen = []
        self.flows = []
        self.closed = []

    def handle(self, unit, flow):
        self.units.append(unit)
        self.seen.append(describe(unit))  # now: a later tap may change the unit
        return unit

    def flow_opened(self, flow):
        self.flows.append(flow)

    def flow_closed(self, flow):
        self.closed.append(flow.error)

    def of(self, kind):
        """The units of exactly this kind, in order."""
        return [u for u in self.units if type(u) is kind]


def describe(unit):
    """A unit as a short, comparable tuple."""
    if isinstance(unit, Request):
        return ("request", unit.method, unit.target, unit.body)
    if isinstance(unit, Response):
        return ("response", unit.status, unit.body, unit.body_too_large)
    if isinstance(unit, BodyChunk):
        return ("chunk", str(unit.direction), unit.data)
    if isinstance(unit, MessageEnd):
        return ("end", str(unit.direction), unit.trailers.items() if unit.trailers else None)
    side = "server" if unit.direction is TO_SERVER else "client"
    if isinstance(unit, WebSocketMessage):
        return ("binary" if unit.binary else "text", side, bytes(unit.data))
    if isinstance(unit, WebSocketClose):
        return ("close", side, unit.code, unit.reason)
    return (unit.kind, side)
