"""Tests for tinspect.layers.http.http1.parse, the sans-IO HTTP/1.1 codec: bytes in, events out."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tinspect.layers.http.http1.parse import (
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    Http1Reader,
    ProtocolError,
    RequestHead,
    ResponseHead,
    header_value,
    header_values,
    keep_alive,
    persists,
)
from tinspect.layers.http.http1.write import frame_chunk, last_chunk, serialize_request_head, serialize_response_head

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def merged(events):
    """Merge consecutive BodyData events, so split points do not matter."""
    out = []
    for event in events:
        if isinstance(event, BodyData):
            assert event.data, "empty BodyData emitted"
            if out and isinstance(out[-1], BodyData):
                out[-1] = BodyData(out[-1].data + event.data)
                continue
        out.append(event)
    return out


def feed_pieces(reader, data, cuts):
    """Feed ``data`` cut at the offsets in ``cuts``; return all events."""
    events = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        events += reader.feed(data[last:cut])
        last = cut
    return events


def parse_request(data, **kw):
    """Parse bytes from a client in one feed."""
    return Http1Reader("request", **kw).feed(data)


def parse_response(data, method=b"GET", **kw):
    """Parse bytes from a server answering one request with ``method``."""
    reader = Http1Reader("response", **kw)
    reader.expect_response(method)
    return reader.feed(data)


def head(method=b"GET", target=b"/", headers=(), version=b"HTTP/1.1"):
    """Build an expected RequestHead."""
    return RequestHead(method, target, version, list(headers))


def rhead(status=200, reason=b"OK", headers=(), version=b"HTTP/1.1"):
    """Build an expected ResponseHead."""
    return ResponseHead(version, status, reason, list(headers))


def eom(trailers=()):
    """Build an expected EndOfMessage."""
    return EndOfMessage(list(trailers))


CHUNKED_REQUEST = (
    b"POST /upload HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"5;name=value\r\nhello\r\n"
    b"1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"0\r\n"
    b"Checksum: abc\r\n"
    b"X-Trailer: two\r\n"
    b"\r\n"
)
CHUNKED_REQUEST_EVENTS = [
    head(b"POST", b"/upload", [(b"Host", b"example.com"), (b"Transfer-Encoding", b"chunked")]),
    BodyData(b"hello" + b"abcdefghijklmnopqrstuvwxyz"),
    eom([(b"Checksum", b"abc"), (b"X-Trailer", b"two")]),
]


# ---------------------------------------------------------------------------
# request framing
# ---------------------------------------------------------------------------


def test_request_without_framing_headers_has_no_body():
    """A request with neither Content-Length nor Transfer-Encoding ends at its head."""
    events = parse_request(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert events == [head(target=b"/a?b=c", headers=[(b"Host", b"x"), (b"Accept", b"*/*")]), eom()]


def test_request_with_content_length_body():
    """Content-Length delimits the body; the next bytes start the next request."""
    events = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET")
    assert events == [head(b"POST", headers=[(b"Content-Length", b"5")]), BodyData(b"hello"), eom()]


def test_request_content_length_zero_has_no_body_data():
    """Content-Length: 0 gives the end of message without any BodyData."""
    events = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert events == [head(b"POST", headers=[(b"Content-Length", b"0")]), eom()]


def test_request_body_streams_as_it_arrives():
    """Body bytes come out as soon as they arrive, not when the body is complete."""
    reader = Http1Reader("request")
    assert reader.feed(b"PUT /f HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc") == [
        head(b"PUT", b"/f", [(b"Content-Length", b"10")]),
        BodyData(b"abc"),
    ]
    assert reader.feed(b"defg") == [BodyData(b"defg")]
    assert reader.feed(b"hij") == [BodyData(b"hij"), eom()]


def test_request_split_across_reads():
    """A head split over two reads yields one RequestHead."""
    reader = Http1Reader("request")
    assert reader.feed(b"GET / HTTP/1.1\r\nHo") == []
    assert reader.feed(b"st: a\r\n\r\n") == [head(headers=[(b"Host", b"a")]), eom()]


def test_request_head_fed_byte_by_byte():
    """Feeding a head one byte at a time yields the same events as one read."""
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n"
    reader = Http1Reader("request")
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    assert events == [head(headers=[(b"Host", b"a"), (b"X", b"y")]), eom()]


def test_request_chunked_body_with_extensions_and_trailers():
    """Chunked framing is removed, extensions ignored, trailers reported."""
    assert merged(parse_request(CHUNKED_REQUEST)) == CHUNKED_REQUEST_EVENTS


def test_chunked_request_split_at_every_offset():
    """A chunked request with trailers parses the same whatever the split point."""
    for cut in range(len(CHUNKED_REQUEST) + 1):
        reader = Http1Reader("request")
        events = reader.feed(CHUNKED_REQUEST[:cut]) + reader.feed(CHUNKED_REQUEST[cut:])
        assert merged(events) == CHUNKED_REQUEST_EVENTS, cut


def test_chunked_request_split_at_every_pair_of_offsets():
    """A chunked request parses the same when cut in three pieces anywhere."""
    n = len(CHUNKED_REQUEST)
    for a in range(0, n + 1, 3):
        for b in range(a, n + 1, 5):
            reader = Http1Reader("request")
            events = feed_pieces(reader, CHUNKED_REQUEST, [a, b])
            assert merged(events) == CHUNKED_REQUEST_EVENTS, (a, b)


def test_chunked_request_fed_byte_by_byte():
    """Chunked framing survives one-byte reads."""
    reader = Http1Reader("request")
    events = feed_pieces(reader, CHUNKED_REQUEST, range(len(CHUNKED_REQUEST)))
    assert merged(events) == CHUNKED_REQUEST_EVENTS


def test_chunk_size_is_case_insensitive_hex():
    """Chunk sizes are hex digits in either case, leading zeros allowed."""
    data = (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0000a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n"
    )
    events = merged(parse_request(data))
    assert events[1:] == [BodyData(b"0123456789" * 2), eom()]


def test_chunk_extension_may_follow_whitespace():
    """Whitespace is tolerated between the chunk size and a ';' extension."""
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \t;a=b;c\r\nabc\r\n0;x\r\n\r\n"
    assert merged(parse_request(data))[1:] == [BodyData(b"abc"), eom()]


def test_chunked_with_gzip_coding_first_is_accepted():
    """'gzip, chunked' is chunked framing; the gzip bytes are passed through."""
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, CHUNKED\r\n\r\n2\r\nzz\r\n0\r\n\r\n"
    assert merged(parse_request(data))[1:] == [BodyData(b"zz"), eom()]


def test_transfer_encoding_split_over_two_fields_is_one_list():
    """Repeated Transfer-Encoding fields form one list; the last coding counts."""
    data = (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\nz\r\n0\r\n\r\n"
    )
    assert merged(parse_request(data))[1:] == [BodyData(b"z"), eom()]


@pytest.mark.parametrize(
    "te",
    [b"gzip", b"chunked, gzip", b"identity", b"foo, chunked", b"chunked;q=1", b"", b","],
)
def test_request_unsupported_transfer_encoding_is_501(te):
    """A Transfer-Encoding whose final coding is not plain chunked is refused with 501."""
    with pytest.raises(ProtocolError) as info:
        parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: " + te + b"\r\n\r\n")
    assert info.value.status == 501


def test_request_chunked_applied_twice_is_400():
    """'chunked, chunked' is refused: chunked may be applied only once."""
    with pytest.raises(ProtocolError) as info:
        parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n")
    assert info.value.status == 400


def test_transfer_encoding_in_http10_request_is_400():
    """An HTTP/1.0 request with Transfer-Encoding has faulty framing."""
    with pytest.raises(ProtocolError) as info:
        parse_request(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert info.value.status == 400


def test_content_length_with_transfer_encoding_is_400():
    """CL together with TE is refused (classic request smuggling)."""
    with pytest.raises(ProtocolError) as info:
        parse_request(
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    assert info.value.status == 400


@pytest.mark.parametrize(
    "fields",
    [
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 6"],
        [b"Content-Length: 5", b"content-length: 5, 7"],
        [b"Content-Length: 5, 05"],
    ],
)
def test_conflicting_content_lengths_are_400(fields):
    """Differing Content-Length values, in one field or several, are refused."""
    data = b"POST / HTTP/1.1\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.status == 400


def test_identical_repeated_content_lengths_are_accepted():
    """Repeating the same Content-Length value is harmless and accepted."""
    data = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3 , 3\r\n\r\nabc"
    assert merged(parse_request(data))[1:] == [BodyData(b"abc"), eom()]


@pytest.mark.parametrize(
    "value", [b"+5", b"-1", b"1 2", b"", b"0x10", b"1.0", b"5,", b"five", b"\xd9\xa3"]
)
def test_malformed_content_length_is_400(value):
    """Content-Length must be plain ASCII digits."""
    with pytest.raises(ProtocolError) as info:
        parse_request(b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n")
    assert info.value.status == 400


def test_content_length_up_to_two_to_the_63_is_accepted():
    """The largest accepted Content-Length is 2**63."""
    reader = Http1Reader("request")
    events = reader.feed(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\nab" % 2**63)
    assert events[1:] == [BodyData(b"ab")]


@pytest.mark.parametrize("value", [b"%d" % (2**63 + 1), b"9" * 40])
def test_too_large_content_length_is_413(value):
    """A Content-Length beyond 2**63 is refused as too large."""
    with pytest.raises(ProtocolError) as info:
        parse_request(b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n")
    assert info.value.status == 413


def test_three_pipelined_requests_in_one_feed():
    """Several requests in one read all come out, bodies included."""
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
    )
    assert parse_request(data) == [
        head(target=b"/1", headers=[(b"Host", b"a")]),
        eom(),
        head(b"POST", b"/2", [(b"Content-Length", b"3")]),
        BodyData(b"abc"),
        eom(),
        head(b"POST", b"/3", [(b"Transfer-Encoding", b"chunked")]),
        BodyData(b"x"),
        eom(),
    ]


def test_leading_empty_lines_before_request_are_skipped():
    """Empty lines before a request line are ignored (RFC 9112 §2.2)."""
    reader = Http1Reader("request")
    assert reader.feed(b"\r\n\r") == []
    assert reader.feed(b"\nGET / HTTP/1.1\r\n\r\n\r\nGET /2 HTTP/1.0\r\n\r\n") == [
        head(),
        eom(),
        head(target=b"/2", version=b"HTTP/1.0"),
        eom(),
    ]


def test_header_names_keep_case_and_values_lose_surrounding_whitespace():
    """Names come out as sent; values are stripped of spaces and tabs only."""
    data = b"GET / HTTP/1.1\r\nX-MiXeD:\t  a  b \t\r\nEmpty:\r\nSpaces:   \r\nObs: caf\xe9\r\n\r\n"
    events = parse_request(data)
    assert events[0].headers == [
        (b"X-MiXeD", b"a  b"),
        (b"Empty", b""),
        (b"Spaces", b""),
        (b"Obs", b"caf\xe9"),
    ]


def test_uncommon_token_method_is_accepted():
    """Any token is a method, not just the registered ones."""
    assert parse_request(b"M-SEARCH * HTTP/1.1\r\n\r\n")[0] == head(b"M-SEARCH", b"*")


def test_empty_feed_yields_nothing():
    """Feeding no bytes is harmless and is not an EOF."""
    reader = Http1Reader("request")
    assert reader.feed(b"") == []
    assert reader.feed(b"GET / HTTP/1.1\r\n") == []
    assert reader.feed(b"") == []
    assert reader.feed(b"\r\n") == [head(), eom()]


def test_bytearray_and_memoryview_input_are_accepted():
    """feed() takes any bytes-like object."""
    reader = Http1Reader("request")
    assert reader.feed(bytearray(b"GET / HTTP/1.1\r\n")) == []
    assert reader.feed(memoryview(b"\r\n")) == [head(), eom()]


# ---------------------------------------------------------------------------
# response framing
# ---------------------------------------------------------------------------


def test_response_with_content_length_body():
    """Content-Length delimits a response body."""
    events = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert events == [rhead(headers=[(b"Content-Length", b"3")]), BodyData(b"abc"), eom()]


def test_response_chunked_body():
    """A chunked response is de-chunked, with trailers."""
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\ngrpc-status: 0\r\n\r\n"
    )
    assert merged(parse_response(data)) == [
        rhead(headers=[(b"Transfer-Encoding", b"chunked")]),
        BodyData(b"abc"),
        eom([(b"grpc-status", b"0")]),
    ]


def test_response_without_length_reads_until_close():
    """Without CL or TE a response body runs until the server closes."""
    reader = Http1Reader("response")
    reader.expect_response(b"GET")
    assert reader.feed(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nsome") == [
        rhead(headers=[(b"Server", b"old")], version=b"HTTP/1.0"),
        BodyData(b"some"),
    ]
    assert reader.feed(b"HTTP/1.1 200 OK\r\n\r\n") == [BodyData(b"HTTP/1.1 200 OK\r\n\r\n")]
    assert reader.feed_eof() == [eom(), ConnectionClosed()]


def test_response_with_non_chunked_transfer_encoding_reads_until_close():
    """A response whose final coding is not chunked is delimited by the close."""
    reader = Http1Reader("response")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz")
    assert events[1:] == [BodyData(b"zzz")]
    assert reader.feed_eof() == [eom(), ConnectionClosed()]


def test_response_to_head_has_no_body():
    """A response to HEAD ends at its head, whatever Content-Length says."""
    reader = Http1Reader("response")
    reader.expect_response(b"HEAD")
    reader.expect_response(b"GET")
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert events == [
        rhead(headers=[(b"Content-Length", b"1000")]),
        eom(),
        rhead(headers=[(b"Content-Length", b"2")]),
        BodyData(b"hi"),
        eom(),
    ]


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_responses_have_no_body(status):
    """204 and 304 responses end at their head even with framing headers."""
    data = (
        b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
        + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    reader = Http1Reader("response")
    reader.expect_response(b"GET")
    reader.expect_response(b"GET")
    events = reader.feed(data)
    assert events == [
        rhead(status, b"X", [(b"Content-Length", b"10")]),
        eom(),
        rhead(headers=[(b"Content-Length", b"0")]),
        eom(),
    ]


def test_interim_responses_precede_the_final_response():
    """1xx interim heads come out alone and the final response answers the same request."""
    reader = Http1Reader("response")
    reader.expect_response(b"HEAD")
    events = reader.feed(
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"
    )
    assert events == [
        rhead(100, b"Continue"),
        rhead(103, b"Early Hints", [(b"Link", b"</s.css>")]),
        rhead(headers=[(b"Content-Length", b"50")]),
        eom(),
    ]


def test_expect_100_continue_exchange():
    """Expect: 100-continue: head first, 100 back, then the body, then the final response."""
    client = Http1Reader("request")
    server = Http1Reader("response")
    assert client.feed(b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n") == [
        head(b"PUT", b"/f", [(b"Expect", b"100-continue"), (b"Content-Length", b"4")])
    ]
    server.expect_response(b"PUT")
    assert server.feed(b"HTTP/1.1 100 Continue\r\n\r\n") == [rhead(100, b"Continue")]
    assert client.feed(b"data") == [BodyData(b"data"), eom()]
    assert server.feed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n") == [
        rhead(201, b"Created", [(b"Content-Length", b"0")]),
        eom(),
    ]


def test_response_without_pending_request_is_taken_as_get():
    """With nothing expected, a response is parsed as the answer to a GET."""
    reader = Http1Reader("response")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert events[1:] == [BodyData(b"x"), eom()]


def test_pipelined_responses_follow_the_request_methods():
    """Responses pair with expected methods in order."""
    reader = Http1Reader("response")
    for method in (b"GET", b"HEAD", b"POST"):
        reader.expect_response(method)
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"
    )
    bodies = [e.data for e in events if isinstance(e, BodyData)]
    assert bodies == [b"a", b"b"]
    assert sum(isinstance(e, EndOfMessage) for e in events) == 3


def test_status_line_reason_variants():
    """The reason may be empty, missing, or contain spaces."""
    reader = Http1Reader("response")
    data = (
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.0 500 Internal  Server Error\r\nContent-Length: 0\r\n\r\n"
    )
    heads = [e for e in reader.feed(data) if isinstance(e, ResponseHead)]
    assert [(h.version, h.status, h.reason) for h in heads] == [
        (b"HTTP/1.1", 200, b""),
        (b"HTTP/1.1", 404, b""),
        (b"HTTP/1.0", 500, b"Internal  Server Error"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 200OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1",
        b"http/1.1 200 OK",
        b"HTTP/1.1 099 Low",
        b"ICY 200 OK",
    ],
)
def test_malformed_status_line_is_400(line):
    """Status lines must read 'HTTP/1.x SP 3DIGIT [SP reason]'."""
    with pytest.raises(ProtocolError) as info:
        parse_response(line + b"\r\n\r\n")
    assert info.value.status == 400


def test_unsupported_response_version_is_505():
    """A well-formed but unsupported version in a status line is 505."""
    with pytest.raises(ProtocolError) as info:
        parse_response(b"HTTP/2.0 200 OK\r\n\r\n")
    assert info.value.status == 505


def test_response_with_content_length_and_transfer_encoding_is_400():
    """CL plus TE in a response is refused too (response splitting)."""
    with pytest.raises(ProtocolError) as info:
        parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    assert info.value.status == 400


def test_response_with_conflicting_content_lengths_is_400():
    """Conflicting Content-Length values in a response are refused."""
    with pytest.raises(ProtocolError) as info:
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n")
    assert info.value.status == 400


# ---------------------------------------------------------------------------
# pausing: CONNECT and Upgrade
# ---------------------------------------------------------------------------


def test_connect_request_pauses_and_switch_returns_trailing_bytes():
    """After CONNECT the reader pauses; switch() hands over every later byte."""
    reader = Http1Reader("request")
    events = reader.feed(
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01"
    )
    assert events == [
        head(b"CONNECT", b"example.com:443", [(b"Host", b"example.com:443")]),
        eom(),
    ]
    assert reader.paused
    assert reader.feed(b"\x02\x00GET / HTTP/1.1\r\n\r\n") == []
    assert reader.switch() == b"\x16\x03\x01\x02\x00GET / HTTP/1.1\r\n\r\n"
    assert not reader.paused


def test_upgrade_request_pauses_after_end_of_message():
    """A request with Upgrade and Connection: upgrade pauses after its EndOfMessage."""
    reader = Http1Reader("request")
    data = (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x85frame"
    )
    events = reader.feed(data)
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert reader.paused
    assert reader.switch() == b"\x81\x85frame"


def test_upgrade_request_with_body_emits_body_before_pausing():
    """An upgrade request's body is delivered before the reader pauses."""
    reader = Http1Reader("request")
    data = (
        b"POST / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Content-Length: 3\r\n\r\nabcPRI * HTTP/2.0"
    )
    events = reader.feed(data)
    assert events[1:] == [BodyData(b"abc"), eom()]
    assert reader.paused
    assert reader.switch() == b"PRI * HTTP/2.0"


