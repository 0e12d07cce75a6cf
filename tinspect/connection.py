"""Transparent listeners: accept a client, find its destination, sniff.

`TCPProxyFactory` is what a transparent or forward ``--listen`` endpoint
serves. Each accepted `ClientConnection` learns where the client was going
from its listener's mode (`Destination`), opens the flow, connects upstream at
once (so the TCP handshake with the server overlaps whatever the client sends
first) and lets the `Sniffer` choose the layer that carries the connection.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tinspect.context import ProxyContext
from tinspect.explicit import LOCAL_NETWORKS, ClientNetworks
from tinspect.flow import Flow, format_addr
from tinspect.h2_layer import H2Layer
from tinspect.http1_layer import Http1Layer
from tinspect.relay import RawRelay
from tinspect.shells import ClientConnection, ServerConnection, open_upstream
from tinspect.sniff import H2, HTTP1, RAW, TLS, classify, server_settings
from tinspect.sockets import SocketError, normalize_host, original_dst
from tinspect.tls_layer import TlsLayer

__all__ = ["Destination", "TCPProxyFactory", "Sniffer"]


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
        shell, d = open_upstream(ctx, dst, None)
        Sniffer(ctx, flow, client, shell, lambda: ctx.close_flow(flow), connecting=d)


class ExplicitProxyFactory(_ListenerFactory):
    """Builds a `ClientConnection` per client of the explicit proxy.

    Clients that are configured to use a proxy speak HTTP to it from the
    first byte, so there is nothing to sniff: each connection is an
    `Http1Layer` in explicit mode (see `tinspect.explicit`).

    Args:
        ctx: the proxy context.
        listener: the listen spec, for logs.
    """

    default_clients = LOCAL_NETWORKS  # not an open relay, whatever interface it listens on

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


class Sniffer:
    """The first layer of a transparent connection: which protocol is it?

    The upstream connection is opened at once, so the TCP handshake with the
    server overlaps the client's first bytes. Then the first of these
    decides:

    * the client's first bytes, through `tinspect.sniff.classify`: an HTTP/1
      request line goes to the `Http1Layer`, a TLS handshake to the
      `TlsLayer` (which sniffs again once it is decrypted), anything else to
      the `RawRelay`;
    * the server speaking first (SMTP, FTP, SSH banners): raw relay;
    * the client saying nothing for ``sniff_timeout`` seconds: raw relay.

    Args:
        ctx: the proxy context.
        flow: the connection's flow (``flow.dst`` is where it goes).
        client: the client's `ClientConnection` shell.
        server: the upstream `ServerConnection` shell, connecting or connected.
        on_closed: called once when the connection is done.
        connecting: the connect Deferred, while the upstream is connecting.
        server_transport: the upstream transport, when already connected.
        early: bytes the client already sent (after an explicit CONNECT).
        server_failure: why the upstream connection failed, if it did.
        sticky_failure: the upstream is unusable for good (it failed TLS
            verification): HTTP requests get a 502 page naming
            ``server_failure`` instead of a new connection.
    """

    def __init__(
        self,
        ctx: ProxyContext,
        flow: Flow,
        client: ClientConnection,
        server: ServerConnection,
        on_closed: Callable[[], None],
        *,
        connecting: Any = None,
        server_transport: Any = None,
        early: bytes = b"",
        server_failure: str | None = None,
        sticky_failure: bool = False,
    ) -> None:
        self.ctx = ctx
        self.flow = flow
        self._client = client
        self._server = server
        self._on_closed = on_closed
        self._connecting = connecting
        self._server_transport = server_transport
        self._server_failure = server_failure
        self._sticky = sticky_failure
        self._server_early = b""
        self._server_eof = False
        self._lost = False  # the client went away before anything was decided
        self._buf = early
        client.handler = self
        server.handler = self
        self._timer = ctx.reactor.callLater(ctx.settings.sniff_timeout, self._decide, RAW)
        if flow.alpn == "h2":
            self._decide(H2)  # agreed in TLS; the server may well speak first
        elif early:
            self.client_data(b"")

    def client_data(self, data: bytes) -> None:
        self._buf += data
        kind = classify(self._buf, self.ctx.settings.max_request_line)
        if kind is not None:
            self._decide(kind)

    def client_eof(self) -> None:
        self._decide(RAW)
        self._client.handler.client_eof()

    def client_lost(self, reason: Failure) -> None:
        self._timer.cancel()
        self._lost = True
        if self._server_transport is not None:
            self._server_transport.loseConnection()
        elif self._connecting is not None:
            self._connecting.cancel()
        self.flow.mark_ended("client went away")
        self._on_closed()

    def server_connected(self, transport: Any) -> None:
        self._connecting = None
        self._server_transport = transport

    def server_failed(self, reason: str) -> None:
        # Keep waiting for the client: an HTTP client then gets a 502 page.
        self._connecting = None
        self._server_failure = reason

    def server_data(self, data: bytes) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        if self._client.handler is not self:
            self._server.handler.server_data(data)
            return
        self._server_early += data
        if server_settings(self._server_early) is False:
            self._decide(RAW)
        # else an HTTP/2 server's preface, sent at accept: wait for the client's

    def server_eof(self) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        if self._client.handler is not self:
            self._server.handler.server_eof()
            return
        self._server_eof = True
        self._decide(RAW)

    def server_lost(self, reason: Failure) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        if self._client.handler is self:  # a reset with no FIN first: not decided yet
            self._server_eof = True
            self._decide(RAW)
        if self._server.handler is not self:
            self._server.handler.server_lost(reason)

    def _decide(self, kind: str) -> None:
        if self._client.handler is not self:
            return
        if self._timer.active():
            self._timer.cancel()
        client, server = self._client, self._server
        data, self._buf = self._buf, b""
        upstream = (server, self._connecting, self._server_transport, self._server_failure)
        if kind == HTTP1 or kind == H2:
            sticky = self._server_failure if self._sticky else None
            if kind == HTTP1:
                Http1Layer(self.ctx, self.flow, client, self._on_closed, upstream=upstream, upstream_error=sticky)
            else:
                # Over TLS the server's ALPN answer says whether it speaks h2;
                # in cleartext the HTTP/2 layer asks it.
                h2 = (self.flow.alpn == "h2") if self.flow.tls_version else None
                H2Layer(self.ctx, self.flow, client, self._on_closed, upstream=upstream, upstream_h2=h2, upstream_error=sticky)
            if self._server_early:
                server.handler.server_data(self._server_early)
            if self._server_eof:
                server.handler.server_eof()
            if data:
                client.handler.client_data(data)
            return
        if kind == TLS and self.ctx.tls is not None and self.flow.tls_version is None:
            TlsLayer(
                self.ctx,
                self.flow,
                client,
                server,
                self._on_closed,
                connecting=self._connecting,
                server_transport=self._server_transport,
                server_failure=self._server_failure,
            )
            client.handler.client_data(data)
            return
        self.flow.protocol = "tcp"
        relay = RawRelay(self.ctx.chain, self.flow, client.transport, on_closed=self._on_closed)
        client.handler = relay
        server.handler = relay
        if self._server_transport is not None:
            relay.server_connected(self._server_transport)
        elif self._server_failure is not None:
            relay.server_failed(self._server_failure)
        if self._server_early:
            relay.server_data(self._server_early)
        if self._server_eof:
            relay.server_eof()
        if data:
            relay.client_data(data)
