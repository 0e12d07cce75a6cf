"""Tests for the sans-IO ClientHello reader (tinspect.layers.tls.clienthello).

Hellos come from real TLS stacks (Python's ``ssl`` over memory BIOs, and
pyOpenSSL) so the parser is checked against what clients actually send, plus
hand-built variants for fragmentation and malformed input.
"""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

import tinspect.layers.tls.clienthello as clienthello_module
from tinspect.layers.tls.clienthello import (
    ACCESS_DENIED,
    UNRECOGNIZED_NAME,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    NotTLS,
    alert_record,
    looks_like_tls,
    parse_handshake,
)

# --------------------------------------------------------------------------
# Helpers: real ClientHellos and hand-made variants
# --------------------------------------------------------------------------


def ssl_hello(
    server_hostname: str | None = "example.test",
    alpn: tuple[str, ...] | None = ("h2", "http/1.1"),
    maximum_version: ssl.TLSVersion | None = None,
) -> bytes:
    """Return the first flight of a Python ``ssl`` client (its ClientHello)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def pyopenssl_hello(server_name: bytes = b"pyopenssl.example.test") -> bytes:
    """Return the ClientHello of a pyOpenSSL client offering http/1.1 only."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_alpn_protos([b"http/1.1"])
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_tlsext_host_name(server_name)
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def records(handshake: bytes, sizes: list[int], version: bytes = b"\x03\x01") -> bytes:
    """Wrap handshake bytes in handshake records carrying ``sizes`` bytes each.

    The last record takes whatever is left after the listed sizes.
    """
    out = bytearray()
    p = 0
    for size in [*sizes, len(handshake)]:
        chunk = handshake[p : p + size]
        if not chunk:
            break
        out += b"\x16" + version + struct.pack("!H", len(chunk)) + chunk
        p += len(chunk)
    return bytes(out)


def handshake_of(hello: bytes) -> bytes:
    """Strip the record headers of a single-record hello."""
    assert hello[0] == 0x16 and len(hello) == 5 + int.from_bytes(hello[3:5], "big")
    return hello[5:]


def build_hello(
    extensions: list[tuple[int, bytes]] | None,
    *,
    legacy_version: int = 0x0303,
    session_id: bytes = b"",
    ciphers: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
) -> bytes:
    """Hand-build a single-record ClientHello with the given extensions.

    ``extensions=None`` leaves the extensions block out entirely.
    """
    body = bytearray(struct.pack("!H", legacy_version) + b"\x11" * 32)
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", len(ciphers)) + ciphers
    body += bytes([len(compression)]) + compression
    if extensions is not None:
        ext = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in extensions)
        body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    return records(hs, [])


