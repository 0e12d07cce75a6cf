"""Glue tests of the HTTP/1.1 layer on in-memory transports: transcripts, no sockets.

Each test is a conversation: the client (``c``) and the server (``s``) are
`tests.memnet.Peer` objects on `StringTransport`s; ``send`` is what that
peer says to the proxy, ``take`` is what the proxy said to it since the last
``take``. Upstream connects wait in ``net.dials`` until the test accepts or
refuses them; time only moves with ``net.reactor.advance``.
"""

from __future__ import annotations

import base64
import socket

from twisted.internet.defer import Deferred

from tests.memnet import Record, describe
from tinspect.chain import Tap
from tinspect.headers import Headers
from tinspect.layers.dispatch import Sniffer
from tinspect.layers.http.explicit import ProxyAuth
from tinspect.layers.raw import RawRelay
from tinspect.units import BodyChunk, MessageEnd, Request, Response

CLEAN = {"flows": {}, "open": [], "timers": []}


def transparent(net):
    """A client of the forward listener, and the server it was connected to at accept."""
    c = net.transparent()
    (dial,) = net.dials
    assert dial.dst == ("192.0.2.10", 80)
    return c, dial.accept()


def get(path=b"/", host=b"a.example", extra=b""):
    """A GET request's bytes, exactly as the proxy forwards them too."""
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path, host, extra)


def ok(body=b"ok", extra=b""):
    """A 200 response's bytes, with a Content-Length."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class Block(Tap):
    """Answers 403 locally for request paths containing ``blocked``."""

    kinds = (Request,)

    def handle(self, unit, flow):
        if "blocked" in unit.path:
            return unit.respond(403, "nope")
        return unit


# ---------------------------------------------------------------------------
# Keep-alive, pipelining
# ---------------------------------------------------------------------------


def test_keep_alive_reuses_the_upstream_until_the_server_says_close(make_net):
    """Origin-form GETs without hop-by-hop fields share one upstream until Connection: close."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GET /a?q=1 HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
           b"Keep-Alive: 5\r\nTE: trailers\r\nAccept: */*\r\n\r\n")
    assert s.take() == b"GET /a?q=1 HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\n\r\n"
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    c.send(get(b"/b"))
    assert s.take() == get(b"/b")
    assert len(net.reactor.tcpClients) == 1
    s.send(ok(b"bye", b"Connection: close\r\n"))
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye"
    assert s.closed and not s.aborted and not c.closed
    c.send(get(b"/c"))
    assert len(net.reactor.tcpClients) == 2
    s2 = net.dials[1].accept()
    assert s2.take() == get(b"/c")
    s2.send(ok())
    assert c.take() == ok()
    c.eof()
    assert c.closed and s2.closed
    assert net.leftovers() == CLEAN


def test_pipelined_request_waits_for_the_previous_response(make_net):
    """Two requests in one read: the second goes upstream only once the first is answered."""
    net = make_net()
    c, s = transparent(net)
    c.send(get(b"/1") + get(b"/2"))
    assert s.take() == get(b"/1")
    assert c.paused
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\non")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\non"
    assert s.take() == b""
    s.send(b"e")
    assert c.take() == b"e"
    assert s.take() == get(b"/2")
    assert not c.paused
    s.send(ok(b"two"))
    assert c.take() == ok(b"two")
    assert len(net.reactor.tcpClients) == 1
    c.eof()
    assert net.leftovers() == CLEAN


def test_pipelined_post_body_goes_up_before_the_next_request_waits(make_net):
    """A POST with its body and a GET in one read: the body goes with the POST, the GET after its response."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc" + get(b"/g"))
    assert s.take() == b"POST /p HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc"
    s.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert c.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    assert s.take() == get(b"/g")
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_idle_upstream_closing_between_requests_is_replaced(make_net):
    """The server closes an idle keep-alive connection: the next request opens a new one."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(ok())
    assert c.take() == ok()
    s.eof()
    assert s.closed and not c.closed
    net.settle()
    c.send(get(b"/2"))
    s2 = net.pending()[0].accept()
    assert s2.take() == get(b"/2")
    s2.send(ok(b"two"))
    assert c.take() == ok(b"two")
    c.eof()
    assert net.leftovers() == CLEAN


def test_pipelined_requests_with_a_local_answer_between_stay_in_order(make_net):
    """GET /1, a blocked GET, GET /3 in one read: 200, 403, 200 in order; the blocked one never goes up."""
    net = make_net([Block()])
    c, s = transparent(net)
    c.send(get(b"/1") + get(b"/blocked") + get(b"/3"))
    assert s.take() == get(b"/1")
    s.send(ok(b"one"))
    assert c.take() == ok(b"one") + (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n\r\nnope"
    )
    assert s.take() == get(b"/3")
    s.send(ok(b"three"))
    assert c.take() == ok(b"three")
    c.eof()
    assert net.leftovers() == CLEAN


