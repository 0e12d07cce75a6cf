"""`tinspect._compat`: each library still has and does what the module relies
on (see its theory docstring), and no other module reaches into a library's
private names.

A failure here after an upgrade names the library, its version and what
changed: the reach in `tinspect._compat` needs rework, not the test."""

from __future__ import annotations

import ast
import datetime
import gc
import importlib
import importlib.metadata
import inspect
import os
import pathlib
import socket
import sys
import textwrap

import h2.connection
import hyperframe.frame
import pytest
import pytest_twisted
import txaio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.events import ConnectionTerminated
from h2.exceptions import ProtocolError
from hyperframe.frame import DataFrame
from hypothesis import given, settings
from hypothesis import strategies as hs
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer, providedBy

import tinspect._compat as compat
from tests.conftest import REPO

txaio.use_twisted()

from autobahn.twisted.websocket import WebSocketAdapterProtocol, WebSocketServerFactory, WebSocketServerProtocol  # noqa: E402
from autobahn.websocket.protocol import WebSocketProtocol  # noqa: E402

LIBRARIES = ("twisted", "h2", "hyperframe", "hpack", "autobahn", "txaio", "OpenSSL")
"""The libraries whose private names only `tinspect._compat` may touch."""

_DISTRIBUTIONS = {"OpenSSL": "pyOpenSSL"}


def changed(library: str, what: str) -> str:
    """The message of a failed check: the library's version and what changed."""
    version = importlib.metadata.version(_DISTRIBUTIONS.get(library, library))
    return f"{library} {version}: {what}; tinspect/_compat.py relies on it (see its theory docstring)"


def params(function) -> list[tuple[str, object]]:
    """A function's parameters, with their defaults."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


async def turn(seconds: float = 0.01) -> None:
    """Let the reactor run for ``seconds``."""
    d: Deferred = Deferred()
    reactor.callLater(seconds, d.callback, None)
    await d


# -- 1. Twisted's TCP write queue --------------------------------------------------


@implementer(IHandshakeListener)
class _Peer(Protocol):
    """One end of a loopback connection: what it read, and when it connected and shook hands."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.made: Deferred = Deferred()
        self.first: Deferred = Deferred()
        self.shaken: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called:
            self.first.callback(None)

    def handshakeCompleted(self) -> None:
        self.shaken.callback(None)


async def _loopback():
    """A listening port, and the client and server ends of one connection to it."""
    server = _Peer()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: server))
    client = _Peer()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    await server.made
    return port, client, server


async def _received(peer: _Peer, data: bytes) -> None:
    for _ in range(500):
        if bytes(peer.data) == data:
            return
        await turn()
    assert bytes(peer.data) == data


@pytest_twisted.ensureDeferred
async def test_a_tcp_connection_still_shows_its_write_queue_as_fast_write_reads_it():
    """A connected TCP transport is a tcp.Client/Server with the attributes `_send_now` reads, and
    a write still waits in ``_tempDataBuffer`` for the next reactor turn."""
    port, client, server = await _loopback()
    try:
        transport = client.transport
        assert type(transport) in (tcp.Server, tcp.Client), changed("twisted", f"a TCP transport is a {type(transport)}")
        state = {name: getattr(transport, name, "missing") for name in
                 ("connected", "disconnecting", "_aborting", "_writeDisconnected", "dataBuffer", "_tempDataBuffer", "TLS")}
        assert state == {"connected": 1, "disconnecting": 0, "_aborting": False, "_writeDisconnected": False,
                         "dataBuffer": b"", "_tempDataBuffer": [], "TLS": False}, \
            changed("twisted", f"an idle TCP connection's write state is {state}")
        assert transport.socket.fileno() == transport.fileno(), changed("twisted", "transport.socket is not its socket")
        transport.write(b"queued")
        assert transport._tempDataBuffer == [b"queued"], \
            changed("twisted", "a write no longer waits in _tempDataBuffer for the next reactor turn")
        compat.fast_write(transport, b" then this")
        await _received(server, b"queued then this")
        transport.abortConnection()
        assert transport._aborting, changed("twisted", "abortConnection no longer sets _aborting")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_fast_write_ends_in_the_socket_of_a_loopback_tcp_transport():
    """A small write on an idle connection goes to the socket at once: nothing is left for Twisted's buffer."""
    port, client, server = await _loopback()
    try:
        compat.fast_write(client.transport, b"x" * 100)
        left = len(client.transport.dataBuffer) + client.transport._tempDataLen
        assert left == 0, changed("twisted", f"{left} bytes of an eager write were left to Twisted's buffer")
        await _received(server, b"x" * 100)
    finally:
        client.transport.loseConnection()
        await port.stopListening()


# -- 2. Twisted's TLS layering -----------------------------------------------------