def test_upgrade_header_without_connection_upgrade_does_not_pause():
    """Upgrade alone (not named in Connection) is not an upgrade request."""
    reader = Http1Reader("request")
    events = reader.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /2 HTTP/1.1\r\n\r\n")
    assert not reader.paused
    assert [type(e) for e in events] == [RequestHead, EndOfMessage] * 2


def test_resume_after_refused_upgrade_parses_buffered_requests():
    """resume() goes on with HTTP, returning events for the bytes buffered meanwhile."""
    reader = Http1Reader("request")
    reader.feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET /next HT")
    assert reader.paused
    assert reader.feed(b"TP/1.1\r\n\r\nGET /third") == []
    assert reader.resume() == [head(target=b"/next"), eom()]
    assert not reader.paused
    assert reader.feed(b" HTTP/1.1\r\n\r\n") == [head(target=b"/third"), eom()]


def test_resume_with_nothing_buffered():
    """resume() with no buffered bytes returns no events and parses later feeds."""
    reader = Http1Reader("request")
    reader.feed(b"CONNECT a:1 HTTP/1.1\r\n\r\n")
    assert reader.resume() == []
    assert reader.feed(b"GET / HTTP/1.1\r\n\r\n") == [head(), eom()]


def test_eof_while_paused_is_reported_on_resume():
    """An EOF seen while paused comes out after the buffered bytes on resume()."""
    reader = Http1Reader("request")
    reader.feed(b"CONNECT a:1 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    assert reader.feed_eof() == []
    assert reader.resume() == [head(), eom(), ConnectionClosed()]


def test_feed_after_switch_raises_runtime_error():
    """A switched reader is done for good."""
    reader = Http1Reader("request")
    reader.feed(b"CONNECT a:1 HTTP/1.1\r\n\r\n")
    assert reader.switch() == b""
    with pytest.raises(RuntimeError):
        reader.feed(b"x")
    with pytest.raises(RuntimeError):
        reader.feed_eof()
    with pytest.raises(RuntimeError):
        reader.switch()


def test_switch_and_resume_need_a_paused_reader():
    """switch() and resume() are API misuse unless the reader is paused."""
    reader = Http1Reader("request")
    with pytest.raises(RuntimeError):
        reader.switch()
    with pytest.raises(RuntimeError):
        reader.resume()


def test_101_response_pauses_and_switch_hands_over_websocket_bytes():
    """A 101 response pauses the response reader; switch() returns the first frames."""
    reader = Http1Reader("response")
    reader.expect_response(b"GET")
    events = reader.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    assert events == [
        rhead(
            101, b"Switching Protocols", [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade")]
        ),
        eom(),
    ]
    assert reader.paused
    assert reader.switch() == b"\x81\x02hi"


def test_2xx_response_to_connect_pauses_and_ignores_framing_headers():
    """A 2xx to CONNECT opens a tunnel; its Content-Length is ignored."""
    reader = Http1Reader("response")
    reader.expect_response(b"CONNECT")
    events = reader.feed(
        b"HTTP/1.1 200 Connection established\r\nContent-Length: 5\r\n\r\n\x16\x03"
    )
    assert events[1:] == [eom()]
    assert reader.paused
    assert reader.switch() == b"\x16\x03"


def test_non_2xx_response_to_connect_has_a_body_and_does_not_pause():
    """A refused CONNECT is an ordinary response."""
    reader = Http1Reader("response")
    reader.expect_response(b"CONNECT")
    events = reader.feed(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nno")
    assert events[1:] == [BodyData(b"no"), eom()]
    assert not reader.paused


def test_expect_response_is_for_the_response_role_only():
    """A request reader has no responses to expect."""
    with pytest.raises(RuntimeError):
        Http1Reader("request").expect_response(b"GET")


def test_unknown_role_is_refused():
    """Only the two roles exist."""
    with pytest.raises(ValueError):
        Http1Reader("server")


# ---------------------------------------------------------------------------
# EOF
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["request", "response"])
def test_eof_between_messages_is_connection_closed(role):
    """EOF with nothing pending is a clean close."""
    assert Http1Reader(role).feed_eof() == [ConnectionClosed()]


def test_eof_after_complete_request_is_connection_closed():
    """EOF right after a complete message is a clean close."""
    reader = Http1Reader("request")
    reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert reader.feed_eof() == [ConnectionClosed()]
    assert reader.feed_eof() == []


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n",
    ],
)
def test_truncated_request_at_eof_is_400(data):
    """EOF in the middle of a request is an error, wherever it falls."""
    reader = Http1Reader("request")
    reader.feed(data)
    with pytest.raises(ProtocolError) as info:
        reader.feed_eof()
    assert info.value.status == 400
    assert str(info.value) == "connection closed mid-message"


