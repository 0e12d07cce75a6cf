"""WebSocket interception, without sockets.

Two halves:

* Sans-IO tests of the handshake helpers in `tinspect.layers.websocket`
  (`is_upgrade`, `client_handshake`, `end_to_end`, `upstream_options`,
  `upstream_request`, `client_response`), with hypothesis properties.
* Glue tests of the layer on the in-memory network of `tests.memnet`. Both
  WebSocket endpoints are the ``websockets`` library's sans-I/O protocols, so
  every byte the proxy writes is read by an implementation we did not write:
  the client (``cl``) is a `websockets.client.ClientProtocol` on the client
  `Peer`, the server (``sv``) a `websockets.server.ServerProtocol` on the
  `Peer` the proxy dialled. ``pump()`` feeds a side what the proxy wrote to
  it and returns the frames it decoded; ``flush()`` sends the side's own
  output (including its automatic answers: close echo, pong) to the proxy.

Autobahn (inside the proxy) schedules its timers through txaio; the fixture
points txaio at the memory reactor, so ``net.reactor.advance`` drives them
and `Net.leftovers` sees them.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
import txaio
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from tests.memnet import Net, Record
from tinspect.chain import Tap
from tinspect.context import Settings
from tinspect.headers import Headers
from tinspect.layers.websocket import (
    _Factories,
    _Wire,
    client_handshake,
    client_response,
    end_to_end,
    is_upgrade,
    upstream_options,
    upstream_request,
)
from tinspect.units import TO_CLIENT, TO_SERVER, Request, Response, WebSocketClose, WebSocketMessage

CLEAN = {"flows": {}, "open": [], "timers": []}
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example key (16 bytes)


# ===========================================================================
# Sans-IO: is_upgrade, client_handshake
# ===========================================================================


def hs_fields(*extra, drop=()):
    """The RFC 6455 §1.2 client handshake's fields, minus ``drop`` (lower-case names), plus ``extra``."""
    base = [
        (b"Host", b"server.example.com"),
        (b"Upgrade", b"websocket"),
        (b"Connection", b"Upgrade"),
        (b"Sec-WebSocket-Key", KEY),
        (b"Origin", b"http://example.com"),
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"Sec-WebSocket-Version", b"13"),
    ]
    return [f for f in base if f[0].lower() not in drop] + list(extra)


def test_is_upgrade_accepts_the_rfc_example():
    assert is_upgrade(b"GET", b"HTTP/1.1", hs_fields()) is True


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(hs_fields(drop={b"upgrade"}) + [(b"Upgrade", b"h2c, WebSocket")], id="websocket-in-a-list"),
        pytest.param([(n.lower(), v) for n, v in hs_fields()], id="lower-case-names"),
        pytest.param([(n.upper(), v) for n, v in hs_fields()], id="upper-case-names"),
        pytest.param(hs_fields((b"Content-Length", b"0")), id="content-length-0"),
        pytest.param(hs_fields(drop={b"sec-websocket-key"}) + [(b"Sec-WebSocket-Key", b" " + KEY + b" ")],
                     id="key-with-spaces-around"),
        pytest.param(hs_fields(drop={b"sec-websocket-version"}) + [(b"Sec-WebSocket-Version", b" 13 ")],
                     id="version-with-spaces-around"),
        pytest.param(hs_fields(drop={b"origin", b"sec-websocket-protocol"}), id="minimal"),
    ],
)
def test_is_upgrade_accepts_the_handshake_shapes(fields):
    assert is_upgrade(b"GET", b"HTTP/1.1", fields) is True


@pytest.mark.parametrize(
    "method, version, fields",
    [
        pytest.param(b"POST", b"HTTP/1.1", hs_fields(), id="post"),
        pytest.param(b"get", b"HTTP/1.1", hs_fields(), id="lower-case-method"),
        pytest.param(b"GET", b"HTTP/1.0", hs_fields(), id="http-1.0"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"upgrade"}), id="no-upgrade"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"upgrade"}) + [(b"Upgrade", b"h2c")], id="upgrade-h2c"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"upgrade"}) + [(b"Upgrade", b"websocketx")],
                     id="upgrade-websocketx"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"host"}), id="no-host"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields((b"Host", b"b.example")), id="two-hosts"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"sec-websocket-key"}), id="no-key"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields((b"Sec-WebSocket-Key", KEY)), id="two-keys"),
        pytest.param(b"GET", b"HTTP/1.1",
                     hs_fields((b"Sec-WebSocket-Key", base64.b64encode(b"x" * 15)), drop={b"sec-websocket-key"}),
                     id="15-byte-key"),
        pytest.param(b"GET", b"HTTP/1.1",
                     hs_fields((b"Sec-WebSocket-Key", base64.b64encode(b"x" * 17)), drop={b"sec-websocket-key"}),
                     id="17-byte-key"),
        pytest.param(b"GET", b"HTTP/1.1",
                     hs_fields((b"Sec-WebSocket-Key", KEY.rstrip(b"=")), drop={b"sec-websocket-key"}),
                     id="key-without-padding"),
        pytest.param(b"GET", b"HTTP/1.1",
                     hs_fields((b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZ!Bub25jZQ=="), drop={b"sec-websocket-key"}),
                     id="key-not-base64"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields(drop={b"sec-websocket-version"}), id="no-version"),
        pytest.param(b"GET", b"HTTP/1.1",
                     hs_fields((b"Sec-WebSocket-Version", b"8"), drop={b"sec-websocket-version"}), id="version-8"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields((b"Content-Length", b"5")), id="a-body"),
        pytest.param(b"GET", b"HTTP/1.1", hs_fields((b"Transfer-Encoding", b"chunked")), id="chunked-body"),
    ],
)
def test_is_upgrade_rejects_what_is_not_a_plain_websocket_handshake(method, version, fields):
    assert is_upgrade(method, version, fields) is False


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=8), st.binary(max_size=10),
       st.lists(st.tuples(st.binary(max_size=24), st.binary(max_size=40)), max_size=12))
def test_is_upgrade_never_raises(method, version, fields):
    assert is_upgrade(method, version, fields) in (True, False)


_KEY_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_key_like = st.one_of(
    st.binary(min_size=16, max_size=16).map(base64.b64encode),
    st.binary(min_size=14, max_size=18).map(base64.b64encode),
    st.text(alphabet="AQgwz09+/=! \t", min_size=20, max_size=26).map(str.encode),
    st.binary(min_size=16, max_size=16).map(lambda b: b" " + base64.b64encode(b) + b"\t"),
)


def _cased(name: bytes):
    return st.sampled_from([name, name.upper(), name.lower(), name.title()])


def _field(name: bytes, values):
    return st.tuples(_cased(name), values)


_relevant_field = st.one_of(
    _field(b"Host", st.sampled_from([b"a.example", b"a.example:8080", b""])),
    _field(b"Upgrade", st.sampled_from([b"websocket", b"WebSocket", b"h2c", b"h2c, websocket", b"websocket/13",
                                        b" websocket ", b"web socket", b""])),
    _field(b"Connection", st.sampled_from([b"Upgrade", b"keep-alive, Upgrade"])),
    _field(b"Sec-WebSocket-Key", _key_like),
    _field(b"Sec-WebSocket-Version", st.sampled_from([b"13", b" 13", b"8", b"13, 8", b"", b"0013"])),
    _field(b"Content-Length", st.sampled_from([b"0", b" 0 ", b"", b"1", b"00", b"10"])),
    _field(b"Transfer-Encoding", st.sampled_from([b"chunked", b"", b"gzip"])),
    _field(b"X-Other", st.binary(max_size=8)),
)