def sni_ext(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    """A server_name extension listing ``names``."""
    entries = b"".join(bytes([name_type]) + struct.pack("!H", len(n)) + n for n in names)
    return 0, struct.pack("!H", len(entries)) + entries


def alpn_ext(*names: bytes) -> tuple[int, bytes]:
    """An ALPN extension offering ``names``."""
    entries = b"".join(bytes([len(n)]) + n for n in names)
    return 16, struct.pack("!H", len(entries)) + entries


def parse(data: bytes) -> ClientHello | None:
    """Feed ``data`` in one piece to a fresh reader."""
    return ClientHelloReader().feed(data)


TLS13 = ssl_hello()
TLS12 = ssl_hello(maximum_version=ssl.TLSVersion.TLSv1_2)


# --------------------------------------------------------------------------
# Real hellos
# --------------------------------------------------------------------------


def test_tls13_hello_from_ssl_module():
    """A TLS 1.3 hello from Python's ssl yields SNI, ALPN, versions and raw."""
    hello = parse(TLS13)
    assert hello == ClientHello(
        sni="example.test",
        alpn=(b"h2", b"http/1.1"),
        legacy_version=0x0303,
        supported_versions=hello.supported_versions,
        raw=TLS13,
    )
    assert 0x0304 in hello.supported_versions
    assert 0x0303 in hello.supported_versions


def test_tls12_only_hello_has_no_supported_versions():
    """A TLS 1.2-only client sends no supported_versions extension."""
    hello = parse(TLS12)
    assert hello.sni == "example.test"
    assert hello.alpn == (b"h2", b"http/1.1")
    assert hello.legacy_version == 0x0303
    assert hello.supported_versions == ()
    assert hello.raw == TLS12


def test_hello_from_pyopenssl():
    """pyOpenSSL's hello parses too, with its own SNI and ALPN."""
    data = pyopenssl_hello()
    hello = parse(data)
    assert hello.sni == "pyopenssl.example.test"
    assert hello.alpn == (b"http/1.1",)
    assert hello.raw == data


@pytest.mark.parametrize("server_hostname", [None, "192.0.2.7", "2001:db8::1"])
def test_no_sni_for_ip_literal_or_missing_hostname(server_hostname):
    """IP literals and server_hostname=None produce no server_name."""
    hello = parse(ssl_hello(server_hostname=server_hostname))
    assert hello.sni is None
    assert hello.alpn == (b"h2", b"http/1.1")


def test_no_alpn_gives_empty_tuple():
    """A client without ALPN yields alpn == ()."""
    assert parse(ssl_hello(alpn=None)).alpn == ()


def test_sni_is_lowercased():
    """SNI is reported lowercased, as host names compare case-insensitively."""
    assert parse(ssl_hello(server_hostname="WWW.Example.TEST")).sni == "www.example.test"


# --------------------------------------------------------------------------
# Fragmentation
# --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [TLS13, TLS12], ids=["tls13", "tls12"])
def test_split_at_every_offset(data):
    """Any split into two feeds gives the same hello as one feed."""
    expected = parse(data)
    for i in range(len(data) + 1):
        reader = ClientHelloReader()
        assert reader.feed(data[:i]) is None or i == len(data)
        assert reader.feed(data[i:]) == expected


def test_byte_at_a_time():
    """Feeding one byte at a time completes exactly at the last byte."""
    reader = ClientHelloReader()
    for i in range(len(TLS13) - 1):
        assert reader.feed(TLS13[i : i + 1]) is None
    assert reader.feed(TLS13[-1:]) == parse(TLS13)


def test_hello_split_into_two_records():
    """A ClientHello fragmented over two records is reassembled; raw keeps both."""
    data = records(handshake_of(TLS13), [100])
    hello = parse(data)
    assert hello.sni == "example.test"
    assert hello.alpn == (b"h2", b"http/1.1")
    assert hello.raw == data
    assert len(data) == len(TLS13) + 5


def test_hello_split_into_many_records_and_every_feed_offset():
    """Fragmentation at the record layer and the feed layer combine."""
    data = records(handshake_of(TLS12), [1, 3, 2, 50])
    expected = parse(TLS12)
    for i in range(len(data) + 1):
        reader = ClientHelloReader()
        reader.feed(data[:i])
        hello = reader.feed(data[i:])
        assert (hello.sni, hello.alpn, hello.raw) == (expected.sni, expected.alpn, data)


def test_truncated_input_returns_none_for_every_prefix():
    """Every proper prefix of a hello asks for more bytes and never raises."""
    for data in (TLS13, records(handshake_of(TLS13), [7, 200])):
        for i in range(len(data)):
            assert ClientHelloReader().feed(data[:i]) is None


def test_bytes_after_the_hello_are_leftover():
    """Bytes after the hello's last record are kept in leftover, not raw."""
    early = b"\x17\x03\x03\x00\x02hi"
    reader = ClientHelloReader()
    hello = reader.feed(TLS13 + early)
    assert hello.raw == TLS13
    assert reader.leftover == early
    assert reader.feed(b"more") is hello
    assert reader.leftover == early + b"more"


def test_leftover_after_fragmented_hello_fed_in_pieces():
    """Leftover bytes are split off correctly on the general (buffered) path."""
    hello_records = records(handshake_of(TLS13), [200])
    data = hello_records + b"\x17\x03\x03\x00\x01x"
    for i in range(len(data) + 1):
        reader = ClientHelloReader()
        reader.feed(data[:i])
        hello = reader.feed(data[i:])
        assert hello.raw == hello_records
        assert reader.leftover == data[len(hello_records) :]
        assert reader.received == data


@pytest.mark.parametrize(
    "pieces, error",
    [
        ([b"\x16", b"GET / HTTP/1.1\r\n"], NotTLS),
        ([b"\x16\x03", b"\x01\x00\x00"], ClientHelloError),
        ([TLS13[:100], TLS13[100:300]], None),
        ([build_hello([sni_ext(b"bad name")])], ClientHelloError),
    ],
)
def test_received_keeps_all_bytes_for_passthrough(pieces, error):
    """After an error (or mid-way) received holds every byte fed, for relaying."""
    reader = ClientHelloReader()
    fed = b""
    raised = None
    for piece in pieces:
        fed += piece
        try:
            reader.feed(piece)
        except (NotTLS, ClientHelloError) as e:
            raised = e
            break
    assert type(raised) is error if error else raised is None
    assert reader.received == fed


def test_accepts_memoryview_and_bytearray():
    """feed accepts any bytes-like object."""
    assert ClientHelloReader().feed(memoryview(TLS13)) == parse(TLS13)
    assert ClientHelloReader().feed(bytearray(TLS13)) == parse(TLS13)


# --------------------------------------------------------------------------
# Not TLS
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello: not supported
        b"\x16\x02\x00",
        b"\x16\x03\x05",
        b"\x17\x03\x03\x00\x05hello",
    ],
)
def test_non_tls_raises_not_tls(data):
    """Plain-text protocols and non-handshake records are NotTLS."""
    with pytest.raises(NotTLS):
        parse(data)


