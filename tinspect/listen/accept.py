"""Transparent listeners: accept a client, find its destination, sniff.

`TCPProxyFactory` is what a transparent or forward ``--listen`` endpoint
serves. Each accepted `ClientConnection` learns where the client was going
from its listener's mode (`Destination`), opens the flow, connects upstream at
once (so the TCP handshake with the server overlaps whatever the client sends
first) and lets the `Sniffer` choose the layer that carries the connection.
"""

from __future__ import annotations

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.layers.dispatch import Sniffer
from tinspect.layers.http.explicit import LOCAL_NETWORKS, ClientNetworks
from tinspect.layers.http.http1.layer import Http1Layer
from tinspect.net.addresses import format_addr, normalize_host
from tinspect.net.handoff import Handoff, Upstream
from tinspect.net.shells import ClientConnection, open_upstream
from tinspect.net.sockets import SocketError, original_dst

__all__ = ["Destination", "TCPProxyFactory", "ExplicitProxyFactory"]


class Destination:
    """How a listener finds an accepted connection's destination.

    Args:
        mode: ``"tproxy"`` (the socket's local address), ``"redirect"``
            (SO_ORIGINAL_DST) or ``"forward"`` (a fixed address).
        fixed: the address for ``"forward"``.
    """

    def __init__(self, mode: str, fixed: tuple[str, int] | None = None) -> None:
        if mode not in ("tproxy", "redirect", "forward"):
            raise ValueError(f"unknown destination mode {mode!r}")
        if (mode == "forward") != (fixed is not None):
            raise ValueError("forward mode, and only it, takes an address")
        self.mode = mode
        self.fixed = fixed

    @property
    def flow_mode(self) -> str:
        """The `Flow.mode` of flows found this way."""
        return "forward" if self.mode == "forward" else "transparent"

    def resolve(self, transport) -> tuple[str, int]:
        """The destination of the connection on ``transport``.

        Raises:
            SocketError: no original destination can be found.
        """
        if self.mode == "forward":
            return self.fixed
        if self.mode == "tproxy":
            host = transport.getHost()
            return normalize_host(host.host), host.port
        return original_dst(transport.getHandle())


class _ListenerFactory(Factory):
    """What both listener factories share: a `ClientConnection` shell per
    client, whose ``connectionMade`` calls the factory's ``start``."""

    noisy = False
    default_clients: tuple[str, ...] | None = None  # served when --allow-clients is not given; None: all

    def buildProtocol(self, addr):
        proto = ClientConnection()
        proto.factory = self
        return proto

    def allowed(self, client: ClientConnection) -> tuple[str, int] | None:
        """The client's address if this listener serves it (its networks, the
        connection limits); else refuse it (logged) and return ``None``."""
        peer = client.transport.getPeer()
        addr = (normalize_host(peer.host), peer.port)
        networks = self.ctx.settings.allow_clients or self.default_clients
        if networks is not None:
            clients = self._clients
            if clients is None or clients[0] is not networks:
                clients = self._clients = (networks, ClientNetworks(networks))
            if addr[0] not in clients[1]:
                self._refuse(client, addr, f"not in the client networks it serves ({clients[1]})", "network")
                return None
        refusal = self.ctx.admit(addr[0])
        if refusal is not None:
            self._refuse(client, addr, refusal, "limit")
            return None
        client.admitted = addr[0]
        return addr

    def ended(self, client: ClientConnection) -> None:
        """A client connection closed: it no longer counts against the limits."""
        host = getattr(client, "admitted", None)
        if host is not None:
            client.admitted = None
            self.ctx.release(host)

    def _refuse(self, client: ClientConnection, addr: tuple[str, int], reason: str, label: str) -> None:
        self.ctx.metrics.refused[label] += 1
        self._log.warn(
            "refusing {client} on {listener}: {reason}",
            client=format_addr(addr),
            listener=self.listener,
            reason=reason,
        )
        client.transport.abortConnection()

    _clients: tuple[tuple[str, ...], ClientNetworks] | None = None
    _log = Logger()


class TCPProxyFactory(_ListenerFactory):
    """Builds a `ClientConnection` per accepted client of a transparent or
    forward listener.

    Args:
        ctx: the proxy's shared context.
        listener: the listen spec, for logs and `Flow.listener`.
        destination: how to find each connection's destination.
    """

    def __init__(self, ctx: ProxyContext, listener: str, destination: Destination) -> None:
        self.ctx = ctx
        self.listener = listener
        self.destination = destination

    def start(self, client: ClientConnection) -> None:
        """A client connected: find its destination, connect there, sniff."""
        ctx = self.ctx
        transport = client.transport
        addr = self.allowed(client)
        if addr is None:
            return
        try:
            dst = self.destination.resolve(transport)
        except SocketError as e:
            self._refuse(client, addr, str(e), "destination")
            return
        if self.destination.mode != "forward" and ctx.loops(dst):
            self._refuse(client, addr, f"it connected to the proxy itself ({format_addr(dst)}), which would loop",
                         "loop")
            return
        flow = Flow(addr, dst, listener=self.listener, mode=self.destination.flow_mode)
        if not ctx.open_flow(flow):
            transport.abortConnection()
            ctx.close_flow(flow)
            return
        shell, d = open_upstream(ctx, dst, None, timings=flow.timings, client=addr)
        Sniffer(ctx, Handoff(flow, client, Upstream(shell, connecting=d), lambda: ctx.close_flow(flow)))


@implementer(IProtocolNegotiationFactory)
class ExplicitProxyFactory(_ListenerFactory):
    """Builds a `ClientConnection` per client of the explicit proxy.

    Clients that are configured to use a proxy speak HTTP to it from the
    first byte, so there is nothing to sniff: each connection is an
    `Http1Layer` in explicit mode (see `tinspect.layers.http.explicit`).

    Args:
        ctx: the proxy context.
        listener: the listen spec, for logs.
    """

    default_clients = LOCAL_NETWORKS  # not an open relay, whatever interface it listens on

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN on an HTTPS proxy listener (``explicit@ssl:...``): the proxy speaks
        HTTP/1.1. Twisted's ``ssl:`` endpoint asks its factory; without an answer it
        selects nothing in a way OpenSSL turns into an ``internal_error`` alert."""
        return [b"http/1.1"]

    def __init__(self, ctx: ProxyContext, listener: str) -> None:
        self.ctx = ctx
        self.listener = listener

    def start(self, client: ClientConnection) -> None:
        """A client connected: open its flow and speak HTTP."""
        ctx = self.ctx
        addr = self.allowed(client)
        if addr is None:
            return
        flow = Flow(addr, None, listener=self.listener, mode="explicit")
        if not ctx.open_flow(flow):
            client.transport.abortConnection()
            ctx.close_flow(flow)
            return
        Http1Layer(ctx, flow, client, lambda: ctx.close_flow(flow), explicit=True)
