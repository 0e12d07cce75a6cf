"""WebSocket: both sides terminated with autobahn, messages through the taps.

Theory of operation
-------------------
The HTTP/1.1 layer (`tinspect.layers.http.http1.layer`) sees the upgrade first, as a
`Request` that passes the taps like any other (a tap may refuse it with a
response). `is_upgrade` decides whether it is a WebSocket handshake we
terminate; an odd one (a body, a missing key, another version) is relayed
raw, for the server to judge.

1. `Upgrade.send` opens the upstream handshake with an autobahn client
   protocol (`_ServerSide`): the request's path, end-to-end header fields
   and subprotocols as the taps left them, our own key, and a
   permessage-deflate offer when the client made one.
2. The HTTP/1.1 layer parses the server's answer. Anything but a ``101`` is
   an HTTP response, relayed as it is. A ``101`` passes the taps, then
   `WebSocketLayer.open` hands it to `_ServerSide`, which checks it (key,
   extensions, subprotocol); a bad one is a 502 page for the client.
3. Once the server side is open, an autobahn server protocol
   (`_ClientSide`) completes the client's own handshake (the bytes it sent)
   with the subprotocol the server chose and the ``101``'s other fields.

Each side negotiates permessage-deflate on its own; messages are whole
(fragments joined, compression undone) when they become `WebSocketMessage`
units, and each is sent on as one frame. Pings are answered on each side by
autobahn and not relayed.

Closing: a close frame from one side crosses the taps as a `WebSocketClose`
and is sent to the other side with its code and reason; autobahn echoes it
to its sender at once. When a side goes away without a close (TCP closed or
reset), the other gets ``1001`` (going away); when a side breaks the
protocol (bad frames, bad UTF-8, a message over ``max_message``: autobahn
closes it with ``1002``, ``1007`` or ``1009``) or a tap fails, the other
gets ``1011``. At most one close goes towards each side.

Autobahn never sees our sockets: its transport is a `_Wire` that writes and
closes through our `Leg` objects, so reading is paused (backpressure: the
other side's full write buffer, an asynchronous tap) by the layer alone,
and nothing autobahn does touches the producers we registered.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

import txaio

txaio.use_twisted()

from autobahn.twisted.websocket import (  # noqa: E402  (txaio first)
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.compress import (  # noqa: E402
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
    PerMessageDeflateResponse,
    PerMessageDeflateResponseAccept,
)
from autobahn.websocket.protocol import WebSocketProtocol  # noqa: E402
from autobahn.websocket.types import ConnectingRequest, ConnectionDeny  # noqa: E402
from twisted.internet.address import IPv4Address, IPv6Address  # noqa: E402
from twisted.internet.error import ConnectionDone  # noqa: E402
from twisted.internet.interfaces import ITransport  # noqa: E402
from twisted.logger import Logger  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from zope.interface import implementer  # noqa: E402

from tinspect._compat import AutobahnSide, quiet_autobahn_colours  # noqa: E402
from tinspect.chain import Arm  # noqa: E402
from tinspect.context import ProxyContext, Settings  # noqa: E402
from tinspect.layers.http.grammar import HOP_BY_HOP, list_items, tokens  # noqa: E402
from tinspect.layers.raw import Leg, PauseReason, SinkPauser  # noqa: E402
from tinspect.net.addresses import bracket, host_port  # noqa: E402
from tinspect.net.handoff import Handoff  # noqa: E402
from tinspect.units import TO_CLIENT, TO_SERVER, Direction, Request, Response, Unit, WebSocketClose, WebSocketMessage  # noqa: E402

quiet_autobahn_colours()

__all__ = ["is_upgrade", "client_handshake", "end_to_end", "upstream_request", "client_response", "Upgrade",
           "WebSocketLayer"]

_OPEN = WebSocketProtocol.STATE_OPEN
GOING_AWAY = 1001
INTERNAL_ERROR = 1011

# The fields of a handshake that belong to one connection's handshake (and
# those of any HTTP message that belong to one connection): autobahn writes
# its own on each side; the rest of a message crosses as it is.
_HANDSHAKE = HOP_BY_HOP | {
    b"trailer", b"content-length", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept",
}


# -- the handshake, sans IO --------------------------------------------------


def is_upgrade(method: bytes, version: bytes, fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether a switching request is a WebSocket handshake we can terminate
    (RFC 6455 §4.2.1): ``GET``, HTTP/1.1, ``Upgrade: websocket``, one
    ``Host``, one 16-byte key, one version 13, handshake fields in ASCII
    and no body. Anything else is relayed raw, for the server to judge."""
    if method != b"GET" or version != b"HTTP/1.1":
        return False
    upgrade = key = ws_version = None
    hosts = 0
    for name, value in fields:
        lname = name.lower()
        if lname == b"upgrade":
            upgrade = value
        elif lname == b"host":
            hosts += 1
        elif lname == b"sec-websocket-key":
            if key is not None:
                return False
            key = value
        elif lname == b"sec-websocket-version":
            if ws_version is not None:
                return False
            ws_version = value
        elif lname in (b"content-length", b"transfer-encoding") and value.strip() not in (b"0", b""):
            return False
        if lname.startswith(b"sec-websocket-") and not value.isascii():
            return False
    if upgrade is None or b"websocket" not in tokens([upgrade]):
        return False
    if hosts != 1 or ws_version is None or ws_version.strip() != b"13" or key is None:
        return False
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except binascii.Error:
        return False