def test_client_half_close_after_request_still_gets_the_response(make_net):
    """A client that sends its request then EOF gets the whole response, marked close, then FIN."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    c.eof()
    assert s.take() == get()
    assert not c.closed
    s.send(ok(b"late"))
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlate"
    assert c.closed and s.closed
    assert net.leftovers() == CLEAN


def test_client_connection_close_is_honoured(make_net):
    """A request with Connection: close gets its response with Connection: close, then the close."""
    net = make_net()
    c, s = transparent(net)
    c.send(get(extra=b"Connection: close\r\n"))
    assert s.take() == get()
    s.send(ok())
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert c.closed and s.closed
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Bodiless responses, interim responses, HTTP/1.0 clients
# ---------------------------------------------------------------------------


def test_head_response_keeps_content_length_and_has_no_body(make_net):
    """A HEAD's 200 keeps Content-Length: 100, carries no body, and the connection goes on."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"HEAD /big HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert s.take() == b"HEAD /big HTTP/1.1\r\nHost: a.example\r\n\r\n"
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
    c.send(get())
    assert s.take() == get()
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_204_and_304_carry_no_body(make_net):
    """204 and 304 (with its Content-Length) go out bare; the next response is framed right."""
    net = make_net()
    c, s = transparent(net)
    c.send(get(b"/gone"))
    assert s.take() == get(b"/gone")
    s.send(b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n")
    assert c.take() == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"
    c.send(get(b"/cached", extra=b'If-None-Match: "v1"\r\n'))
    assert s.take() == get(b"/cached", extra=b'If-None-Match: "v1"\r\n')
    s.send(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n')
    assert c.take() == b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 42\r\n\r\n'
    c.send(get())
    assert s.take() == get()
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_100_continue_reaches_an_http11_client(make_net):
    """The server's 100 Continue goes to an HTTP/1.1 client; then the body flows and the 201 follows."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    s.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    assert s.take() == b"hello"
    s.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert c.take() == b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    assert not c.closed
    c.eof()
    assert net.leftovers() == CLEAN


def test_100_continue_is_not_sent_to_an_http10_client(make_net):
    """An HTTP/1.0 client never sees the interim 100; its final response closes the connection."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.0\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    s.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert c.take() == b""
    c.send(b"hello")
    assert s.take() == b"hello"
    s.send(ok())
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert c.closed
    assert net.leftovers() == CLEAN


def test_whole_body_tap_answers_expect_100_continue_itself(make_net):
    """With a whole-body tap the proxy says 100 Continue itself and sends the server no Expect."""

    class Whole(Tap):
        whole_bodies = True

    net = make_net([Whole()])
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert c.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert s.take() == b""
    c.send(b"hel")
    c.send(b"lo")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello"
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_http10_keep_alive_client_is_told_keep_alive(make_net):
    """HTTP/1.0 with Connection: keep-alive gets Connection: keep-alive back and may ask again."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GET / HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
    assert s.take() == b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    s.send(ok())
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    assert not c.closed
    c.send(b"GET /2 HTTP/1.0\r\nHost: a.example\r\nConnection: keep-alive\r\n\r\n")
    assert s.take() == b"GET /2 HTTP/1.1\r\nHost: a.example\r\n\r\n"
    s.send(ok(b"2"))
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n2"
    c.eof()
    assert net.leftovers() == CLEAN


def test_close_delimited_response_to_http10_client_is_relayed_then_closed(make_net):
    """A response ended by the server's close streams to an HTTP/1.0 client, which is closed after it."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(b"GET / HTTP/1.0\r\nHost: a.example\r\n\r\n")
    assert s.take() == b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    s.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nabc"
    s.send(b"def")
    assert c.take() == b"def"
    assert not c.closed
    s.eof()
    assert c.take() == b""
    assert c.closed and not c.aborted
    assert flow.error is None and flow.closed
    assert net.leftovers() == CLEAN


def test_close_delimited_response_to_http11_client_is_rechunked(make_net):
    """A response ended by the server's close reaches an HTTP/1.1 client chunked, and the client stays."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.0 200 OK\r\n\r\nabc")
    assert c.take() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    s.eof()
    assert c.take() == b"0\r\n\r\n"
    assert s.closed and not c.closed
    c.eof()
    assert net.leftovers() == CLEAN


def test_whole_body_tap_sends_no_100_continue_to_an_http10_client(make_net):
    """HTTP/1.0 clients get no 1xx (RFC 9110 15.2), not even the proxy's own 100 Continue."""

    class Whole(Tap):
        whole_bodies = True

    net = make_net([Whole()])
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.0\r\nHost: a.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert c.take() == b""


def test_chunked_response_to_http10_client_is_close_delimited(make_net):
    """An HTTP/1.0 client gets a chunked response unchunked, delimited by the close."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GET / HTTP/1.0\r\n\r\n")
    assert s.take() == b"GET / HTTP/1.1\r\n\r\n"
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    s.send(b"0\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc"
    assert c.closed
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Streaming and whole bodies
# ---------------------------------------------------------------------------


def test_chunked_response_with_trailers_streams_through_the_taps(make_net):
    """Chunks and trailers over several reads: the client gets them chunked, taps see head, chunks, end."""
    tap = Record()
    net = make_net([tap])
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n"
    s.send(b"5\r\nhel")
    assert c.take() == b"3\r\nhel\r\n"
    s.send(b"lo\r\n6\r\n world\r\n")
    assert c.take() == b"2\r\nlo\r\n6\r\n world\r\n"
    s.send(b"0\r\nX-Sum: 42\r\n\r\n")
    assert c.take() == b"0\r\nX-Sum: 42\r\n\r\n"
    assert tap.seen == [
        ("request", "GET", "/", b""),
        ("response", 200, None, False),
        ("chunk", "to_client", b"hel"),
        ("chunk", "to_client", b"lo"),
        ("chunk", "to_client", b" world"),
        ("end", "to_client", [("X-Sum", "42")]),
    ]
    c.eof()
    assert net.leftovers() == CLEAN


def test_whole_body_tap_rewrites_a_chunked_response_with_a_content_length(make_net):
    """A whole-body tap gets the joined chunks, changes them, and the client gets a matching Content-Length."""

    class Shout(Tap):
        whole_bodies = True
        kinds = (Response,)

        def __init__(self):
            self.bodies = []

        def handle(self, unit, flow):
            self.bodies.append(unit.body)
            unit.body = unit.body.upper() + b"!!"
            return unit

    tap = Shout()
    net = make_net([tap])
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert c.take() == b""
    s.send(b"6\r\n world\r\n0\r\n\r\n")
    assert tap.bodies == [b"hello world"]
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHELLO WORLD!!"
    c.eof()
    assert net.leftovers() == CLEAN


def test_whole_body_over_max_body_streams_and_says_so(make_net):
    """Past max_body the whole-body tap gets body None with body_too_large, and the body streams."""

    class Whole(Tap):
        whole_bodies = True
        kinds = (Response, BodyChunk, MessageEnd)

        def __init__(self):
            self.seen = []

        def handle(self, unit, flow):
            self.seen.append(describe(unit))
            return unit

    tap = Whole()
    net = make_net([tap], max_body=8)
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert c.take() == b""
    s.send(b"6\r\n world\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n"
    s.send(b"3\r\n!!!\r\n0\r\n\r\n")
    assert c.take() == b"3\r\n!!!\r\n0\r\n\r\n"
    assert tap.seen == [
        ("response", 200, None, True),
        ("chunk", "to_client", b"hello world"),
        ("chunk", "to_client", b"!!!"),
        ("end", "to_client", None),
    ]
    c.eof()
    assert net.leftovers() == CLEAN


def test_tap_growing_streamed_chunks_past_content_length_fails_closed(make_net):
    """A tap that lengthens streamed chunks but keeps Content-Length: the client is aborted, never misframed."""

    class Double(Tap):
        kinds = (BodyChunk,)

        def handle(self, unit, flow):
            unit.data = unit.data * 2
            return unit

    net = make_net([Double()])
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabab"
    s.send(b"c")
    assert c.take() == b""
    assert c.aborted and s.aborted
    assert flow.error == "framing error: a streamed body grew past its Content-Length"
    assert net.leftovers() == CLEAN


def test_tap_removing_content_length_gets_chunked_framing(make_net):
    """A tap that lengthens streamed chunks and drops Content-Length from the head: the client gets chunks."""

    class Double(Tap):
        kinds = (Response, BodyChunk)

        def handle(self, unit, flow):
            if isinstance(unit, Response):
                unit.headers.remove("Content-Length")
            else:
                unit.data = unit.data * 2
            return unit

    net = make_net([Double()])
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    s.send(b"cd")
    assert c.take() == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabab\r\n4\r\ncdcd\r\n0\r\n\r\n"
    c.eof()
    assert net.leftovers() == CLEAN


def test_chunked_request_body_with_trailers_streams_upstream(make_net):
    """A chunked upload with trailers reaches the server chunked, trailers included, as it arrives."""
    tap = Record()
    net = make_net([tap])
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n"
    c.send(b"0\r\nX-Check: 1\r\n\r\n")
    assert s.take() == b"0\r\nX-Check: 1\r\n\r\n"
    s.send(ok())
    assert c.take() == ok()
    assert tap.seen[:3] == [
        ("request", "POST", "/up", None),
        ("chunk", "to_server", b"abcd"),
        ("end", "to_server", [("X-Check", "1")]),
    ]
    c.eof()
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Taps: asynchronous, failing, dropping, answering
# ---------------------------------------------------------------------------


def test_async_request_tap_holds_the_request_and_keeps_order(make_net):
    """A tap that delays each request 1 s: nothing goes upstream before it fires, requests keep their order."""

    class Slow(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            d = Deferred()
            net.reactor.callLater(1, d.callback, unit)
            return d

    net = make_net([Slow()])
    c, s = transparent(net)
    c.send(get(b"/1") + get(b"/2"))
    assert s.take() == b""
    assert c.paused
    net.reactor.advance(0.9)
    assert s.take() == b""
    net.reactor.advance(0.1)
    assert s.take() == get(b"/1")
    s.send(ok(b"one"))
    assert c.take() == ok(b"one")
    assert s.take() == b""
    net.reactor.advance(1)
    assert s.take() == get(b"/2")
    assert not c.paused
    s.send(ok(b"two"))
    assert c.take() == ok(b"two")
    c.eof()
    assert net.leftovers() == CLEAN


def test_async_response_tap_pauses_the_server_and_keeps_body_order(make_net):
    """While a tap holds the response head, the server is paused and its body waits behind the head."""
    held = []

    class Hold(Tap):
        kinds = (Response,)

        def handle(self, unit, flow):
            d = Deferred()
            held.append((d, unit))
            return d

    net = make_net([Hold()])
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert c.take() == b""
    assert s.paused
    s.send(b"world")
    assert c.take() == b""
    (d, unit), = held
    d.callback(unit)
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhelloworld"
    assert not s.paused
    c.eof()
    assert net.leftovers() == CLEAN


def test_tap_raising_on_a_request_gets_a_502_and_closes_both_sides(make_net, log_events):
    """A tap that raises on the request: the client reads a 502 page, both sides close, the flow says why."""

    class Broken(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            raise RuntimeError("kaput")

    net = make_net([Broken()])
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    body = b"502 Bad Gateway\n\ntinspect: a tap failed on this request; see the proxy log\n"
    assert c.take() == (
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (len(body), body)
    )
    assert c.closed and s.closed
    assert s.take() == b""
    assert flow.error == "tap error: kaput"
    (event,) = [e for e in log_events if "log_failure" in e]
    assert (event["flow_id"], event["where"], event["direction"]) == (flow.id, "tap Broken", "to_server")
    assert event["log_failure"].check(RuntimeError)
    assert net.leftovers() == CLEAN


def test_async_request_tap_firing_after_the_client_left_sends_nothing(make_net):
    """The client goes while a tap holds its request: when the tap answers, no connect and no bytes follow."""
    held = []

    class Hold(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            d = Deferred()
            held.append((d, unit))
            return d

    net = make_net([Hold()])
    c, s = transparent(net)
    c.send(b"POST /pay HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\nhi")
    c.reset()
    assert s.aborted and net.ctx.flows == {}
    (d, unit), = held
    d.callback(unit)
    assert net.pending() == []
    assert len(net.reactor.tcpClients) == 1


def test_tap_raising_on_a_response_gets_a_502_and_closes_both_sides(make_net):
    """A tap that raises on the response head: the client reads a 502 page, not the response; both sides close."""

    class Broken(Tap):
        kinds = (Response,)

        def handle(self, unit, flow):
            raise ValueError("bad head")

    net = make_net([Broken()])
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    assert c.take() == page(502, b"Bad Gateway", b"a tap failed on this request; see the proxy log", close=True)
    assert c.closed and s.aborted
    s.send(b"cd")
    assert c.take() == b""
    assert flow.error == "tap error: bad head"
    assert net.leftovers() == CLEAN


def test_tap_dropping_a_request_closes_the_client(make_net):
    """A tap returning None for the request: the client is closed and the server sees nothing."""

    class Drop(Tap):
        kinds = (Request,)

        def handle(self, unit, flow):
            return None

    net = make_net([Drop()])
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    assert c.take() == b""
    assert c.closed
    assert s.take() == b""
    assert flow.error == "a tap dropped the request"
    assert net.leftovers() == CLEAN


def test_local_answer_before_the_upload_ends_closes_after_the_answer(make_net):
    """A 403 for a POST whose body is still arriving: the client gets it and a close; the server gets nothing."""
    net = make_net([Block()])
    c, s = transparent(net)
    c.send(b"POST /blocked HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\nhello")
    assert c.take() == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 4\r\n"
        b"Connection: close\r\n\r\nnope"
    )
    assert c.closed
    c.send(b"world")
    assert s.take() == b""
    assert net.leftovers() == CLEAN


def test_tap_answering_mid_upload_aborts_the_request_upstream(make_net):
    """A tap that answers 403 on a body chunk: the half-sent request's upstream is aborted, the client closed."""

    class Scanner(Tap):
        kinds = (BodyChunk,)

        def handle(self, unit, flow):
            if b"EVIL" in unit.data:
                return unit.message.respond(403, "virus")
            return unit

    net = make_net([Scanner()])
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8\r\n\r\nfine")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 8\r\n\r\nfine"
    c.send(b"EVIL")
    assert s.take() == b""
    assert s.aborted
    assert c.take() == (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nvirus"
    )
    assert c.closed
    assert net.leftovers() == CLEAN


def test_flow_abort_from_a_tap_resets_both_sides(make_net):
    """A tap calling flow.abort mid-response aborts client and server and records the reason."""

    class Reset(Tap):
        kinds = (BodyChunk,)

        def handle(self, unit, flow):
            flow.abort("fault injection")
            return None

    net = make_net([Reset()])
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    s.send(b"hello")
    assert c.aborted and s.aborted
    assert c.take() == b""
    assert flow.error == "fault injection"
    assert net.leftovers() == CLEAN


def test_server_answer_before_the_upload_ends_is_relayed_then_closed(make_net):
    """A 413 while the body is still coming: relayed with Connection: close, then both sides close."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\nhello")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\nhello"
    s.send(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
    assert c.take() == b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!"
    assert c.closed and s.closed
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Upstream failures
# ---------------------------------------------------------------------------


def page(status, phrase, detail, close=False, extra=b""):
    """The bytes of one of the proxy's own error pages."""
    body = b"%d %s\n\ntinspect: %s\n" % (status, phrase, detail)
    return b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n%sContent-Length: %d\r\n%s\r\n%s" % (
        status, phrase, extra, len(body), b"Connection: close\r\n" if close else b"", body
    )


def test_refused_upstream_gives_a_502_naming_the_reason(make_net):
    """The request waits for the connect; a refusal becomes a 502 page and the connection stays usable."""
    net = make_net()
    c = net.transparent()
    c.send(get())
    (dial,) = net.pending()
    dial.refuse()
    assert c.take() == page(502, b"Bad Gateway", b"cannot reach 192.0.2.10:80: connection refused")
    assert not c.closed
    c.send(get(b"/again"))
    s = net.pending()[0].accept()
    assert s.take() == get(b"/again")
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_upstream_refused_before_the_client_spoke_still_gets_a_502(make_net):
    """A connect refused at accept, then a request: the client reads a 502 naming the refusal."""
    net = make_net()
    c = net.transparent()
    net.pending()[0].refuse()
    c.send(get())
    while net.pending():
        net.pending()[0].refuse()
    assert c.take() == page(502, b"Bad Gateway", b"cannot reach 192.0.2.10:80: connection refused")
    c.eof()
    assert net.leftovers() == CLEAN


def test_a_connect_refused_before_the_request_is_one_attempt_counted_once(make_net):
    """The request after a refused connect at accept is answered with that refusal, not connected
    again: one dial, one upstream connect failure; the next request on the connection dials anew."""
    net = make_net()
    c = net.transparent()
    net.pending()[0].refuse()
    c.send(get())
    assert c.take() == page(502, b"Bad Gateway", b"cannot reach 192.0.2.10:80: connection refused")
    assert len(net.dials) == 1 and net.ctx.metrics.connect_failures == {"refused": 1}
    c.send(get(b"/again"))
    (dial,) = net.pending()
    dial.refuse()
    assert c.take() == page(502, b"Bad Gateway", b"cannot reach 192.0.2.10:80: connection refused")
    assert len(net.dials) == 2 and net.ctx.metrics.connect_failures == {"refused": 2}
    c.eof()
    assert net.leftovers() == CLEAN


def test_connect_timeout_gives_a_504(make_net):
    """No answer to the connect within connect_timeout: a 504 page, and not a moment before."""
    net = make_net(connect_timeout=3)
    c = net.transparent()
    c.send(get())
    net.reactor.advance(2.9)
    assert c.take() == b""
    net.reactor.advance(0.2)
    assert c.take() == page(504, b"Gateway Timeout", b"cannot reach 192.0.2.10:80: connect timeout")
    c.eof()
    assert net.leftovers() == CLEAN


def test_upstream_closing_mid_body_aborts_the_client(make_net):
    """The server closes 5 bytes into a 10-byte body: the client is aborted, not given a short body for whole."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello"
    s.eof()
    assert c.aborted
    assert flow.error == "bad response: closed the connection in the middle of a response"
    assert net.leftovers() == CLEAN


def test_upstream_reset_mid_body_aborts_the_client(make_net):
    """The server's connection is reset mid-body: the client is aborted and the flow ends."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    c.take()
    s.reset()
    assert c.aborted
    assert flow.error == "bad response: reset the connection before the response was complete"
    assert net.leftovers() == CLEAN


def test_garbage_from_the_server_gives_a_502(make_net):
    """A server answering garbage: the client reads a 502 page naming the upstream, never the garbage."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    assert c.take() == page(502, b"Bad Gateway", b"upstream 192.0.2.10:80 malformed HTTP version")
    assert s.aborted
    c.eof()
    assert net.leftovers() == CLEAN


def test_flow_stays_usable_while_the_client_is_served_after_a_502(make_net):
    """After a 502 for a broken server the connection goes on, and taps can still abort its flow."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"garbage\r\n\r\n")
    assert c.take().startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert not c.closed
    c.send(get(b"/next"))
    s2 = net.pending()[0].accept()
    assert s2.take() == get(b"/next")
    flow.abort("a tap pulls the plug")  # as a tap would
    assert c.aborted and s2.aborted
    assert not flow.closed or flow.id not in net.ctx.flows


def test_client_going_away_mid_response_aborts_the_upstream(make_net):
    """The client disconnects during a body: the upstream is aborted and the flow removed."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
    c.reset()
    assert s.aborted
    assert flow.error == "client went away"
    assert net.ctx.flows == {}
    assert net.leftovers() == CLEAN


def test_a_101_nobody_asked_for_is_not_relayed_as_a_switch(make_net):
    """A 101 to a plain GET breaks HTTP: no 101 reaches the client, and its next request is still answered."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
    first = c.take()
    c.send(get(b"/2"))
    server = net.pending()[0].accept() if net.pending() else s
    assert server.take() == get(b"/2")
    server.send(ok(b"two"))
    assert c.take() == ok(b"two")
    assert not first.startswith(b"HTTP/1.1 101")


# ---------------------------------------------------------------------------
# Upgrades
# ---------------------------------------------------------------------------


def test_upgrade_switches_to_a_raw_relay(make_net):
    """A 101 to an upgrade request hands both sides to a raw relay, early bytes included."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert s.take() == b"GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    c.send(b"\x81\x00early")
    assert s.take() == b""
    s.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
    assert c.take() == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x02hi"
    assert s.take() == b"\x81\x00early"
    assert net.flow.protocol == "tcp"
    c.send(b"\x00raw")
    assert s.take() == b"\x00raw"
    s.send(b"\xffback")
    assert c.take() == b"\xffback"
    c.close()
    assert net.leftovers() == CLEAN


def test_transparent_connect_switches_to_raw_after_a_2xx(make_net):
    """A CONNECT sent to a transparent destination is forwarded; the server's 200 turns the connection raw."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"CONNECT 192.0.2.40:443 HTTP/1.1\r\nHost: 192.0.2.40:443\r\n\r\n")
    assert s.take().startswith(b"CONNECT 192.0.2.40:443 HTTP/1.1\r\nHost: 192.0.2.40:443\r\n")
    s.send(b"HTTP/1.1 200 OK\r\n\r\n\x16\x03")
    assert c.take() == b"HTTP/1.1 200 OK\r\n\r\n\x16\x03"
    c.send(b"\x16\x03\x01")
    assert s.take() == b"\x16\x03\x01"
    assert net.flow.protocol == "tcp"
    c.close()
    assert net.leftovers() == CLEAN


def test_forwarded_connect_goes_out_as_the_client_sent_it(make_net):
    """A CONNECT passed to a transparent destination carries no invented Connection: upgrade."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"CONNECT 192.0.2.40:443 HTTP/1.1\r\nHost: 192.0.2.40:443\r\n\r\n")
    assert s.take() == b"CONNECT 192.0.2.40:443 HTTP/1.1\r\nHost: 192.0.2.40:443\r\n\r\n"


def test_transparent_connect_refused_by_the_server_stays_http(make_net):
    """A 403 to a forwarded CONNECT is relayed and the connection goes on speaking HTTP."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"CONNECT 192.0.2.40:443 HTTP/1.1\r\nHost: 192.0.2.40:443\r\n\r\n")
    s.take()
    s.send(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert c.take() == b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"
    c.send(get())
    assert s.take() == get()
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_declined_upgrade_stays_http(make_net):
    """A 200 to an upgrade request: the connection goes on speaking HTTP, a queued request included."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GET /ws HTTP/1.1\r\nHost: a.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" + get(b"/2"))
    assert s.take() == b"GET /ws HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    s.send(ok(b"no"))
    assert c.take() == ok(b"no")
    assert s.take() == get(b"/2")
    s.send(ok(b"two"))
    assert c.take() == ok(b"two")
    c.eof()
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Explicit proxy
# ---------------------------------------------------------------------------


def test_explicit_absolute_form_goes_out_in_origin_form(make_net):
    """GET http://host:port/path: the connect goes to host:port, the server sees origin form and Host."""
    net = make_net()
    c = net.explicit()
    assert net.dials == []
    c.send(b"GET http://192.0.2.20:8080/x?y=1 HTTP/1.1\r\nHost: 192.0.2.20:8080\r\nProxy-Connection: keep-alive\r\n\r\n")
    (dial,) = net.dials
    assert dial.dst == ("192.0.2.20", 8080)
    s = dial.accept()
    assert s.take() == b"GET /x?y=1 HTTP/1.1\r\nHost: 192.0.2.20:8080\r\n\r\n"
    s.send(ok())
    assert c.take() == ok()
    assert net.flow.dst == ("192.0.2.20", 8080)
    c.send(b"GET http://192.0.2.20:8080/z HTTP/1.1\r\nHost: 192.0.2.20:8080\r\n\r\n")
    assert s.take() == b"GET /z HTTP/1.1\r\nHost: 192.0.2.20:8080\r\n\r\n"
    assert len(net.dials) == 1
    s.send(ok())
    c.take()
    c.send(b"GET http://192.0.2.21/ HTTP/1.1\r\nHost: 192.0.2.21\r\n\r\n")
    assert s.closed
    assert net.dials[1].dst == ("192.0.2.21", 80)
    s2 = net.dials[1].accept()
    assert s2.take() == b"GET / HTTP/1.1\r\nHost: 192.0.2.21\r\n\r\n"
    s2.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_explicit_connect_tunnels_raw_bytes_both_ways(make_net):
    """CONNECT: 200 once the upstream is up, then non-HTTP bytes go through untouched both ways."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\nHost: 192.0.2.30:5000\r\n\r\n")
    (dial,) = net.dials
    assert dial.dst == ("192.0.2.30", 5000)
    assert c.take() == b""
    s = dial.accept()
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    c.send(b"\x00\x01binary hello")
    assert s.take() == b"\x00\x01binary hello"
    s.send(b"\x02reply")
    assert c.take() == b"\x02reply"
    c.close()
    assert s.closed
    assert net.leftovers() == CLEAN


def test_raw_connect_tunnel_flow_says_tcp(make_net):
    """Once a CONNECT tunnel is relayed raw, taps see flow.protocol 'tcp', as after an upgrade."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\n\r\n")
    net.dials[0].accept()
    c.send(b"\x00\x01binary hello")
    assert isinstance(c.proto.handler, RawRelay)
    assert net.flow.protocol == "tcp"


def test_explicit_connect_passes_early_client_bytes_on(make_net):
    """Bytes the client sends right behind its CONNECT reach the server once the tunnel is up."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\n\r\n\x00early")
    s = net.dials[0].accept()
    assert c.take() == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert s.take() == b"\x00early"
    c.close()
    assert net.leftovers() == CLEAN


def test_client_leaving_mid_connect_cancels_the_connect(make_net):
    """The client goes while its CONNECT's upstream is still connecting: that connect is cancelled."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\n\r\n")
    (dial,) = net.dials
    c.close()
    assert net.ctx.flows == {}
    assert dial.cancelled


def test_a_tunnel_connected_after_the_flow_was_aborted_is_closed_unheard(make_net):
    """A CONNECT's upstream that comes up after the flow was aborted is closed at once; its end
    reaches no layer, and nothing is left open."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\n\r\n")
    net.flow.abort("test")
    s = net.dials[0].accept()
    assert s.closed and s.take() == b"" and c.take() == b""
    assert net.leftovers() == CLEAN  # the loss delivered to nobody, without an error


def test_explicit_connect_refused_gives_502_and_the_connection_stays_usable(make_net):
    """A refused CONNECT gets a 502 page; the same connection then carries a plain request."""
    net = make_net()
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:5000 HTTP/1.1\r\nHost: 192.0.2.30:5000\r\n\r\n")
    net.dials[0].refuse()
    assert c.take() == page(502, b"Bad Gateway", b"cannot reach 192.0.2.30:5000: connection refused")
    assert not c.closed
    c.send(b"GET http://192.0.2.20/ HTTP/1.1\r\nHost: 192.0.2.20\r\n\r\n")
    s = net.dials[1].accept()
    assert s.take() == b"GET / HTTP/1.1\r\nHost: 192.0.2.20\r\n\r\n"
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_explicit_proxy_authentication(make_net):
    """Without credentials a 407 with a Basic challenge; with them the request passes, minus the credentials."""
    net = make_net(proxy_auth=ProxyAuth(["u:p"]))
    c = net.explicit()
    c.send(b"GET http://192.0.2.20/ HTTP/1.1\r\nHost: 192.0.2.20\r\n\r\n")
    assert c.take() == page(407, b"Proxy Authentication Required", b"proxy authentication required",
                            extra=b'Proxy-Authenticate: Basic realm="tinspect", charset="UTF-8"\r\n')
    assert net.dials == []
    assert not c.closed
    token = base64.b64encode(b"u:p")
    c.send(b"GET http://192.0.2.20/ HTTP/1.1\r\nHost: 192.0.2.20\r\nProxy-Authorization: Basic %s\r\n\r\n" % token)
    s = net.dials[0].accept()
    assert s.take() == b"GET / HTTP/1.1\r\nHost: 192.0.2.20\r\n\r\n"
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_explicit_proxy_refuses_origin_form_with_400(make_net):
    """An origin-form request to the explicit proxy is answered 400 and never connects anywhere."""
    net = make_net()
    c = net.explicit()
    c.send(get())
    assert c.take() == page(
        400, b"Bad Request", b"this is a proxy: send absolute-form targets (http://host/path) or CONNECT"
    )
    assert net.dials == []
    c.eof()
    assert net.leftovers() == CLEAN


def test_bad_request_gets_400_and_close(make_net, log_events):
    """Ambiguous framing (Content-Length with chunked): a 400, the server never sees it, the log names the client."""
    net = make_net()
    c, s = transparent(net)
    flow = net.flow
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert c.take() == page(400, b"Bad Request", b"both Content-Length and Transfer-Encoding", close=True)
    assert c.closed and s.aborted and s.take() == b""
    assert flow.error == "bad request: both Content-Length and Transfer-Encoding"
    (event,) = [e for e in log_events if e.get("status") == 400]
    assert (event["flow_id"], event["client"]) == (flow.id, "192.0.2.2:5555")
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# Backpressure
# ---------------------------------------------------------------------------


def test_full_upstream_pauses_the_client_and_resumes_it(make_net):
    """While the upstream's write buffer is full the client is not read; reading resumes when it drains."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\n\r\nabc")
    assert s.take() == b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\n\r\nabc"
    assert not c.paused
    s.transport.producer.pauseProducing()
    assert c.paused
    s.transport.producer.resumeProducing()
    assert not c.paused
    c.send(b"def")
    assert s.take() == b"def"
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_full_client_pauses_the_upstream_and_resumes_it(make_net):
    """While the client's write buffer is full the server is not read; reading resumes when it drains."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    c.transport.producer.pauseProducing()
    assert s.paused
    c.transport.producer.resumeProducing()
    assert not s.paused
    s.send(b"def")
    assert c.take() == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef"
    c.eof()
    assert net.leftovers() == CLEAN


def test_full_client_pauses_a_new_upstream_too(make_net):
    """A client that is still full when the next upstream connects keeps that upstream paused."""
    net = make_net()
    c, s = transparent(net)
    c.send(get())
    s.take()
    s.send(ok(extra=b"Connection: close\r\n"))
    c.take()
    c.transport.producer.pauseProducing()
    c.send(get(b"/2"))
    s2 = net.pending()[0].accept()
    assert s2.paused
    c.transport.producer.resumeProducing()
    assert not s2.paused
    assert s2.take() == get(b"/2")
    s2.send(ok(b"two"))
    assert c.take() == ok(b"two")
    c.eof()
    assert net.leftovers() == CLEAN


def test_an_upstream_that_goes_away_full_does_not_keep_the_client_paused(make_net):
    """The server answers Connection: close while its write buffer is full: the client is read again after."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc")
    s.take()
    s.transport.producer.pauseProducing()
    assert c.paused
    s.send(ok(extra=b"Connection: close\r\n"))
    assert c.take() == ok()
    s.reset()  # the kernel never drains the buffer: no resumeProducing comes
    c.send(get(b"/2"))
    assert not c.paused
    s2 = net.pending()[0].accept()
    assert s2.take() == get(b"/2")