def _rfc6455_model(method, version, fields):
    """RFC 6455 §4.2.1 as the module documents it, written independently."""
    if method != b"GET" or version != b"HTTP/1.1":
        return False
    values: dict[bytes, list[bytes]] = {}
    for name, value in fields:
        values.setdefault(name.lower(), []).append(value)
    upgrades = values.get(b"upgrade", [])
    if not upgrades or b"websocket" not in [t.strip().lower() for t in upgrades[-1].split(b",")]:
        return False
    if len(values.get(b"host", [])) != 1:
        return False
    keys = values.get(b"sec-websocket-key", [])
    if len(keys) != 1 or not re.fullmatch(rb"[A-Za-z0-9+/]{21}[AQgw]==", keys[0].strip()):
        return False
    versions = values.get(b"sec-websocket-version", [])
    if len(versions) != 1 or versions[0].strip() != b"13":
        return False
    if any(not v.isascii() for n, vs in values.items() if n.startswith(b"sec-websocket-") for v in vs):
        return False
    framing = values.get(b"content-length", []) + values.get(b"transfer-encoding", [])
    return all(v.strip() in (b"", b"0") for v in framing)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([b"GET", b"GET", b"GET", b"POST", b"get"]),
       st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
       st.lists(_relevant_field, max_size=9))
def test_is_upgrade_matches_the_rfc_6455_shape(method, version, fields):
    assert is_upgrade(method, version, fields) == _rfc6455_model(method, version, fields)


@settings(max_examples=200, deadline=None)
@given(st.lists(_relevant_field, max_size=9), st.data())
def test_is_upgrade_with_a_valid_base_is_decided_by_the_extra_fields(extra, data):
    """Start from a valid handshake, add anything relevant anywhere: the model and the function agree."""
    fields = hs_fields()
    for f in extra:
        fields.insert(data.draw(st.integers(0, len(fields))), f)
    assert is_upgrade(b"GET", b"HTTP/1.1", fields) == _rfc6455_model(b"GET", b"HTTP/1.1", fields)