def test_not_tls_decided_on_first_byte():
    """One byte is enough to rule out TLS; the reader does not wait for more."""
    with pytest.raises(NotTLS):
        ClientHelloReader().feed(b"G")
    reader = ClientHelloReader()
    assert reader.feed(b"\x16") is None
    with pytest.raises(NotTLS):
        reader.feed(b"\x01")


def test_errors_are_sticky():
    """After a failure, every later feed raises the same error."""
    reader = ClientHelloReader()
    with pytest.raises(NotTLS) as first:
        reader.feed(b"GET /")
    with pytest.raises(NotTLS) as second:
        reader.feed(TLS13)
    assert second.value is first.value


@pytest.mark.parametrize(
    "prefix, verdict",
    [
        (b"", None),
        (b"\x16", None),
        (b"\x16\x03", None),
        (b"\x16\x03\x01", True),
        (b"\x16\x03\x04\x00", True),
        (b"\x16\x03\x00", True),
        (b"\x16\x03\x05", False),
        (b"\x16\x04", False),
        (b"G", False),
        (b"GET", False),
    ],
)
def test_looks_like_tls(prefix, verdict):
    """looks_like_tls answers True/False, or None while undecided."""
    assert looks_like_tls(prefix) is verdict


# --------------------------------------------------------------------------
# Malformed hellos
# --------------------------------------------------------------------------


def test_handshake_type_other_than_client_hello():
    """A first handshake message that is not ClientHello is an error."""
    hs = bytearray(handshake_of(TLS13))
    hs[0] = 2  # ServerHello
    with pytest.raises(ClientHelloError, match="type 2"):
        parse(records(bytes(hs), []))


def test_record_too_long():
    """A record length beyond 2**14 + 2048 is rejected from the header alone."""
    with pytest.raises(ClientHelloError, match="record length"):
        parse(b"\x16\x03\x01" + struct.pack("!H", 2**14 + 2049))


def test_empty_record():
    """Zero-length handshake records are forbidden."""
    with pytest.raises(ClientHelloError, match="empty"):
        parse(b"\x16\x03\x01\x00\x00")


