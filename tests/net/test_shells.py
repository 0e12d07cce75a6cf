"""The protocol shells over real loopback sockets: what they set on their sockets."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol

from tinspect.net.shells import ClientConnection, ServerConnection


def _nodelay(transport) -> int:
    return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


class _Accepting(Factory):
    protocol = ClientConnection

    def __init__(self) -> None:
        self.started: Deferred = Deferred()

    def start(self, shell: ClientConnection) -> None:
        self.started.callback(shell)

    def ended(self, shell: ClientConnection) -> None:
        pass


class _Handler:
    def __init__(self) -> None:
        self.connected: Deferred = Deferred()

    def server_connected(self, transport) -> None:
        self.connected.callback(transport)

    def server_lost(self, reason) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_both_shells_turn_nagle_off():
    """Client and upstream sockets send small relayed pieces at once (TCP_NODELAY)."""
    factory = _Accepting()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    handler = _Handler()
    try:
        upstream = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                                         ServerConnection(handler))
        shell = await factory.started
        transport = await handler.connected
        assert _nodelay(shell.transport) != 0
        assert _nodelay(transport) != 0
        shell.transport.abortConnection()
        upstream.transport.abortConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_plain_twisted_socket_has_nagle_on():
    """The control: without the shells, Twisted leaves Nagle on."""
    accepted: Deferred = Deferred()

    class Plain(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self.transport)

    port = reactor.listenTCP(0, Factory.forProtocol(Plain), interface="127.0.0.1")
    try:
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
        transport = await accepted
        assert _nodelay(transport) == 0
        transport.abortConnection()
        client.transport.abortConnection()
    finally:
        await port.stopListening()


class _Handshake:
    """The part of an `UpstreamHandshake` the shell uses."""

    def __init__(self, refusal) -> None:
        self._refusal = refusal
        self.remembered = 0
        self.counted: list[bool] = []

    def count(self, ok: bool) -> None:
        self.counted.append(ok)

    def refusal(self):
        return self._refusal

    def remember_session(self) -> None:
        self.remembered += 1


class _Events:
    def __init__(self) -> None:
        self.events = []

    def server_handshake_done(self) -> None:
        self.events.append("done")

    def server_lost(self, reason) -> None:
        self.events.append("lost")


def test_a_refused_upstream_handshake_is_aborted_before_the_handler_hears_of_it():
    """A completed handshake the policy refuses (a resumed session for another name) is cut: the
    handler sees only the loss, and the session is not kept (nor counted ok); an accepted one goes on and is kept."""
    from twisted.internet.testing import StringTransport

    for refusal, events, remembered in (("name mismatch", ["lost"], 0), (None, ["done", "lost"], 1)):
        handler = _Events()
        shell = ServerConnection(handler)
        shell.transport = transport = StringTransport()
        shell.tls = hs = _Handshake(refusal)
        shell.handshakeCompleted()
        assert (transport.disconnecting or transport.disconnected) == (refusal is not None)
        shell.connectionLost(None)
        assert handler.events == events and hs.remembered == remembered
        assert hs.counted == [refusal is None]


class _Connecting:
    """A handler that writes down how the connect ended, and anything after."""

    def __init__(self) -> None:
        self.events = []

    def server_connected(self, transport) -> None:
        self.events.append("connected")

    def server_failed(self, reason) -> None:
        self.events.append(("failed", reason))

    def server_data(self, data) -> None:
        self.events.append(("data", data))

    def server_lost(self, reason) -> None:
        self.events.append("lost")


class _TLSHandshake(_Handshake):
    def explain(self, reason) -> str:
        return "certificate verify failed"


def _tls_transport():
    from twisted.internet.testing import StringTransport

    class TLSTransport(StringTransport):
        started = None

        def startTLS(self, handshake) -> None:
            self.started = handshake

    return TLSTransport()


def test_tls_asked_of_the_connect_is_part_of_it():
    """With connect_tls the shell starts TLS once TCP is up, and the handler hears
    server_connected only when the handshake is done; what follows goes to it as usual."""
    handler = _Connecting()
    shell = ServerConnection(handler, connect_tls=_TLSHandshake(None))
    transport = _tls_transport()
    shell.makeConnection(transport)
    assert transport.started is shell.tls and handler.events == []
    shell.handshakeCompleted()
    shell.dataReceived(b"HTTP/1.1 200 OK\r\n")
    shell.connectionLost(None)
    assert handler.events == ["connected", ("data", b"HTTP/1.1 200 OK\r\n"), "lost"]


def test_a_connect_whose_tls_fails_is_a_failed_connect():
    """A connection lost before its TLS is up, or whose handshake the policy refuses, reaches
    the handler as server_failed with the handshake's reason, never as server_lost."""
    for refusal in (None, "name mismatch"):
        handler = _Connecting()
        shell = ServerConnection(handler, connect_tls=_TLSHandshake(refusal))
        shell.makeConnection(_tls_transport())
        if refusal is not None:
            shell.handshakeCompleted()
        shell.connectionLost(None)
        assert handler.events == [("failed", "certificate verify failed")]


def test_a_shell_nobody_carries_ends_unheard():
    """A shell whose handler was taken away (an unwanted tunnel) is closed without a handler."""
    shell = ServerConnection(None)
    shell.connectionLost(None)