def client_handshake(target: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
    """The client's handshake as autobahn's server side reads it: what it
    needs to answer (``Host``, key, version, subprotocols and extensions,
    repeated fields joined), nothing it might refuse that the server has
    already accepted (``Origin``: the server judged it)."""
    keep = {b"host": [], b"sec-websocket-key": [], b"sec-websocket-version": [],
            b"sec-websocket-protocol": [], b"sec-websocket-extensions": []}
    for name, value in fields:
        values = keep.get(name.lower())
        if values is not None:
            values.append(value)
    lines = [b"GET " + target + b" HTTP/1.1", b"Upgrade: websocket", b"Connection: Upgrade"]
    for name, values in keep.items():
        if values:
            lines.append(name + b": " + b", ".join(values))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def end_to_end(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``fields`` without the handshake's own and the hop-by-hop ones
    (those the ``Connection`` field names too), as sent."""
    listed = set(tokens([value for name, value in fields if name.lower() == b"connection"]))
    return [(n, v) for n, v in fields if n.lower() not in _HANDSHAKE and n.lower() not in listed]


def upstream_options(req: Request) -> tuple[ConnectingRequest, bool]:
    """What autobahn's client needs for ``req``'s upstream handshake, and
    whether to offer permessage-deflate (the client offered it).

    Raises:
        ValueError: the request's authority is not ``host[:port]``.
    """
    host, port = host_port(req.authority, 443 if req.scheme == "https" else 80)
    options = ConnectingRequest(
        host=bracket(host),
        port=port,
        resource=req.path,
        protocols=list_items(req.headers.get_all("sec-websocket-protocol")),
    )
    deflate = any(
        t.split(";")[0].strip().lower() == "permessage-deflate"
        for t in list_items(req.headers.get_all("sec-websocket-extensions"))
    )
    return options, deflate


def _own_lines(generated: bytes) -> tuple[bytes, list[bytes]]:
    """The first line of a handshake autobahn wrote, and its lines with
    the handshake's own fields."""
    lines = generated.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    return lines[0], [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() in _HANDSHAKE]


def upstream_request(generated: bytes, req: Request) -> bytes:
    """The handshake request to send upstream: autobahn's key, version,
    subprotocols and extension offer, with ``req``'s own request line and
    end-to-end fields (``Host``, cookies, origin...) byte for byte."""
    _, own = _own_lines(generated)
    lines = [b"GET " + req.path.encode("latin-1") + b" HTTP/1.1"]
    lines.extend(n + b": " + v for n, v in end_to_end(req.headers.fields))
    lines.extend(own)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def client_response(generated: bytes, resp: Response) -> bytes:
    """The ``101`` for the client: autobahn's accept, subprotocol and
    extensions, with the end-to-end fields of the server's ``101`` as it
    left the taps (cookies, ``Server``) byte for byte."""
    status, own = _own_lines(generated)
    lines = [status, *own]
    lines.extend(n + b": " + v for n, v in end_to_end(resp.headers.fields))
    return b"\r\n".join(lines) + b"\r\n\r\n"


# -- autobahn, wired to our legs ---------------------------------------------


@implementer(ITransport)
class _Wire:
    """Autobahn's transport: writes and closes go through ``target`` (a `Leg`
    or an `tinspect.layers.http.http1.upstream.Http1Upstream`).

    Args:
        target: where writes and closes go.
        peer: the address autobahn reports.
        first: rewrites the first write (the handshake autobahn wrote).
    """

    disconnecting = False

    def __init__(self, target: Any, peer: Any, first: Callable[[bytes], bytes] | None = None) -> None:
        self.target = target
        self.peer = peer
        self._first = first

    def write(self, data: bytes) -> None:
        if self._first is not None:
            data, self._first = self._first(data), None
        self.target.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.target.write(b"".join(data))

    def loseConnection(self) -> None:
        self.target.close()

    def abortConnection(self) -> None:
        self.target.abort()

    def getPeer(self) -> Any:
        return self.peer

    def getHost(self) -> Any:
        return self.peer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


def _address(addr: tuple[str, int]) -> Any:
    return (IPv6Address if ":" in addr[0] else IPv4Address)("TCP", addr[0], addr[1])


class _Factories:
    """The autobahn factories (protocol options) of one proxy's settings."""

    def __init__(self, settings: Settings) -> None:
        limits = {
            "maxMessagePayloadSize": settings.max_message,
            "maxFramePayloadSize": settings.max_message,
            "failByDrop": False,  # close with a code (1009...), not a bare drop
            "echoCloseCodeReason": True,
            "openHandshakeTimeout": 0,  # the HTTP/1.1 layer times the handshake
        }
        self.server = WebSocketServerFactory(server=None)
        self.server.setProtocolOptions(webStatus=False, **limits)
        if settings.ws_compression:
            self.server.setProtocolOptions(perMessageCompressionAccept=_accept_offer)
        self.client = WebSocketClientFactory(useragent=None)
        self.client.setProtocolOptions(**limits)
        self.client_deflate = WebSocketClientFactory(useragent=None)
        self.client_deflate.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer(accept_max_window_bits=True)],
            perMessageCompressionAccept=_accept_response,
            **limits,
        )


