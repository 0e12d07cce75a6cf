"""The dispatcher: which layer carries a connection, from its first bytes.

`Sniffer` is the first layer of every transparent connection, and of every
connection again once TLS or an explicit CONNECT has opened what it carries.
It is the only module that knows every layer.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.failure import Failure

from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.layers.http.h2.layer import H2Layer
from tinspect.layers.http.http1.layer import Http1Layer
from tinspect.layers.raw import RawRelay
from tinspect.layers.sniff import H2, HTTP1, RAW, TLS, classify, server_settings
from tinspect.layers.tls.layer import TlsLayer
from tinspect.net.shells import ClientConnection, ServerConnection

__all__ = ["Sniffer"]


class Sniffer:
    """The first layer of a transparent connection: which protocol is it?

    The upstream connection is opened at once, so the TCP handshake with the
    server overlaps the client's first bytes. Then the first of these
    decides:

    * the client's first bytes, through `tinspect.layers.sniff.classify`: an HTTP/1
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