def test_truncated_response_with_content_length_at_eof_is_400():
    """A Content-Length response cut short is an error, not a short body."""
    reader = Http1Reader("response")
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(ProtocolError) as info:
        reader.feed_eof()
    assert info.value.status == 400


def test_feed_after_eof_raises_runtime_error():
    """Bytes after EOF are API misuse."""
    reader = Http1Reader("request")
    reader.feed_eof()
    with pytest.raises(RuntimeError):
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")


def test_protocol_error_is_sticky():
    """After a ProtocolError every later feed raises a ProtocolError again."""
    reader = Http1Reader("request")
    with pytest.raises(ProtocolError):
        reader.feed(b"GET / HTTP/1.1\nHost: a\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert info.value.status == 400
    with pytest.raises(ProtocolError):
        reader.feed_eof()


# ---------------------------------------------------------------------------
# strictness: smuggling defences
# ---------------------------------------------------------------------------

BAD_REQUESTS = [
    # (id, bytes, status)
    ("bare LF in request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare LF ending a field", b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", 400),
    ("bare LF head", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("bare CR in request line", b"GET /\r HTTP/1.1\r\n\r\n", 400),
    ("bare CR in field value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    ("bare CR before CRLF", b"GET / HTTP/1.1\r\nX: a\r\r\n\r\n", 400),
    ("NUL in field value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    ("NUL in target", b"GET /\x00 HTTP/1.1\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n  continued\r\nY: b\r\n\r\n", 400),
    ("obs-fold with tab", b"GET / HTTP/1.1\r\nX: a\r\n\tcontinued\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("tab before colon", b"GET / HTTP/1.1\r\nContent-Length\t: 5\r\n\r\n", 400),
    ("field without colon", b"GET / HTTP/1.1\r\nHost\r\n\r\n", 400),
    ("empty field name", b"GET / HTTP/1.1\r\n: a\r\n\r\n", 400),
    ("non-token field name", b"GET / HTTP/1.1\r\nX(y): a\r\n\r\n", 400),
    ("non-ASCII field name", b"GET / HTTP/1.1\r\nX\xe9: a\r\n\r\n", 400),
    ("lower-case version", b"GET / http/1.1\r\n\r\n", 400),
    ("version without minor", b"GET / HTTP/1\r\n\r\n", 400),
    ("HTTP/0.9 style line", b"GET /\r\n\r\n", 400),
    ("double space", b"GET  / HTTP/1.1\r\n\r\n", 400),
    ("space in target", b"GET /a b HTTP/1.1\r\n\r\n", 400),
    ("tab separator", b"GET\t/ HTTP/1.1\r\n\r\n", 400),
    ("tab in target", b"GET /a\tb HTTP/1.1\r\n\r\n", 400),
    ("control in target", b"GET /a\x01 HTTP/1.1\r\n\r\n", 400),
    ("non-token method", b"GE(T / HTTP/1.1\r\n\r\n", 400),
    ("trailing space after version", b"GET / HTTP/1.1 \r\n\r\n", 400),
    ("version 2.0", b"GET / HTTP/2.0\r\n\r\n", 505),
    ("version 1.2", b"GET / HTTP/1.2\r\n\r\n", 505),
    ("version 0.9", b"GET / HTTP/0.9\r\n\r\n", 505),
]
BAD_REQUEST_IDS = [b[0] for b in BAD_REQUESTS]


@pytest.mark.parametrize("data,status", [b[1:] for b in BAD_REQUESTS], ids=BAD_REQUEST_IDS)
def test_malformed_request_heads_are_refused(data, status):
    """Heads that could be read two ways are refused with the right status."""
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.status == status


@pytest.mark.parametrize("data,status", [b[1:] for b in BAD_REQUESTS], ids=BAD_REQUEST_IDS)
def test_malformed_request_heads_are_refused_byte_by_byte(data, status):
    """The same heads fed one byte at a time fail the same way (at the latest at EOF)."""
    reader = Http1Reader("request")
    with pytest.raises(ProtocolError) as info:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
        reader.feed_eof()
    assert info.value.status == status


def test_obs_fold_in_response_is_400():
    """Line folding is refused in responses too."""
    with pytest.raises(ProtocolError) as info:
        parse_response(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n")
    assert info.value.status == 400


def test_bare_lf_head_fails_before_it_is_complete():
    """An LF-only head is refused as soon as a bare LF arrives, not at EOF."""
    reader = Http1Reader("request")
    assert reader.feed(b"GET / HTTP/1.1\r") == []
    with pytest.raises(ProtocolError) as info:
        reader.feed(b"\nHost: a\n")
    assert info.value.status == 400


def test_bare_lf_in_trailers_fails_before_they_are_complete():
    """A bare LF in an unfinished trailer section is refused at once."""
    reader = Http1Reader("request")
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y")
    with pytest.raises(ProtocolError):
        reader.feed(b"\n")


BAD_CHUNKS = [
    ("empty size", b"\r\nabc\r\n0\r\n\r\n"),
    ("0x prefix", b"0x3\r\nabc\r\n0\r\n\r\n"),
    ("leading space", b" 3\r\nabc\r\n0\r\n\r\n"),
    ("trailing space", b"3 \r\nabc\r\n0\r\n\r\n"),
    ("non-hex", b"g\r\nabc\r\n0\r\n\r\n"),
    ("sign", b"+3\r\nabc\r\n0\r\n\r\n"),
    ("negative", b"-3\r\nabc\r\n0\r\n\r\n"),
    ("underscore", b"1_0\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n"),
    ("17 hex digits", b"00000000000000003\r\nabc\r\n0\r\n\r\n"),
    ("bare LF after size", b"3\nabc\r\n0\r\n\r\n"),
    ("bare CR in extension", b"3;a\rb\r\nabc\r\n0\r\n\r\n"),
    ("data longer than size", b"3\r\nabcd\r\n0\r\n\r\n"),
    ("LF only after data", b"3\r\nabc\n0\r\n\r\n"),
    ("bare LF in trailers", b"3\r\nabc\r\n0\r\nX: y\n\r\n"),
    ("obs-fold in trailers", b"3\r\nabc\r\n0\r\nX: y\r\n z\r\n\r\n"),
    ("bad trailer name", b"3\r\nabc\r\n0\r\nX y: z\r\n\r\n"),
]


@pytest.mark.parametrize("body", [b[1] for b in BAD_CHUNKS], ids=[b[0] for b in BAD_CHUNKS])
def test_malformed_chunked_bodies_are_400(body):
    """Malformed chunk sizes, missing CRLFs and bad trailers are refused."""
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    with pytest.raises(ProtocolError) as info:
        parse_request(data)
    assert info.value.status == 400


def test_sixteen_hex_digit_chunk_size_is_accepted():
    """Up to 16 hex digits are a valid chunk size."""
    data = (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0000000000000003\r\nabc\r\n0\r\n\r\n"
    )
    assert merged(parse_request(data))[1:] == [BodyData(b"abc"), eom()]


# ---------------------------------------------------------------------------
# limits
# ---------------------------------------------------------------------------


def test_long_request_line_is_414():
    """A request line over max_start_line is refused with 414."""
    data = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        parse_request(data, max_start_line=100)
    assert info.value.status == 414


def test_request_line_at_the_limit_is_accepted():
    """A request line of exactly max_start_line bytes is fine."""
    line = b"GET /" + b"a" * 86 + b" HTTP/1.1"
    assert len(line) == 100
    assert parse_request(line + b"\r\n\r\n", max_start_line=100)[1] == eom()


def test_long_request_line_is_414_before_it_ends():
    """An endless request line is refused without waiting for its CRLF."""
    reader = Http1Reader("request", max_start_line=100)
    reader.feed(b"GET /")
    with pytest.raises(ProtocolError) as info:
        for _ in range(20):
            reader.feed(b"a" * 10)
    assert info.value.status == 414


def test_long_status_line_is_400():
    """A status line over max_start_line is refused with 400."""
    with pytest.raises(ProtocolError) as info:
        parse_response(b"HTTP/1.1 200 " + b"x" * 200 + b"\r\n\r\n", max_start_line=100)
    assert info.value.status == 400


def test_large_header_section_is_431():
    """A header section over max_header_bytes is refused with 431."""
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        parse_request(data, max_header_bytes=100)
    assert info.value.status == 431


def test_header_section_at_the_limit_is_accepted():
    """A header section of exactly max_header_bytes (CRLFs included) is fine."""
    field = b"X: " + b"a" * 95 + b"\r\n"
    assert len(field) == 100
    events = parse_request(b"GET / HTTP/1.1\r\n" + field + b"\r\n", max_header_bytes=100)
    assert events[1] == eom()
    with pytest.raises(ProtocolError):
        parse_request(b"GET / HTTP/1.1\r\n" + b"X" + field + b"\r\n", max_header_bytes=100)


def test_endless_header_section_is_431_before_it_ends():
    """Headers that never end are refused once they pass the limit."""
    reader = Http1Reader("request", max_header_bytes=1000)
    reader.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(ProtocolError) as info:
        for _ in range(200):
            reader.feed(b"X-Header: value\r\n")
    assert info.value.status == 431


def test_too_many_header_fields_is_431():
    """More than max_headers fields are refused with 431."""
    fields = b"".join(b"X%d: y\r\n" % i for i in range(11))
    with pytest.raises(ProtocolError) as info:
        parse_request(b"GET / HTTP/1.1\r\n" + fields + b"\r\n", max_headers=10)
    assert info.value.status == 431
    assert parse_request(b"GET / HTTP/1.1\r\n" + fields + b"\r\n", max_headers=11)[1] == eom()


def test_large_trailer_section_is_431():
    """Trailers obey the header limits."""
    data = (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: "
        + b"a" * 200
        + b"\r\n\r\n"
    )
    with pytest.raises(ProtocolError) as info:
        parse_request(data, max_header_bytes=100)
    assert info.value.status == 431


def test_endless_chunk_size_line_is_400():
    """A chunk-size line that never ends is refused."""
    reader = Http1Reader("request", max_start_line=100)
    reader.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1;")
    with pytest.raises(ProtocolError) as info:
        for _ in range(20):
            reader.feed(b"x" * 10)
    assert info.value.status == 400


def test_large_head_fed_byte_by_byte_is_not_quadratic():
    """A 60 KiB head fed one byte at a time parses in linear time."""
    fields = b"".join(b"X-Field-%05d: %s\r\n" % (i, b"v" * 40) for i in range(99))
    data = b"GET / HTTP/1.1\r\n" + fields + b"\r\n"
    assert len(data) > 5000
    reader = Http1Reader("request")
    start = time.perf_counter()
    events = feed_pieces(reader, data, range(len(data)))
    elapsed = time.perf_counter() - start
    assert len(events[0].headers) == 99
    # Linear: a few microseconds per byte.  Quadratic rescanning would take
    # far longer for 64 KiB (checked below with the largest allowed head).
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 65000 + b"\r\n\r\n"
    reader = Http1Reader("request")
    start = time.perf_counter()
    for i in range(len(big)):
        reader.feed(big[i : i + 1])
    elapsed += time.perf_counter() - start
    assert elapsed < 5.0


def test_many_tiny_chunks_in_one_feed_are_linear():
    """Ten times the one-byte chunks in one read costs about ten times as much, not a hundred (a parser
    that copied the rest of its buffer per chunk would be quadratic). A ratio of the same machine's
    times, best of three each, so a slow or busy machine does not fail it."""

    def best(chunks: int) -> float:
        data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
        times = []
        for _ in range(3):
            start = time.perf_counter()
            events = parse_request(data)
            times.append(time.perf_counter() - start)
            assert len(events) == chunks + 2
        return min(times)

    assert best(100_000) / best(10_000) < 30


# ---------------------------------------------------------------------------
# helpers: header lookup, keep-alive, hop-by-hop
# ---------------------------------------------------------------------------


def test_header_value_is_case_insensitive_and_returns_the_first():
    """header_value finds the first field of that name, any case."""
    headers = [(b"Host", b"a"), (b"X-Y", b"1"), (b"x-y", b"2")]
    assert header_value(headers, b"x-Y") == b"1"
    assert header_value(headers, b"missing") is None
    assert header_values(headers, b"X-y") == [b"1", b"2"]
    assert header_values(headers, b"nope") == []


@pytest.mark.parametrize(
    "version,connection,expected",
    [
        (b"HTTP/1.1", None, True),
        (b"HTTP/1.1", b"close", False),
        (b"HTTP/1.1", b"Upgrade, Close", False),
        (b"HTTP/1.1", b"keep-alive", True),
        (b"HTTP/1.0", None, False),
        (b"HTTP/1.0", b"Keep-Alive", True),
        (b"HTTP/1.0", b"keep-alive, close", False),
    ],
)
def test_keep_alive_follows_version_and_connection(version, connection, expected):
    """HTTP/1.1 persists unless 'close'; HTTP/1.0 only with 'keep-alive'."""
    headers = [(b"Host", b"a")] + ([(b"Connection", connection)] if connection else [])
    assert keep_alive(version, headers) is expected


@pytest.mark.parametrize("role", ["request", "response"])
@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
@pytest.mark.parametrize("connection", [None, b"close", b"Upgrade, Close", b"keep-alive", b"Keep-Alive, x"])
def test_persists_of_a_parsed_head_is_keep_alive_of_its_fields(role, version, connection):
    """The Connection values the reader collects give what keep_alive finds in the fields."""
    fields = b"Host: a\r\n" + (b"Connection: %s\r\nX: 1\r\nconnection: te\r\n" % connection if connection else b"")
    if role == "request":
        data = b"GET / %s\r\n%s\r\n" % (version, fields)
    else:
        data = b"%s 200 OK\r\nContent-Length: 0\r\n%s\r\n" % (version, fields)
    (head, _end) = Http1Reader(role).feed(data)
    assert persists(head) is keep_alive(version, head.headers)


# ---------------------------------------------------------------------------
# serialization
# ---------------------------------------------------------------------------


def test_serialize_request_head():
    """A request head serializes to the wire form, headers in order and case."""
    out = serialize_request_head(b"GET", b"/x", b"HTTP/1.1", [(b"Host", b"a"), (b"X-Y", b"b c")])
    assert out == b"GET /x HTTP/1.1\r\nHost: a\r\nX-Y: b c\r\n\r\n"


def test_serialize_response_head():
    """A response head serializes to the wire form; an empty reason is allowed."""
    assert serialize_response_head(b"HTTP/1.1", 200, b"OK", [(b"A", b"1")]) == (
        b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n"
    )
    assert serialize_response_head(b"HTTP/1.0", 404, b"", []) == b"HTTP/1.0 404 \r\n\r\n"


def test_frame_chunk_and_last_chunk():
    """Chunks carry a hex size; empty data frames to nothing; the last chunk carries trailers."""
    assert frame_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert frame_chunk(b"") == b""
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([(b"grpc-status", b"0")]) == b"0\r\ngrpc-status: 0\r\n\r\n"


def test_serialized_chunks_parse_back():
    """What the serializers write, the reader reads."""
    data = (
        serialize_request_head(b"POST", b"/", b"HTTP/1.1", [(b"Transfer-Encoding", b"chunked")])
        + frame_chunk(b"hello ")
        + frame_chunk(b"")
        + frame_chunk(b"world")
        + last_chunk([(b"T", b"1")])
    )
    assert merged(parse_request(data))[1:] == [BodyData(b"hello world"), eom([(b"T", b"1")])]


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X", b"a\r\nInjected: 1")],
        [(b"X", b"a\nb")],
        [(b"X", b"a\rb")],
        [(b"X", b"a\x00b")],
        [(b"X\r\nInjected", b"1")],
        [(b"X\n", b"1")],
        [(b"X\x00", b"1")],
        [(b"X: y", b"1")],
        [(b"X Y", b"1")],
        [(b"", b"1")],
        [(b"Ok", b"fine"), (b"X", b"\r\n\r\nGET /smuggled HTTP/1.1")],
    ],
)
def test_serializers_refuse_header_injection(headers):
    """Names and values that would add lines or fields are refused with ValueError."""
    with pytest.raises(ValueError):
        serialize_request_head(b"GET", b"/", b"HTTP/1.1", headers)
    with pytest.raises(ValueError):
        serialize_response_head(b"HTTP/1.1", 200, b"OK", headers)
    with pytest.raises(ValueError):
        last_chunk(headers)


@pytest.mark.parametrize(
    "method,target,version",
    [
        (b"GET", b"/a\r\nX: 1", b"HTTP/1.1"),
        (b"GET", b"/a b", b"HTTP/1.1"),
        (b"GET", b"", b"HTTP/1.1"),
        (b"G T", b"/", b"HTTP/1.1"),
        (b"GET\r\n", b"/", b"HTTP/1.1"),
        (b"GET", b"/", b"HTTP/1.1\r\nX: 1"),
    ],
)
def test_serialize_request_head_refuses_bad_request_lines(method, target, version):
    """Request lines that could smuggle are refused."""
    with pytest.raises(ValueError):
        serialize_request_head(method, target, version, [])


def test_serialize_response_head_refuses_bad_status_lines():
    """Reasons with line breaks, odd versions and impossible status codes are refused."""
    with pytest.raises(ValueError):
        serialize_response_head(b"HTTP/1.1", 200, b"OK\r\nSet-Cookie: a=b", [])
    with pytest.raises(ValueError):
        serialize_response_head(b"HTTP/1.1", 200, b"OK\x00", [])
    with pytest.raises(ValueError):
        serialize_response_head(b"HTTP/1.1 200 OK\r\n", 200, b"OK", [])
    with pytest.raises(ValueError):
        serialize_response_head(b"HTTP/1.1", 42, b"OK", [])


# ---------------------------------------------------------------------------
# property tests
# ---------------------------------------------------------------------------

_TCHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"upgrade"}

tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=12).map(str.encode)
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]), tokens
).filter(lambda m: m not in (b"CONNECT", b"HEAD"))
targets = st.text(
    alphabet=[chr(c) for c in range(0x21, 0x7F)] + ["é", "ü"], min_size=1, max_size=40
).map(lambda s: s.encode("latin-1"))
field_names = tokens.filter(lambda n: n.lower() not in _FRAMING)
field_values = st.text(
    alphabet=[chr(c) for c in range(0x21, 0x7F)] + [" ", "\t", "\xe9", "\xff"], max_size=30
).map(lambda s: s.encode("latin-1").strip(b" \t"))
field_lists = st.lists(st.tuples(field_names, field_values), max_size=6)


