"""Transparent listeners: accept a client, find its destination, sniff.

`TCPProxyFactory` is what a transparent or forward ``--listen`` endpoint
serves. Each accepted `ClientConnection` learns where the client was going
from its listener's mode (`Destination`), opens the flow, connects upstream at
once (so the TCP handshake with the server overlaps whatever the client sends
first) and lets the `Sniffer` choose the layer that carries the connection.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from tinspect._compat import TLSInTLS, server_tls_context
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


class ExplicitProxyFactory(_ListenerFactory):
    """Builds a `ClientConnection` per client of the explicit proxy.

    Clients that are configured to use a proxy speak HTTP to it from the
    first byte, so there is nothing to sniff: each connection is an
    `Http1Layer` in explicit mode (see `tinspect.layers.http.explicit`).

    On an HTTPS proxy listener (``explicit@ssl:...``, ``tls``) the endpoint runs
    TLS with the client first; each shell then gets a `TLSInTLS` as its
    transport, so that the TLS of a CONNECT tunnel inside is intercepted as on
    the plain listener, and ALPN selects ``http/1.1``: a client offering only
    other protocols (``h2``) is refused with a ``no_application_protocol``
    alert and a log line (the proxy speaks HTTP/1.1 to its clients).

    Args:
        ctx: the proxy context.
        listener: the listen spec, for logs.
        tls: the endpoint is TLS (``ssl:``).
    """

    default_clients = LOCAL_NETWORKS  # not an open relay, whatever interface it listens on

    def __init__(self, ctx: ProxyContext, listener: str, tls: bool = False) -> None:
        self.ctx = ctx
        self.listener = listener
        self.tls = tls

    def buildProtocol(self, addr):
        proto = super().buildProtocol(addr)
        return TLSInTLS(proto, client=False) if self.tls else proto

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

    def prepare(self, endpoint: Any) -> None:
        """Before listening on ``endpoint``: on an HTTPS proxy listener, make
        ``_select_alpn`` the ALPN choice of its TLS context (one for all its
        connections, which cannot change once one was made). Twisted's own choice,
        when no offer is acceptable, selects an empty name, which OpenSSL answers
        with an ``internal_error`` alert."""
        if self.tls:
            server_tls_context(endpoint).set_alpn_select_callback(self._select_alpn)

    def _select_alpn(self, connection: Any, offers: list[bytes]) -> bytes:
        if b"http/1.1" in offers:
            return b"http/1.1"
        peer = connection.get_app_data().getPeer()
        shown = ", ".join(offer.decode("ascii", "replace") for offer in offers)
        self._log.warn(
            "refusing TLS from {client} on {listener}: it offers {offers} over ALPN and this HTTPS proxy "
            "speaks http/1.1 (no_application_protocol alert)",
            client=format_addr((normalize_host(peer.host), peer.port)), listener=self.listener, offers=shown,
        )
        # pyOpenSSL answers a failing callback with SSL_TLSEXT_ERR_ALERT_FATAL, which OpenSSL
        # sends as no_application_protocol; the handshake then fails with this error.
        raise NoApplicationProtocol(shown)


class NoApplicationProtocol(SSL.Error):
    """An HTTPS proxy listener's client offered no ALPN protocol the proxy speaks.

    Its argument is an error queue as OpenSSL's errors carry one (``(library,
    function, reason)`` entries), which is what Twisted reads of a failed handshake.

    Args:
        offers: the client's offers, for the reason.
    """

    def __init__(self, offers: str) -> None:
        super().__init__([("SSL routines", "", f"no application protocol (the client offers only {offers})")])