def _self_signed():
    """A throwaway key and self-signed certificate for compat.test."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "compat.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def server_tls():
    """Server TLS options with a throwaway self-signed certificate."""
    key, cert = _self_signed()
    return CertificateOptions(privateKey=key, certificate=cert)


async def _tls_after_peek(server_tls, limit: int):
    """A loopback connection whose server end reads the ClientHello in the clear, then starts TLS
    with eager records of up to ``limit`` bytes and replays it, as the TLS layer does; and the
    server end's TCP transport."""
    port, client, server = await _loopback()
    client.transport.startTLS(CertificateOptions())
    await server.first
    transport = server.transport
    transport.pauseProducing()
    hello, server.data = bytes(server.data), bytearray()
    transport.startTLS(server_tls)
    compat.eager_tls_records(transport, limit)
    compat.replay_into_tls(transport, hello)
    transport.resumeProducing()
    return port, client, server, transport


async def _shaken(*peers: _Peer) -> None:
    for _ in range(500):
        if all(peer.shaken.called for peer in peers):
            return
        await turn()
    raise AssertionError(changed("twisted", "the TLS handshake did not complete"))


@pytest_twisted.ensureDeferred
async def test_start_tls_puts_a_tls_protocol_in_front_that_takes_a_replayed_client_hello(server_tls):
    """After startTLS, ``transport.protocol`` is the TLS protocol and ``TLS`` is set; a ClientHello
    read in the clear and fed to it completes the handshake."""
    port, client, server, transport = await _tls_after_peek(server_tls, 0)
    try:
        assert isinstance(transport.protocol, TLSMemoryBIOProtocol), \
            changed("twisted", f"after startTLS transport.protocol is a {type(transport.protocol)}")
        assert compat.tls_started(transport), changed("twisted", "startTLS no longer sets transport.TLS")
        await _shaken(client, server)
        compat.fast_write(client.transport, b"ping")
        await _received(server, b"ping")
    finally:
        client.transport.abortConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_tls_protocol_writes_its_records_through_its_replaceable_transport(server_tls, monkeypatch):
    """The records of the handshake go through the attribute `eager_tls_records` replaced, and from
    there to the socket at once; after `lazy_tls_records`, to Twisted's buffer."""
    sent = []

    def spy(connection, data):
        left = send_now(connection, data)
        sent.append((connection, len(data), len(left)))
        return left

    send_now = compat._send_now
    monkeypatch.setattr(compat, "_send_now", spy)
    port, client, server, transport = await _tls_after_peek(server_tls, 1 << 20)
    try:
        await _shaken(client, server)
        assert [n for connection, n, _ in sent if connection is transport], \
            changed("twisted", "the TLS protocol no longer writes its records to its .transport attribute")
        assert all(left == 0 for _, _, left in sent), changed("twisted", f"records left to Twisted's buffer: {sent}")
        sent.clear()
        compat.lazy_tls_records(transport)
        transport.write(b"pong")
        await _received(client, b"pong")
        assert sent == [], "lazy_tls_records did not leave the records to Twisted's buffer"
    finally:
        client.transport.abortConnection()
        await port.stopListening()


# -- 3, 4. h2's GOAWAY handling and closed-stream memory ---------------------------

_REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"), (b":authority", b"compat.test")]


def _h2_pair(max_closed_streams: int = 100):
    """A `GracefulH2Connection` client and a plain h2 server, past their prefaces."""
    client = compat.GracefulH2Connection(H2Configuration(client_side=True, header_encoding=None), max_closed_streams)
    server = h2.connection.H2Connection(H2Configuration(client_side=False, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return client, server


def test_h2_still_dispatches_a_received_goaway_to_the_override():
    """A NO_ERROR GOAWAY reaches `_receive_goaway_frame` (with the signature overridden): it is reported,
    and the stream it lets finish still sends; any other GOAWAY still closes the connection."""
    assert params(h2.connection.H2Connection._receive_goaway_frame) == [("self", inspect.Parameter.empty),
                                                                        ("frame", inspect.Parameter.empty)], \
        changed("h2", "H2Connection._receive_goaway_frame takes other parameters")
    client, server = _h2_pair()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, _REQUEST)
    server.receive_data(client.data_to_send())
    server.close_connection(error_code=0, last_stream_id=sid)
    events = client.receive_data(server.data_to_send())
    assert [(type(e), e.error_code, e.last_stream_id) for e in events] == [(ConnectionTerminated, 0, sid)], \
        changed("h2", f"a received GOAWAY gave {events}")
    try:
        client.send_data(sid, b"the rest", end_stream=True)
    except ProtocolError as e:
        raise AssertionError(changed("h2", f"the GOAWAY override was not called: the connection closed ({e})"))
    assert client.data_to_send(), changed("h2", "the stream a graceful GOAWAY let finish sent nothing")

    client, server = _h2_pair()
    server.close_connection(error_code=2)
    client.receive_data(server.data_to_send())
    with pytest.raises(ProtocolError):
        client.send_headers(client.get_next_available_stream_id(), _REQUEST)


def test_h2_sizes_its_closed_stream_memory_by_max_closed_streams():
    """H2Connection.__init__ reads MAX_CLOSED_STREAMS (set on the instance first) to bound what it
    remembers of closed streams."""
    client, _ = _h2_pair(max_closed_streams=5)
    for _ in range(20):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, _REQUEST, end_stream=True)
        client.reset_stream(sid)
        client.open_outbound_streams  # h2 moves closed streams to its record when it counts open ones
    remembered = getattr(client, "_closed_streams", None)
    assert remembered is not None and len(remembered) == 5, \
        changed("h2", f"20 closed streams left {remembered!r} in _closed_streams, not the last 5")