# ---------------------------------------------------------------------------
# The sniffer
# ---------------------------------------------------------------------------


def test_non_http_first_bytes_are_relayed_raw(make_net):
    """A client starting with non-HTTP bytes is relayed raw, both ways, byte for byte."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"\x00\x01\x02hello")
    assert s.take() == b"\x00\x01\x02hello"
    s.send(b"GET / HTTP/1.1\r\n\r\n")
    assert c.take() == b"GET / HTTP/1.1\r\n\r\n"
    assert net.flow.protocol == "tcp"
    c.eof()
    assert s.half_closed and not s.closed
    s.send(b"more")
    assert c.take() == b"more"
    s.eof()
    assert c.closed and not c.aborted
    assert net.leftovers() == CLEAN


def test_server_speaking_first_is_relayed_raw(make_net):
    """A server banner before any client byte: relayed at once, and the client's HTTP-looking bytes stay raw."""
    net = make_net()
    c, s = transparent(net)
    s.send(b"220 banner\r\n")
    assert c.take() == b"220 banner\r\n"
    c.send(b"GET / HTTP/1.1\r\n\r\n")
    assert s.take() == b"GET / HTTP/1.1\r\n\r\n"
    assert net.flow.protocol == "tcp"
    c.close()
    assert net.leftovers() == CLEAN


