"""The Twisted protocols of a proxied TCP connection: thin shells.

`ClientConnection` (what a listener's factory builds) and `ServerConnection`
(one per upstream connect) stay the same for a connection's whole life, while
the layer behind each (its ``handler``) changes as the protocol is found out:
`tinspect.layers.dispatch.Sniffer`, then `tinspect.layers.raw.RawRelay` or
`tinspect.layers.http.http1.layer.Http1Layer`, as `twisted.web.http`'s generic channel
hands a connection to HTTP/2 once it knows. They parse nothing.

What a handler answers is written down here, as Protocols: `ClientHandler` for the
client's shell, `ServerHandler` for a connected upstream's, `ConnectHandler` for whoever
hears how a connect ends (every layer that takes an upstream still connecting is both),
and a ``*HandshakeHandler`` for the layer that started TLS on a shell. A layer hands
both shells on with `tinspect.net.handoff.take_over`.
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.context import ProxyContext
from tinspect.layers.raw import start_tls
from tinspect.net.upstream import UpstreamFactory, connect, connect_failure_kind, describe_failure

__all__ = [
    "ClientConnection",
    "ServerConnection",
    "ClientHandler",
    "ClientHandshakeHandler",
    "ServerHandler",
    "ConnectHandler",
    "ServerHandshakeHandler",
    "no_delay",
    "open_upstream",
]


class ClientHandler(typing.Protocol):
    """What the handler of a `ClientConnection` answers: the layer carrying it now."""

    def client_data(self, data: bytes) -> None:
        """The client sent ``data``."""

    def client_eof(self) -> None:
        """The client half-closed (FIN): it sends nothing more, but may still read."""

    def client_lost(self, reason: Failure) -> None:
        """The client connection is gone (``reason`` says how)."""


class ClientHandshakeHandler(ClientHandler, typing.Protocol):
    """A client handler that started TLS on the connection (the TLS layer): it hears
    when the handshake completes."""

    def client_handshake_done(self) -> None:
        """The client's TLS handshake with us completed."""


class ServerHandler(typing.Protocol):
    """What the handler of a connected `ServerConnection` answers."""

    def server_data(self, data: bytes) -> None:
        """The server sent ``data``."""

    def server_eof(self) -> None:
        """The server half-closed (FIN)."""

    def server_lost(self, reason: Failure) -> None:
        """The upstream connection is gone (``reason`` says how)."""


class ConnectHandler(typing.Protocol):
    """What hears how the connect of a `ServerConnection` ends (`open_upstream`'s handler).

    A layer given a shell that may still be connecting is a `ServerHandler` too; one that
    hands the connection on as soon as it is made (an explicit CONNECT's) need not be.
    """

    def server_connected(self, transport: Any) -> None:
        """The upstream connection is up (and its TLS, if `open_upstream` was given any)."""

    def server_failed(self, reason: str) -> None:
        """The connect failed (TLS included); ``reason`` is short and plain."""