def test_max_size_caps_the_handshake():
    """A hello declaring more than max_size bytes fails once its header is seen."""
    hs_header = b"\x01" + (70000).to_bytes(3, "big")
    with pytest.raises(ClientHelloError, match="exceeds"):
        parse(records(hs_header + b"\x00" * 100, []))
    with pytest.raises(ClientHelloError, match="exceed"):
        ClientHelloReader(max_size=len(TLS13) - 1).feed(TLS13)
    assert ClientHelloReader(max_size=len(TLS13)).feed(TLS13) is not None


def test_max_size_counts_record_headers():
    """Many tiny records cannot smuggle more than max_size bytes past the cap."""
    data = records(handshake_of(TLS13), [1] * 200)
    with pytest.raises(ClientHelloError, match="exceed"):
        ClientHelloReader(max_size=len(TLS13) + 100).feed(data)


def test_other_record_type_inside_hello():
    """A non-handshake record between fragments is an error."""
    hs = handshake_of(TLS13)
    data = records(hs[:50], []) + b"\x15\x03\x03\x00\x02\x02\x28" + records(hs[50:], [])
    with pytest.raises(ClientHelloError, match="content type 21"):
        parse(data)


def test_trailing_handshake_data():
    """Handshake bytes after the ClientHello in its record are an error."""
    with pytest.raises(ClientHelloError, match="trailing"):
        parse(records(handshake_of(TLS13) + b"\x14\x00\x00\x00", []))


def test_minimal_hello_without_extensions():
    """An old-style hello with no extensions block parses with empty fields."""
    hello = parse(build_hello(None))
    assert (hello.sni, hello.alpn, hello.supported_versions) == (None, (), ())


def test_hand_built_hello_fields():
    """SNI, ALPN and supported_versions are read from hand-built extensions."""
    hello = parse(
        build_hello(
            [
                sni_ext(b"Sub_1.Example.test."),
                alpn_ext(b"h2", b"http/1.1", b"x"),
                (43, b"\x04\x0a\x0a\x03\x04"),
                (0xFF01, b"\x00"),
            ],
            session_id=b"\x00" * 32,
        )
    )
    assert hello.sni == "sub_1.example.test"
    assert hello.alpn == (b"h2", b"http/1.1", b"x")
    assert hello.supported_versions == (0x0A0A, 0x0304)


@pytest.mark.parametrize(
    "extensions, match",
    [
        ([sni_ext(b"a b.test")], "not a valid host name"),
        ([sni_ext(b"caf\xc3\xa9.test")], "not a valid host name"),
        ([sni_ext(b"a..b")], "not a valid host name"),
        ([sni_ext(b".a")], "not a valid host name"),
        ([sni_ext(b"a" * 64 + b".test")], "not a valid host name"),
        ([sni_ext(b"::1")], "not a valid host name"),
        ([sni_ext(b"a.test", b"b.test")], "more than one host_name"),
        ([sni_ext(b"")], "server_name entry length"),
        ([(0, b"\x00\x00")], "server_name list length"),
        ([(0, b"\x00\x05\x00\x00\x01a")], "server_name list length"),
        ([(0, b"\x00\x04\x00\x00\x05a")], "server_name entry length"),
        ([(0, b"\x00")], "truncated server_name"),
        ([(16, b"\x00\x03\x00\x01a")], "ALPN protocol name length"),
        ([(16, b"\x00\x00")], "ALPN list length"),
        ([(16, b"\x00\x04\x02h2")], "ALPN list length"),
        ([(43, b"\x03\x03\x04\x03")], "supported_versions"),
        ([(43, b"\x02\x03")], "supported_versions"),
        ([sni_ext(b"a.test"), sni_ext(b"b.test")], "duplicate extension"),
    ],
)
def test_malformed_extensions(extensions, match):
    """Inconsistent extension contents are ClientHelloError, with a reason."""
    with pytest.raises(ClientHelloError, match=match):
        parse(build_hello(extensions))