# -- 5. hyperframe's frame repr ----------------------------------------------------


def test_hyperframe_frame_repr_still_shows_body_repr(monkeypatch):
    """Frame.__repr__ shows ``self._body_repr()``, the method `cheap_data_frame_repr` replaces."""
    frame = DataFrame(1, b"body")
    monkeypatch.setattr(DataFrame, "_body_repr", lambda self: "<mark>")
    assert repr(frame).endswith("<mark>"), changed("hyperframe", f"Frame.__repr__ no longer calls _body_repr: {frame!r}")


@pytest.mark.parametrize("size", [0, 1, 9, 10, 11, 16384])
@pytest.mark.parametrize("padding", [None, 0, 3, 200])
def test_the_cheap_data_frame_repr_is_hyperframes_own_text(size, padding):
    """The replacement shows what hyperframe's own ``_body_repr`` shows (from the serialized body)."""
    frame = DataFrame(1, bytes(range(256)) * (size // 256) + bytes(range(size % 256)))
    if padding is not None:
        frame.flags.add("PADDED")
        frame.pad_length = padding
    assert compat._data_body_repr(frame) == hyperframe.frame.Frame._body_repr(frame), \
        changed("hyperframe", "the repr of a DataFrame's body shows something else")


def test_h2_builds_a_received_data_frames_repr_and_the_cheap_one_serializes_no_body(monkeypatch):
    """h2 builds ``repr(frame)`` of every frame it receives: with hyperframe's own repr a DATA frame's
    body is serialized for it, with `cheap_data_frame_repr` it is not."""
    serialized = []
    serialize_body = DataFrame.serialize_body
    monkeypatch.setattr(DataFrame, "serialize_body", lambda self: serialized.append(len(self.data)) or serialize_body(self))

    def receive_data_frame():
        serialized.clear()
        peer = h2.connection.H2Connection(H2Configuration(client_side=True, header_encoding=None))
        conn = h2.connection.H2Connection(H2Configuration(client_side=False, header_encoding=None))
        peer.initiate_connection()
        conn.initiate_connection()
        conn.receive_data(peer.data_to_send())
        peer.send_headers(1, _REQUEST)
        peer.send_data(1, b"x" * 16000, end_stream=True)
        wire = peer.data_to_send()  # serialized here, before counting
        serialized.clear()
        conn.receive_data(wire)
        return list(serialized)

    compat.cheap_data_frame_repr()
    assert receive_data_frame() == [], "repr of a received DATA frame still serializes its body"
    monkeypatch.setattr(DataFrame, "_body_repr", hyperframe.frame.Frame._body_repr)
    assert receive_data_frame() == [16000], \
        changed("h2", "receiving a DATA frame no longer builds its repr (the patch may no longer be needed)")


# -- 9. hpack's debug lines ------------------------------------------------------


class _Recorder:
    """A stand-in for hpack's module logger that keeps the debug lines asked for."""

    def __init__(self):
        self.lines = []

    def debug(self, *args, **kwargs):
        self.lines.append(args[0])


def test_hpack_logs_every_field_through_its_module_logger(monkeypatch):
    """hpack calls ``hpack.hpack.log.debug`` when it encodes and decodes fields: the attribute
    `quiet_hpack_debug` replaces."""
    import hpack
    import hpack.hpack

    recorder = _Recorder()
    monkeypatch.setattr(hpack.hpack, "log", recorder)
    block = hpack.Encoder().encode([(b":status", b"200"), (b"server", b"x")])
    hpack.Decoder().decode(block, raw=True)
    assert len(recorder.lines) >= 4, changed("hpack", f"encoding and decoding log other lines: {recorder.lines}")


def test_quiet_hpack_debug_silences_debug_only(monkeypatch):
    """After `quiet_hpack_debug`, hpack's debug calls reach no logger; its other levels still do."""
    import logging

    import hpack.hpack

    logger = logging.getLogger("hpack.hpack")
    monkeypatch.setattr(hpack.hpack, "log", logger)
    monkeypatch.setattr(logger, "isEnabledFor", lambda level: level > logging.DEBUG)
    compat.quiet_hpack_debug()
    quiet = hpack.hpack.log
    assert quiet is not logger
    seen = []
    monkeypatch.setattr(logger, "_log", lambda *args, **kwargs: seen.append(args[1]))
    quiet.debug("not %s", "this")
    quiet.warning("this")
    assert seen == ["this"]


def test_quiet_hpack_debug_leaves_a_debugging_logger_alone(monkeypatch):
    """With stdlib debug logging on for hpack, its logger is kept."""
    import logging

    import hpack.hpack

    logger = logging.getLogger("hpack.hpack")
    monkeypatch.setattr(hpack.hpack, "log", logger)
    monkeypatch.setattr(logger, "isEnabledFor", lambda level: True)
    compat.quiet_hpack_debug()
    assert hpack.hpack.log is logger


# -- 10. h2's inbound header validation --------------------------------------------


def test_h2_validates_received_headers_through_the_stream_modules_global(monkeypatch):
    """``H2Stream._process_received_headers`` calls ``h2.stream.validate_headers``, the global
    `fast_header_validation` replaces."""
    import h2.stream

    seen = []

    def record(headers, flags):
        headers = list(headers)
        seen.append(headers)
        return headers

    monkeypatch.setattr(h2.stream, "validate_headers", record)
    client = h2.connection.H2Connection(H2Configuration(client_side=True))
    server = h2.connection.H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/")],
                        end_stream=True)
    server.receive_data(client.data_to_send())
    assert seen and seen[0][0] == (b":method", b"GET"), \
        changed("h2", "received headers are no longer validated through h2.stream.validate_headers")


_NAMES = [b":method", b":path", b":scheme", b":authority", b":status", b":protocol", b":bogus", b"host", b"te",
          b"connection", b"keep-alive", b"accept", b"X-Up", b"a b", b"", b"a:b", b"\x7f", b"\xe9", b"cookie"]
_VALUES = [b"", b"GET", b"CONNECT", b"/", b"a.example", b"b.example", b"trailers", b"TRAILERS", b"gzip", b" x",
           b"x\t", b"a\r\nb", b"a\nb", b"\x00", b"200", b"x y", b"\xff"]


_PREFIXES = [
    [],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/")],
    [(b":method", b"CONNECT"), (b":authority", b"a.example")],
    [(b":status", b"200")],
]
_GOOD = hs.tuples(hs.sampled_from([b"accept", b"x-up", b"cookie", b"host", b"te"]),
                  hs.sampled_from([b"a.example", b"trailers", b"x", b"x y", b""]))
_ANY = hs.tuples(hs.sampled_from(_NAMES), hs.sampled_from(_VALUES))


@settings(max_examples=1500, deadline=None)
@given(hs.sampled_from(_PREFIXES), hs.lists(hs.one_of(_GOOD, _GOOD, _ANY), max_size=6),
       hs.booleans(), hs.booleans(), hs.booleans())
def test_the_fast_header_validation_accepts_and_refuses_what_h2_does(prefix, fields, trailer, response, client):
    """For any header block, the one-pass validation returns the same fields as h2's pipeline, or
    raises the same error."""
    block = prefix + fields
    import h2.utilities
    from h2.utilities import HeaderValidationFlags

    flags = HeaderValidationFlags(is_client=client, is_trailer=trailer, is_response_header=response,
                                  is_push_promise=False)

    def outcome(validate):
        try:
            return list(validate(list(block), flags))
        except ProtocolError as e:
            return ("refused", str(e))

    assert outcome(compat._validate_headers_fast) == outcome(h2.utilities.validate_headers)


# -- 6, 7. autobahn ----------------------------------------------------------------


def test_autobahn_colours_its_log_texts_only_while_has_click_is_set(monkeypatch):
    """``autobahn.util.hl`` colours with click while ``_HAS_CLICK`` is true, and not after
    `quiet_autobahn_colours`."""
    import autobahn.util

    assert hasattr(autobahn.util, "_HAS_CLICK"), changed("autobahn", "autobahn.util._HAS_CLICK is gone")
    if hasattr(autobahn.util, "click"):
        monkeypatch.setattr(autobahn.util, "_HAS_CLICK", True)
        assert autobahn.util.hl("name") != "name", changed("autobahn", "hl no longer colours with click")
    compat.quiet_autobahn_colours()
    assert autobahn.util._HAS_CLICK is False
    assert autobahn.util.hl("name") == "name", changed("autobahn", "hl colours while _HAS_CLICK is false")


def test_autobahn_twisted_data_received_only_logs_then_calls_data_received():
    """Skipping autobahn's Twisted ``dataReceived`` for ``_dataReceived(data)`` skips only a debug line."""
    assert params(WebSocketProtocol._dataReceived) == [("self", inspect.Parameter.empty), ("data", inspect.Parameter.empty)], \
        changed("autobahn", "WebSocketProtocol._dataReceived takes other parameters")
    body = ast.parse(textwrap.dedent(inspect.getsource(WebSocketAdapterProtocol.dataReceived))).body[0].body
    calls = [ast.unparse(statement.value.func) for statement in body
             if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)]
    others = [ast.unparse(statement) for statement in body if not isinstance(statement, ast.Expr)]
    assert calls == ["self.log.debug", "self._dataReceived"] and not others, \
        changed("autobahn", f"its Twisted dataReceived does more than log and call _dataReceived: {calls} {others}")