class _Offering:
    """A client factory as one connection sees it: autobahn checks the
    server's subprotocol against ``factory.protocols``."""

    def __init__(self, factory: WebSocketClientFactory, protocols: list[str]) -> None:
        self._factory = factory
        self.protocols = protocols

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


def _accept_offer(offers: list) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _accept_response(response: Any) -> Any:
    if isinstance(response, PerMessageDeflateResponse):
        return PerMessageDeflateResponseAccept(response)
    return None


def _factories(ctx: ProxyContext) -> _Factories:
    if ctx.websocket is None:
        ctx.websocket = _Factories(ctx.settings)
    return ctx.websocket


class _Side(AutobahnSide):
    """What both autobahn protocols report to the layer."""

    layer: Any = None
    side: Direction  # the direction of what this side receives

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.layer._message(self.side, payload, isBinary)

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        opened_by_peer = self.state == _OPEN
        failed = super().onCloseFrame(code, reasonRaw)
        if opened_by_peer and not failed and self.layer is not None:
            self.layer._peer_closed(self.side, self.remoteCloseCode, self.remoteCloseReason or "")
        return failed

    def connection_failing(self, code: int, reason: str) -> None:
        if self.layer is not None:
            self.layer._peer_failed(self.side, code, reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # autobahn leaves the close-handshake timer running past the connection.
        if self.closeHandshakeTimeoutCall is not None:
            self.closeHandshakeTimeoutCall.cancel()
            self.closeHandshakeTimeoutCall = None
        if self.layer is not None:
            self.layer._side_closed(self.side)


class _ServerSide(_Side, WebSocketClientProtocol):
    """Autobahn's client protocol, speaking to the server."""

    side = TO_CLIENT

    def __init__(self, options: ConnectingRequest) -> None:
        super().__init__()
        self._options = options

    def onConnecting(self, transport_details: Any) -> ConnectingRequest:
        return self._options

    def onOpen(self) -> None:
        self.layer._server_open()


class _ClientSide(_Side, WebSocketServerProtocol):
    """Autobahn's server protocol, speaking to the client."""

    side = TO_SERVER

    def onConnect(self, request: Any) -> str | None:
        return self.layer._client_connecting(request)

    def onOpen(self) -> None:
        pass


class Upgrade:
    """A WebSocket upgrade in progress on an HTTP/1.1 connection.

    Args:
        ctx: the proxy context.
        client_head: the client's handshake request, as it sent it.
    """

    def __init__(self, ctx: ProxyContext, client_head: bytes) -> None:
        self.ctx = ctx
        self.client_head = client_head
        self.server_side: _ServerSide | None = None

    def send(self, req: Request, upstream: Any) -> None:
        """Write the upstream handshake for ``req`` (as the taps left it) to
        ``upstream`` (an `Http1Upstream`, connected or not)."""
        options, deflate = upstream_options(req)
        factories = _factories(self.ctx)
        proto = self.server_side = _ServerSide(options)
        factory = factories.client_deflate if deflate and self.ctx.settings.ws_compression else factories.client
        proto.factory = _Offering(factory, options.protocols)
        proto.makeConnection(_Wire(upstream, _address(upstream.dst), lambda generated: upstream_request(generated, req)))


# -- the layer -----------------------------------------------------------------


class WebSocketLayer:
    """Relays one WebSocket connection, message by message, through the taps.

    Args:
        ctx: the proxy context.
        handoff: both connections from the HTTP/1.1 layer, the upstream
            connected (the flow's protocol becomes ``"websocket"``), with
            what the server sent since the request (its ``101`` and any
            frames after it) and what the client sent after its handshake.
        upgrade: the `Upgrade` whose upstream handshake was sent.
    """

    _log = Logger()

    def __init__(self, ctx: ProxyContext, handoff: Handoff, upgrade: Upgrade) -> None:
        self.ctx = ctx
        self.flow = handoff.flow
        self._handoff = handoff
        self.client = Leg(handoff.client.transport, "client")
        self.server = Leg(handoff.upstream.transport, "server")
        self._upgrade = upgrade
        self._response: Response | None = None
        self._client_bytes = b""
        self._on_closed = handoff.on_closed
        self._closed = False
        self._took_over = False
        self._client_side: _ClientSide | None = None
        self._server_side = upgrade.server_side
        self._close_sent = {TO_SERVER: False, TO_CLIENT: False}
        chain, flow = ctx.chain, self.flow
        self.arms = {
            TO_SERVER: Arm(
                chain, flow, TO_SERVER, self._to_server,
                pause=lambda: self.client.pause(PauseReason.TAPS),
                resume=lambda: self.client.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_drop=self._dropped,
            ),
            TO_CLIENT: Arm(
                chain, flow, TO_CLIENT, self._to_client,
                pause=lambda: self.server.pause(PauseReason.TAPS),
                resume=lambda: self.server.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_drop=self._dropped,
            ),
        }

    def open(self, response: Response) -> str | None:
        """Finish both handshakes, with the bytes both sides sent early (taken
        off the handoff: only their EOFs are left to replay).

        The old layer lets go of the connections first: autobahn checks the
        ``101`` and, if it is good, the layer registers its own producers and
        answers the client at once, while the frames after the ``101`` are
        read.

        Args:
            response: the ``101`` as it left the taps.

        Returns:
            ``None`` when the server's ``101`` was good and the layer is
            ready to take both connections over (`tinspect.net.handoff.take_over`);
            otherwise why not (nothing was sent to the client; the caller
            answers it).
        """
        handoff = self._handoff
        handoff.release()
        server_bytes, handoff.server_early = handoff.server_early, b""
        client_rest, handoff.client_early = handoff.client_early, b""
        self._response = response
        self._client_bytes = self._upgrade.client_head + client_rest
        proto = self._server_side
        proto.layer = self
        try:
            proto.dataReceived(server_bytes)
        except Exception as e:  # autobahn choked on the 101 (it decodes it as UTF-8)
            if self._took_over:
                raise
            proto.layer = None
            proto.dropConnection(abort=True)
            return f"a 101 autobahn could not read ({e})"
        if self._took_over:
            return None
        proto.layer = None
        if proto.state == WebSocketProtocol.STATE_CONNECTING:
            proto.dropConnection(abort=True)
            return "a 101 autobahn could not read"
        return proto.wasNotCleanReason or "the handshake failed"

    # -- handshakes ----------------------------------------------------------

    def _server_open(self) -> None:
        """The server's 101 checked out: take both connections' transports
        over and complete the client's handshake."""
        self._took_over = True
        try:
            self._take_over()
        except Exception:
            # Inside autobahn's callbacks an exception would vanish into a
            # Deferred: fail the flow closed here instead.
            self._log.failure("flow {flow_id}: WebSocket hand-over failed", flow_id=self.flow.id)
            self.abort("WebSocket hand-over failed")

    def _take_over(self) -> None:
        flow = self.flow
        flow.protocol = "websocket"
        flow.attach(self.arms, self.abort)
        client_t = self.client.transport
        server_t = self.server.transport
        server_t.registerProducer(SinkPauser(self.client), True)
        client_t.registerProducer(SinkPauser(self.server), True)
        self._server_side.transport = _Wire(self.server, server_t.getPeer())
        side = self._client_side = _ClientSide()
        side.layer = self
        side.factory = _factories(self.ctx).server
        side.makeConnection(_Wire(self.client, client_t.getPeer(), self._client_101))
        data, self._client_bytes = self._client_bytes, b""
        side.dataReceived(data)
        if side.state != _OPEN and not self._close_sent[TO_SERVER]:
            # autobahn answered the client's bad handshake with a 4xx.
            self._peer_failed(TO_SERVER, INTERNAL_ERROR, "the client's WebSocket handshake failed")

    def _client_connecting(self, request: Any) -> str | None:
        protocol = self._server_side.websocket_protocol_in_use
        if protocol is not None and protocol not in request.protocols:
            raise ConnectionDeny(502, f"the server chose subprotocol {protocol!r}, which the client did not offer")
        return protocol

    def _client_101(self, generated: bytes) -> bytes:
        if generated.startswith(b"HTTP/1.1 101 "):
            return client_response(generated, self._response)
        return generated  # autobahn refusing the client's handshake

    # -- units in --------------------------------------------------------------

    def _message(self, direction: Direction, payload: bytes, binary: bool) -> None:
        self.arms[direction].submit(WebSocketMessage(payload, binary, direction=direction))

    def _peer_closed(self, direction: Direction, code: int | None, reason: str) -> None:
        """A side sent a close frame (autobahn has echoed it): pass it on."""
        self._close_sent[direction.reverse] = True
        self._send_close(direction, code, reason)

    def _peer_failed(self, direction: Direction, code: int, reason: str) -> None:
        """Autobahn is failing a side (``code`` to it): the other gets 1011."""
        who = "client" if direction is TO_SERVER else "server"
        self.flow.mark_ended(f"WebSocket {who} failed: {reason}")
        self._log.warn(
            "flow {flow_id}: WebSocket {who} failed ({code}: {reason}); closing the other side with 1011",
            flow_id=self.flow.id,
            who=who,
            code=code,
            reason=reason,
        )
        self._close_sent[direction.reverse] = True  # autobahn closes it with ``code``
        self._send_close(direction, INTERNAL_ERROR, f"the {who} failed: {reason}"[:120])

    def _side_closed(self, direction: Direction) -> None:
        """A side's connection is gone; without a close before, the other
        side hears 1001."""
        who = "client" if direction is TO_SERVER else "server"
        self._send_close(direction, GOING_AWAY, f"the {who} went away")

    def _send_close(self, direction: Direction, code: int | None, reason: str) -> None:
        if not self._close_sent[direction]:
            self._close_sent[direction] = True
            self.arms[direction].submit(WebSocketClose(code, reason, direction=direction))

    # -- units out ---------------------------------------------------------------

    def _to_server(self, unit: Unit) -> None:
        self._deliver(self._server_side, unit)

    def _to_client(self, unit: Unit) -> None:
        self._deliver(self._client_side, unit)

    def _deliver(self, proto: Any, unit: Unit) -> None:
        kind = type(unit)
        if kind is WebSocketMessage:
            if proto is not None and proto.state == _OPEN:
                data = unit.data
                proto.sendMessage(data if type(data) is bytes else bytes(data), isBinary=bool(unit.binary))
        elif kind is WebSocketClose:
            self._close_sent[unit.direction] = True
            if proto is not None and proto.state == _OPEN:
                reason = unit.reason.encode("utf-8")[:123] if unit.reason else None
                proto.sendCloseFrame(code=unit.code, reasonUtf8=reason if unit.code is not None else None)
            elif proto is None or proto.state != WebSocketProtocol.STATE_CLOSING:
                (self.client if unit.direction is TO_CLIENT else self.server).close()
        else:
            raise TypeError(f"a WebSocket connection cannot carry a {unit.kind}")

    def _dropped(self, unit: Unit) -> None:
        if type(unit) is WebSocketClose:
            # A close cannot be stopped: it goes as it came.
            (self._to_server if unit.direction is TO_SERVER else self._to_client)(unit)

    # -- the shells call these ---------------------------------------------------

    def client_data(self, data: bytes) -> None:
        side = self._client_side
        if side is not None:
            side.dataReceived(data)

    def server_data(self, data: bytes) -> None:
        self._server_side.dataReceived(data)

    def client_eof(self) -> None:
        # WebSocket has no half-close: the client is done.
        self.client.read_closed()
        self.client.close()

    def server_eof(self) -> None:
        self.server.read_closed()
        self.server.close()

    def client_lost(self, reason: Failure) -> None:
        self.client.lost = True
        self._close_sent[TO_CLIENT] = True  # nothing reaches it any more
        if self._client_side is not None:
            self._client_side.connectionLost(reason)
        else:
            self._side_closed(TO_SERVER)
        self._maybe_closed()

    def server_lost(self, reason: Failure) -> None:
        self.server.lost = True
        if not reason.check(ConnectionDone) and not self._close_sent[TO_SERVER]:
            self.flow.mark_ended("upstream reset")
        self._close_sent[TO_SERVER] = True
        self._server_side.connectionLost(reason)
        self._maybe_closed()

    # -- failure and closing -------------------------------------------------------

    def _tap_failed(self, failure: Failure) -> None:
        """Fail closed: both sides get 1011."""
        self.flow.mark_ended(f"tap error: {failure.getErrorMessage()}")
        for direction, proto in ((TO_SERVER, self._server_side), (TO_CLIENT, self._client_side)):
            self._close_sent[direction] = True
            if proto is not None and proto.state == _OPEN:
                proto.sendCloseFrame(code=INTERNAL_ERROR, reasonUtf8=b"tinspect: a tap failed")
            else:
                (self.server if direction is TO_SERVER else self.client).close()

    def abort(self, reason: str) -> None:
        """Reset both connections at once (`Flow.abort`)."""
        self.flow.mark_ended(reason)
        self._log.info("flow {flow_id}: aborted: {reason}", flow_id=self.flow.id, reason=reason)
        self.client.abort()
        self.server.abort()

    def _maybe_closed(self) -> None:
        if self.client.lost and self.server.lost and not self._closed:
            self._closed = True
            self._log.debug("flow {flow_id}: WebSocket closed", flow_id=self.flow.id)
            self._on_closed()