def test_sni_with_other_name_type_is_skipped():
    """Unknown server_name types are ignored (RFC 6066 leaves room for them)."""
    assert parse(build_hello([sni_ext(b"\x00\xff", name_type=7)])).sni is None


def test_unusual_but_valid_sni():
    """A 253-byte name with 63-byte labels, and digits-only labels, are fine."""
    name = b".".join([b"a" * 63] * 3 + [b"b" * 61])
    assert len(name) == 253
    assert parse(build_hello([sni_ext(name)])).sni == name.decode()
    assert parse(build_hello([sni_ext(b"192.0.2.1")])).sni == "192.0.2.1"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"legacy_version": 0x0200}, "legacy_version"),
        ({"session_id": b"\x00" * 33}, "session id"),
        ({"ciphers": b""}, "cipher suites"),
        ({"ciphers": b"\x13\x01\x13"}, "cipher suites"),
        ({"compression": b""}, "compression"),
    ],
)
def test_malformed_fixed_fields(kwargs, match):
    """Bad lengths in the fixed part of the hello are rejected."""
    with pytest.raises(ClientHelloError, match=match):
        parse(build_hello([], **kwargs))


def test_extensions_length_mismatch():
    """An extensions block whose length disagrees with the body is rejected."""
    data = bytearray(build_hello([sni_ext(b"a.test")]))
    ext_len_at = 5 + 4 + 34 + 1 + 2 + 2 + 1 + 1
    data[ext_len_at + 1] += 1
    with pytest.raises(ClientHelloError, match="extensions length"):
        parse(bytes(data))


def test_extension_overrunning_body():
    """An extension claiming more bytes than remain is rejected."""
    data = bytearray(build_hello([(0xFF01, b"\x00\x00")]))
    data[-3] = 9  # the extension's length low byte
    with pytest.raises(ClientHelloError, match="overruns"):
        parse(bytes(data))


# --------------------------------------------------------------------------
# Property tests: only the two documented exceptions, whatever the input
# --------------------------------------------------------------------------


def feed_chunks(data: bytes, cuts: list[int]) -> ClientHello | None:
    """Feed ``data`` split at ``cuts``; return the last result."""
    reader = ClientHelloReader()
    result = None
    prev = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts) + [len(data)]:
        result = reader.feed(data[prev:cut])
        prev = cut
    return result


_fuzz = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=4))
def test_fuzz_random_bytes(data, cuts):
    """Random bytes, with or without a TLS-looking prefix, raise only our errors."""
    for candidate in (data, b"\x16\x03\x01" + data):
        try:
            feed_chunks(candidate, cuts)
        except (NotTLS, ClientHelloError):
            pass


@_fuzz
@given(
    st.sampled_from([TLS13, TLS12, records(handshake_of(TLS13), [40, 90])]),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0), max_size=3),
)
def test_fuzz_byte_mutations(hello, mutations, cuts):
    """Overwriting bytes of a real hello raises only our errors."""
    data = bytearray(hello)
    for at, value in mutations:
        data[at % len(data)] = value
    try:
        result = feed_chunks(bytes(data), cuts)
    except (NotTLS, ClientHelloError):
        return
    if result is not None:
        assert isinstance(result, ClientHello)
        assert result.raw == bytes(data)[: len(result.raw)]


