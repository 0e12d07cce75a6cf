"""The HTTPS proxy listener (``explicit@ssl:``) over loopback: its ALPN choice, and a CONNECT
inside its TLS intercepted (TLS in TLS), with real TLS clients and a real TLS server."""

from __future__ import annotations

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from zope.interface import implementer

from tinspect._compat import TLSInTLS
from tinspect.context import Settings
from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates
from tinspect.proxy import Proxy


@implementer(IHandshakeListener)
class _Client(Protocol):
    """A proxy client: how its handshake ended, what it read."""

    def __init__(self):
        self.shaken = Deferred()
        self.data = b""
        self.got = None

    def handshakeCompleted(self):
        if not self.shaken.called:
            self.shaken.callback(self.transport.negotiatedProtocol)

    def dataReceived(self, data):
        self.data += data
        if self.got is not None and self.got[1] in self.data:
            got, self.got = self.got[0], None
            got.callback(self.data)

    def wait_for(self, marker):
        """Fires with all read once ``marker`` was read (fails after 10 s)."""
        d = Deferred()
        self.got = (d, marker)
        return d.addTimeout(10, reactor)

    def connectionLost(self, reason):
        if not self.shaken.called:
            self.shaken.errback(reason)


class _Hello(Protocol):
    def dataReceived(self, data):
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n")


@pytest_twisted.async_yield_fixture
async def https_listener(tmp_path):
    """A started proxy with an HTTPS proxy listener on loopback, its certificate from the proxy's CA,
    trusting a server CA of its own; the proxy's CA and the server's."""
    ca = CertificateAuthority.load_or_generate(tmp_path / "state")
    server_ca = CertificateAuthority.generate(tmp_path / "server-ca", common_name="Server CA")
    cert, key = LeafCertificates(ca).get_cryptography("127.0.0.1", ["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / "ca.pem").write_bytes(server_ca.cert_pem)
    proxy = Proxy(settings=Settings(state_dir=str(tmp_path / "state"), upstream_ca=str(tmp_path / "ca.pem")))
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    proxy.listen(f"explicit@ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}")
    proxy.privilegedStartService()
    proxy.startService()
    yield proxy, ca, server_ca
    await proxy.stopService()


def _port(proxy):
    return next(iter(proxy)).port.getHost().port


async def _connect(proxy, ca, alpn):
    client = _Client()
    options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(ca.cert_pem), acceptableProtocols=alpn)
    await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", _port(proxy), options), client)
    return client


@pytest_twisted.ensureDeferred
async def test_a_client_offering_h2_and_http11_gets_http11(https_listener):
    """ALPN on the HTTPS proxy listener selects http/1.1 among the client's offers."""
    proxy, ca, _ = https_listener
    client = await _connect(proxy, ca, [b"h2", b"http/1.1"])
    assert await client.shaken == b"http/1.1"
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_client_offering_only_h2_is_refused_with_no_application_protocol(https_listener, log_events):
    """A client offering only h2 gets the no_application_protocol alert (not internal_error) and a log line."""
    proxy, ca, _ = https_listener
    client = await _connect(proxy, ca, [b"h2"])
    with pytest.raises(SSL.Error) as e:
        await client.shaken
    assert "no application protocol" in str(e.value)
    assert any("it offers h2 over ALPN" in event.get("log_format", "").format(**event) for event in log_events
               if "offers" in event)


@pytest_twisted.ensureDeferred
async def test_a_connect_inside_the_listeners_tls_is_intercepted(https_listener):
    """CONNECT over the HTTPS proxy listener, then TLS inside it: the client sees a leaf from our CA for
    the server's name (not the server's own, from another CA) and the server's answer."""
    proxy, ca, server_ca = https_listener
    cert, key = LeafCertificates(server_ca).get_cryptography("server.test", ["127.0.0.1"])
    server = await SSL4ServerEndpoint(reactor, 0, CertificateOptions(privateKey=key, certificate=cert),
                                      interface="127.0.0.1").listen(Factory.forProtocol(_Hello))
    try:
        inner = _Client()
        wrapper = TLSInTLS(inner, client=True)
        options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(ca.cert_pem))
        await SSL4ClientEndpoint(reactor, "127.0.0.1", _port(proxy), options).connect(
            Factory.forProtocol(lambda: wrapper))
        port = server.getHost().port
        inner.transport.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await inner.wait_for(b"\r\n\r\n")
        assert inner.data.startswith(b"HTTP/1.1 200")
        inner.data = b""
        inner.shaken = Deferred()
        inner.transport.startTLS(optionsForClientTLS("server.test", trustRoot=Certificate.loadPEM(ca.cert_pem)))
        inner.transport.write(b"GET / HTTP/1.1\r\nHost: server.test\r\n\r\n")
        body = await inner.wait_for(b"hello\n")
        issuer = inner.transport.getHandle().get_peer_certificate(as_cryptography=True).issuer.rfc4514_string()
        assert body.startswith(b"HTTP/1.1 200 OK") and "CN=tinspect CA" in issuer, issuer
        inner.transport.loseConnection()
    finally:
        await server.stopListening()