@st.composite
def bodies(draw):
    """A body and how to frame it: ('length'|'chunked', body, chunk cuts, trailers)."""
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    trailers = draw(field_lists) if framing == "chunked" else []
    return framing, body, cuts, trailers


def frame_body(framing, body, cuts, trailers):
    """Serialize a body with the module's serializers; return (framing header, bytes)."""
    if framing == "length":
        return (b"Content-Length", b"%d" % len(body)), body
    pieces = []
    last = 0
    for cut in cuts + [len(body)]:
        pieces.append(frame_chunk(body[last:cut]))
        last = cut
    return (b"Transfer-Encoding", b"chunked"), b"".join(pieces) + last_chunk(trailers)


def expected_body_events(body, trailers):
    """The merged events a body should give."""
    return ([BodyData(body)] if body else []) + [EndOfMessage(list(trailers))]


@st.composite
def request_streams(draw):
    """Several pipelined requests as (bytes, expected merged events)."""
    wire = b""
    expected = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(methods)
        target = draw(targets)
        headers = draw(field_lists)
        kind = draw(st.sampled_from(["none", "body"]))
        if kind == "none":
            version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
            wire += serialize_request_head(method, target, version, headers)
            expected += [RequestHead(method, target, version, headers), EndOfMessage([])]
            continue
        framing, body, cuts, trailers = draw(bodies())
        version = b"HTTP/1.1"
        if framing == "length":
            version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
        position = draw(st.integers(0, len(headers)))
        framing_field, framed = frame_body(framing, body, cuts, trailers)
        headers = headers[:position] + [framing_field] + headers[position:]
        wire += serialize_request_head(method, target, version, headers) + framed
        expected += [RequestHead(method, target, version, headers)]
        expected += expected_body_events(body, trailers)
    return wire, expected