@_fuzz
@given(
    st.sampled_from([TLS13, TLS12]),
    st.lists(st.integers(min_value=0), min_size=1, max_size=8),
)
def test_fuzz_bit_flips(hello, bits):
    """Flipping bits of a real hello raises only our errors."""
    data = bytearray(hello)
    for bit in bits:
        bit %= len(data) * 8
        data[bit // 8] ^= 1 << (bit % 8)
    try:
        parse(bytes(data))
    except (NotTLS, ClientHelloError):
        pass


@_fuzz
@given(
    st.sampled_from([TLS13, TLS12]),
    st.integers(min_value=0),
    st.integers(min_value=0, max_value=64),
    st.binary(max_size=64),
)
def test_fuzz_splices(hello, at, cut, insert):
    """Deleting and inserting bytes inside a real hello raises only our errors."""
    at %= len(hello)
    data = hello[:at] + insert + hello[at + cut :]
    try:
        parse(data)
    except (NotTLS, ClientHelloError):
        pass


@_fuzz
@given(st.data())
def test_fuzz_inner_lengths(data):
    """Random extension contents under valid framing raise only our errors."""
    ext_type = data.draw(st.sampled_from([0, 16, 43, 0xFF01]))
    payload = data.draw(st.binary(max_size=80))
    try:
        parse(build_hello([(ext_type, payload)]))
    except ClientHelloError:
        pass


def test_internal_bug_still_surfaces_as_client_hello_error(monkeypatch):
    """Should a parse step ever raise something else, callers see ClientHelloError."""

    def broken(body, raw):
        return body[len(body) + 1]  # IndexError

    monkeypatch.setattr(clienthello_module, "_parse_body", broken)
    reader = ClientHelloReader()
    with pytest.raises(ClientHelloError, match="IndexError"):
        reader.feed(TLS13)
    with pytest.raises(ClientHelloError):
        reader.feed(b"")


# --------------------------------------------------------------------------
# parse_handshake: a bare handshake message, as QUIC's CRYPTO frames carry it
# --------------------------------------------------------------------------


@pytest.mark.parametrize("hello", [TLS13, TLS12, pyopenssl_hello()], ids=["tls13", "tls12", "pyopenssl"])
def test_parse_handshake_reads_what_the_record_reader_reads(hello):
    """A bare ClientHello message parses to the same fields as its records do, with raw the message."""
    message = handshake_of(hello)
    bare = parse_handshake(message)
    framed = parse(hello)
    assert (bare.sni, bare.alpn, bare.legacy_version, bare.supported_versions) == (
        framed.sni, framed.alpn, framed.legacy_version, framed.supported_versions
    )
    assert bare.raw == message


@pytest.mark.parametrize(
    "message, match",
    [
        (b"\x01\x00\x00", "shorter than its header"),
        (b"\x02\x00\x00\x00", "type 2, not ClientHello"),
        (handshake_of(TLS13)[:-1], "length does not match"),
        (handshake_of(TLS13) + b"\x00", "length does not match"),
        (b"\x01\x00\x00\x02\x03\x03", "ClientHello too short"),
    ],
)
def test_parse_handshake_rejects_what_is_not_one_client_hello(message, match):
    """A message that is not exactly one well-formed ClientHello raises ClientHelloError."""
    with pytest.raises(ClientHelloError, match=match):
        parse_handshake(message)


@_fuzz
@given(st.binary(max_size=300))
def test_fuzz_parse_handshake(body):
    """Random bodies under a consistent handshake header raise only ClientHelloError."""
    try:
        parse_handshake(b"\x01" + len(body).to_bytes(3, "big") + body)
    except ClientHelloError:
        pass


def test_parse_handshake_turns_an_internal_bug_into_client_hello_error(monkeypatch):
    """Should the body parser raise something else, parse_handshake still raises ClientHelloError."""

    def broken(body, raw):
        return body[len(body) + 1]  # IndexError

    monkeypatch.setattr(clienthello_module, "_parse_body", broken)
    with pytest.raises(ClientHelloError, match="IndexError"):
        parse_handshake(handshake_of(TLS13))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("description, reason", [(ACCESS_DENIED, "TLSV1_ALERT_ACCESS_DENIED"),
                                                 (UNRECOGNIZED_NAME, "TLSV1_UNRECOGNIZED_NAME")])
def test_an_alert_record_refuses_a_client_hello(version, description, reason):
    """A client that sent its ClientHello reads alert_record() as the server's fatal alert, TLS 1.2 and 1.3."""
    ctx = ssl.create_default_context()
    ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname="blocked.example")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    assert ClientHelloReader().feed(outgoing.read()).sni == "blocked.example"
    incoming.write(alert_record(description))
    with pytest.raises(ssl.SSLError) as e:
        client.do_handshake()
    assert e.value.reason == reason
