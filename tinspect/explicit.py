"""The explicit proxy mode: clients that are configured to use a proxy.

A client sends ``CONNECT host:port HTTP/1.1``; tinspect connects there,
answers ``200 Connection established`` once the upstream connection is up
(or a readable ``502``/``504`` when it is not) and relays the tunnel through
the taps like any transparent connection. Absolute-form plain HTTP
(``GET http://host/ HTTP/1.1``) is answered ``501`` until the HTTP/1.1 layer
arrives.

This listener is the default (``tcp:8080:interface=127.0.0.1``): it binds to
loopback so that it is not an open relay unless told otherwise.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.connection import UpstreamFactory
from tinspect.context import ProxyContext
from tinspect.flow import Flow, format_addr
from tinspect.http1 import EndOfMessage, Http1Reader, ProtocolError, RequestHead
from tinspect.listen import SpecError, parse_hostport
from tinspect.relay import RawRelay
from tinspect.sockets import normalize_host
from tinspect.upstream import connect, describe_failure

__all__ = ["ExplicitProxyFactory", "ExplicitConnection"]

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


def error_response(status: int, reason: str, detail: str) -> bytes:
    """A small ``text/plain`` error response that closes the connection."""
    body = f"{status} {reason}\n\ntinspect: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    return head + body


class ExplicitProxyFactory(Factory):
    """Builds an `ExplicitConnection` per client.

    Args:
        ctx: the proxy context.
        listener: the listen spec, for logs.
    """

    noisy = False

    def __init__(self, ctx: ProxyContext, listener: str) -> None:
        self.ctx = ctx
        self.listener = listener
        self.port: int | None = None

    def buildProtocol(self, addr):
        proto = ExplicitConnection()
        proto.factory = self
        return proto


@implementer(IHalfCloseableProtocol)
class ExplicitConnection(Protocol):
    """One client of the explicit proxy: a request head, then a tunnel."""

    _log = Logger()
    factory: ExplicitProxyFactory
    relay: RawRelay | None = None
    flow: Flow | None = None

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self._client = (normalize_host(peer.host), peer.port)
        self._reader = Http1Reader("request")
        self._head: RequestHead | None = None
        self._early = b""

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.client_data(data)
            return
        if self._head is not None:  # head seen, upstream connecting: hold the bytes
            self._early += data
            return
        try:
            events = self._reader.feed(data)
        except ProtocolError as e:
            self._refuse(e.status, "Bad Request", str(e))
            return
        for event in events:
            if isinstance(event, RequestHead):
                self._head = event
            elif isinstance(event, EndOfMessage) and self._head is not None:
                self._request(self._head)
                return

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        self._log.warn(
            "explicit proxy: {status} for {client}: {detail}",
            status=status,
            client=format_addr(self._client),
            detail=detail,
        )
        self.transport.write(error_response(status, reason, detail))
        self.transport.loseConnection()

    def _request(self, head: RequestHead) -> None:
        if head.method != b"CONNECT":
            self._refuse(501, "Not Implemented",
                         "this proxy relays CONNECT tunnels only (plain HTTP proxying is not available yet)")
            return
        try:
            dst = parse_hostport(head.target.decode("ascii"))
        except (SpecError, UnicodeDecodeError):
            self._refuse(400, "Bad Request", f"CONNECT target {head.target!r} is not host:port")
            return
        self._early = self._reader.switch()
        ctx = self.factory.ctx
        self.flow = flow = Flow(self._client, dst, listener=self.factory.listener, mode="explicit")
        self.relay = relay = RawRelay(ctx.chain, flow, self.transport, on_closed=self._closed,
                                      on_server_connected=self._established)
        if not ctx.open_flow(flow):
            relay.abort(flow.error or "tap error")
            return
        d = connect(ctx.reactor, dst, UpstreamFactory(relay), ctx.settings.connect_timeout)
        d.addErrback(self._upstream_failed)

    def _established(self) -> None:
        self.transport.write(_ESTABLISHED)
        early, self._early = self._early, b""
        if early:
            self.relay.client_data(early)

    def _upstream_failed(self, failure: Failure) -> None:
        reason = describe_failure(failure)
        status, title = (504, "Gateway Timeout") if reason == "connect timeout" else (502, "Bad Gateway")
        self.transport.write(error_response(status, title, f"cannot reach {format_addr(self.flow.dst)}: {reason}"))
        self.relay.server_failed(reason)

    def _closed(self) -> None:
        self.factory.ctx.close_flow(self.flow)

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.client_eof()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.client_lost(reason)