class _Transport(StringTransport):
    def unregisterProducer(self) -> None:
        self.producer = None


class _Server(compat.AutobahnSide, WebSocketServerProtocol):
    """autobahn's server protocol with the `AutobahnSide` hooks, recording failures."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[tuple[int, str]] = []

    def connection_failing(self, code: int, reason: str) -> None:
        self.failures.append((code, reason))


def _open_server() -> tuple[_Server, StringTransport]:
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    proto = _Server()
    proto.factory = factory
    transport = _Transport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: compat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 101 "), \
        changed("autobahn", f"_dataReceived did not answer a handshake: {transport.value()[:60]!r}")
    return proto, transport


def test_autobahn_fails_a_broken_connection_through_fail_connection():
    """A protocol violation goes through ``_fail_connection(code, reason)`` (the defaults `AutobahnSide`
    repeats), so `connection_failing` hears of it once, before the connection is dropped."""
    assert params(WebSocketProtocol._fail_connection) == params(compat.AutobahnSide._fail_connection), \
        changed("autobahn", f"WebSocketProtocol._fail_connection takes {params(WebSocketProtocol._fail_connection)}")
    proto, transport = _open_server()
    proto.dataReceived(b"\x81\x02hi")  # a client's frame must be masked
    assert proto.failures == [(1002, "unmasked client-to-server frame")], \
        changed("autobahn", f"a protocol violation reached connection_failing as {proto.failures}")
    assert transport.disconnecting


# -- no reaches elsewhere ----------------------------------------------------------


def _library(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in LIBRARIES


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def library_private_names() -> set[str]:
    """Every private name a library module loaded now defines (functions, classes, attributes it sets)."""
    names = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not _library(name) or not path or not path.endswith(".py") or {"test", "tests"} & set(name.split(".")):
            continue
        for node in ast.walk(ast.parse(pathlib.Path(path).read_bytes())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {name for name in names if _private(name)}


def defined_names(tree: ast.AST) -> set[str]:
    """The private names a module of ours defines: functions, classes, attributes and names it sets,
    parameters and keyword arguments, ``__slots__`` entries."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.arg, ast.keyword)) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            names.update(c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {name for name in names if _private(name)}