class ServerHandshakeHandler(ServerHandler, typing.Protocol):
    """A server handler that started TLS on a connected shell (the TLS layer)."""

    def server_handshake_done(self) -> None:
        """The TLS handshake with the server completed and passed the upstream policy."""


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
    handler: ClientHandler | None = None  # None until the factory starts a layer, or when it refused

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self.factory.start(self)

    def handshakeCompleted(self) -> None:
        # A ClientHandshakeHandler: the layer that started TLS carries the client until then. A
        # handshake no layer started (an HTTPS proxy listener's, `ssl:`, done by the endpoint)
        # is no news to the layer carrying the client.
        done = getattr(self.handler, "client_handshake_done", None)
        if done is not None:
            done()

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
    While the shell connects its handler is a `ConnectHandler`, once
    connected a `ServerHandler` (a `ServerHandshakeHandler` after
    ``startTLS``); ``None`` once nobody carries it (its end goes unheard).

    Whoever starts TLS on it sets ``tls`` (the `UpstreamHandshake`): a
    completed handshake the upstream policy refuses is aborted here, before
    the handler hears of it; an accepted one's session is kept for the next
    connection to the same upstream when this one ends (TLS 1.3 tickets
    arrive after the handshake, so not before). With ``connect_tls``
    (`open_upstream`'s), TLS is part of connecting: the shell starts it, and
    the handler hears ``server_connected`` once it is up, or
    ``server_failed`` with the handshake's reason; TLS reads nothing before
    its handshake, so nothing else reaches the handler before then.

    Args:
        handler: the layer that gets the events (may be set later).
        connect_tls: the `UpstreamHandshake` to run before the connection
            counts as made.
        timings: the flow's `tinspect.flow.Timings`, whose ``upstream_connected``
            and ``upstream_tls_done`` the shell stamps (the first time only).
    """

    tls: Any = None
    parent: Any = None  # the tinspect.net.parent.ParentProxy it goes through, if any (open_upstream's)
    _secure = False
    _log = Logger()

    def __init__(
        self, handler: ServerHandler | ConnectHandler | None, connect_tls: Any = None, timings: Any = None
    ) -> None:
        self.handler = handler
        self._connect_tls = connect_tls
        self._timings = timings

    def connectionMade(self) -> None:
        no_delay(self.transport)
        timings = self._timings
        if timings is not None and timings.upstream_connected is None:
            timings.upstream_connected = timings.now()
        if self._connect_tls is not None:
            self.tls = self._connect_tls
            start_tls(self.transport, self.tls)
            return
        self.handler.server_connected(self.transport)

    def handshakeCompleted(self) -> None:
        if self.tls is not None and self.tls.refusal() is not None:
            # A resumed session for another name (see `UpstreamHandshake.refusal`): the handler's
            # ``server_lost`` (or ``server_failed``, while connecting) says why, as for a failed handshake.
            self.transport.abortConnection()
            return
        self._secure = True
        timings = self._timings
        if timings is not None and timings.upstream_tls_done is None:
            timings.upstream_tls_done = timings.now()
        if self.tls is not None:
            self.tls.count(True)
        if self._connect_tls is not None:
            self._connect_tls = None
            self.handler.server_connected(self.transport)
            return
        self.handler.server_handshake_done()

    def dataReceived(self, data: bytes) -> None:
        self.handler.server_data(data)

    def readConnectionLost(self) -> None:
        self.handler.server_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self.tls is not None and not self._secure:  # TLS started and never came up (or was refused)
            self.tls.count(False)
        if self._connect_tls is not None:  # connected, but its TLS never came up
            self.handler.server_failed(self._connect_tls.explain(reason))
            return
        if self._secure and self.tls is not None:
            try:
                self.tls.remember_session()
            except Exception:  # a session not kept costs one full handshake; a lost event would leak the flow
                self._log.failure("keeping the upstream TLS session failed")
        if self.handler is not None:
            self.handler.server_lost(reason)


def open_upstream(
    ctx: ProxyContext,
    dst: tuple[str, int],
    handler: ConnectHandler | None,
    tls: Any = None,
    timings: Any = None,
    direct: bool = False,
    client: tuple[str, int] | None = None,
) -> tuple[ServerConnection, Deferred]:
    """Start connecting to ``dst``; events go to ``handler`` (or to whatever
    handler the returned shell has by then).

    Args:
        tls: a `tinspect.layers.tls.handshake.UpstreamHandshake`: ``handler`` then hears
            ``server_connected`` once TLS is up and verified, and
            ``server_failed`` with the reason when it is not.
        timings: the flow's `tinspect.flow.Timings`, stamped as the connection
            (and its TLS) comes up.
        direct: connect to ``dst`` itself, whatever the parent proxy rules say (``dst``
            is an HTTP parent that absolute-form requests go to).
        client: the client's address; with ``--spoof-source`` a direct
            connection leaves from it.

    Returns:
        The shell and the connect Deferred (cancel it to give up). A failure
        to connect reaches the shell's handler as ``server_failed(reason)``.
        Through the parent proxy ``ctx.parents`` chooses for ``dst``, if any (the
        shell's ``parent``); a parent's refusal is such a failure, naming it.
    """
    shell = ServerConnection(handler, connect_tls=tls, timings=timings)
    parent = ctx.parents.choose(dst[0]) if ctx.parents and not direct else None
    shell.parent = parent
    parent_tls = _parent_tls(ctx, parent.host) if parent is not None and parent.scheme == "https" else None
    source = client[0] if client is not None and ctx.settings.spoof_source else None
    d = connect(ctx.reactor, dst, UpstreamFactory(shell), ctx.settings.connect_timeout, parent, parent_tls, source)
    d.addErrback(_connect_failed, ctx, shell)
    return shell, d


def _connect_failed(failure: Failure, ctx: ProxyContext, shell: ServerConnection) -> None:
    kind = connect_failure_kind(failure)
    if kind is not None:
        ctx.metrics.connect_failures[kind] += 1
    shell.handler.server_failed(describe_failure(failure))


def _parent_tls(ctx: ProxyContext, host: str) -> Any:
    """The TLS client options for the ``https://`` parent ``host``: verified against
    ``--upstream-proxy-ca`` or the system trust store, made once per host."""
    options = ctx.parent_tls.get(host)
    if options is None:
        from twisted.internet import ssl

        ca = ctx.settings.upstream_proxy_ca
        if ca is not None:
            with open(ca, "rb") as f:
                trust = ssl.trustRootFromCertificates(
                    [ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())])
        else:
            trust = ssl.platformTrust()
        options = ctx.parent_tls[host] = ssl.optionsForClientTLS(host, trustRoot=trust)
    return options


def _pem_blocks(data: bytes) -> list[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]
