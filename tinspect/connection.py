"""TCP listeners' protocols: accept a client, find its destination, relay.

`TCPProxyFactory` is what a ``--listen`` endpoint serves. Each accepted
`ClientConnection` learns where the client was going from its listener's
mode (`Destination`), opens the flow, connects upstream at once (so the TCP
handshake with the server overlaps whatever the client sends first) and
hands both legs to the layer that carries the flow.
"""

from __future__ import annotations

import errno
import socket
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.context import ProxyContext
from tinspect.flow import Flow, format_addr
from tinspect.relay import RawRelay
from tinspect.sockets import SocketError, normalize_host, original_dst
from tinspect.upstream import connect, describe_failure

__all__ = ["Destination", "TCPProxyFactory", "ClientConnection", "ServerConnection", "UpstreamFactory"]


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


class TCPProxyFactory(Factory):
    """Builds a `ClientConnection` per accepted client.

    Args:
        ctx: the proxy's shared context.
        listener: the listen spec, for logs and `Flow.listener`.
        destination: how to find each connection's destination.
    """

    noisy = False

    def __init__(self, ctx: ProxyContext, listener: str, destination: Destination) -> None:
        self.ctx = ctx
        self.listener = listener
        self.destination = destination
        self.port: int | None = None  # set by the listener once bound (loop detection)

    def buildProtocol(self, addr):
        proto = ClientConnection()
        proto.factory = self
        return proto


@implementer(IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """The client side of one proxied TCP connection."""

    _log = Logger()
    factory: TCPProxyFactory
    relay: RawRelay | None = None
    flow: Flow | None = None

    def connectionMade(self) -> None:
        factory = self.factory
        ctx = factory.ctx
        peer = self.transport.getPeer()
        client = (normalize_host(peer.host), peer.port)
        try:
            dst = factory.destination.resolve(self.transport)
        except SocketError as e:
            self._log.warn(
                "refusing {client} on {listener}: {reason}",
                client=format_addr(client),
                listener=factory.listener,
                reason=str(e),
            )
            self.transport.abortConnection()
            return
        if factory.destination.mode != "forward" and _is_self(dst, factory.port):
            self._log.warn(
                "refusing {client} on {listener}: it connected to the proxy itself ({dst}), "
                "which would loop",
                client=format_addr(client),
                listener=factory.listener,
                dst=format_addr(dst),
            )
            self.transport.abortConnection()
            return
        self.flow = flow = Flow(client, dst, listener=factory.listener, mode=factory.destination.flow_mode)
        self.relay = relay = RawRelay(ctx.chain, flow, self.transport, on_closed=self._closed)
        if not ctx.open_flow(flow):
            relay.abort(flow.error or "tap error")
            return
        d = connect(ctx.reactor, dst, UpstreamFactory(relay), ctx.settings.connect_timeout)
        d.addErrback(self._upstream_failed)

    def _upstream_failed(self, failure: Failure) -> None:
        self.relay.server_failed(describe_failure(failure))

    def _closed(self) -> None:
        self.factory.ctx.close_flow(self.flow)

    def dataReceived(self, data: bytes) -> None:
        self.relay.client_data(data)

    def readConnectionLost(self) -> None:
        self.relay.client_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.client_lost(reason)


@implementer(IHalfCloseableProtocol)
class ServerConnection(Protocol):
    """The upstream side of one proxied TCP connection."""

    def __init__(self, relay: RawRelay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.server_connected(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay.server_data(data)

    def readConnectionLost(self) -> None:
        self.relay.server_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.relay.server_lost(reason)


class UpstreamFactory(Factory):
    """Builds the `ServerConnection` of one relay (one per upstream connect)."""

    noisy = False

    def __init__(self, relay: RawRelay) -> None:
        self.relay = relay

    def buildProtocol(self, addr):
        return ServerConnection(self.relay)


def _is_self(dst: tuple[str, int], port: int | None) -> bool:
    """Whether ``dst`` is this listener's own port on a local address.

    A client that connects to a transparent listener directly (not through a
    TPROXY rule) would make the proxy connect to itself, forever. Binding a
    plain socket succeeds only for local addresses, which tells them apart
    without a list of interfaces; it is tried only when the port matches.
    """
    if port is None or dst[1] != port:
        return False
    family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((dst[0], 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True