@st.composite
def response_streams(draw):
    """Several pipelined responses with their request methods, as (methods, bytes, events, eof)."""
    wire = b""
    expected = []
    sent = []
    count = draw(st.integers(1, 3))
    for i in range(count):
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD"]))
        sent.append(method)
        for _ in range(draw(st.integers(0, 2))):
            status = draw(st.sampled_from([100, 102, 103]))
            headers = draw(field_lists)
            wire += serialize_response_head(b"HTTP/1.1", status, b"Info", headers)
            expected.append(ResponseHead(b"HTTP/1.1", status, b"Info", headers))
        status = draw(st.sampled_from([200, 201, 204, 206, 304, 404, 500, 599]))
        reason = draw(st.sampled_from([b"", b"OK", b"Some Reason"]))
        headers = draw(field_lists)
        version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
        if method == b"HEAD" or status in (204, 304):
            if draw(st.booleans()):
                headers = headers + [(b"Content-Length", b"%d" % draw(st.integers(0, 10**6)))]
            wire += serialize_response_head(version, status, reason, headers)
            expected += [ResponseHead(version, status, reason, headers), EndOfMessage([])]
            continue
        if i == count - 1 and draw(st.booleans()):
            body = draw(st.binary(max_size=200))
            wire += serialize_response_head(version, status, reason, headers) + body
            expected += [ResponseHead(version, status, reason, headers)]
            expected += expected_body_events(body, [])
            return sent, wire, expected, True
        framing, body, cuts, trailers = draw(bodies())
        if framing == "chunked":
            version = b"HTTP/1.1"
        framing_field, framed = frame_body(framing, body, cuts, trailers)
        headers = headers + [framing_field]
        wire += serialize_response_head(version, status, reason, headers) + framed
        expected += [ResponseHead(version, status, reason, headers)]
        expected += expected_body_events(body, trailers)
    return sent, wire, expected, False


