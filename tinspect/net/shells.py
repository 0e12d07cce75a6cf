"""The Twisted protocols of a proxied TCP connection: thin shells.

`ClientConnection` (what a listener's factory builds) and `ServerConnection`
(one per upstream connect) stay the same for a connection's whole life, while
the layer behind each (its ``handler``) changes as the protocol is found out:
`tinspect.layers.dispatch.Sniffer`, then `tinspect.layers.raw.RawRelay` or
`tinspect.layers.http.http1.layer.Http1Layer`, as `twisted.web.http`'s generic channel
hands a connection to HTTP/2 once it knows. They parse nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.context import ProxyContext
from tinspect.layers.raw import start_tls
from tinspect.net.upstream import connect, describe_failure

__all__ = ["ClientConnection", "ServerConnection", "UpstreamFactory", "no_delay", "open_upstream"]


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP transport (others are left alone).

    A relay writes what it got as soon as it got it, often a small piece
    (an HTTP/2 HEADERS frame, a WebSocket message, a response head). With
    Nagle on, a second small write waits for the ACK of the first, which
    the peer delays (40 ms on Linux): HTTP/2 through the proxy ran at 1/50
    of its direct rate, the proxy idle most of the time.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ClientConnection(Protocol):
    """The client side of one proxied TCP connection: a thin shell.

    It only passes events on to its `handler`, the layer carrying the
    connection now (`Sniffer`, `RawRelay`, `Http1Layer`...), which replaces
    itself as the protocol is found out: ``client_data``, ``client_eof`` and
    ``client_lost``; and ``client_handshake_done`` once TLS (started by the
    TLS layer) is up. Its factory hears of the start (``start``) and the end
    (``ended``) of the connection.
    """

    factory: Any
    handler: Any = None

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.factory.start(self)

    def handshakeCompleted(self) -> None:
        self.handler.client_handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.handler.client_data(data)

    def readConnectionLost(self) -> None:
        self.handler.client_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        self.factory.ended(self)
        if self.handler is not None:
            self.handler.client_lost(reason)


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ServerConnection(Protocol):
    """The upstream side of one proxied TCP connection: a thin shell.

    Passes ``server_connected(transport)``, ``server_data``, ``server_eof``
    ``server_lost`` (and ``server_handshake_done`` after ``startTLS``) on to
    its `handler`; whoever started the connect
    reports a failure to connect as ``handler.server_failed(reason)``.

    Whoever starts TLS on it sets ``tls`` (the `UpstreamHandshake`): a
    completed handshake the upstream policy refuses is aborted here, before
    the handler hears of it; an accepted one's session is kept for the next
    connection to the same upstream when this one ends (TLS 1.3 tickets
    arrive after the handshake, so not before).

    Args:
        handler: the layer that gets the events (may be set later).
    """

    tls: Any = None
    _secure = False
    _log = Logger()

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.handler.server_connected(self.transport)

    def handshakeCompleted(self) -> None:
        if self.tls is not None and self.tls.refusal() is not None:
            # A resumed session for another name (see `UpstreamHandshake.refusal`): the handler's
            # ``server_lost`` says why, as for a failed handshake.
            self.transport.abortConnection()
            return
        self._secure = True
        self.handler.server_handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.handler.server_data(data)

    def readConnectionLost(self) -> None:
        self.handler.server_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._secure and self.tls is not None:
            try:
                self.tls.remember_session()
            except Exception:  # a session not kept costs one full handshake; a lost event would leak the flow
                self._log.failure("keeping the upstream TLS session failed")
        self.handler.server_lost(reason)


class UpstreamFactory(Factory):
    """Connects one given `ServerConnection` (one factory per connect)."""

    noisy = False

    def __init__(self, shell: ServerConnection) -> None:
        self.shell = shell

    def buildProtocol(self, addr):
        return self.shell


def open_upstream(
    ctx: ProxyContext, dst: tuple[str, int], handler: Any, tls: Any = None
) -> tuple[ServerConnection, Deferred]:
    """Start connecting to ``dst``; events go to ``handler`` (or to whatever
    handler the returned shell has by then).

    Args:
        tls: a `tinspect.layers.tls.handshake.UpstreamHandshake`: ``handler`` then hears
            ``server_connected`` once TLS is up and verified, and
            ``server_failed`` with the reason when it is not.

    Returns:
        The shell and the connect Deferred (cancel it to give up). A failure
        to connect reaches the shell's handler as ``server_failed(reason)``.
    """
    shell = ServerConnection(handler)
    if tls is not None:
        shell.handler = _Handshaking(shell, handler, tls)
    d = connect(ctx.reactor, dst, UpstreamFactory(shell), ctx.settings.connect_timeout)
    d.addErrback(lambda failure: shell.handler.server_failed(describe_failure(failure)))
    return shell, d


class _Handshaking:
    """A shell's handler while its TLS handshake runs; then the real one."""

    def __init__(self, shell: ServerConnection, handler: Any, handshake: Any) -> None:
        self.shell = shell
        self.handler = handler
        self.handshake = handshake
        self.transport: Any = None

    def server_connected(self, transport: Any) -> None:
        self.transport = transport
        self.shell.tls = self.handshake
        start_tls(transport, self.handshake)

    def server_handshake_done(self) -> None:
        self.shell.handler = self.handler
        self.handler.server_connected(self.transport)

    def server_failed(self, reason: str) -> None:
        self.handler.server_failed(reason)

    def server_data(self, data: bytes) -> None:  # pragma: no cover - TLS reads nothing before the handshake
        pass

    def server_eof(self) -> None:
        pass

    def server_lost(self, reason: Failure) -> None:
        self.handler.server_failed(self.handshake.explain(reason))
