"""Tests for tinspect.layers.http.http1.write: units in, bytes out, checked by parsing the bytes back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.headers import Headers
from tinspect.layers.http.http1.parse import BodyData, EndOfMessage, Http1Reader, RequestHead, ResponseHead
from tinspect.layers.http.http1.write import FramingError, Http1Writer
from tinspect.units import Request, Response

TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def read_back(data, role="request", method="GET", eof=False):
    """Parse one message the writer produced; return (head, body, trailers).

    Fails unless the bytes hold exactly one complete message (plus the EOF
    when ``eof``), so a wrong length or a missing last chunk shows up here.
    """
    reader = Http1Reader(role)
    if role == "response":
        reader.expect_response(method.encode())
    events = reader.feed(b"".join(data) if isinstance(data, list) else data)
    if eof:
        events += reader.feed_eof()
    assert isinstance(events[0], RequestHead if role == "request" else ResponseHead)
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert len(ends) == 1, events
    body = b"".join(e.data for e in events if isinstance(e, BodyData))
    return events[0], body, ends[0].trailers


def names_of(head):
    """The lower-case field names of a parsed head, in order."""
    return [n.lower() for n, _ in head.headers]


def respond(resp, method="GET", client_version="HTTP/1.1", keep_alive=True, writer=None):
    """The bytes of a response head (and whole body) from a fresh writer."""
    writer = writer or Http1Writer()
    return b"".join(writer.response(resp, method=method, client_version=client_version, keep_alive=keep_alive))


# ---------------------------------------------------------------------------
# whole bodies
# ---------------------------------------------------------------------------


def test_whole_request_body_replaces_chunked_framing_with_content_length():
    """A body a tap made whole goes out with a Content-Length, not the client's chunked framing."""
    req = Request(
        "POST",
        "/upload",
        Headers([(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")]),
        body=b"changed by a tap",
    )
    data = b"".join(Http1Writer().request(req))
    assert data == (
        b"POST /upload HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nContent-Length: 16\r\n\r\nchanged by a tap"
    )
    head, body, trailers = read_back(data)
    assert (head.method, head.target, body, trailers) == (b"POST", b"/upload", b"changed by a tap", [])


def test_whole_request_body_corrects_a_wrong_content_length():
    """A Content-Length left stale by a tap is replaced by the body's real length."""
    req = Request("PUT", "/x", Headers([(b"Content-Length", b"3"), (b"Host", b"a")]), body=b"a longer body")
    head, body, _ = read_back(Http1Writer().request(req))
    assert body == b"a longer body"
    assert head.headers == [(b"Host", b"a"), (b"Content-Length", b"13")]


def test_whole_response_body_replaces_chunked_framing_with_content_length():
    """A whole response body gets the Content-Length of the tap-changed body."""
    resp = Response(200, "OK", Headers([(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"text/plain")]))
    resp.body = b"Hello, Galaxy!"
    head, body, _ = read_back(respond(resp), "response")
    assert body == b"Hello, Galaxy!"
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Content-Length", b"14")]


def test_whole_response_body_corrects_a_wrong_content_length():
    """A response whose stale Content-Length says 100 goes out with the real 2."""
    resp = Response(200, "OK", Headers([(b"Content-Length", b"100")]), body=b"ok")
    data = respond(resp)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_empty_get_gets_no_content_length():
    """A GET without a body and without framing fields is written with no Content-Length."""
    req = Request("GET", "/", Headers([(b"Host", b"example.org")]))
    parts = Http1Writer().request(req)
    assert parts == [b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"]


def test_body_emptied_by_a_tap_says_content_length_zero():
    """A framed request whose body a tap emptied announces Content-Length: 0."""
    req = Request("POST", "/", Headers([(b"Content-Length", b"5")]), body=b"")
    parts = Http1Writer().request(req)
    assert parts == [b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"]


def test_empty_response_body_gets_content_length_zero():
    """A 200 with an empty whole body is framed with Content-Length: 0, so the client does not wait for a close."""
    assert respond(Response(200, "OK")) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_whole_body_with_trailers_goes_chunked_to_http11():
    """A whole body with trailers is sent chunked, trailers after the last chunk."""
    req = Request("POST", "/", Headers([(b"Content-Length", b"4")]), body=b"data", trailers=Headers([("X-Sum", "42")]))
    head, body, trailers = read_back(Http1Writer().request(req))
    assert names_of(head) == [b"transfer-encoding"]
    assert (body, trailers) == (b"data", [(b"X-Sum", b"42")])

    resp = Response(200, "OK", body=b"data", trailers=Headers([("X-Sum", "42")]))
    head, body, trailers = read_back(respond(resp), "response")
    assert names_of(head) == [b"transfer-encoding"]
    assert (body, trailers) == (b"data", [(b"X-Sum", b"42")])


def test_whole_body_with_trailers_to_http10_uses_content_length():
    """An HTTP/1.0 client cannot take chunked framing: the body gets a Content-Length, trailers are dropped."""
    resp = Response(200, "OK", body=b"data", trailers=Headers([("X-Sum", "42")]))
    data = respond(resp, client_version="HTTP/1.0", keep_alive=False)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndata"


# ---------------------------------------------------------------------------
# streamed bodies
# ---------------------------------------------------------------------------


def test_streamed_request_keeps_content_length():
    """A streamed request that still declares its length keeps it, and the chunks go out raw."""
    w = Http1Writer()
    req = Request("POST", "/", Headers([(b"Host", b"a"), (b"Content-Length", b"10")]), body=None)
    data = b"".join(w.request(req))
    assert w.streaming
    data += w.body(b"0123") + w.body(b"") + w.body(b"456789") + w.end()
    assert not w.streaming
    assert data == b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
    head, body, _ = read_back(data)
    assert body == b"0123456789"


def test_streamed_response_keeps_content_length():
    """A streamed response with a Content-Length keeps it; the body adds up."""
    w = Http1Writer()
    resp = Response(200, "OK", Headers([(b"Content-Length", b"6")]), body=None)
    data = respond(resp, writer=w) + w.body(b"abc") + w.body(b"def") + w.end()
    head, body, _ = read_back(data, "response")
    assert head.headers == [(b"Content-Length", b"6")]
    assert body == b"abcdef"
    assert not w.close_after


def test_streamed_body_past_content_length_raises():
    """Chunks that add up to more than the declared length raise FramingError."""
    w = Http1Writer()
    w.request(Request("POST", "/", Headers([(b"Content-Length", b"5")]), body=None))
    assert w.body(b"abc") == b"abc"
    with pytest.raises(FramingError):
        w.body(b"def")

    w = Http1Writer()
    respond(Response(200, "OK", Headers([(b"Content-Length", b"5")]), body=None), writer=w)
    with pytest.raises(FramingError):
        w.body(b"123456")


def test_streamed_body_short_of_content_length_raises_at_end():
    """A body that ends before its declared length raises FramingError at end."""
    w = Http1Writer()
    w.request(Request("POST", "/", Headers([(b"Content-Length", b"5")]), body=None))
    w.body(b"abc")
    with pytest.raises(FramingError, match="2 bytes short"):
        w.end()

    w = Http1Writer()
    respond(Response(200, "OK", Headers([(b"Content-Length", b"5")]), body=None), writer=w)
    with pytest.raises(FramingError):
        w.end()


def test_non_numeric_content_length_on_streamed_body_raises():
    """A streamed head whose Content-Length a tap set to garbage cannot be framed."""
    req = Request("POST", "/", Headers([(b"Content-Length", b"ten")]), body=None)
    with pytest.raises(FramingError):
        Http1Writer().request(req)


def test_streamed_request_without_length_goes_chunked_with_trailers():
    """A streamed request without Content-Length is chunked, trailers written at the end."""
    w = Http1Writer()
    req = Request("POST", "/", Headers([(b"Host", b"a")]), body=None)
    data = b"".join(w.request(req))
    data += w.body(b"hello ") + w.body(b"") + w.body(b"world")
    data += w.end([(b"X-Checksum", b"abc"), (b"X-Other", b"1")])
    assert data.startswith(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert data.endswith(b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n")
    _, body, trailers = read_back(data)
    assert body == b"hello world"
    assert trailers == [(b"X-Checksum", b"abc"), (b"X-Other", b"1")]


def test_streamed_response_without_length_goes_chunked_to_http11_client():
    """A streamed response without Content-Length reaches an HTTP/1.1 client chunked, with trailers."""
    w = Http1Writer()
    resp = Response(200, "OK", Headers([(b"Content-Type", b"text/plain")]), body=None)
    data = respond(resp, writer=w)
    data += w.body(b"part one, ") + w.body(b"part two") + w.end([(b"Server-Timing", b"db;dur=53")])
    head, body, trailers = read_back(data, "response")
    assert head.headers == [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")]
    assert body == b"part one, part two"
    assert trailers == [(b"Server-Timing", b"db;dur=53")]
    assert not w.close_after


def test_streamed_response_to_http10_client_is_close_delimited():
    """An HTTP/1.0 client gets a streamed body delimited by the close, with Connection: close."""
    w = Http1Writer()
    resp = Response(200, "OK", Headers([(b"Transfer-Encoding", b"chunked")]), body=None)
    data = respond(resp, client_version="HTTP/1.0", keep_alive=True, writer=w)
    assert data == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    assert w.close_after
    data += w.body(b"raw ") + w.body(b"bytes") + w.end([(b"X-Dropped", b"1")])
    assert data.endswith(b"\r\n\r\nraw bytes")
    head, body, trailers = read_back(data, "response", eof=True)
    assert body == b"raw bytes"
    assert trailers == []


# ---------------------------------------------------------------------------
# connection management
# ---------------------------------------------------------------------------


def test_keep_alive_false_sends_connection_close():
    """When the client connection closes after the response, the response says so."""
    w = Http1Writer()
    data = respond(Response(200, "OK", body=b"x"), keep_alive=False, writer=w)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    assert w.close_after


def test_http11_keep_alive_adds_no_connection_field():
    """An HTTP/1.1 client kept alive needs no Connection field; a server's Connection: close is dropped."""
    w = Http1Writer()
    data = respond(Response(200, "OK", Headers([(b"Connection", b"close")]), body=b"x"), writer=w)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
    assert not w.close_after


def test_http10_client_kept_alive_gets_keep_alive():
    """An HTTP/1.0 client kept alive is told Connection: keep-alive."""
    w = Http1Writer()
    data = respond(Response(200, "OK", body=b"x"), client_version="HTTP/1.0", keep_alive=True, writer=w)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx"
    assert not w.close_after


def test_close_after_is_reset_by_the_next_response():
    """close_after describes the current response, not an earlier one."""
    w = Http1Writer()
    respond(Response(200, "OK"), keep_alive=False, writer=w)
    assert w.close_after
    respond(Response(200, "OK"), keep_alive=True, writer=w)
    assert not w.close_after


# ---------------------------------------------------------------------------
# responses without a body
# ---------------------------------------------------------------------------


def test_head_response_keeps_content_length_and_writes_no_body():
    """A response to HEAD keeps the Content-Length the GET would have, and no body is written."""
    resp = Response(200, "OK", Headers([(b"Content-Length", b"1234"), (b"ETag", b'"v1"')]), body=b"not sent")
    data = respond(resp, method="HEAD")
    assert data == b'HTTP/1.1 200 OK\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n'
    head, body, _ = read_back(data, "response", method="HEAD")
    assert body == b""


def test_streamed_head_response_expects_no_body():
    """A streamed response to HEAD leaves the writer with nothing to stream."""
    w = Http1Writer()
    data = respond(Response(200, "OK", Headers([(b"Content-Length", b"99")]), body=None), method="HEAD", writer=w)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"
    assert not w.streaming
    assert w.end() == b""


def test_304_keeps_content_length_and_writes_no_body():
    """A 304 keeps its Content-Length and carries no body."""
    resp = Response(304, "Not Modified", Headers([(b"Content-Length", b"512")]), body=b"ignored")
    data = respond(resp)
    assert data == b"HTTP/1.1 304 Not Modified\r\nContent-Length: 512\r\n\r\n"


def test_204_has_no_framing_fields():
    """A 204 goes out without Content-Length or Transfer-Encoding, whatever the server sent."""
    resp = Response(
        204, "No Content", Headers([(b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")])
    )
    assert respond(resp) == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"


@pytest.mark.parametrize("status,reason", [(100, "Continue"), (103, "Early Hints")])
def test_interim_responses_have_no_framing_fields(status, reason):
    """1xx responses carry no framing or Connection fields, even with keep_alive False."""
    resp = Response(
        status, reason, Headers([(b"Link", b"</a.css>; rel=preload"), (b"Content-Length", b"5"), (b"Connection", b"close")])
    )
    w = Http1Writer()
    data = respond(resp, keep_alive=False, writer=w)
    assert data == b"HTTP/1.1 %d %s\r\nLink: </a.css>; rel=preload\r\n\r\n" % (status, reason.encode())
    assert not w.close_after


def test_101_keeps_upgrade_and_sends_connection_upgrade():
    """A 101 keeps Upgrade, drops framing fields and says Connection: upgrade."""
    resp = Response(
        101,
        "Switching Protocols",
        Headers(
            [
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                (b"Content-Length", b"0"),
            ]
        ),
    )
    data = respond(resp, keep_alive=False)
    assert data == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nConnection: upgrade\r\n\r\n"
    )
    reader = Http1Reader("response")
    reader.expect_response(b"GET")
    reader.feed(data + b"\x81\x00")
    assert reader.paused
    assert reader.switch() == b"\x81\x00"


@pytest.mark.parametrize("body", [b"", None])
def test_2xx_to_connect_has_no_framing_fields(body):
    """A 2xx to CONNECT starts a tunnel: it must carry neither Content-Length nor Transfer-Encoding."""
    resp = Response(200, "Connection established", body=body)
    assert respond(resp, method="CONNECT") == b"HTTP/1.1 200 Connection established\r\n\r\n"


def test_upgrade_request_keeps_upgrade_and_sends_connection_upgrade():
    """request(upgrade=True) keeps Upgrade and says Connection: upgrade; the reader then pauses."""
    req = Request(
        "GET",
        "/chat",
        Headers(
            [
                (b"Host", b"a"),
                (b"Upgrade", b"websocket"),
                (b"Connection", b"keep-alive, Upgrade"),
                (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ]
        ),
    )
    data = b"".join(Http1Writer().request(req, upgrade=True))
    assert data == (
        b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: upgrade\r\n\r\n"
    )
    reader = Http1Reader("request")
    reader.feed(data)
    assert reader.paused


def test_request_without_upgrade_flag_drops_upgrade():
    """Without upgrade=True the Upgrade field is hop-by-hop and removed."""
    req = Request("GET", "/", Headers([(b"Host", b"a"), (b"Upgrade", b"h2c"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")]))
    assert Http1Writer().request(req) == [b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]


# ---------------------------------------------------------------------------
# hop-by-hop fields, start line, order
# ---------------------------------------------------------------------------

HOP_FIELDS = [
    (b"Connection", b"keep-alive"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"TE", b"trailers"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Upgrade", b"websocket"),
]


def test_request_drops_hop_by_hop_fields_and_keeps_proxy_authorization_and_trailer():
    """Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade go; Proxy-Authorization and Trailer stay."""
    fields = [(b"Host", b"a")] + HOP_FIELDS + [(b"Proxy-Authorization", b"Basic eDp5"), (b"Trailer", b"X-Sum")]
    req = Request("POST", "/", Headers(fields), body=b"abc")
    head, body, _ = read_back(Http1Writer().request(req))
    assert head.headers == [
        (b"Host", b"a"),
        (b"Proxy-Authorization", b"Basic eDp5"),
        (b"Trailer", b"X-Sum"),
        (b"Content-Length", b"3"),
    ]
    assert body == b"abc"


def test_response_drops_hop_by_hop_fields():
    """A response loses the same hop-by-hop fields (Upgrade too, outside a 101)."""
    fields = [(b"Server", b"s")] + [(n.upper(), v) for n, v in HOP_FIELDS] + [(b"Trailer", b"X-Sum")]
    resp = Response(200, "OK", Headers(fields), body=b"abc")
    head, _, _ = read_back(respond(resp), "response")
    assert head.headers == [(b"Server", b"s"), (b"Trailer", b"X-Sum"), (b"Content-Length", b"3")]


def test_fields_named_in_connection_are_removed():
    """Fields listed in Connection are hop-by-hop too, in any case and wherever they stand."""
    req = Request(
        "GET",
        "/",
        Headers(
            [
                (b"x-secret", b"before"),
                (b"Host", b"a"),
                (b"Connection", b"close, X-Secret"),
                (b"X-Secret", b"after"),
                (b"Connection", b"x-other"),
                (b"X-Other", b"1"),
                (b"X-Kept", b"2"),
            ]
        ),
    )
    assert Http1Writer().request(req) == [b"GET / HTTP/1.1\r\nHost: a\r\nX-Kept: 2\r\n\r\n"]

    resp = Response(200, "OK", Headers([(b"Connection", b"close, X-Secret"), (b"X-Secret", b"s"), (b"X-Kept", b"k")]))
    assert respond(resp) == b"HTTP/1.1 200 OK\r\nX-Kept: k\r\nContent-Length: 0\r\n\r\n"


def test_start_line_is_always_http11():
    """HTTP/1.0 messages are forwarded with our own version, HTTP/1.1."""
    req = Request("GET", "/", Headers([(b"Host", b"a")]), version="HTTP/1.0")
    assert Http1Writer().request(req)[0].startswith(b"GET / HTTP/1.1\r\n")
    resp = Response(200, "OK", version="HTTP/1.0")
    assert respond(resp, client_version="HTTP/1.0", keep_alive=False).startswith(b"HTTP/1.1 200 OK\r\n")


def test_field_order_and_case_are_preserved():
    """The remaining fields keep their order, case and repeats exactly."""
    fields = [(b"host", b"a"), (b"X-B", b"1"), (b"ACCEPT", b"*/*"), (b"x-b", b"2"), (b"cOOkie", b"c=1")]
    req = Request("GET", "/", Headers(list(fields)))
    assert Http1Writer().request(req) == [b"GET / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"]


def test_writer_does_not_change_the_unit():
    """Writing leaves the unit's own fields alone (taps and loggers may still look at them)."""
    fields = [(b"Host", b"a"), (b"Connection", b"close"), (b"Transfer-Encoding", b"chunked")]
    req = Request("POST", "/", Headers(fields), body=b"x")
    Http1Writer().request(req, upgrade=True)
    assert req.headers.fields == [(b"Host", b"a"), (b"Connection", b"close"), (b"Transfer-Encoding", b"chunked")]


def test_target_override():
    """target= replaces the unit's target on the request line."""
    req = Request("GET", "http://example.org/a?b", Headers([(b"Host", b"example.org")]))
    data = b"".join(Http1Writer().request(req, target="/a?b"))
    head, _, _ = read_back(data)
    assert head.target == b"/a?b"
    assert req.target == "http://example.org/a?b"


def test_options_star_and_connect_targets():
    """Asterisk-form and authority-form targets are written as given."""
    assert Http1Writer().request(Request("OPTIONS", "*"))[0] == b"OPTIONS * HTTP/1.1\r\n\r\n"
    req = Request("CONNECT", "example.org:443", Headers([(b"Host", b"example.org:443")]))
    assert Http1Writer().request(req)[0] == b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"


# ---------------------------------------------------------------------------
# injection
# ---------------------------------------------------------------------------


def test_tap_cannot_assign_a_header_value_with_line_breaks():
    """Through the Headers API a value with CR/LF is refused at once."""
    req = Request("GET", "/")
    with pytest.raises(ValueError):
        req.headers["X-Evil"] = "a\r\nX-Injected: 1"


@pytest.mark.parametrize("value", [b"a\r\nX-Injected: 1", b"a\nb", b"a\rb", b"a\x00b"])
def test_header_value_with_line_break_raises_valueerror(value):
    """A value a tap put straight into `fields` with CR, LF or NUL stops the writer with ValueError."""
    req = Request("GET", "/", Headers([(b"Host", b"a")]))
    req.headers.fields.append((b"X-Evil", value))
    with pytest.raises(ValueError, match="X-Evil"):
        Http1Writer().request(req)
    resp = Response(200, "OK", Headers([(b"X-Evil", value)]))
    with pytest.raises(ValueError, match="X-Evil"):
        respond(resp)


def test_header_name_that_is_not_a_token_raises_valueerror():
    """A name with a colon or space would change the meaning of the line: ValueError."""
    req = Request("GET", "/", Headers([(b"X-A: b\r\nX-C", b"d")]))
    with pytest.raises(ValueError):
        Http1Writer().request(req)
    req = Request("GET", "/", Headers([(b"Bad Name", b"d")]))
    with pytest.raises(ValueError):
        Http1Writer().request(req)


def test_trailer_with_line_break_raises_valueerror():
    """Trailers are checked like header fields, streamed or whole."""
    w = Http1Writer()
    w.request(Request("POST", "/", body=None))
    with pytest.raises(ValueError):
        w.end([(b"X-Sum", b"1\r\nX-Injected: 1")])
    req = Request("POST", "/", body=b"x", trailers=Headers([(b"X-Sum", b"1\r\n\r\nGET /evil HTTP/1.1")]))
    with pytest.raises(ValueError):
        Http1Writer().request(req)


@pytest.mark.parametrize("target", ["/a b", "/a\r\nX: y", ""])
def test_bad_target_raises_valueerror(target):
    """A target override with spaces, line breaks or nothing at all is refused."""
    with pytest.raises(ValueError):
        Http1Writer().request(Request("GET", "/"), target=target)


def test_reason_with_line_break_raises_valueerror():
    """A reason phrase cannot smuggle a header in either."""
    with pytest.raises(ValueError):
        respond(Response(200, "OK\r\nSet-Cookie: a=b"))


# ---------------------------------------------------------------------------
# round trip property
# ---------------------------------------------------------------------------

trailer_fields = st.lists(
    st.tuples(
        st.text(alphabet=TCHAR, min_size=1, max_size=10).map(str.encode),
        st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=10).map(str.encode),
    ),
    max_size=3,
)


@given(
    body=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
    with_length=st.booleans(),
    trailers=trailer_fields,
    role=st.sampled_from(["request", "response"]),
)
def test_streamed_body_round_trips(body, cuts, with_length, trailers, role):
    """Any body in any chunks, with or without Content-Length, parses back to the same bytes (and trailers when chunked)."""
    bounds = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    chunks = [body[a:b] for a, b in zip(bounds, bounds[1:])] + [b""]
    fields = [(b"X-Before", b"1")]
    if with_length:
        fields.append((b"Content-Length", b"%d" % len(body)))
    else:
        fields.append((b"Transfer-Encoding", b"chunked"))
    fields.append((b"X-After", b"2"))
    w = Http1Writer()
    if role == "request":
        data = b"".join(w.request(Request("POST", "/up", Headers(fields), body=None)))
    else:
        data = respond(Response(200, "OK", Headers(fields), body=None), writer=w)
    for chunk in chunks:
        data += w.body(chunk)
    data += w.end(trailers)

    head, got, got_trailers = read_back(data, role)
    assert got == body
    assert got_trailers == ([] if with_length else trailers)
    assert [f for f in head.headers if f[0].startswith(b"X-")] == [(b"X-Before", b"1"), (b"X-After", b"2")]