def random_cuts(data):
    """Strategy for split points inside ``data``."""
    return st.lists(st.integers(0, len(data)), max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_requests_round_trip(data):
    """Serialized random requests parse back to the same events, however they are split."""
    wire, expected = data.draw(request_streams())
    cuts = data.draw(random_cuts(wire))
    reader = Http1Reader("request")
    events = feed_pieces(reader, wire, cuts)
    assert merged(events) == expected
    assert reader.feed_eof() == [ConnectionClosed()]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_responses_round_trip(data):
    """Serialized random responses parse back to the same events, however they are split."""
    sent, wire, expected, until_close = data.draw(response_streams())
    cuts = data.draw(random_cuts(wire))
    reader = Http1Reader("response")
    for method in sent:
        reader.expect_response(method)
    events = feed_pieces(reader, wire, cuts)
    events += reader.feed_eof()
    assert events.pop() == ConnectionClosed()
    assert merged(events) == expected


def _drive(reader, pieces, choices):
    """Feed pieces, handling pauses by a drawn choice; only ProtocolError may escape."""
    try:
        for piece in pieces:
            reader.feed(piece)
            if reader.paused:
                if next(choices):
                    reader.resume()
                else:
                    reader.switch()
                    return
        reader.feed_eof()
        if reader.paused:
            reader.resume()
    except ProtocolError as e:
        assert e.status in (400, 413, 414, 431, 501, 505)
        assert str(e)


def _pieces(blob, cuts):
    last = 0
    out = []
    for cut in sorted(set(cuts)) + [len(blob)]:
        out.append(blob[last:cut])
        last = cut
    return out


small_limits = st.fixed_dictionaries(
    {},
    optional={
        "max_start_line": st.integers(1, 64),
        "max_header_bytes": st.integers(0, 128),
        "max_headers": st.integers(0, 4),
    },
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["request", "response"]),
    st.binary(max_size=400),
    st.data(),
)
def test_property_arbitrary_bytes_raise_only_protocol_errors(role, blob, data):
    """Random bytes in random pieces never raise anything but ProtocolError."""
    reader = Http1Reader(role, **data.draw(small_limits))
    if role == "response":
        methods = st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT"]), max_size=3)
        for method in data.draw(methods):
            reader.expect_response(method)
    choices = iter(data.draw(st.lists(st.booleans(), min_size=20, max_size=20)) + [False] * 1000)
    _drive(reader, _pieces(blob, data.draw(random_cuts(blob))), choices)


