"""ParentTunnel over real loopback sockets: a tunnel handed over, a refusal, a silent parent."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

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
