"""Tests for tinspect.layers.sniff.classify: which protocol a connection speaks, from its first bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.layers.sniff import H2, H2_PREFACE, HTTP1, RAW, TLS, classify

ANSWERS = (RAW, HTTP1, TLS, H2)

# The start of a real TLS 1.2/1.3 ClientHello record (type 22, version 3.1).
CLIENT_HELLO_START = bytes.fromhex("160301020001000200" + "0303") + bytes(32)


def assert_prefixes_agree(data, final, max_line=8192):
    """``data`` classifies as ``final``; each strict prefix as None or ``final``, never something else."""
    assert classify(data, max_line) == final
    for i in range(1, len(data)):
        got = classify(data[:i], max_line)
        assert got in (None, final), f"prefix {data[:i]!r} gave {got!r}, not {final!r}"


# ---------------------------------------------------------------------------
# TLS and HTTP/2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4])
def test_tls_record_start(version):
    """A handshake record header with version 3.0 to 3.4 is TLS."""
    assert classify(bytes([0x16, 0x03, version])) == TLS
    assert classify(bytes([0x16, 0x03, version]) + b"\x00" * 50) == TLS


def test_client_hello_prefixes():
    """A ClientHello split anywhere is TLS once three bytes are in, None before."""
    assert classify(b"\x16") is None
    assert classify(b"\x16\x03") is None
    assert_prefixes_agree(CLIENT_HELLO_START, TLS)


@pytest.mark.parametrize("data", [b"\x16\x03\x05", b"\x16\x02\x01", b"\x17\x03\x03", b"\x15\x03\x01"])
def test_not_quite_tls_is_raw(data):
    """Another record type or version is not a ClientHello: RAW."""
    assert classify(data) == RAW


def test_h2_preface():
    """The HTTP/2 connection preface, alone or with a SETTINGS frame after it, is H2."""
    assert classify(H2_PREFACE) == H2
    assert classify(H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00") == H2


def test_h2_preface_prefixes_wait():
    """Every strict prefix of the preface (even the complete 'PRI * HTTP/2.0' request line) is None."""
    for i in range(1, len(H2_PREFACE)):
        assert classify(H2_PREFACE[:i]) is None, H2_PREFACE[:i]


def test_pri_line_without_the_rest_of_the_preface_is_http1():
    """'PRI * HTTP/2.0' followed by something other than the preface is an ordinary request line."""
    assert classify(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n") == HTTP1


# ---------------------------------------------------------------------------
# HTTP/1 request lines
# ---------------------------------------------------------------------------

REQUEST_LINES = [
    b"GET / HTTP/1.1\r\n",
    b"GET /index.html?q=1&r=%20 HTTP/1.0\r\n",
    b"HEAD /x HTTP/1.1\r\n",
    b"POST /upload HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"PUT /a HTTP/1.1\r\n",
    b"PATCH /a HTTP/1.1\r\n",
    b"PRI /not-h2 HTTP/1.1\r\n",
    b"PROPFIND /dav/ HTTP/1.1\r\n",
    b"DELETE /a/b HTTP/1.1\r\n",
    b"OPTIONS * HTTP/1.1\r\n",
    b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
    b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n",
    b"M-SEARCH * HTTP/1.1\r\n",
    b"X_CUSTOM.method! /x HTTP/1.1\r\n",
    b"GET http://example.org/abs HTTP/1.1\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
    b"GET / HTTP/1.1\n",
]


@pytest.mark.parametrize("data", REQUEST_LINES, ids=lambda d: d.split(b" ")[0].decode())
def test_request_lines_are_http1_at_every_split(data):
    """A request line is HTTP1, and no strict prefix of it gives any other answer."""
    assert_prefixes_agree(data, HTTP1)


def test_request_line_prefixes_wait_for_the_line_end():
    """Up to and including the CR, a request line asks for more bytes."""
    line = b"GET /path HTTP/1.1\r\n"
    for i in range(1, len(line)):
        assert classify(line[:i]) is None, line[:i]


def test_method_of_32_characters_is_allowed_33_is_not():
    """Methods are tokens of at most 32 characters."""
    assert classify(b"A" * 32 + b" / HTTP/1.1\r\n") == HTTP1
    assert_prefixes_agree(b"A" * 33 + b" / HTTP/1.1\r\n", RAW)


def test_method_bytes_are_exactly_the_token_characters():
    """A method byte is HTTP only when it is an RFC 9110 tchar (the sniffer and the parser agree)."""
    tchar = set(b"!#$%&'*+-.^_`|~") | set(range(0x30, 0x3A)) | set(range(0x41, 0x5B)) | set(range(0x61, 0x7B))
    for byte in range(256):
        got = classify(b"G" + bytes([byte]) + b"T / HTTP/1.1\r\n")
        assert got == (HTTP1 if byte in tchar else RAW), bytes([byte])


# ---------------------------------------------------------------------------
# other protocols
# ---------------------------------------------------------------------------

NOT_HTTP = [
    b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n",
    b"EHLO mail.example.org\r\n",
    b"*1\r\n$4\r\nPING\r\n",
    b"get key\r\n",
    b"get / http/1.1\r\n",
    b"GET / HTTP/1.1 extra\r\n",
    b"GET  / HTTP/1.1\r\n",
    b"GET / HTTP/11\r\n",
    b"\r\nGET / HTTP/1.1\r\n",
    b"\x00\x01\x02\x03binary",
    b"\xff\xfe\xfd",
    b"\x05\x01\x00",  # SOCKS5 greeting
    b"{\"jsonrpc\": \"2.0\"}\n",
]


@pytest.mark.parametrize("data", NOT_HTTP)
def test_client_first_protocols_are_raw(data):
    """SSH, SMTP, Redis, lowercase text, malformed request lines and binary junk are RAW, and no prefix says otherwise."""
    assert_prefixes_agree(data, RAW)


def test_text_without_line_end_waits_until_max_line():
    """A line that could still become a request line waits up to max_line bytes, then is RAW."""
    assert classify(b"GET /" + b"a" * 95, max_line=100) is None
    assert classify(b"GET /" + b"a" * 96, max_line=100) == RAW
    assert classify(b"SSH-2.0-OpenSSH") is None
    assert classify(b"GET /" + b"a" * 9000) == RAW


def test_complete_request_line_within_max_line_is_http1():
    """A request line that fits in max_line is found whole."""
    line = b"GET /" + b"a" * 79 + b" HTTP/1.1\r\n"
    assert len(line) - 2 <= 100
    assert_prefixes_agree(line, HTTP1, max_line=100)


def test_empty_input_waits():
    """Nothing yet means nothing to say."""
    assert classify(b"") is None


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@given(data=st.binary(max_size=300), max_line=st.integers(min_value=1, max_value=200))
def test_classify_never_raises_and_waits_only_for_short_input(data, max_line):
    """Any bytes give one of the answers; None only while the input is within max_line (or a TLS/h2 prefix)."""
    got = classify(data, max_line)
    assert got is None or got in ANSWERS
    if got is None:
        assert len(data) <= max(max_line, len(H2_PREFACE) - 1)


TARGET_BYTES = [b for b in range(0x21, 0x100) if b != 0x7F]


@given(
    method=st.text(alphabet="!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=32),
    target=st.lists(st.sampled_from(TARGET_BYTES), min_size=1, max_size=40).map(bytes),
    minor=st.integers(min_value=0, max_value=9),
)
def test_any_token_method_and_target_are_http1_at_every_split(method, target, minor):
    """Any token method and visible target make an HTTP1 request line, and no prefix says otherwise."""
    assert_prefixes_agree(method.encode() + b" " + target + b" HTTP/1.%d\r\n" % minor, HTTP1)


SEEDS = REQUEST_LINES + NOT_HTTP + [H2_PREFACE, CLIENT_HELLO_START]
starts = st.binary(min_size=1, max_size=60) | st.sampled_from(SEEDS).flatmap(
    lambda seed: st.integers(min_value=1, max_value=len(seed)).map(lambda i: seed[:i])
)


@given(prefix=starts, rest=st.binary(max_size=60))
def test_a_decided_prefix_never_changes_its_mind(prefix, rest):
    """Once classify answers for bytes within max_line, more bytes never give a different answer."""
    first = classify(prefix)
    if first is not None:
        assert classify(prefix + rest) == first


# ---------------------------------------------------------------------------
# server_settings: an HTTP/2 server's preface, sent before the client's
# ---------------------------------------------------------------------------

from tinspect.layers.sniff import server_settings  # noqa: E402


def _settings_frame(payload=b"", flags=0, stream=0):
    return len(payload).to_bytes(3, "big") + bytes([4, flags]) + stream.to_bytes(4, "big") + payload


def test_server_settings_frame_is_recognised():
    """An empty SETTINGS frame, one with settings, and one followed by more frames are all True."""
    assert server_settings(_settings_frame()) is True
    assert server_settings(_settings_frame(b"\x00\x03\x00\x00\x00\x64" + b"\x00\x04\x00\x01\x00\x00")) is True
    assert server_settings(_settings_frame(b"\x00\x03\x00\x00\x00\x64") + b"\x00\x00\x04\x08") is True


def test_server_settings_from_a_real_h2_server():
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    conn = H2Connection(H2Configuration(client_side=False))
    conn.initiate_connection()
    data = conn.data_to_send()
    assert server_settings(data) is True
    for i in range(1, 9):
        assert server_settings(data[:i]) is None, data[:i]


@pytest.mark.parametrize(
    "data",
    [
        b"220 smtp.example ESMTP\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",
        _settings_frame(stream=1),  # SETTINGS on a stream
        _settings_frame(b"\x00\x03\x00\x00"),  # length not a multiple of 6
        b"\x00\x00\x00\x01\x04\x00\x00\x00\x01",  # HEADERS
    ],
    ids=["smtp", "ssh", "http1", "on-stream", "bad-length", "headers"],
)
def test_other_first_bytes_are_not_settings(data):
    assert server_settings(data) is False


def test_short_prefixes_wait_or_refuse():
    """Fewer than nine bytes: None while they could start a SETTINGS frame, False once they cannot."""
    assert server_settings(b"") is None
    assert server_settings(b"\x00\x00") is None
    assert server_settings(b"\x00\x00\x00\x04") is None
    assert server_settings(b"\x00\x00\x06\x04\x00\x00\x00") is None
    assert server_settings(b"\x00\x00\x00\x05") is False
    assert server_settings(b"\x00\x00\x05") is False


def test_settings_ack_is_not_a_server_preface():
    """A server's preface is a SETTINGS frame *without* ACK (RFC 9113 §3.4), which is also what the
    HTTP/2 layer's cleartext probe requires (`H2Upstream.server_data`); an ACK, which a server sends
    only in answer to a client's SETTINGS, is not one."""
    assert server_settings(_settings_frame(flags=1)) is False
    assert server_settings(b"\x00\x00\x00\x04\x01") is False


@given(st.binary(max_size=40))
def test_server_settings_answers_agree_with_their_prefixes(data):
    """A prefix never says True or False and then the other: once decided, longer data agrees."""
    answer = server_settings(data)
    assert answer in (True, False, None)
    for i in range(len(data)):
        earlier = server_settings(data[:i])
        assert earlier is None or earlier == answer


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 2**32 - 1)), max_size=6), st.binary(max_size=20))
def test_any_settings_frame_is_true(settings, rest):
    payload = b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)
    assert server_settings(_settings_frame(payload) + rest) is True