_INTERESTING = [
    b"\r\n", b"\r", b"\n", b"\r\n\r\n", b" ", b"\t", b":", b";", b",", b"\x00", b"0", b"ff",
    b"chunked", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Connection: upgrade\r\nUpgrade: x\r\n", b"HTTP/1.1 101 S\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n\r\n", b"0\r\n\r\n", b"HTTP/1.1 100 C\r\n\r\n",
]


@st.composite
def mutated(draw, streams):
    """A valid message stream with a few random byte-level mutations."""
    value = draw(streams)
    wire = bytearray(value[1] if len(value) == 4 else value[0])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            insert = st.one_of(st.sampled_from(_INTERESTING), st.binary(min_size=1, max_size=3))
            wire[at:at] = draw(insert)
        elif op == "delete":
            del wire[at : at + draw(st.integers(1, 4))]
        else:
            wire[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
    return bytes(wire)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_mutated_messages_raise_only_protocol_errors(data):
    """Corrupted valid messages in random pieces never raise anything but ProtocolError."""
    role = data.draw(st.sampled_from(["request", "response"]))
    streams = request_streams() if role == "request" else response_streams()
    blob = data.draw(mutated(streams))
    reader = Http1Reader(role, **data.draw(small_limits))
    if role == "response":
        methods = st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"POST"]), max_size=4)
        for method in data.draw(methods):
            reader.expect_response(method)
    choices = iter(data.draw(st.lists(st.booleans(), min_size=20, max_size=20)) + [False] * 1000)
    _drive(reader, _pieces(blob, data.draw(random_cuts(blob))), choices)


