"""`tinspect.layers.raw.send` and `start_tls` over real loopback sockets: small
writes go to the socket at once (nothing left in Twisted's buffer for the next
reactor turn), large TLS record writes and HTTP/2's (`batch_records`) wait
for it, and every byte arrives either way."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions

from tinspect.layers.raw import EAGER_RECORDS, batch_records, send, start_tls


class _Sink(Protocol):
    """Counts what arrives; ``got`` fires once ``expect`` bytes came."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.data = bytearray()
        self.got: Deferred = Deferred()
        self.made: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.expect and not self.got.called:
            self.got.callback(bytes(self.data))


class _Writer(Protocol):
    def __init__(self) -> None:
        self.made: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self.transport)


def _buffered(transport) -> int:
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


async def _pair(expect: int):
    sink = _Sink(expect)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: sink))
    writer = _Writer()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), writer)
    server_transport = await sink.made
    return port, writer, sink, server_transport


@pytest_twisted.ensureDeferred
async def test_a_plain_write_goes_out_at_once():
    port, writer, sink, _ = await _pair(100)
    try:
        send(writer.transport, b"x" * 100)
        assert _buffered(writer.transport) == 0
        assert await sink.got == b"x" * 100
    finally:
        writer.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nothing_goes_out_after_an_abort():
    """abortConnection drops what is pending; a write right after it must not reach the socket either."""
    port, writer, sink, _ = await _pair(1)
    try:
        send(writer.transport, b"before")
        while sink.data != b"before":
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
        writer.transport.abortConnection()
        send(writer.transport, b"after the abort")
        d = Deferred()
        reactor.callLater(0.2, d.callback, None)
        await d
        assert sink.data == b"before"
    finally:
        await port.stopListening()


async def _drained(transport) -> None:
    while _buffered(transport):
        d = Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d


@pytest_twisted.ensureDeferred
async def test_tls_records_small_ones_go_at_once_large_ones_and_http2_ones_wait():
    """What Twisted's TLS protocol writes to the TCP connection after `start_tls` (its records; here raw
    bytes to a plain sink, which only counts them)."""
    small, large = b"s" * 100, b"L" * (2 * EAGER_RECORDS)
    port, writer, sink, _ = await _pair(1 << 30)
    try:
        start_tls(writer.transport, CertificateOptions())
        records = writer.transport.protocol.transport
        await _drained(writer.transport)  # the ClientHello
        records.write(small)
        assert _buffered(writer.transport) == 0, "a small record waited for the next reactor turn"
        records.write(large)
        assert _buffered(writer.transport) == len(large), "a bulk write was not left to Twisted's buffer"
        await _drained(writer.transport)
        batch_records(writer.transport)
        records.write(small)
        assert _buffered(writer.transport) == len(small), "batch_records did not turn eager sending off"
        await _drained(writer.transport)
        while not sink.data.endswith(small + large + small):
            d = Deferred()
            reactor.callLater(0.01, d.callback, None)
            await d
    finally:
        writer.transport.abortConnection()
        await port.stopListening()
