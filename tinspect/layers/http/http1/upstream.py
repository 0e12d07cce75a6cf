"""One upstream HTTP/1.1 connection, as the HTTP/1.1 layer uses it.

An `Http1Upstream` wraps the `tinspect.net.shells.ServerConnection` of one
connection to a server: it is that shell's handler, holds the response
parser and the request writer of the connection, queues what the layer
writes while the TCP connection is still being made, and reports events to
its layer (`tinspect.layers.http.http1.layer.Http1Layer`) with itself as the first
argument, so the layer can ignore a connection it has moved on from.
The layer answers ``upstream_connected(up)``, ``upstream_failed(up, reason)``,
``upstream_data(up, data)``, ``upstream_eof(up)`` and ``upstream_lost(up,
reason)``. `UpstreamPauser` tells the layer when the client's write buffer
fills and drains (``client_full()``, ``client_drained()``), so that it
pauses whichever upstream is current.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.layers.http.http1.parse import Http1Reader
from tinspect.layers.http.http1.write import Http1Writer
from tinspect.layers.raw import Leg, send
from tinspect.net.addresses import format_addr
from tinspect.net.parent import proxy_fields
from tinspect.net.shells import open_upstream
from tinspect.units import Request, Response

__all__ = ["Http1Upstream", "UpstreamPauser"]


class Http1Upstream:
    """One HTTP/1.1 connection to a server, as the layer sees it."""

    __slots__ = (
        "layer", "dst", "shell", "leg", "reader", "writer", "pending", "failure",
        "closed", "keep_alive", "connecting", "message", "record", "via",
    )

    def __init__(self, layer: Any, dst: tuple[str, int], shell: Any = None) -> None:
        self.layer = layer
        self.dst = dst
        self.shell = shell
        if shell is not None:
            shell.handler = self
        self.leg: Leg | None = None
        self.reader = Http1Reader("response")
        self.writer = Http1Writer()
        self.pending: list[bytes] = []
        self.failure: str | None = None
        self.closed = False
        self.keep_alive = True
        self.connecting: Any = None  # the connect Deferred, to cancel
        self.message: Response | None = None  # the response whose body is being read
        self.record: bytearray | None = None  # raw bytes read, while a WebSocket handshake waits
        self.via: Any = None  # the HTTP parent proxy this connection goes to, sending absolute-form requests

    @classmethod
    def open(cls, layer: Any, ctx: Any, flow: Any, dst: tuple[str, int], scheme: str,
             upgrade: bool = False) -> "Http1Upstream":
        """A new connection of ``flow`` to ``dst``, over TLS when
        `tinspect.layers.tls.layer.Interception.connector` says so.

        Plain HTTP (not an upgrade) that the parent proxy rules send to an ``http://``
        parent goes to the parent itself, as absolute-form requests (``via``), unless
        ``--upstream-proxy-connect`` asks for CONNECT tunnels; everything else through
        the parent goes through a tunnel (`tinspect.net.shells.open_upstream`).
        """
        up = cls(layer, dst)
        parent = ctx.parents.choose(dst[0]) if ctx.parents else None
        if (parent is not None and parent.takes_absolute_form and scheme == "http" and not upgrade
                and not ctx.settings.upstream_proxy_connect):
            up.via = parent
            up.shell, up.connecting = open_upstream(ctx, parent.address, up, timings=flow.timings, direct=True)
            return up
        tls = ctx.tls.connector(flow, dst, scheme, b"http/1.1") if ctx.tls is not None else None
        up.shell, up.connecting = open_upstream(ctx, dst, up, tls, flow.timings, client=flow.client)
        return up

    def request(self, req: Request, upgrade: bool = False) -> list[bytes]:
        """``req``'s head (and whole body) for this connection: in absolute form, with the
        parent's credentials, when it goes to an HTTP parent (see `open`)."""
        parent = self.via
        if parent is None:
            return self.writer.request(req, upgrade=upgrade)
        authority = req.authority if req.destination is None and req.authority else format_addr(self.dst)
        return self.writer.request(req, upgrade=upgrade, target=f"http://{authority}{req.target}",
                                   extra=proxy_fields(parent))

    def parent_refusal(self, head: Any) -> str | None:
        """Why the HTTP parent this connection goes to refused the request whose response
        ``head`` is (a 407: it wants credentials, or other ones), or ``None``. Such an
        answer is the parent's, not the server's: relayed, the client would take it for
        this proxy's own, so each layer answers a 502 page with this reason instead."""
        if self.via is None or head.status != 407:
            return None
        answer = f"{head.status} {head.reason.decode('latin-1')}".strip()
        return f"parent proxy {self.via} answered: {answer}"

    @property
    def usable(self) -> bool:
        return not self.closed and self.failure is None and self.keep_alive

    def write(self, data: bytes) -> None:
        """Send ``data`` (queued while the connection is being made)."""
        leg = self.leg
        if leg is not None:
            if data and leg.write_open and not leg.lost:
                send(leg.transport, data)
        elif data and self.failure is None and not self.closed:
            self.pending.append(data)

    def write_parts(self, parts: list[bytes]) -> None:
        """Send a head and whatever follows it in one call."""
        leg = self.leg
        if leg is not None:
            if leg.write_open and not leg.lost:
                send(leg.transport, b"".join(parts))
        elif self.failure is None and not self.closed:
            self.pending.extend(parts)

    def close(self) -> None:
        self.closed = True
        if self.leg is not None:
            self.leg.close()
        elif self.connecting is not None:
            self.connecting.cancel()

    def abort(self) -> None:
        self.closed = True
        if self.leg is not None:
            self.leg.abort()
        elif self.connecting is not None:
            self.connecting.cancel()

    # -- the ServerConnection shell calls these -------------------------------

    def server_connected(self, transport: Any) -> None:
        self.connecting = None
        self.leg = leg = Leg(transport, "server")
        if self.closed:
            leg.close()
            return
        if self.pending:
            pending, self.pending = self.pending, []
            transport.writeSequence(pending)
        self.layer.upstream_connected(self)

    def server_failed(self, reason: str) -> None:
        self.connecting = None
        if self.closed:
            return
        self.failure = reason
        self.closed = True
        self.pending = []
        self.layer.upstream_failed(self, reason)

    def server_data(self, data: bytes) -> None:
        self.layer.upstream_data(self, data)

    def server_eof(self) -> None:
        if self.leg is not None:
            self.leg.read_closed()
        self.layer.upstream_eof(self)

    def server_lost(self, reason: Failure) -> None:
        self.closed = True
        if self.leg is not None:
            self.leg.lost = True
        self.layer.upstream_lost(self, reason)


@implementer(IPushProducer)
class UpstreamPauser:
    """Registered on the client transport: tells the layer when its write
    buffer fills and drains, so the layer pauses whichever upstream is current."""

    __slots__ = ("_layer",)

    def __init__(self, layer: Any) -> None:
        self._layer = layer

    def pauseProducing(self) -> None:
        self._layer.client_full()

    def resumeProducing(self) -> None:
        self._layer.client_drained()

    def stopProducing(self) -> None:
        pass