@settings(max_examples=200, deadline=None)
@given(
    field_lists, st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), st.integers(100, 999), field_values
)
def test_property_serialized_response_heads_parse_back(headers, version, status, reason):
    """Any head the serializer accepts parses back to the same head."""
    assume(status != 101)
    wire = serialize_response_head(version, status, reason, headers)
    reader = Http1Reader("response")
    reader.expect_response(b"HEAD")
    events = reader.feed(wire)
    assert events[0] == ResponseHead(version, status, reason, headers)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20), st.binary(max_size=20))
def test_property_serializers_never_emit_extra_lines(name, value):
    """Whatever name and value, a serialized head either is refused or parses to that one field."""
    assume(name.lower() not in _FRAMING)
    try:
        wire = serialize_request_head(b"GET", b"/", b"HTTP/1.1", [(name, value)])
    except ValueError:
        return
    events = Http1Reader("request").feed(wire)
    expected = RequestHead(b"GET", b"/", b"HTTP/1.1", [(name, value.strip(b" \t"))])
    assert events == [expected, EndOfMessage([])]


def _outcome(role, methods, pieces, limits):
    """Parse ``pieces`` (always resuming after a pause); return (merged events, failed)."""
    reader = Http1Reader(role, **limits)
    for method in methods:
        reader.expect_response(method)
    events = []
    try:
        for piece in pieces:
            events += reader.feed(piece)
            while reader.paused:
                events += reader.resume()
        events += reader.feed_eof()
        while reader.paused:
            events += reader.resume()
    except ProtocolError:
        return None, True
    return merged(events), False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_split_points_do_not_change_the_outcome(data):
    """Valid or corrupted, a stream gives the same events (or fails) however it is split."""
    role = data.draw(st.sampled_from(["request", "response"]))
    streams = request_streams() if role == "request" else response_streams()
    valid = streams.map(lambda v: v[1] if len(v) == 4 else v[0])
    blob = data.draw(st.one_of(mutated(streams), valid))
    limits = data.draw(small_limits)
    methods = []
    if role == "response":
        methods = data.draw(st.lists(st.sampled_from([b"GET", b"HEAD", b"CONNECT"]), max_size=4))
    whole = _outcome(role, methods, [blob], limits)
    pieces = _outcome(role, methods, _pieces(blob, data.draw(random_cuts(blob))), limits)
    assert pieces == whole