def library_reaches(source: str, library_names: set[str], ours: set[str]) -> list[str]:
    """Where ``source`` touches a private name of a library: importing one (or a private module),
    a private attribute of something imported from a library, or a private name only a library
    defines (``ours``: the private names our own modules define), read, set, overridden or named
    in ``getattr``."""
    tree = ast.parse(source)
    found = []
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name):
                    imported.add((alias.asname or alias.name).split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and _library(node.module):
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if _private(alias.name) or any(_private(part) for part in node.module.split(".")):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
    foreign = library_names - ours
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in imported or node.attr in foreign:
                name = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in foreign:
            name = node.name
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in foreign):
            name = node.args[1].value
        if name is not None:
            found.append(f"line {node.lineno}: {name}")
    return found


def _our_modules() -> list[pathlib.Path]:
    return sorted(p for root in ("tinspect", "taps", "twisted/plugins") for p in (REPO / root).rglob("*.py"))


@pytest.fixture(scope="module")
def loaded_libraries():
    """Every module of ours imported (so the libraries they use are loaded), and the libraries' private names."""
    for path in _our_modules():
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[0] in ("tinspect", "taps") and parts[-1] != "__main__":
            importlib.import_module(".".join(parts).removesuffix(".__init__"))
    return library_private_names()


def test_no_module_but_compat_touches_a_private_name_of_a_library(loaded_libraries):
    """Reaches into Twisted, h2, hyperframe, hpack, autobahn, txaio or pyOpenSSL internals live in
    tinspect/_compat.py only."""
    compat_path = REPO / "tinspect" / "_compat.py"
    trees = {path: ast.parse(path.read_text()) for path in _our_modules()}
    ours = set().union(*(defined_names(tree) for path, tree in trees.items() if path != compat_path))
    reaches = {}
    for path in trees:
        if path != compat_path:
            found = library_reaches(path.read_text(), loaded_libraries, ours)
            if found:
                reaches[path.relative_to(REPO).as_posix()] = found
    assert reaches == {}, "move these into tinspect/_compat.py, with a check in tests/test_compat.py"


