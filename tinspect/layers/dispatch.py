"""The dispatcher: which layer carries a connection, from its first bytes.

`Sniffer` is the first layer of every transparent connection, and of every
connection again once TLS or an explicit CONNECT has opened what it carries.
It is the only module that knows every layer.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.python.failure import Failure

from tinspect.context import ProxyContext
from tinspect.layers.http.h2.layer import H2Layer
from tinspect.layers.http.http1.layer import Http1Layer
from tinspect.layers.sniff import H2, HTTP1, RAW, TLS, classify, server_settings
from tinspect.layers.tls.layer import TlsLayer
from tinspect.net.handoff import Handoff, relay_raw, take_over
from tinspect.net.sockets import pending_bytes

__all__ = ["Sniffer", "compose"]


def compose(ctx: ProxyContext) -> ProxyContext:
    """Make a `Sniffer` what every layer hands a connection to next (``ctx.next_layer``).

    The composition root: the TLS layer (decrypted) and the explicit proxy (a CONNECT
    tunnel) hand on what a connection carries without importing this module, which
    imports them. Whoever builds a `ProxyContext` whose connections are served calls it
    (`tinspect.proxy.Proxy`, and the tests' in-memory network).

    Returns:
        ``ctx``.
    """
    ctx.next_layer = partial(Sniffer, ctx)
    return ctx


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
    * the client saying nothing for ``sniff_timeout`` seconds (nothing unread
      in its socket either): raw relay.

    Until it decides, the sniffer keeps what it learns in the `Handoff` it hands
    on: the upstream's state and what either side sent.

    Args:
        ctx: the proxy context.
        handoff: the connection (``flow.dst`` is where it goes), with the upstream
            connecting or connected, and what was read before (the bytes a client
            sent after an explicit CONNECT; the server's after a TLS handshake).
            A failure in it that is ``sticky`` (the upstream failed TLS
            verification) gets HTTP requests a 502 page naming it instead of a
            new connection.
    """

    def __init__(self, ctx: ProxyContext, handoff: Handoff) -> None:
        self.ctx = ctx
        self.flow = handoff.flow
        self._handoff = handoff
        self._decided = False
        self._lost = False  # the client went away before anything was decided
        self._timer = None
        if self.flow.alpn == "h2":
            self._decide(H2)  # agreed in TLS; the server may well speak first
            return
        self._timer = ctx.reactor.callLater(ctx.settings.sniff_timeout, self._silent)
        take_over(handoff, self, self)

    def client_data(self, data: bytes) -> None:
        h = self._handoff
        h.client_early += data
        kind = classify(h.client_early, self.ctx.settings.max_request_line)
        if kind is not None:
            self._decide(kind)

    def client_eof(self) -> None:
        self._handoff.client_eof = True
        self._decide(RAW)

    def client_lost(self, reason: Failure) -> None:
        self._timer.cancel()
        self._lost = True
        up = self._handoff.upstream
        if up.transport is not None:
            up.transport.loseConnection()
        elif up.connecting is not None:
            up.connecting.cancel()
        self.flow.mark_ended("client went away")
        self._handoff.on_closed()

    def server_connected(self, transport: Any) -> None:
        up = self._handoff.upstream
        up.connecting = None
        up.transport = transport

    def server_failed(self, reason: str) -> None:
        # Keep waiting for the client: an HTTP client then gets a 502 page.
        up = self._handoff.upstream
        up.connecting = None
        up.failure = reason

    def server_data(self, data: bytes) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        h = self._handoff
        h.server_early += data
        if server_settings(h.server_early) is False:
            self._decide(RAW)
        # else an HTTP/2 server's preface, sent at accept: wait for the client's

    def server_eof(self) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        self._handoff.server_eof = True
        self._decide(RAW)

    def server_lost(self, reason: Failure) -> None:
        if self._lost:
            return  # the upstream closing after the client left: nothing to relay
        # A reset with no FIN first: not decided yet, or the sniffer would not hear it.
        self._handoff.server_eof = True
        self._handoff.server_lost = reason
        self._decide(RAW)

    def _silent(self) -> None:
        # A busy reactor runs due timers before it reads sockets that became readable
        # meanwhile: when thousands of clients connect at once, a ClientHello that came in
        # time can still be unread here. Relaying that connection raw would let a client
        # the proxy must inspect pass uninspected and unlogged, so bytes waiting in the
        # socket mean the client spoke: wait for the read to classify them.
        if pending_bytes(self._handoff.client.transport):
            self._timer = self.ctx.reactor.callLater(self.ctx.settings.sniff_timeout, self._silent)
            return
        self._decide(RAW)

    def _decide(self, kind: str) -> None:
        if self._decided:
            return
        self._decided = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        ctx, flow, h = self.ctx, self.flow, self._handoff
        if kind == HTTP1 or kind == H2:
            if kind == HTTP1:
                layer = Http1Layer(ctx, flow, h.client, h.on_closed, upstream=h.upstream)
            else:
                # Over TLS the server's ALPN answer says whether it speaks h2;
                # in cleartext the HTTP/2 layer asks it.
                h2 = (flow.alpn == "h2") if flow.tls_version else None
                layer = H2Layer(ctx, flow, h.client, h.on_closed, upstream=h.upstream, upstream_h2=h2)
            take_over(h, layer)  # the layer's upstream connection is the server shell's handler
            return
        if kind == TLS and ctx.tls is not None and flow.tls_version is None:
            # The only server bytes held here are an HTTP/2 preface a cleartext server sent at
            # accept: no part of the TLS that the client starts.
            h.server_early = b""
            layer = TlsLayer(ctx, h)
            take_over(h, layer, layer)
            return
        relay_raw(ctx.chain, h)
