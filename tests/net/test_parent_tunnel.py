"""ParentTunnel over real loopback sockets: a tunnel handed over, a refusal, a silent parent, TLS
inside an https:// parent's TLS."""

from __future__ import annotations

import ipaddress
import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.net.parent import ParentProxy, ParentRefused
from tinspect.net.upstream import ParentTimeout, connect, describe_failure


class _Parent(Protocol):
    """A fake HTTP parent: answers CONNECT with ``factory.reply``, then echoes."""

    def dataReceived(self, data):
        if not getattr(self, "open", False):
            self.factory.requests.append(data)
            if self.factory.reply is not None:
                self.transport.write(self.factory.reply)
                self.open = True
            return
        self.transport.write(data.upper())


class _Client(Protocol):
    def __init__(self):
        self.got = Deferred()

    def connectionMade(self):
        self.transport.write(b"ping")

    def dataReceived(self, data):
        self.got.callback(data)


async def _parent(reply):
    factory = Factory.forProtocol(_Parent)
    factory.reply, factory.requests = reply, []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    return port, factory, ParentProxy.parse(f"http://u:pw@127.0.0.1:{port.getHost().port}")


@pytest_twisted.ensureDeferred
async def test_tunnel_is_handed_to_the_upstream_protocol():
    """After the parent's 200 the upstream protocol owns the connection: its bytes cross both ways."""
    port, factory, parent = await _parent(b"HTTP/1.1 200 OK\r\n\r\n")
    try:
        client = _Client()
        proto = await connect(reactor, ("192.0.2.9", 443), Factory.forProtocol(lambda: client), 5, parent)
        assert proto is client
        assert await client.got == b"PING"
        assert factory.requests[0].startswith(b"CONNECT 192.0.2.9:443 HTTP/1.1\r\n")
        assert b"Proxy-Authorization: Basic dTpwdw==" in factory.requests[0]
        client.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_refusal_fails_the_connect_naming_the_parent():
    """A 403 fails the connect with a reason naming the masked parent and its answer."""
    port, _, parent = await _parent(b"HTTP/1.1 403 Forbidden\r\n\r\n")
    try:
        with pytest.raises(ParentRefused) as e:
            await connect(reactor, ("192.0.2.9", 80), Factory.forProtocol(_Client), 5, parent)
        assert str(e.value) == f"parent proxy http://u:***@127.0.0.1:{parent.port} answered: 403 Forbidden"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_silent_parent_times_out_as_a_connect_timeout():
    """A parent that accepts and never answers fails the connect as a timeout (a 504 page)."""
    port, _, parent = await _parent(None)
    try:
        d = connect(reactor, ("192.0.2.9", 80), Factory.forProtocol(_Client), 0.2, parent)
        failure = None
        try:
            await d
        except ParentTimeout as e:
            failure = e
        assert failure is not None
        assert describe_failure(Failure(failure)).endswith("connect timeout")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unreachable_parent_is_named():
    """A parent that refuses the TCP connection is named in the failure."""
    port, _, parent = await _parent(None)
    await port.stopListening()
    with pytest.raises(ParentRefused) as e:
        await connect(reactor, ("192.0.2.9", 80), Factory.forProtocol(_Client), 5, parent)
    assert str(e.value).endswith("cannot connect to it: connection refused")


class _Relay(Protocol):
    """One side of the fake HTTPS parent's tunnel: what it reads goes to ``peer``."""

    peer = None

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _TLSParent(Protocol):
    """A fake https:// parent: TLS to it, CONNECT host:port, then bytes relayed to the target."""

    def connectionMade(self):
        self.head = b""
        self.upstream = None

    def dataReceived(self, data):
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        head, _, rest = self.head.partition(b"\r\n\r\n")
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        self.transport.pauseProducing()
        relay = _Relay()
        relay.peer = self

        def connected(proto):
            self.upstream = proto
            self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                proto.transport.write(rest)
            self.transport.resumeProducing()

        TCP4ClientEndpoint(reactor, host, int(port)).connect(Factory.forProtocol(lambda: relay)).addCallback(connected)

    def connectionLost(self, reason):
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data.upper())


