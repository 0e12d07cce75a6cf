"""Tests for tinspect.layers.http.h2.fields: HTTP/2 header blocks to units and back."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.headers import Headers
from tinspect.layers.http.h2.fields import (
    H2FieldError,
    request_block,
    request_from_block,
    response_block,
    response_from_block,
    trailer_block,
)
from tinspect.units import Request, Response

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/p?q=1")]


def regular(block):
    return [(n, v) for n, v in block if not n.startswith(b":")]


def pseudo(block):
    return [(n, v) for n, v in block if n.startswith(b":")]


# -- request_from_block ------------------------------------------------------


def test_request_from_block_maps_pseudo_fields():
    req = request_from_block(BASE + [(b"accept", b"*/*")], stream_id=5, scheme="http")
    assert (req.method, req.target, req.scheme, req.authority, req.version, req.stream_id) == (
        "GET", "/p?q=1", "https", "a.example", "HTTP/2", 5)
    assert req.body is None
    assert req.headers.fields == [(b"accept", b"*/*")]


def test_cookies_are_joined_in_the_place_of_the_first():
    block = BASE + [(b"cookie", b"a=1"), (b"x-one", b"1"), (b"cookie", b"b=2"), (b"cookie", b"c=3"), (b"x-two", b"2")]
    req = request_from_block(block, stream_id=1, scheme="https")
    assert req.headers.fields == [(b"cookie", b"a=1; b=2; c=3"), (b"x-one", b"1"), (b"x-two", b"2")]


def test_one_cookie_stays_as_it_is():
    req = request_from_block(BASE + [(b"cookie", b"a=1; b=2")], stream_id=1, scheme="https")
    assert req.headers.fields == [(b"cookie", b"a=1; b=2")]


def test_empty_cookie_values_are_joined_too():
    req = request_from_block(BASE + [(b"cookie", b""), (b"cookie", b"b=2")], stream_id=1, scheme="https")
    assert req.headers.raw(b"cookie") == b"; b=2"


def test_authority_falls_back_to_host():
    block = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.example:8080")]
    req = request_from_block(block, stream_id=3, scheme="http")
    assert req.authority == "h.example:8080"
    assert req.host == "h.example"


def test_authority_wins_over_host():
    req = request_from_block(BASE + [(b"host", b"other.example")], stream_id=1, scheme="https")
    assert req.authority == "a.example"


def test_no_authority_nor_host_is_empty():
    req = request_from_block([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], stream_id=1, scheme="http")
    assert req.authority == ""


def test_connect_has_authority_as_target_and_the_given_scheme():
    req = request_from_block([(b":method", b"CONNECT"), (b":authority", b"a.example:443")], stream_id=1, scheme="https")
    assert (req.method, req.target, req.authority, req.scheme) == ("CONNECT", "a.example:443", "a.example:443", "https")


def test_missing_method_is_an_error():
    with pytest.raises(H2FieldError):
        request_from_block([(b":scheme", b"https"), (b":path", b"/")], stream_id=1, scheme="https")


# -- response_from_block -----------------------------------------------------


def test_response_from_block():
    req = Request("GET", "/")
    resp = response_from_block([(b":status", b"204"), (b"x-a", b"1")], req)
    assert (resp.status, resp.reason, resp.version, resp.body, resp.request) == (204, "", "HTTP/2", None, req)
    assert resp.headers.fields == [(b"x-a", b"1")]


@pytest.mark.parametrize("status", [None, b"", b"20", b"2000", b"abc", b"2 0", b"-20"])
def test_response_without_a_valid_status_is_an_error(status):
    block = [(b"x-a", b"1")] if status is None else [(b":status", status)]
    with pytest.raises(H2FieldError):
        response_from_block(block, None)


# -- request_block / response_block ------------------------------------------


def test_request_block_drops_connection_specific_fields_and_host():
    req = Request(
        "POST", "/up", Headers([
            (b"Host", b"a.example"), (b"Connection", b"keep-alive, X-Hop"), (b"X-Hop", b"1"),
            (b"Keep-Alive", b"5"), (b"Proxy-Connection", b"keep-alive"), (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"), (b"TE", b"gzip"), (b"Accept", b"*/*"), (b"X-Mixed-Case", b"v"),
        ]),
        scheme="https", authority="a.example", body=None,
    )
    block = request_block(req)
    assert pseudo(block) == [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/up")]
    assert regular(block) == [(b"accept", b"*/*"), (b"x-mixed-case", b"v")]


@pytest.mark.parametrize("te", [b"trailers", b"Trailers", b" trailers "])
def test_te_trailers_is_kept(te):
    req = Request("GET", "/", Headers([(b"TE", te)]), authority="a", body=b"")
    assert regular(request_block(req)) == [(b"te", b"trailers")]


def test_te_with_more_than_trailers_is_dropped():
    req = Request("GET", "/", Headers([(b"te", b"trailers, gzip")]), authority="a", body=b"")
    assert regular(request_block(req)) == []


def test_whole_request_body_gets_its_content_length_recomputed():
    req = Request("POST", "/", Headers([(b"Content-Length", b"99"), (b"x", b"y")]), authority="a", body=b"12345")
    assert regular(request_block(req)) == [(b"x", b"y"), (b"content-length", b"5")]


def test_empty_whole_body_has_no_content_length():
    req = Request("POST", "/", Headers([(b"Content-Length", b"99")]), authority="a", body=b"")
    assert regular(request_block(req)) == []


def test_streamed_request_keeps_the_declared_length():
    req = Request("POST", "/", Headers([(b"Content-Length", b"99")]), authority="a", body=None)
    assert regular(request_block(req)) == [(b"content-length", b"99")]


def test_request_block_without_authority_is_refused():
    """h2 does not check what the proxy sends: a request with no authority to send is refused here."""
    req = Request("GET", "/x", Headers([(b"host", b"h")]), scheme="http", authority="", body=b"")
    with pytest.raises(H2FieldError, match="without an authority"):
        request_block(req)


def test_request_block_with_an_empty_path_is_refused():
    """A tap that empties the target gets an error, not a stream HTTP/2 forbids (RFC 9113 §8.3.1)."""
    req = Request("GET", "", Headers(), scheme="https", authority="a", body=b"")
    with pytest.raises(H2FieldError, match="empty :path"):
        request_block(req)


def test_connect_request_block_without_authority_is_refused():
    """A CONNECT with neither authority nor target cannot be sent."""
    with pytest.raises(H2FieldError):
        request_block(Request("CONNECT", "", authority="", body=None))


def test_connect_request_block():
    req = Request("CONNECT", "a.example:443", authority="a.example:443", body=None)
    assert request_block(req) == [(b":method", b"CONNECT"), (b":authority", b"a.example:443")]


def test_response_block_recomputes_the_length_of_a_whole_body():
    resp = Response(200, "OK", Headers([(b"Content-Length", b"2"), (b"Connection", b"close"), (b"Server", b"x")]), body=b"abcd")
    assert response_block(resp, "GET") == [(b":status", b"200"), (b"server", b"x"), (b"content-length", b"4")]


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("GET", 304), ("GET", 204)])
def test_response_block_keeps_the_length_for_head_304_and_204(method, status):
    resp = Response(status, "", Headers([(b"Content-Length", b"1234")]), body=b"")
    assert response_block(resp, method) == [(b":status", b"%d" % status), (b"content-length", b"1234")]


def test_streamed_response_keeps_the_declared_length():
    resp = Response(200, "OK", Headers([(b"Content-Length", b"1234"), (b"Transfer-Encoding", b"chunked")]), body=None)
    assert response_block(resp, "GET") == [(b":status", b"200"), (b"content-length", b"1234")]


def test_trailer_block():
    assert trailer_block(None) == []
    assert trailer_block(Headers([(b"X-Sum", b"1"), (b"Connection", b"x"), (b":status", b"200")])) == [(b"x-sum", b"1")]


# -- properties ----------------------------------------------------------------

_FORBIDDEN = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host",
              b"cookie", b"content-length"}
names = st.from_regex(rb"\A[a-z][a-z0-9\-]{0,15}\Z").filter(lambda n: n not in _FORBIDDEN)
values = st.from_regex(rb"\A[!-~]([ !-~]{0,20}[!-~])?\Z")
field_lists = st.lists(st.tuples(names, values), max_size=12)
paths = st.from_regex(rb"\A/[A-Za-z0-9/?=&._-]{0,20}\Z")
methods = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS"])


@given(methods, st.sampled_from([b"http", b"https"]), paths, field_lists, st.integers(1, 2**31 - 1))
def test_request_round_trip_keeps_the_regular_fields(method, scheme, path, fields_, sid):
    block = [(b":method", method), (b":scheme", scheme), (b":authority", b"a.example:8443"), (b":path", path), *fields_]
    req = request_from_block(block, stream_id=sid, scheme="http")
    assert req.stream_id == sid
    assert request_block(req) == block


@given(field_lists, st.lists(values, min_size=1, max_size=4))
def test_cookies_join_then_stay_joined(fields_, cookies):
    block = BASE + [(b"cookie", c) for c in cookies] + fields_
    req = request_from_block(block, stream_id=1, scheme="https")
    out = request_block(req)
    assert regular(out) == [(b"cookie", b"; ".join(cookies)), *fields_]


@given(st.lists(st.tuples(st.from_regex(rb"\A[A-Za-z][A-Za-z0-9\-]{0,15}\Z"), values), max_size=12),
       st.one_of(st.none(), st.binary(max_size=40)), st.sampled_from([200, 201, 404, 500]))
def test_response_block_is_always_sendable(fields_, body, status):
    """Whatever fields a tap leaves, the block has lower-case names, no connection-specific fields and
    at most one content-length, which matches a whole body."""
    resp = Response(status, "", Headers(fields_), body=body)
    block = response_block(resp, "GET")
    assert block[0] == (b":status", b"%d" % status)
    rest = block[1:]
    assert all(n == n.lower() and not n.startswith(b":") for n, _ in rest)
    assert not {n for n, _ in rest} & {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"}
    lengths = [v for n, v in rest if n == b"content-length"]
    if body is not None:
        assert lengths == ([b"%d" % len(body)] if body else [])