def test_client_handshake_keeps_what_autobahn_needs_to_answer():
    """Host, key, version, subprotocols and extensions (repeats joined); not Origin or other fields."""
    fields = [(b"Host", b"a.example"), (b"X-Case", b"KeEp"), (b"Origin", b"null"), (b"Sec-WebSocket-Key", KEY),
              (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
              (b"Sec-WebSocket-Extensions", b"x-foo"), (b"Sec-WebSocket-Protocol", b"chat")]
    assert client_handshake(b"/chat?x=1", fields) == (
        b"GET /chat?x=1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nhost: a.example\r\n"
        b"sec-websocket-key: " + KEY + b"\r\nsec-websocket-version: 13\r\nsec-websocket-protocol: chat\r\n"
        b"sec-websocket-extensions: permessage-deflate, x-foo\r\n\r\n"
    )


# -- is_upgrade agrees with autobahn's server side --------------------------------
#
# What is_upgrade accepts goes to autobahn's server protocol (the proxy's side
# facing the client) after the server already switched: a handshake that
# is_upgrade accepts and autobahn refuses costs the client its connection.


class _Sink:
    """What `_Wire` writes to: collects bytes, remembers a close."""

    def __init__(self):
        self.data = b""
        self.closed = False

    def write(self, data):
        self.data += data

    def close(self):
        self.closed = True

    abort = close


def _autobahn_opens(head: bytes) -> bool:
    """Whether the proxy's autobahn server factory completes this client handshake."""
    old = txaio.config.loop
    txaio.config.loop = MemoryReactorClock()
    try:
        proto = WebSocketServerProtocol()
        proto.factory = _Factories(Settings()).server
        sink = _Sink()
        proto.makeConnection(_Wire(sink, None))
        proto.dataReceived(head)
        opened = proto.state == WebSocketProtocol.STATE_OPEN
        assert opened == sink.data.startswith(b"HTTP/1.1 101 "), sink.data
        return opened
    finally:
        txaio.config.loop = old


_e2e_field = st.one_of(
    st.tuples(st.sampled_from([b"Cookie", b"X-A", b"Accept-Language", b"User-Agent"]),
              st.text(alphabet="abc=; 01", max_size=10).map(str.encode)),
    st.tuples(st.just(b"Origin"), st.sampled_from([b"https://a.example", b"http://a.example:8080", b"app://x"])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_e2e_field, max_size=5, unique_by=lambda f: f[0]),
       st.sampled_from([None, b"chat", b"chat, superchat"]),
       st.sampled_from([None, b"permessage-deflate", b"permessage-deflate; client_max_window_bits, x-foo"]),
       st.binary(min_size=16, max_size=16))
def test_what_is_upgrade_accepts_autobahn_opens(extra, protocols, extensions, key):
    fields = hs_fields(*extra, drop={b"origin", b"sec-websocket-protocol", b"sec-websocket-key"})
    fields.append((b"Sec-WebSocket-Key", base64.b64encode(key)))
    if protocols is not None:
        fields.append((b"Sec-WebSocket-Protocol", protocols))
    if extensions is not None:
        fields.append((b"Sec-WebSocket-Extensions", extensions))
    assert is_upgrade(b"GET", b"HTTP/1.1", fields)
    assert _autobahn_opens(client_handshake(b"/chat", fields))


@pytest.mark.parametrize("origin", [b"null", b"file://"])
def test_a_null_origin_is_accepted_by_both(origin):
    fields = hs_fields((b"Origin", origin), drop={b"origin"})
    assert is_upgrade(b"GET", b"HTTP/1.1", fields)
    assert _autobahn_opens(client_handshake(b"/chat", fields))


@pytest.mark.parametrize("fields", [
    pytest.param(hs_fields((b"Sec-WebSocket-Extensions", b"permessage-deflate"), (b"Sec-WebSocket-Extensions", b"x-foo")),
                 id="repeated-extensions"),
    pytest.param(hs_fields((b"Sec-WebSocket-Version", b"13")), id="repeated-version"),
    pytest.param(hs_fields((b"Origin", b"http://example.com")), id="repeated-origin"),
    pytest.param(hs_fields((b"Origin", b"foo"), drop={b"origin"}), id="origin-without-host"),
])
def test_is_upgrade_only_takes_what_autobahn_opens(fields):
    """Either relayed raw for the server to judge (is_upgrade False), or terminated for good."""
    assert not is_upgrade(b"GET", b"HTTP/1.1", fields) or _autobahn_opens(client_handshake(b"/chat", fields))


# ===========================================================================
# Sans-IO: upstream_options, response_fields
# ===========================================================================


def ws_request(fields, authority="a.example", scheme="http", target="/chat"):
    return Request("GET", target, Headers(list(fields)), "HTTP/1.1", scheme, authority)


def test_upstream_options_carries_what_autobahn_needs():
    req = ws_request(
        [
            (b"Host", b"a.example"), (b"Sec-WebSocket-Protocol", b"chat, superchat"), (b"Sec-WebSocket-Protocol", b"v2"),
            (b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"), (b"Cookie", b"a=1"),
        ],
        target="/chat?room=1",
    )
    options, deflate = upstream_options(req)
    assert (options.host, options.port, options.resource) == ("a.example", 80, "/chat?room=1")
    assert options.protocols == ["chat", "superchat", "v2"]
    assert deflate is True
    assert options.headers == {} and options.useragent is None and options.origin is None  # ours go byte for byte


@pytest.mark.parametrize(
    "authority, scheme, host, port",
    [
        ("a.example", "http", "a.example", 80),
        ("a.example", "https", "a.example", 443),
        ("a.example:8080", "http", "a.example", 8080),
        ("a.example:80", "https", "a.example", 80),
        ("192.0.2.10", "http", "192.0.2.10", 80),
        ("[2001:db8::1]", "http", "[2001:db8::1]", 80),
        ("[2001:db8::1]:8443", "https", "[2001:db8::1]", 8443),
        ("[::ffff:192.0.2.1]", "https", "[::ffff:192.0.2.1]", 443),
    ],
)
def test_upstream_options_host_and_port(authority, scheme, host, port):
    options, _ = upstream_options(ws_request([], authority=authority, scheme=scheme))
    assert (options.host, options.port) == (host, port)


@pytest.mark.parametrize("authority", ["", ":80", "a.example:0", "a.example:65536", "a.example:x",
                                       "2001:db8::1", "[2001:db8::1", "[2001:db8::1]x"])
def test_upstream_options_refuses_a_bad_authority(authority):
    with pytest.raises(ValueError):
        upstream_options(ws_request([], authority=authority))


@pytest.mark.parametrize(
    "offers, deflate",
    [
        ([b"permessage-deflate"], True),
        ([b"PerMessage-Deflate ; server_no_context_takeover"], True),
        ([b"x-foo, permessage-deflate; client_max_window_bits=10"], True),
        ([b"x-foo", b"permessage-deflate"], True),
        ([b"x-webkit-deflate-frame"], False),
        ([b"permessage-deflate-x"], False),
        ([b"x-foo; permessage-deflate"], False),
        ([], False),
    ],
)
def test_upstream_options_offers_deflate_only_when_the_client_did(offers, deflate):
    req = ws_request([(b"Sec-WebSocket-Extensions", o) for o in offers])
    assert upstream_options(req)[1] is deflate


_HANDSHAKE = {"upgrade", "connection", "keep-alive", "proxy-connection", "te", "trailer",
              "transfer-encoding", "content-length", "sec-websocket-key", "sec-websocket-version",
              "sec-websocket-extensions", "sec-websocket-protocol", "sec-websocket-accept"}
_ANY_NAME = st.sampled_from(sorted(_HANDSHAKE) + ["host", "cookie", "x-a", "x-b", "accept-language", "authorization"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_ANY_NAME.flatmap(lambda n: _cased(n.encode())),
                          st.text(alphabet="ab1;=, ", max_size=8).map(str.encode)), max_size=14))
def test_end_to_end_drops_handshake_and_hop_by_hop_fields_and_keeps_the_rest_as_sent(fields):
    listed = {t.strip().lower() for n, v in fields if n.lower() == b"connection" for t in v.split(b",")}
    expected = [(n, v) for n, v in fields if n.decode().lower() not in _HANDSHAKE and n.lower() not in listed]
    assert end_to_end(fields) == expected


def test_end_to_end_drops_fields_named_in_connection():
    fields = [(b"Host", b"a.example"), (b"Connection", b"Upgrade, X-Hop"), (b"X-Hop", b"1"), (b"X-E2e", b"2")]
    assert end_to_end(fields) == [(b"Host", b"a.example"), (b"X-E2e", b"2")]


GENERATED_REQUEST = (
    b"GET /chat HTTP/1.1\r\nUser-Agent: ua/autobahn\r\nHost: a.example:80\r\nUpgrade: WebSocket\r\n"
    b"Connection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


def test_upstream_request_is_autobahns_handshake_with_the_clients_fields_byte_for_byte():
    req = ws_request([(b"Host", b"a.example"), (b"User-Agent", b"ua/1"), (b"Cookie", b"a=1"), (b"X-Name", b"caf\xe9"),
                      (b"cookie", b"b=2"), (b"Connection", b"Upgrade, X-Hop"), (b"X-Hop", b"1"),
                      (b"Sec-WebSocket-Key", b"client-key"), (b"Sec-WebSocket-Protocol", b"chat")],
                     target="/ch\xe0t")
    assert upstream_request(GENERATED_REQUEST, req) == (
        b"GET /ch\xe0t HTTP/1.1\r\nHost: a.example\r\nUser-Agent: ua/1\r\nCookie: a=1\r\nX-Name: caf\xe9\r\n"
        b"cookie: b=2\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )


GENERATED_101 = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def test_client_response_is_autobahns_101_with_the_servers_end_to_end_fields():
    resp = Response(101, "Switching Protocols", Headers([
        (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade, X-Hop"), (b"X-Hop", b"1"),
        (b"Sec-WebSocket-Accept", b"the-servers-accept"), (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
        (b"Set-Cookie", b"a=1"), (b"server", b"srv/1"), (b"Set-Cookie", b"b=\xe9"), (b"Content-Length", b"0"),
    ]))
    assert client_response(GENERATED_101, resp) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Set-Cookie: a=1\r\nserver: srv/1\r\nSet-Cookie: b=\xe9\r\n\r\n"
    )


# ===========================================================================
# Glue: the layer on in-memory transports
# ===========================================================================


class _Side:
    """A websockets sans-I/O protocol on one memnet `Peer`."""

    def __init__(self, peer, proto):
        self.peer = peer
        self.proto = proto
        self.wire = b""  # the bytes the last pump read
        self._eof = False

    def flush(self):
        """Send what the protocol has to say to the proxy (b"" is its EOF)."""
        for data in self.proto.data_to_send():
            if self.peer.lost or self.peer.closed:
                continue  # the proxy closed: nothing more is read
            if data:
                self.peer.send(data)
            else:
                self.peer.eof()

    def pump(self):
        """Read what the proxy wrote (and its close, if it closed); the frames decoded."""
        self.wire = self.peer.take()
        if self.wire:
            self.proto.receive_data(self.wire)
        if (self.peer.closed or self.peer.lost) and not self._eof:
            self._eof = True
            self.proto.receive_eof()
        frames = self.proto.events_received()
        self.flush()
        return frames

    def messages(self):
        """The data messages decoded from what the proxy wrote, as (opcode, payload)."""
        return [(f.opcode, bytes(f.data)) for f in self.pump() if f.opcode in (Opcode.TEXT, Opcode.BINARY)]

    def text(self, s):
        self.proto.send_text(s.encode() if isinstance(s, str) else s)
        self.flush()

    def binary(self, b):
        self.proto.send_binary(b)
        self.flush()

    def close(self, code=1000, reason=""):
        self.proto.send_close(code, reason)
        self.flush()

    @property
    def close_rcvd(self):
        rcvd = self.proto.close_rcvd
        return None if rcvd is None else (rcvd.code, rcvd.reason)


class WSClient(_Side):
    def __init__(self, peer, path="/chat", subprotocols=None, deflate=False, max_size=None):
        extensions = [ClientPerMessageDeflateFactory()] if deflate else None
        proto = ClientProtocol(parse_uri("ws://a.example" + path), subprotocols=subprotocols,
                               extensions=extensions, max_size=max_size)
        super().__init__(peer, proto)

    def start(self, extra=(), trailing=b""):
        """Send the opening handshake (with ``extra`` fields, and ``trailing`` bytes in the same write)."""
        req = self.proto.connect()
        for name, value in extra:
            req.headers[name] = value
        self.request = req
        self.proto.send_request(req)
        data = b"".join(self.proto.data_to_send())
        self.peer.send(data + trailing)


class WSServer(_Side):
    def __init__(self, peer, subprotocols=None, deflate=False, max_size=None):
        extensions = [ServerPerMessageDeflateFactory()] if deflate else None
        proto = ServerProtocol(subprotocols=subprotocols, extensions=extensions, max_size=max_size)
        super().__init__(peer, proto)

    def accept(self, extra=(), trailing=b""):
        """Read the proxy's handshake, answer 101 (plus ``trailing`` bytes in the same write)."""
        (req,) = self.pump()
        self.request = req
        resp = self.proto.accept(req)
        assert resp.status_code == 101, resp
        for name, value in extra:
            resp.headers[name] = value
        self.proto.send_response(resp)
        data = b"".join(self.proto.data_to_send())
        self.peer.send(data + trailing)
        return req


def masked_frames(*messages):
    """Client frames (masked) for text messages, as an open websockets client would write them."""
    proto = ClientProtocol(parse_uri("ws://a.example/"), state=State.OPEN)
    for m in messages:
        proto.send_text(m.encode())
    return b"".join(proto.data_to_send())


def server_frames(*messages):
    """Server frames (unmasked) for text messages."""
    proto = ServerProtocol(state=State.OPEN)
    for m in messages:
        proto.send_text(m.encode())
    return b"".join(proto.data_to_send())


def open_ws(net, client_kw=None, server_kw=None, start_extra=(), accept_extra=()):
    """A client through the forward listener, the handshake done both ways; ``(cl, sv)``."""
    c = net.transparent()
    (dial,) = net.dials
    s = dial.accept()
    cl = WSClient(c, **(client_kw or {}))
    sv = WSServer(s, **(server_kw or {}))
    cl.start(start_extra)
    sv.accept(accept_extra)
    assert cl.pump() and cl.proto.state is State.OPEN, cl.proto.handshake_exc
    assert net.flow.protocol == "websocket"
    return cl, sv


def finish_close(net, cl, sv, rounds=4):
    """Let both sides read and answer until nothing moves."""
    for _ in range(rounds):
        cl.pump()
        sv.pump()
        net.settle()


def ended(net):
    """No live flow and no open connection (timers aside: see test_no_timer_outlives_the_flow)."""
    left = net.leftovers()
    assert left["flows"] == {} and left["open"] == [], left
    return True


def clean_close(net, cl, sv):
    """The client closes normally; afterwards everything is gone."""
    cl.close(1000, "done")
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN


# -- handshake -------------------------------------------------------------------


def test_subprotocol_chosen_by_the_server_reaches_the_client(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net, client_kw={"subprotocols": ["chat", "superchat"]},
                     server_kw={"subprotocols": ["superchat"]})
    assert sv.request.path == "/chat"
    assert sv.request.headers["Sec-WebSocket-Protocol"].replace(" ", "") == "chat,superchat"
    assert sv.proto.subprotocol == "superchat"
    assert cl.proto.subprotocol == "superchat"
    assert rec.seen[:2] == [("request", "GET", "/chat", b""), ("response", 101, b"", False)]
    clean_close(net, cl, sv)


def test_no_subprotocol_when_the_server_picks_none(make_net):
    net = make_net()
    cl, sv = open_ws(net, client_kw={"subprotocols": ["chat"]})
    assert sv.request.headers["Sec-WebSocket-Protocol"] == "chat"
    assert sv.proto.subprotocol is None and cl.proto.subprotocol is None
    clean_close(net, cl, sv)


def test_deflate_offered_by_the_client_refused_by_the_server(make_net):
    """The client still gets permessage-deflate from the proxy; the server speaks plain frames."""
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net, client_kw={"deflate": True}, server_kw={"deflate": False})
    assert sv.request.headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")
    assert sv.proto.extensions == []
    assert [e.name for e in cl.proto.extensions] == ["permessage-deflate"]
    sv.text("hello " * 20)
    assert cl.messages() == [(Opcode.TEXT, b"hello " * 20)]
    assert cl.wire[0] == 0xC1  # FIN, RSV1 (compressed), text
    assert len(cl.wire) < 60
    cl.text("from client " * 20)
    assert sv.messages() == [(Opcode.TEXT, b"from client " * 20)]
    assert sv.wire[0] == 0x81  # FIN, text, not compressed
    assert rec.seen[2:] == [("text", "client", b"hello " * 20), ("text", "server", b"from client " * 20)]
    clean_close(net, cl, sv)


def test_deflate_not_offered_by_the_client_is_not_offered_to_the_server(make_net):
    net = make_net()
    cl, sv = open_ws(net, client_kw={"deflate": False}, server_kw={"deflate": True})
    assert "Sec-WebSocket-Extensions" not in sv.request.headers
    assert sv.proto.extensions == [] and cl.proto.extensions == []
    sv.text("x" * 100)
    assert cl.messages() == [(Opcode.TEXT, b"x" * 100)]
    assert cl.wire[0] == 0x81
    clean_close(net, cl, sv)


def test_deflate_on_both_sides(make_net):
    net = make_net()
    cl, sv = open_ws(net, client_kw={"deflate": True}, server_kw={"deflate": True})
    assert [e.name for e in sv.proto.extensions] == ["permessage-deflate"]
    assert [e.name for e in cl.proto.extensions] == ["permessage-deflate"]
    for i in range(3):  # context takeover, if any, must hold across messages
        cl.text(f"message {i} " * 30)
        assert sv.messages() == [(Opcode.TEXT, f"message {i} ".encode() * 30)]
        assert sv.wire[0] == 0xC1
        sv.binary(bytes(range(256)) * 4)
        assert cl.messages() == [(Opcode.BINARY, bytes(range(256)) * 4)]
    clean_close(net, cl, sv)


def test_deflate_turned_off_in_settings(make_net):
    net = make_net(ws_compression=False)
    cl, sv = open_ws(net, client_kw={"deflate": True}, server_kw={"deflate": True})
    assert "Sec-WebSocket-Extensions" not in sv.request.headers
    assert cl.proto.extensions == [] and sv.proto.extensions == []
    clean_close(net, cl, sv)


def test_the_clients_end_to_end_fields_reach_the_server(make_net):
    net = make_net()
    cl, sv = open_ws(net, start_extra=[("Cookie", "a=1"), ("Authorization", "Bearer t"),
                                       ("Origin", "https://a.example"), ("User-Agent", "ua/1")])
    h = sv.request.headers
    assert (h["Cookie"], h["Authorization"], h["Origin"], h["User-Agent"]) == ("a=1", "Bearer t", "https://a.example",
                                                                            "ua/1")
    assert h["Sec-WebSocket-Key"] != cl.request.headers["Sec-WebSocket-Key"]  # the proxy's own key
    clean_close(net, cl, sv)


def test_taps_change_both_handshakes(make_net):
    """The request's path and fields and the 101's fields, as the taps leave them, are what the peers get."""

    class Edit(Tap):
        kinds = (Request, Response)

        def handle(self, unit, flow):
            if isinstance(unit, Request):
                unit.target = "/v2" + unit.target
                unit.headers["X-Seen"] = "proxy"
            else:
                unit.headers["X-Tap"] = "101 seen"
            return unit

    net = make_net([Edit()])
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c, path="/chat?room=1"), WSServer(s)
    cl.start()
    req = sv.accept()
    assert req.path == "/v2/chat?room=1"
    assert req.headers["X-Seen"] == "proxy"
    (resp,) = cl.pump()
    assert resp.status_code == 101 and resp.headers["X-Tap"] == "101 seen"
    clean_close(net, cl, sv)


def test_the_servers_101_fields_reach_the_client(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start()
    sv.accept([("Set-Cookie", "s=1"), ("Set-Cookie", "t=2"), ("X-Server", "yes")])
    (resp,) = cl.pump()
    assert resp.status_code == 101
    assert resp.headers.get_all("Set-Cookie") == ["s=1", "t=2"]
    assert resp.headers["X-Server"] == "yes"
    clean_close(net, cl, sv)


def test_the_server_sees_the_clients_host(make_net):
    net = make_net()
    cl, sv = open_ws(net)
    assert sv.request.headers["Host"] == "a.example"


def test_non_ascii_field_bytes_reach_the_server_unchanged(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    c.send(b"GET /chat HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\nX-Name: caf\xe9\r\n\r\n")
    head = s.take()
    assert b"\r\nX-Name: caf\xe9\r\n" in head, head


def test_a_101_with_a_latin1_field_value_still_opens(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start()
    sv.accept([("X-Name", "caf\xe9")])
    assert c.transport.value().startswith(b"HTTP/1.1 101 ") or c.transport.value().startswith(b"HTTP/1.1 502 ")


def test_a_non_ascii_field_a_tap_sets_on_the_101_reaches_the_client_unchanged(make_net):
    class Mark(Tap):
        kinds = (Response,)

        def handle(self, unit, flow):
            unit.headers["X-Name"] = b"caf\xe9"
            return unit

    net = make_net([Mark()])
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start()
    sv.accept()
    head = c.transport.value()
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nX-Name: caf\xe9\r\n" in head, head


def test_messages_in_the_same_writes_as_the_handshakes(make_net):
    """Frames right behind the client's request and right behind the server's 101 are not lost."""
    rec = Record()
    net = make_net([rec])
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start(trailing=masked_frames("early client"))
    sv.accept(trailing=server_frames("early server"))
    frames = cl.pump()
    assert [(f.opcode, bytes(f.data)) for f in frames[1:]] == [(Opcode.TEXT, b"early server")]
    assert sv.messages() == [(Opcode.TEXT, b"early client")]
    assert sorted(rec.seen[2:]) == [("text", "client", b"early server"), ("text", "server", b"early client")]
    clean_close(net, cl, sv)


def test_server_refusal_is_relayed_as_http(make_net):
    rec = Record()
    net = make_net([rec])
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start()
    (req,) = sv.pump()
    refusal = sv.proto.reject(403, "go away\n")
    sv.proto.send_response(refusal)
    sv.flush()
    (resp,) = cl.pump()
    assert resp.status_code == 403
    assert bytes(resp.body) == b"go away\n"
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert rec.seen == [("request", "GET", "/chat", b""), ("response", 403, b"go away\n", False)]
    assert c.closed and s.closed  # the server closed after refusing; so does the proxy
    assert net.leftovers() == CLEAN


def test_refused_upgrade_leaves_the_connection_http(make_net):
    """After a 403 with keep-alive, the client's next plain request is served."""
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    assert s.take().startswith(b"GET /chat HTTP/1.1\r\n")
    s.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
    assert c.take() == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope"
    assert not c.closed and not s.closed
    c.send(b"GET /plain HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert s.take() == b"GET /plain HTTP/1.1\r\nHost: a.example\r\n\r\n"  # same upstream, kept alive
    assert len(net.dials) == 1
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    c.eof()
    assert net.leftovers() == CLEAN


def test_bad_accept_in_the_101_gives_the_client_a_502(make_net):
    rec = Record()
    net = make_net([rec])
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    assert s.take().startswith(b"GET /chat HTTP/1.1\r\n")
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    (resp,) = cl.pump()
    assert resp.status_code == 502
    assert b"WebSocket handshake failed" in bytes(resp.body)
    assert cl.proto.state is State.CLOSED
    assert s.closed
    assert net.leftovers() == CLEAN
    assert rec.closed and "WebSocket handshake failed" in rec.closed[0]


def accept_for(head: bytes) -> bytes:
    """The Sec-WebSocket-Accept that answers the key in a handshake head (RFC 6455 §4.2.2)."""
    key = re.search(rb"\r\nSec-WebSocket-Key: *([^\r]+)\r\n", head, re.I).group(1).strip()
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())


def test_an_extension_nobody_offered_gives_the_client_a_502(make_net):
    """The client offered no compression, so neither did the proxy; a 101 that turns it on is refused."""
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    head = s.take()
    assert b"Sec-WebSocket-Extensions" not in head
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: " + accept_for(head) + b"\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n")
    (resp,) = cl.pump()
    assert resp.status_code == 502
    assert s.closed
    assert net.leftovers() == CLEAN


def test_a_hand_written_101_with_the_right_accept_opens(make_net):
    """The same server answer without the extension is good: this is what the 502 tests differ by."""
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    head = s.take()
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: " + accept_for(head) + b"\r\n\r\n")
    (resp,) = cl.pump()
    assert resp.status_code == 101 and cl.proto.state is State.OPEN
    s.send(b"\x81\x02hi")
    assert cl.messages() == [(Opcode.TEXT, b"hi")]
    cl.close(1000)
    up = s.take()
    assert up[:2] == b"\x88\x82" and len(up) == 8  # the close went up, masked, code only
    s.send(b"\x88\x02\x03\xe8")  # the server echoes 1000 and closes
    s.eof()
    net.settle()
    cl.pump()
    assert cl.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN


def test_websocket_inside_an_explicit_connect_tunnel(make_net):
    rec = Record()
    net = make_net([rec])
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\nHost: 192.0.2.30:5000\r\n\r\n")
    (dial,) = net.dials
    s = dial.accept()
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    cl, sv = WSClient(c), WSServer(s)
    cl.start()
    sv.accept()
    cl.pump()
    assert cl.proto.state is State.OPEN and net.flow.protocol == "websocket"
    assert len(net.dials) == 1  # the tunnel's connection carries it
    cl.text("through the tunnel")
    assert sv.messages() == [(Opcode.TEXT, b"through the tunnel")]
    assert ("text", "server", b"through the tunnel") in rec.seen
    clean_close(net, cl, sv)


def test_websocket_with_an_absolute_form_target_through_the_explicit_proxy(make_net):
    net = make_net()
    c = net.explicit()
    cl = WSClient(c)
    req = cl.proto.connect()
    req.path = "http://192.0.2.20:8080/chat?x=1"
    del req.headers["Host"]
    req.headers["Host"] = "192.0.2.20:8080"
    cl.proto.send_request(req)
    cl.flush()
    (dial,) = net.dials
    assert dial.dst == ("192.0.2.20", 8080)
    sv = WSServer(dial.accept())
    got = sv.accept()
    assert got.path == "/chat?x=1"
    cl.pump()
    assert cl.proto.state is State.OPEN
    sv.text("hello")
    assert cl.messages() == [(Opcode.TEXT, b"hello")]
    clean_close(net, cl, sv)


def test_server_choosing_a_subprotocol_the_client_did_not_offer(make_net):
    """A tap rewrote the offer; the server picks what the client never offered: 502 for it, 1011 for the server."""

    class Offer(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            unit.headers["Sec-WebSocket-Protocol"] = "other"
            return unit

    net = make_net([Offer()])
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c, subprotocols=["chat"]), WSServer(s, subprotocols=["other"])
    cl.start()
    sv.accept()
    assert sv.proto.subprotocol == "other"
    (resp,) = cl.pump()
    assert resp.status_code == 502
    sv.pump()
    assert sv.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_a_tap_can_refuse_the_upgrade_locally(make_net):
    class Refuse(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            return unit.respond(403, "no websockets")

    net = make_net([Refuse()])
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    (resp,) = cl.pump()
    assert (resp.status_code, bytes(resp.body)) == (403, b"no websockets")
    assert s.take() == b""  # the server never heard of it
    assert c.closed and s.closed
    assert net.leftovers() == CLEAN


def test_repeated_extension_fields_open_through_the_proxy(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c, deflate=True), WSServer(s, deflate=True)
    cl.start(extra=[("Sec-WebSocket-Extensions", "x-foo")])
    assert cl.request.headers.get_all("Sec-WebSocket-Extensions")[1] == "x-foo"
    sv.accept()
    cl.pump()
    assert cl.proto.state is State.OPEN, cl.proto.handshake_exc


def test_a_null_origin_opens_through_the_proxy(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl, sv = WSClient(c), WSServer(s)
    cl.start(extra=[("Origin", "null")])
    req = sv.accept()
    assert req.headers["Origin"] == "null"  # the server took it
    cl.pump()
    assert cl.proto.state is State.OPEN, cl.proto.handshake_exc


# -- messages ----------------------------------------------------------------------


def test_text_and_binary_both_ways_through_a_recording_tap(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    cl.text("héllo")
    cl.binary(b"\x00\xff\x01")
    assert sv.messages() == [(Opcode.TEXT, "héllo".encode()), (Opcode.BINARY, b"\x00\xff\x01")]
    sv.text("")
    sv.binary(b"")
    sv.binary(b"\x80" * 70000)  # a 64-bit length
    assert cl.messages() == [(Opcode.TEXT, b""), (Opcode.BINARY, b""), (Opcode.BINARY, b"\x80" * 70000)]
    assert rec.seen[2:] == [
        ("text", "server", "héllo".encode()),
        ("binary", "server", b"\x00\xff\x01"),
        ("text", "client", b""),
        ("binary", "client", b""),
        ("binary", "client", b"\x80" * 70000),
    ]
    clean_close(net, cl, sv)


def test_fragmented_message_is_one_unit(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    cl.proto.send_text(b"hel", fin=False)
    cl.flush()
    assert sv.pump() == [] and rec.seen[2:] == []
    cl.proto.send_continuation(b"lo ", fin=False)
    cl.proto.send_ping(b"p")  # a control frame between fragments
    cl.proto.send_continuation("wörld".encode(), fin=True)
    cl.flush()
    frames = sv.pump()
    assert [(f.opcode, bytes(f.data), f.fin) for f in frames] == [(Opcode.TEXT, "hello wörld".encode(), True)]
    assert rec.seen[2:] == [("text", "server", "hello wörld".encode())]
    assert [(f.opcode, bytes(f.data)) for f in cl.pump()] == [(Opcode.PONG, b"p")]
    sv.proto.send_binary(b"\x01", fin=False)
    sv.proto.send_continuation(b"\x02", fin=True)
    sv.flush()
    assert cl.messages() == [(Opcode.BINARY, b"\x01\x02")]
    clean_close(net, cl, sv)


def test_pings_are_answered_by_the_proxy_and_not_relayed(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    cl.proto.send_ping(b"c1")
    cl.flush()
    assert [(f.opcode, bytes(f.data)) for f in cl.pump()] == [(Opcode.PONG, b"c1")]
    assert sv.pump() == []
    sv.proto.send_ping(b"s1")
    sv.flush()
    assert [(f.opcode, bytes(f.data)) for f in sv.pump()] == [(Opcode.PONG, b"s1")]
    assert cl.pump() == []
    assert rec.seen[2:] == []
    clean_close(net, cl, sv)


def test_order_of_many_messages_is_kept(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    for i in range(300):
        cl.proto.send_text(f"c{i}".encode())
        sv.proto.send_binary(f"s{i}".encode())
    cl.flush()  # all 300 in one write
    sv.flush()
    assert sv.messages() == [(Opcode.TEXT, f"c{i}".encode()) for i in range(300)]
    assert cl.messages() == [(Opcode.BINARY, f"s{i}".encode()) for i in range(300)]
    clean_close(net, cl, sv)


def test_a_tap_rewrites_text(make_net):
    class Upper(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if not unit.binary:
                unit.text = unit.text.upper() + ("!" if unit.direction is TO_SERVER else "?")
            return unit

    net = make_net([Upper()])
    cl, sv = open_ws(net)
    cl.text("héllo")
    cl.binary(b"keep")
    assert sv.messages() == [(Opcode.TEXT, "HÉLLO!".encode()), (Opcode.BINARY, b"keep")]
    sv.text("back")
    assert cl.messages() == [(Opcode.TEXT, b"BACK?")]
    clean_close(net, cl, sv)


def test_a_tap_turns_text_into_binary(make_net):
    class ToBinary(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            return WebSocketMessage(b"\xff" + unit.data, True, direction=unit.direction)

    net = make_net([ToBinary()])
    cl, sv = open_ws(net)
    cl.text("x")
    assert sv.messages() == [(Opcode.BINARY, b"\xffx")]
    clean_close(net, cl, sv)


def test_a_tap_drops_a_message(make_net):
    class DropSecret(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            return None if b"secret" in unit.data else unit

    net = make_net([DropSecret()])
    cl, sv = open_ws(net)
    cl.text("one")
    cl.text("a secret")
    cl.text("two")
    assert sv.messages() == [(Opcode.TEXT, b"one"), (Opcode.TEXT, b"two")]
    sv.text("secret back")
    sv.text("three")
    assert cl.messages() == [(Opcode.TEXT, b"three")]
    clean_close(net, cl, sv)


def test_a_tap_injects_a_message_towards_the_client(make_net):
    class Greeter(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if unit.direction is TO_SERVER and unit.data == b"hello":
                flow.inject(WebSocketMessage(b"injected", direction=TO_CLIENT), after=self)
                flow.inject(WebSocketMessage(b"\x00bin", True, direction=TO_CLIENT), after=self)
            return unit

    rec = Record()
    net = make_net([Greeter(), rec])
    cl, sv = open_ws(net)
    cl.text("hello")
    assert cl.messages() == [(Opcode.TEXT, b"injected"), (Opcode.BINARY, b"\x00bin")]
    assert sv.messages() == [(Opcode.TEXT, b"hello")]
    assert rec.seen[2:] == [("text", "client", b"injected"), ("binary", "client", b"\x00bin"),
                            ("text", "server", b"hello")]
    clean_close(net, cl, sv)


def test_a_tap_answers_a_message_locally(make_net):
    """A unit returned the other way goes back to its sender; the original never arrives."""

    class Answer(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if unit.direction is TO_SERVER and unit.data == b"ping?":
                return WebSocketMessage(b"pong!", direction=TO_CLIENT)
            return unit

    net = make_net([Answer()])
    cl, sv = open_ws(net)
    cl.text("ping?")
    assert cl.messages() == [(Opcode.TEXT, b"pong!")]
    assert sv.messages() == []
    clean_close(net, cl, sv)


def test_an_async_tap_pauses_its_direction_and_resumes(make_net):
    waits = []

    class Slow(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if unit.data.startswith(b"wait"):
                d = Deferred()
                waits.append((d, unit))
                return d
            return unit

    net = make_net([Slow()])
    cl, sv = open_ws(net)
    c, s = cl.peer, sv.peer
    cl.text("wait 1")
    assert c.paused and not s.paused
    assert sv.messages() == []
    cl.text("after")  # what still arrives queues behind
    sv.text("other way")  # the other direction carries on
    assert cl.messages() == [(Opcode.TEXT, b"other way")]
    assert sv.messages() == []
    d, unit = waits.pop()
    unit.text = "waited"
    d.callback(unit)
    assert not c.paused
    assert sv.messages() == [(Opcode.TEXT, b"waited"), (Opcode.TEXT, b"after")]
    sv.text("wait 2")
    assert s.paused and not c.paused
    d, unit = waits.pop()
    d.callback(None)  # dropped after waiting
    assert not s.paused
    assert cl.messages() == []
    clean_close(net, cl, sv)


def test_a_coroutine_tap_works_like_a_deferred_one(make_net):
    gate = Deferred()

    class Async(Tap):
        kinds = (WebSocketMessage,)

        async def handle(self, unit, flow):
            await gate
            unit.data = unit.data[::-1]
            return unit

    net = make_net([Async()])
    cl, sv = open_ws(net)
    cl.text("abc")
    assert cl.peer.paused and sv.messages() == []
    gate.callback(None)
    assert sv.messages() == [(Opcode.TEXT, b"cba")]
    assert not cl.peer.paused
    clean_close(net, cl, sv)


def test_a_tap_that_raises_closes_both_sides_with_1011(make_net):
    class Boom(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if unit.data == b"boom":
                raise RuntimeError("tap broke")
            return unit

    rec = Record()
    net = make_net([rec, Boom()])
    cl, sv = open_ws(net)
    cl.text("fine")
    assert sv.messages() == [(Opcode.TEXT, b"fine")]
    cl.text("boom")
    assert sv.messages() == []
    assert sv.close_rcvd == (1011, "tinspect: a tap failed")
    assert [f.opcode for f in cl.pump()] == [Opcode.CLOSE]
    assert cl.close_rcvd == (1011, "tinspect: a tap failed")
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN
    assert rec.closed and rec.closed[0].startswith("tap error") and "tap broke" in rec.closed[0]


def test_a_deferred_that_fails_closes_both_sides_with_1011(make_net):
    waits = []

    class Later(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            d = Deferred()
            waits.append(d)
            return d

    net = make_net([Later()])
    cl, sv = open_ws(net)
    sv.text("x")
    assert sv.peer.paused
    waits[0].errback(RuntimeError("later broke"))
    cl.pump()
    sv.pump()
    assert cl.close_rcvd[0] == 1011 and sv.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


# -- max_message -------------------------------------------------------------------


def test_a_message_over_max_message_from_the_client(make_net):
    rec = Record()
    net = make_net([rec], max_message=1000)
    cl, sv = open_ws(net)
    cl.text("x" * 1000)  # at the limit: fine
    assert sv.messages() == [(Opcode.TEXT, b"x" * 1000)]
    cl.text("y" * 1001)
    cl.pump()
    assert cl.close_rcvd[0] == 1009
    sv.pump()
    assert sv.close_rcvd[0] == 1011
    assert sv.messages() == []
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN
    assert ("text", "server", b"y" * 1001) not in rec.seen
    assert rec.closed and "WebSocket client failed" in rec.closed[0]


def test_a_fragmented_message_over_max_message_from_the_server(make_net):
    net = make_net(max_message=1000)
    cl, sv = open_ws(net)
    sv.proto.send_binary(b"a" * 600, fin=False)
    sv.proto.send_continuation(b"b" * 600, fin=True)  # each frame fits, the message does not
    sv.flush()
    sv.pump()
    assert sv.close_rcvd[0] == 1009
    cl.pump()
    assert cl.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_max_message_counts_the_inflated_size(make_net):
    """A compressed message small on the wire but large once inflated is over the limit."""
    net = make_net(max_message=1000)
    cl, sv = open_ws(net, client_kw={"deflate": True})
    cl.proto.send_text(b"z" * 5000)
    (frame,) = cl.proto.data_to_send()
    assert len(frame) < 100  # under the limit on the wire
    cl.peer.send(frame)
    cl.pump()
    assert cl.close_rcvd[0] == 1009
    sv.pump()
    assert sv.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


# -- closing ---------------------------------------------------------------------------


def test_client_close_code_and_reason_reach_the_server(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    cl.close(4000, "bye")
    assert [f.opcode for f in cl.pump()] == [Opcode.CLOSE]
    assert cl.close_rcvd == (4000, "bye")  # autobahn echoes at once
    sv.pump()
    assert sv.close_rcvd == (4000, "bye")
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert rec.seen[2] == ("close", "server", 4000, "bye")
    assert net.leftovers() == CLEAN
    assert rec.closed == [None]


def test_server_close_code_and_reason_reach_the_client(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    sv.close(4001, "server bye")
    sv.pump()
    assert sv.close_rcvd == (4001, "server bye")
    cl.pump()
    assert cl.close_rcvd == (4001, "server bye")
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert rec.seen[2] == ("close", "client", 4001, "server bye")
    assert net.leftovers() == CLEAN
    assert rec.closed == [None]


@pytest.mark.parametrize("how", ["client-closes", "server-closes", "client-resets", "server-resets"])
def test_one_close_crosses_the_taps(make_net, how):
    """Whatever ends the connection, the taps see one close: the one that went to the other side."""
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    expected = {
        "client-closes": ("close", "server", 4000, "bye"),
        "server-closes": ("close", "client", 4000, "bye"),
        "client-resets": ("close", "server", 1001, "the client went away"),
        "server-resets": ("close", "client", 1001, "the server went away"),
    }[how]
    if how == "client-closes":
        cl.close(4000, "bye")
    elif how == "server-closes":
        sv.close(4000, "bye")
    elif how == "client-resets":
        cl.peer.reset()
    else:
        sv.peer.reset()
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN
    assert rec.seen[2:] == [expected]


def test_close_without_a_code(make_net):
    net = make_net()
    cl, sv = open_ws(net)
    cl.proto.send_frame(Frame(Opcode.CLOSE, b""))
    cl.flush()
    sv.pump()
    assert sv.wire[:2] == b"\x88\x80" and len(sv.wire) == 6  # a masked close with no payload
    assert sv.close_rcvd == (1005, "")
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_a_tap_changes_the_close_and_cannot_drop_it(make_net):
    class CloseTap(Tap):
        kinds = (WebSocketClose,)

        def handle(self, unit, flow):
            if unit.direction is TO_SERVER:
                unit.code, unit.reason = 4003, "changed"
                return unit
            return None  # dropping a close: it still goes as it came

    net = make_net([CloseTap()])
    cl, sv = open_ws(net)
    cl.close(4000, "bye")
    sv.pump()
    assert sv.close_rcvd == (4003, "changed")
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN

    net2 = make_net([CloseTap()])
    cl, sv = open_ws(net2)
    sv.close(4001, "server bye")
    cl.pump()
    assert cl.close_rcvd == (4001, "server bye")
    finish_close(net2, cl, sv)
    assert net2.leftovers() == CLEAN


def test_a_tap_injects_a_close_towards_the_client(make_net):
    class Kick(Tap):
        kinds = (WebSocketMessage,)

        def handle(self, unit, flow):
            if unit.data == b"kick me":
                flow.inject(WebSocketClose(4010, "kicked", direction=TO_CLIENT), after=self)
                return None
            return unit

    net = make_net([Kick()])
    cl, sv = open_ws(net)
    cl.text("kick me")
    cl.pump()
    assert cl.close_rcvd == (4010, "kicked")
    finish_close(net, cl, sv)
    # the client answered the proxy's close and is gone: the server hears it went away
    assert sv.close_rcvd == (1001, "the client went away")
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN


def test_long_close_reason_is_cut_to_123_bytes(make_net):
    class LongReason(Tap):
        kinds = (WebSocketClose,)

        def handle(self, unit, flow):
            unit.reason = "r" * 200
            return unit

    net = make_net([LongReason()])
    cl, sv = open_ws(net)
    cl.close(4000, "bye")
    sv.pump()
    assert sv.close_rcvd == (4000, "r" * 123)
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_client_reset_without_close_gives_the_server_1001(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    cl.peer.reset()
    sv.pump()
    assert sv.close_rcvd[0] == 1001
    finish_close(net, cl, sv)
    assert sv.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN
    assert rec.seen[2] == ("close", "server", 1001, "the client went away")


def test_client_fin_without_close_gives_the_server_1001(make_net):
    net = make_net()
    cl, sv = open_ws(net)
    cl.peer.eof()
    net.settle()
    sv.pump()
    assert sv.close_rcvd[0] == 1001
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_server_drop_without_close_gives_the_client_1001(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    sv.peer.reset()
    cl.pump()
    assert cl.close_rcvd[0] == 1001
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED
    assert net.leftovers() == CLEAN
    assert rec.seen[2] == ("close", "client", 1001, "the server went away")
    assert rec.closed == ["upstream reset"]


def test_server_fin_without_close_gives_the_client_1001(make_net):
    net = make_net()
    cl, sv = open_ws(net)
    sv.peer.eof()
    net.settle()
    cl.pump()
    assert cl.close_rcvd[0] == 1001
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_a_client_that_never_answers_the_close_is_dropped_by_the_timer(make_net):
    """The server closes; the client never echoes: autobahn's close timer on the memory clock ends it."""
    net = make_net()
    cl, sv = open_ws(net)
    sv.close(4001, "server bye")
    sv.pump()  # the proxy's echo: the server is done
    assert sv.close_rcvd == (4001, "server bye") and sv.peer.closed
    assert cl.peer.take() == b"\x88\x0c\x0f\xa1server bye"  # the client reads the close but says nothing
    net.settle()
    assert net.ctx.flows and not cl.peer.closed
    net.reactor.advance(0.9)
    assert not cl.peer.closed
    net.reactor.advance(0.2)  # autobahn's closeHandshakeTimeout (1 s)
    assert cl.peer.aborted
    assert net.leftovers() == CLEAN


def test_client_protocol_error_gives_1002_and_the_server_1011(make_net):
    """An unmasked frame from the client breaks RFC 6455."""
    net = make_net()
    cl, sv = open_ws(net)
    cl.peer.send(server_frames("not masked"))
    cl.pump()
    assert cl.close_rcvd[0] == 1002
    sv.pump()
    assert sv.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert net.leftovers() == CLEAN


def test_invalid_utf8_from_the_server_gives_1007_and_the_client_1011(make_net):
    net = make_net()
    cl, sv = open_ws(net)
    sv.peer.send(b"\x81\x02\xc3\x28")
    sv.pump()
    assert sv.close_rcvd[0] == 1007
    cl.pump()
    assert cl.close_rcvd[0] == 1011
    finish_close(net, cl, sv)
    assert cl.proto.state is State.CLOSED and sv.proto.state is State.CLOSED
    assert ended(net)


def test_flow_abort_resets_both(make_net):
    rec = Record()
    net = make_net([rec])
    cl, sv = open_ws(net)
    net.flow.abort("test says so")
    assert cl.peer.aborted and sv.peer.aborted
    assert cl.peer.take() == b"" and sv.peer.take() == b""
    assert ended(net)
    assert rec.closed == ["test says so"]


@pytest.mark.parametrize("how", ["abort", "server-bad-utf8", "server-drops-during-close"])
def test_no_timer_outlives_the_flow(make_net, how):
    net = make_net()
    cl, sv = open_ws(net)
    if how == "abort":
        net.flow.abort("test says so")
    elif how == "server-bad-utf8":
        sv.peer.send(b"\x81\x02\xc3\x28")
    else:
        cl.close(4000, "bye")
        assert sv.peer.take()[:1] == b"\x88"  # the close reached the server, which drops TCP instead of echoing
        sv.peer.reset()
    finish_close(net, cl, sv)
    assert ended(net)
    assert net.reactor.getDelayedCalls() == []


def test_client_gone_mid_handshake_before_the_101(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    assert s.take().startswith(b"GET /chat HTTP/1.1\r\n")
    c.reset()
    assert s.aborted  # the half-open upgrade is of no use to anyone
    assert net.leftovers() == CLEAN


def test_server_gone_mid_handshake_gives_a_502(make_net):
    net = make_net()
    c = net.transparent()
    s = net.dials[0].accept()
    cl = WSClient(c)
    cl.start()
    s.take()
    s.close()
    (resp,) = cl.pump()
    assert resp.status_code == 502
    assert b"closed the connection before the response was complete" in bytes(resp.body)
    assert c.closed
    assert net.leftovers() == CLEAN


def test_several_sequential_connections_leave_nothing(make_net):
    """Close frames, resets and drops on one proxy: every flow ends."""
    net = make_net()
    for how in ("client-close", "server-close", "client-reset", "server-reset"):
        c = net.transparent()
        s = net.dials[-1].accept()
        cl, sv = WSClient(c), WSServer(s)
        cl.start()
        sv.accept()
        cl.pump()
        cl.text(how)
        assert sv.messages() == [(Opcode.TEXT, how.encode())]
        if how == "client-close":
            cl.close(4000, "bye")
        elif how == "server-close":
            sv.close(4000, "bye")
        elif how == "client-reset":
            c.reset()
        else:
            s.reset()
        finish_close(net, cl, sv)
        assert net.leftovers() == CLEAN, how


# -- fuzzing: what the peers send is fed to autobahn through the layer ------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), frames_first=st.lists(st.text(max_size=20), max_size=3),
       from_client=st.booleans(), hang_up=st.booleans())
def test_fuzz_bytes_from_either_peer_never_break_the_proxy(data, frames_first, from_client, hang_up):
    """Good frames then arbitrary bytes from the client or the server of an open WebSocket: the
    layer relays or closes as autobahn decides, raises nothing, and leaves nothing behind."""
    old_loop = txaio.config.loop
    net = Net([])
    txaio.config.loop = net.reactor
    try:
        cl, sv = open_ws(net)
        if from_client:
            cl.peer.send(masked_frames(*frames_first) + data)
        else:
            sv.peer.send(server_frames(*frames_first) + data)
        finish_close(net, cl, sv)
        for side in (cl, sv):
            if not side.peer.lost:
                side.peer.close() if hang_up else side.peer.reset()
        net.settle()
        net.reactor.advance(60)  # close-handshake timers
        assert ended(net)
    finally:
        net.shutdown()
        txaio.config.loop = old_loop


def test_autobahn_log_lines_carry_no_terminal_colour_codes():
    """tinspect.layers.websocket turns off autobahn's click colouring (costly per frame, and escapes in log files)."""
    import importlib

    import autobahn.util

    importlib.import_module("tinspect.layers.websocket")  # what turns the colours off
    assert "\x1b" not in autobahn.util.hltype(test_autobahn_log_lines_carry_no_terminal_colour_codes)
    assert "\x1b" not in autobahn.util.hlval(42)