def library_overrides(module, exempt: str = "tinspect._compat") -> list[str]:
    """The private names that classes of ``module`` define, themselves or in a mixin of ours (but
    ``exempt``'s), which a library class they derive from defines too: overrides of its internals."""
    found = []
    for cls in vars(module).values():
        if not inspect.isclass(cls) or cls.__module__ != module.__name__:
            continue
        libraries = [base for base in cls.__mro__ if _library(base.__module__)]
        for base in cls.__mro__:
            if base.__module__.split(".")[0] not in ("tinspect", "taps") or base.__module__ == exempt:
                continue
            for name in vars(base):
                if _private(name) and any(name in vars(library) for library in libraries):
                    found.append(f"{base.__qualname__}.{name}")
    return sorted(set(found))


def test_no_class_but_compat_overrides_a_private_method_of_a_library(loaded_libraries):
    """A class of ours that derives from a library's overrides none of its private names, but through
    a class of tinspect/_compat.py."""
    overrides = {name: library_overrides(module) for name, module in list(sys.modules.items())
                 if name.split(".")[0] in ("tinspect", "taps") and name != "tinspect._compat"}
    assert {name: found for name, found in overrides.items() if found} == {}, \
        "move these into tinspect/_compat.py, with a check in tests/test_compat.py"


def test_the_override_check_finds_an_override_of_a_library_private_method():
    """The check itself: `GracefulH2Connection` overrides h2's ``_receive_goaway_frame``."""
    assert "GracefulH2Connection._receive_goaway_frame" in library_overrides(compat, exempt="")


@pytest.mark.parametrize(
    "source",
    [
        "from twisted.internet import tcp\ndef f(c): return c._tempDataBuffer",
        "def f(connection): return connection._aborting",
        "import twisted.web._http2",
        "from twisted.internet._sslverify import OpenSSLCertificateOptions",
        "from hyperframe.frame import DataFrame\nDataFrame._body_repr = repr",
        "import autobahn.util\nautobahn.util._HAS_CLICK = False",
        "def f(request): return getattr(request, '_disconnected', False)",
        "class Side:\n    def f(self, code, reason): super()._fail_connection(code, reason)",
        "class C:\n    def _receive_goaway_frame(self, frame): pass",
        "from h2.connection import _error_code_from_int",
    ],
)
def test_the_reach_check_finds_a_library_private_name(loaded_libraries, source):
    """The check itself: each of these touches a library's private name."""
    assert library_reaches(source, loaded_libraries, {"_log", "_paused"})


def test_the_reach_check_passes_our_own_private_names(loaded_libraries):
    """A private name our own code defines is ours to use, even where a library has the same one."""
    assert library_reaches("class A:\n    def f(self, other): return other._paused + self._log", loaded_libraries,
                           {"_log", "_paused"}) == []


@pytest_twisted.ensureDeferred
async def test_connect_from_binds_a_transparent_socket_to_the_given_source():
    """`connect_from`'s socket has IP_TRANSPARENT, set before Twisted binds it to the source address."""
    if os.geteuid() != 0:
        pytest.skip("IP_TRANSPARENT needs CAP_NET_ADMIN")
    server = _Peer()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(lambda: server))
    try:
        client = _Peer()
        await compat.connect_from(reactor, "127.0.0.1", port.getHost().port, Factory.forProtocol(lambda: client),
                                  5, "127.0.0.5")
        await server.made
        assert server.transport.getPeer().host == "127.0.0.5", changed("twisted", "the connector's bindAddress is unused")
        sock = client.transport.getHandle()
        assert sock.getsockopt(socket.SOL_IP, 19) == 1, \
            changed("twisted", "tcp.Client no longer makes its socket with createInternetSocket")
        assert type(client.transport) in compat._TCP, "fast_write would not know the transparent client"
        client.transport.abortConnection()
    finally:
        await port.stopListening()


# -- 9. Twisted's TLS over a transport that is TLS already -------------------------