@implementer(IHandshakeListener)
class _TLSClient(Protocol):
    """Starts TLS to the server as soon as the tunnel is open, then says ping."""

    def __init__(self, options):
        self.options = options
        self.got = Deferred()
        self.shaken = Deferred()

    def connectionMade(self):
        self.transport.startTLS(self.options)
        self.transport.write(b"ping")

    def handshakeCompleted(self):
        self.shaken.callback(self.transport.getHandle().get_servername())

    def dataReceived(self, data):
        self.got.callback(data)


@pytest.fixture
def tls_pair(tmp_path):
    """A CA, and server TLS options for ``name`` with its leaf."""
    from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS

    from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates

    ca = CertificateAuthority.generate(tmp_path / "ca")
    leaves = LeafCertificates(ca)

    def server(name):
        cert, key = leaves.get_cryptography(name, ["127.0.0.1"])
        return CertificateOptions(privateKey=key, certificate=cert)

    def client(name):
        return optionsForClientTLS(name, trustRoot=Certificate.loadPEM(ca.cert_pem))

    return server, client


@pytest_twisted.ensureDeferred
async def test_tls_runs_inside_the_tls_of_an_https_parent(tls_pair):
    """Through an https:// parent the upstream protocol can start TLS to the server inside the
    parent's TLS: both handshakes are verified, SNI is the server's, bytes cross both ways."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    server_tls, client_tls = tls_pair
    echo = await SSL4ServerEndpoint(reactor, 0, server_tls("server.test"), interface="127.0.0.1").listen(
        Factory.forProtocol(_Echo))
    parent_port = await SSL4ServerEndpoint(reactor, 0, server_tls("parent.test"), interface="127.0.0.1").listen(
        Factory.forProtocol(_TLSParent))
    try:
        parent = ParentProxy.parse(f"https://127.0.0.1:{parent_port.getHost().port}")
        client = _TLSClient(client_tls("server.test"))
        proto = await connect(reactor, ("127.0.0.1", echo.getHost().port), Factory.forProtocol(lambda: client), 5,
                              parent, client_tls("127.0.0.1"))
        assert proto is client
        assert await client.shaken == b"server.test"
        assert await client.got == b"PING"
        client.transport.loseConnection()
    finally:
        await echo.stopListening()
        await parent_port.stopListening()


class _Socks5(Protocol):
    """A fake SOCKS5 parent without authentication: records the CONNECT's address, then echoes."""

    def connectionMade(self):
        self.buffer = b""
        self.open = False

    def dataReceived(self, data):
        if self.open:
            self.transport.write(data.upper())
            return
        self.buffer += data
        if self.buffer[:1] == b"\x05" and len(self.buffer) >= 3 and not hasattr(self, "greeted"):
            self.greeted = True
            self.buffer = self.buffer[2 + self.buffer[1]:]
            self.transport.write(b"\x05\x00")
        if len(self.buffer) >= 10:
            kind = self.buffer[3]
            size = {1: 4, 4: 16}[kind]
            if len(self.buffer) < 6 + size:
                return
            raw = self.buffer[4:4 + size]
            self.factory.asked.append(ipaddress.ip_address(raw).compressed)
            self.open = True
            self.transport.write(b"\x05\x00\x00\x01" + bytes(6))


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("name,expected", [("dual.test", "192.0.2.5"), ("v6only.test", "2001:db8::6")])
async def test_socks5_resolves_names_of_both_families(monkeypatch, name, expected):
    """socks5:// resolves the name at the gateway, IPv6 as well as IPv4 (getaddrinfo, not the
    IPv4-only reactor.resolve), and prefers the family the parent is reached by."""
    answers = {"dual.test": ["2001:db8::5", "192.0.2.5"], "v6only.test": ["2001:db8::6"]}
    real = socket.getaddrinfo

    def fake(host, port, family=0, kind=0, *rest):
        if host not in answers:
            return real(host, port, family, kind, *rest)
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    factory = Factory.forProtocol(_Socks5)
    factory.asked = []
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        parent = ParentProxy.parse(f"socks5://127.0.0.1:{port.getHost().port}")
        client = _Client()
        await connect(reactor, (name, 80), Factory.forProtocol(lambda: client), 5, parent)
        assert await client.got == b"PING"
        assert factory.asked == [expected]
        client.transport.loseConnection()
    finally:
        await port.stopListening()