def test_server_speaking_after_a_partial_request_line_goes_raw(make_net):
    """Client bytes that might still become a request line, then a server banner: raw, nothing lost."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GE")
    s.send(b"220 hi\r\n")
    assert c.take() == b"220 hi\r\n"
    assert s.take() == b"GE"
    c.send(b"T / HTTP/1.1\r\n\r\n")
    assert s.take() == b"T / HTTP/1.1\r\n\r\n"
    c.close()
    assert net.leftovers() == CLEAN


def test_sniffing_waits_for_the_connect_and_relays_raw_once_it_is_up(make_net):
    """Non-HTTP bytes before the upstream is up are held, then relayed when it connects."""
    net = make_net()
    c = net.transparent()
    c.send(b"\x00hello")
    s = net.pending()[0].accept()
    assert s.take() == b"\x00hello"
    c.close()
    assert net.leftovers() == CLEAN


def test_server_reset_before_the_client_spoke_closes_the_client(make_net):
    """The server resets the connection before any byte: the client is closed and the flow ends."""
    net = make_net()
    c, s = transparent(net)
    s.reset()
    assert c.closed
    assert net.leftovers() == CLEAN


def test_silent_client_is_relayed_raw_after_the_sniff_timeout(make_net):
    """A client silent for sniff_timeout is relayed raw: an HTTP request after it is just bytes."""
    net = make_net(sniff_timeout=0.5)
    c, s = transparent(net)
    net.reactor.advance(0.4)
    assert isinstance(c.proto.handler, Sniffer)
    net.reactor.advance(0.1)
    assert isinstance(c.proto.handler, RawRelay)
    c.send(b"GET / HTTP/1.1\r\n\r\n")
    assert s.take() == b"GET / HTTP/1.1\r\n\r\n"
    s.send(b"HTTP/1.1 200 OK\r\n\r\n")
    assert c.take() == b"HTTP/1.1 200 OK\r\n\r\n"
    c.close()
    assert net.leftovers() == CLEAN


def test_bytes_unread_at_the_sniff_timeout_are_waited_for(make_net):
    """A client whose first bytes wait unread in its socket when the sniff timer runs (a busy
    reactor runs timers before reads) is classified from them, not relayed raw uninspected."""
    net = make_net(sniff_timeout=0.5)
    c, s = transparent(net)
    ours, theirs = socket.socketpair()
    try:
        theirs.send(b"GET / HTTP/1.1\r\n")  # arrived in time, not read yet
        c.transport.getHandle = lambda: ours
        net.reactor.advance(0.5)
        assert isinstance(c.proto.handler, Sniffer)
        c.send(ours.recv(100) + b"Host: a.example\r\n\r\n")  # the reactor's read, at last
        assert s.take() == get(b"/")
        assert net.flow.protocol == "http/1.1"
    finally:
        ours.close()
        theirs.close()


def test_silent_client_with_an_empty_socket_is_relayed_raw(make_net):
    """With nothing waiting in the socket either, the sniff timeout relays the client raw."""
    net = make_net(sniff_timeout=0.5)
    c, s = transparent(net)
    ours, theirs = socket.socketpair()
    try:
        theirs.send(b"\x00")
        c.transport.getHandle = lambda: ours
        net.reactor.advance(0.5)
        assert isinstance(c.proto.handler, Sniffer)
        ours.recv(1)  # read, but not enough to classify; then silence
        net.reactor.advance(0.5)
        assert isinstance(c.proto.handler, RawRelay)
    finally:
        ours.close()
        theirs.close()


def test_request_split_across_reads_is_still_http(make_net):
    """A request line split over three reads is sniffed as HTTP, not relayed raw."""
    net = make_net()
    c, s = transparent(net)
    c.send(b"GE")
    c.send(b"T /split HTTP/1.")
    assert s.take() == b""
    c.send(b"1\r\nHost: a.example\r\n\r\n")
    assert s.take() == get(b"/split")
    assert net.flow.protocol == "http/1.1"
    s.send(ok())
    assert c.take() == ok()
    c.eof()
    assert net.leftovers() == CLEAN


def test_client_leaving_while_sniffing_cancels_everything(make_net):
    """A client that goes before saying anything: the connect is cancelled, the timer too, the flow ends."""
    net = make_net()
    c = net.transparent()
    (dial,) = net.dials
    c.close()
    assert dial.cancelled
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# A request a tap sends in place of a whole response
# ---------------------------------------------------------------------------


class Follow(Tap):
    """Answers a whole 302 with a GET of its Location path at 192.0.2.20 (as the cache follows redirects)."""

    kinds = (Response,)
    whole_bodies = True

    def handle(self, unit, flow):
        if unit.status != 302:
            return unit
        return Request("GET", unit.headers["location"], Headers([(b"Host", b"cdn.example")]), authority="cdn.example",
                       body=b"", destination=("192.0.2.20", 80))


def test_a_request_a_tap_sends_for_a_whole_response_is_answered_in_its_place(make_net):
    """The 302 never reaches the client: the tap's GET goes to its own destination and the client gets its 200,
    on the same exchange, and the connection carries on."""
    net = make_net([Follow()])
    c, s = transparent(net)
    c.send(get(b"/blob"))
    assert s.take() == get(b"/blob")
    s.send(b"HTTP/1.1 302 Found\r\nLocation: /signed?x=1\r\nContent-Length: 5\r\n\r\nmoved")
    (_, dial) = net.dials
    assert dial.dst == ("192.0.2.20", 80)
    cdn = dial.accept()
    assert cdn.take() == b"GET /signed?x=1 HTTP/1.1\r\nHost: cdn.example\r\n\r\n"
    assert c.take() == b""
    cdn.send(ok(b"layer"))
    assert c.take() == ok(b"layer")
    c.send(get(b"/next"))
    assert len(net.dials) == 3  # the CDN's connection does not serve the flow's own destination
    net.dials[2].accept().send(ok())
    assert c.take() == ok()


class FollowTooEarly(Tap):
    """Answers a 302's head, its body still to come, with a request: the layer cannot take that."""

    kinds = (Response,)

    def handle(self, unit, flow):
        if unit.status == 302 and unit.body is None:
            return Request("GET", "/elsewhere", authority="cdn.example", body=b"", destination=("192.0.2.20", 80))
        return unit


def test_a_request_for_a_response_still_streaming_fails_the_flow_closed(make_net):
    """Only a whole response can be replaced by a request: otherwise the tap broke the contract, and the client
    gets a 502 page, not the server's half-read answer."""
    net = make_net([FollowTooEarly()])
    c, s = transparent(net)
    c.send(get(b"/blob"))
    s.take()
    s.send(b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 5\r\n\r\nmo")
    assert c.take().startswith(b"HTTP/1.1 502 ")
    assert len(net.dials) == 1