def test_a_tls_protocol_built_not_to_connect_its_protocol_leaves_it_alone():
    """``TLSMemoryBIOFactory.protocol(factory, wrapped, False)``, as Twisted's startTLS builds it, neither
    connects ``wrapped`` nor becomes its transport, and sends its ClientHello to the transport given."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    factory = TLSMemoryBIOFactory(CertificateOptions(), True, None)
    wrapped = Protocol()
    made = []
    wrapped.makeConnection = made.append
    tls = factory.protocol(factory, wrapped, False)
    under = StringTransport()
    tls.makeConnection(under)
    assert made == [] and wrapped.transport is None, \
        changed("twisted", "a TLS protocol built with _connectWrapped=False connected its protocol")
    assert tls.wrappedProtocol is wrapped and under.value()[:1] == b"\x16", \
        changed("twisted", "the TLS protocol no longer writes its ClientHello to the transport it was given")


class _Handshakes(_Peer):
    """A `_Peer` that counts the handshakes it hears of."""

    def __init__(self) -> None:
        super().__init__()
        self.handshakes = 0

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


@pytest_twisted.ensureDeferred
async def test_tls_in_tls_carries_a_second_handshake_inside_the_first(server_tls):
    """`TLSInTLS` over a loopback TLS connection: startTLS on it runs a second handshake inside the
    first (the application hears of each), and bytes cross, encrypted twice, both ways."""
    from twisted.internet.endpoints import SSL4ClientEndpoint, SSL4ServerEndpoint

    server = _Handshakes()
    port = await SSL4ServerEndpoint(reactor, 0, server_tls, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: compat.TLSInTLS(server, client=False)))
    client = _Handshakes()
    try:
        await SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, CertificateOptions()).connect(
            Factory.forProtocol(lambda: compat.TLSInTLS(client, client=True)))
        for _ in range(500):
            if client.handshakes and server.handshakes:
                break
            await turn()
        assert (client.handshakes, server.handshakes) == (1, 1), "the outer handshake was not passed on"
        server.transport.startTLS(server_tls)
        client.transport.startTLS(CertificateOptions())
        compat.fast_write(client.transport, b"ping")
        await _received(server, b"ping")
        server.transport.write(b"pong")
        await _received(client, b"pong")
        inner = client.transport.protocol
        assert isinstance(inner, TLSMemoryBIOProtocol) and inner.wrappedProtocol is client
        assert inner.getHandle() is client.transport.getHandle() and compat.tls_started(client.transport)
        assert (client.handshakes, server.handshakes) == (2, 2)
    finally:
        client.transport.abortConnection()
        await port.stopListening()


# -- 10. Twisted's ssl: server endpoint ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_ssl_endpoint_makes_its_connections_from_the_context_server_tls_context_gives(tmp_path):
    """``serverFromString("ssl:...")`` is an ``SSL4ServerEndpoint`` whose connections are all made from
    one cached context: the one `server_tls_context` returns."""
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import SSL
    from twisted.internet.endpoints import SSL4ClientEndpoint, serverFromString

    key, cert = _self_signed()
    pem = tmp_path / "server.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    endpoint = serverFromString(reactor, f"ssl:0:interface=127.0.0.1:privateKey={pem}")
    context = compat.server_tls_context(endpoint)
    assert isinstance(context, SSL.Context), changed("twisted", f"an ssl: endpoint's context is a {type(context)}")
    assert compat.server_tls_context(endpoint) is context, changed("twisted", "the ssl: endpoint's context is not cached")
    server = _Peer()
    port = await endpoint.listen(Factory.forProtocol(lambda: server))
    try:
        client = _Peer()
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, CertificateOptions()),
                              client)
        await server.made
        assert server.transport.getHandle().get_context() is context, \
            changed("twisted", "an ssl: endpoint's connections are not made from its cached context")
        client.transport.abortConnection()
    finally:
        await port.stopListening()
    with pytest.raises(TypeError):
        compat.server_tls_context(TCP4ServerEndpoint(reactor, 0))


# -- 13. Twisted's TLS read loop ------------------------------------------------------


def test_twisted_tls_read_loop_is_the_one_batched_tls_reads_follows():
    """Twisted's ``_flushReceiveBIO`` still reads ``recv(2**15)`` until ``WantReadError``, hands each
    piece on alone, shuts down on ``ZeroReturnError`` and fails on ``Error``: what the batched one copies."""
    import tinspect.layers.raw  # noqa: F401  (what puts it in force)

    source = inspect.getsource(compat._TWISTED_FLUSH_RECEIVE_BIO)
    for piece in ("while not self._lostTLSConnection:", "self._tlsConnection.recv(2**15)", "except WantReadError:",
                  "except ZeroReturnError:", "self._shutdownTLS()", "self._tlsShutdownFinished(None)",
                  "except Error:", "failure = Failure()", "self._tlsShutdownFinished(failure)",
                  "if not self._aborted:", "ProtocolWrapper.dataReceived(self, bytes)", "self._flushSendBIO()"):
        assert piece in source, changed("twisted", f"TLSMemoryBIOProtocol._flushReceiveBIO no longer has {piece!r}")
    assert TLSMemoryBIOProtocol._flushReceiveBIO is compat._flush_receive_bio_batched, \
        "batched_tls_reads is not in force once the layers are imported"


class _Chunks(Protocol):
    """Keeps each chunk it receives and how its connection ended."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason) -> None:
        self.lost = reason


def _tls_memory_pair(server_tls):
    """A client and a server `TLSMemoryBIOProtocol` over `StringTransport`s, past their handshake."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    ends = []
    for options, is_client in ((CertificateOptions(), True), (server_tls, False)):
        app = _Chunks()
        tls = TLSMemoryBIOProtocol(TLSMemoryBIOFactory(options, is_client, None), app)
        tls.makeConnection(StringTransport())
        ends.append((tls, app))
    _shuttle(ends)
    return ends


def _shuttle(ends) -> None:
    """Move what each end wrote to the other until both are quiet."""
    (client, _), (server, _) = ends
    moved = True
    while moved:
        moved = False
        for src, dst in ((client, server), (server, client)):
            data = src.transport.value()
            if data:
                src.transport.clear()
                dst.dataReceived(data)
                moved = True


def test_one_read_of_many_tls_records_reaches_the_application_as_one_chunk(server_tls):
    """Three records read at once are one ``dataReceived`` of all their bytes, in order."""
    (client, client_app), (server, _) = _tls_memory_pair(server_tls)
    for part in (b"a" * 20000, b"b" * 5, b"c" * 300):
        server._write(part)  # each write of TLSMemoryBIOProtocol itself makes records of its own
    wire = server.transport.value()
    server.transport.clear()
    client.dataReceived(wire)
    assert client_app.chunks == [b"a" * 20000 + b"b" * 5 + b"c" * 300]


def test_data_before_a_close_notify_in_the_same_read_is_delivered_before_the_connection_ends(server_tls):
    """A record and the peer's close_notify in one read: the bytes arrive, then the TLS layer shuts down."""
    (client, client_app), (server, _) = _tls_memory_pair(server_tls)
    server._write(b"last words")
    server._tlsConnection.shutdown()
    server._flushSendBIO()
    wire = server.transport.value()
    server.transport.clear()
    client.dataReceived(wire)
    assert client_app.chunks == [b"last words"]
    assert client._lostTLSConnection and client.transport.disconnecting


def test_data_before_a_broken_record_in_the_same_read_is_delivered_before_the_failure(server_tls):
    """A good record then a corrupted one in one read: the good bytes arrive, then the connection fails."""
    (client, client_app), (server, _) = _tls_memory_pair(server_tls)
    server._write(b"good")
    good = server.transport.value()
    server.transport.clear()
    server._write(b"spoiled")
    bad = bytearray(server.transport.value())
    bad[-1] ^= 0xFF
    client.dataReceived(good + bytes(bad))
    assert client_app.chunks == [b"good"]
    assert client._reason is not None and client.transport.disconnecting


# -- 14. zope.interface's declarations, as Twisted's TLS wrapping and endpoints make them ---


@pytest_twisted.ensureDeferred
async def test_start_tls_declares_from_zopes_cache_what_keep_declarations_holds(server_tls):
    """``startTLS`` declares the transport ISSLTransport and its TLS protocol one interface of the
    transport at a time, each a ``Provides`` from zope's cache; `keep_declarations` holds every one
    of them, so a garbage collection leaves the next connection the same objects."""
    from twisted.internet.interfaces import ISSLTransport
    from zope.interface import Provides, providedBy

    port, client, server, transport = await _tls_after_peek(server_tls, 0)
    try:
        tls = transport.protocol
        compat.keep_declarations(transport)
        gc.collect()
        assert transport.__provides__ is Provides(type(transport), ISSLTransport), \
            changed("twisted", "startTLS no longer declares its transport ISSLTransport from zope's cache")
        interfaces = list(providedBy(transport))
        assert tls.__provides__ is Provides(type(tls), interfaces[-1]), \
            changed("twisted", "the TLS protocol is no longer declared its transport's interfaces one at a time")
        kept = compat._kept_declarations[(type(tls), providedBy(transport))]
        assert [id(Provides(type(tls), interface)) for interface in interfaces] == [id(d) for d in kept], \
            changed("zope.interface", "Provides() no longer answers from its cache what is still held")
    finally:
        client.transport.abortConnection()
        await port.stopListening()


def test_an_endpoints_wrapper_is_declared_from_the_cache_keep_declarations_holds():
    """The endpoints' ``_WrappingProtocol`` is declared like the protocol it connects, one interface
    at a time, with the declarations `keep_declarations` keeps for that protocol."""
    from twisted.internet.endpoints import _WrappingProtocol
    from twisted.internet.interfaces import IHalfCloseableProtocol

    @implementer(IHalfCloseableProtocol, IHandshakeListener)
    class Shell(Protocol):
        pass

    shell = Shell()
    compat.keep_declarations(protocol=shell)
    gc.collect()
    wrapper = _WrappingProtocol(Deferred(), shell)
    kept = compat._kept_declarations[(_WrappingProtocol, providedBy(shell))]
    assert any(wrapper.__provides__ is declaration for declaration in kept), \
        changed("twisted", "an endpoint's wrapper is no longer declared an interface of its protocol at a time")
