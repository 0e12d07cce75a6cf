"""The console's feed: what the head and tail taps see becomes bounded records, with the taps' verdicts.

The glue tests run real HTTP/1.1, HTTP/2 and raw relays on in-memory transports
(`tests.memnet`), with the feed wrapped round the taps as ``--console`` does.
"""

from __future__ import annotations

import gc
import tracemalloc

import h2.config
import h2.connection

from tinspect.chain import Tap
from tinspect.console.feed import ConsoleFeed
from tinspect.console.hub import Hub
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.units import TO_CLIENT, TO_SERVER, BodyChunk, MessageEnd, Request, Response, WebSocketMessage


class Block(Tap):
    """Answers 403 locally for paths containing ``blocked`` and says so in the flow's verdict."""

    kinds = (Request,)

    def handle(self, unit, flow):
        if "blocked" in unit.path:
            flow.verdict = "blocked"
            return unit.respond(403, "blocked here")
        if "local" in unit.path:
            return unit.respond(200, "from a tap")
        return unit


def proxied(make_net, taps=(), flows=100, body_cap=16):
    """A memnet proxy whose chain the feed wraps; the hub, and a connected client and server."""
    hub = Hub(flows)
    feed = ConsoleFeed(hub, body_cap=body_cap)
    net = make_net(feed.wrap(taps))
    c = net.transparent()
    (dial,) = net.dials
    return hub, net, c, dial.accept()


def records(hub):
    return hub.ring.records()


def test_an_exchange_becomes_one_record_with_heads_status_size_and_timings(make_net):
    """A GET and its 200 give one finished record: heads in order, sizes, the times of each step."""
    hub, net, c, s = proxied(make_net)
    c.send(b"GET /a?q=1 HTTP/1.1\r\nHost: a.example\r\nX-Trace: 7\r\n\r\n")
    (pending,) = records(hub)
    assert pending["status"] is None and not pending["done"]  # shown as soon as the request is seen
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello")
    assert c.take().endswith(b"hello")
    (r,) = records(hub)
    assert (r["method"], r["url"], r["host"], r["status"], r["size"], r["done"]) == \
        ("GET", "http://a.example/a?q=1", "a.example", 200, 5, True)
    assert r["client"] == "192.0.2.2:5555" and r["protocol"] == "http/1.1" and r["verdict"] is None
    d = r["detail"]
    assert d["request"]["headers"] == [("Host", "a.example"), ("X-Trace", "7")]
    assert d["response"]["headers"] == [("Content-Length", "5"), ("X-Up", "1")]
    assert d["response"]["body"] == {"size": 5, "text": "hello"}
    t = d["timings"]
    assert t["start"] <= t["request_end"] <= t["response_start"] <= t["end"]
    assert d["connection"]["upstream_connected"] is not None and d["server"] == ["192.0.2.10", 80]


def test_blocked_local_and_proxied_exchanges_on_one_connection_each_get_their_own_verdict(make_net):
    """A tap's block, a tap's own answer and a plain request in a row: blocked, local, proxied."""
    hub, net, c, s = proxied(make_net, [Block()])
    c.send(b"GET /blocked HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert b"403" in c.take()
    c.send(b"GET /blocked/again HTTP/1.1\r\nHost: a.example\r\n\r\n")
    c.send(b"GET /local HTTP/1.1\r\nHost: a.example\r\n\r\n")
    c.send(b"GET /fine HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert s.take() == b"GET /fine HTTP/1.1\r\nHost: a.example\r\n\r\n"
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [(r["url"].split("/", 3)[3], r["status"], r["verdict"]) for r in records(hub)] == [
        ("blocked", 403, "blocked"), ("blocked/again", 403, "blocked"), ("local", 200, "local"), ("fine", 200, None)]


def test_bodies_are_kept_up_to_the_cap_and_counted_whole(make_net):
    """A body longer than the cap is kept cut (``truncated``) with its real size; the upload too."""
    hub, net, c, s = proxied(make_net, body_cap=4)
    c.send(b"POST /up HTTP/1.1\r\nHost: a.example\r\nContent-Length: 10\r\n\r\n0123456789")
    s.take()
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n3\r\nghi\r\n0\r\n\r\n")
    (r,) = records(hub)
    assert r["detail"]["request"]["body"] == {"size": 10, "truncated": True, "text": "0123"}
    assert r["detail"]["response"]["body"] == {"size": 9, "truncated": True, "text": "abcd"}
    assert r["size"] == 9 and r["done"]


def test_a_connection_ended_mid_response_ends_its_exchange_with_an_error(make_net):
    """The server closing before its response ends leaves a finished record that says so."""
    hub, net, c, s = proxied(make_net)
    c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
    s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    s.close()
    net.settle()
    (r,) = records(hub)
    assert r["done"] and r["status"] == 200 and r["error"]


def test_an_explicit_connect_is_one_record_and_the_tunnel_its_own(make_net):
    """CONNECT through the explicit proxy, then a request inside the tunnel: the CONNECT is a 200
    record of its own, and the inner exchange gets its response."""
    hub = Hub(10)
    net = make_net(ConsoleFeed(hub).wrap([]), allow_clients=("192.0.2.0/24",))
    c = net.explicit()
    c.send(b"CONNECT 192.0.2.30:80 HTTP/1.1\r\nHost: 192.0.2.30:80\r\n\r\n")
    s = net.dials[0].accept()
    assert c.take().startswith(b"HTTP/1.1 200")
    c.send(b"GET /in HTTP/1.1\r\nHost: inner.example\r\n\r\n")
    assert s.take().startswith(b"GET /in")
    s.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    connect, inner = records(hub)
    assert (connect["method"], connect["status"], connect["done"], connect["error"]) == ("CONNECT", 200, True, None)
    assert (inner["url"], inner["status"], inner["done"]) == ("http://inner.example/in", 204, True)


def test_the_proxys_own_error_page_says_what_went_wrong(make_net):
    """An upstream that refuses: the client's 502 page is recorded with the reason as the error;
    a server's own 404 is no error."""
    hub = Hub(10)
    net = make_net(ConsoleFeed(hub).wrap([]))
    c = net.transparent()
    net.pending()[0].refuse()
    c.send(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n")
    while net.pending():
        net.pending()[0].refuse()
    assert c.take().startswith(b"HTTP/1.1 502")
    (r,) = records(hub)
    assert r["status"] == 502 and "refused" in r["error"] and r["done"]
    hub2, net2, c2, s2 = proxied(make_net)
    c2.send(b"GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n")
    s2.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n404 gone\n")
    assert records(hub2)[0]["error"] is None


def test_a_raw_tcp_flow_gets_a_record_of_its_own_at_its_first_bytes(make_net):
    """Bytes that are not HTTP: one flow record, shown at once, sized in both directions when it ends."""
    hub, net, c, s = proxied(make_net)
    c.send(b"\x16\x00 not http at all\r\n")
    (r,) = records(hub)
    assert r["id"] == r["flow"] and r["protocol"] == "tcp" and not r["done"]
    s.send(b"12345")
    c.close()
    net.settle()
    (r,) = records(hub)
    assert r["done"] and r["size"] == 20 + 5 and r["detail"]["bytes_down"] == 5 and r["duration"] is not None


def test_h2_streams_are_told_apart_by_stream_id(make_net):
    """Two concurrent HTTP/2 streams, answered out of order, each land on their own record."""
    hub = Hub(10)
    feed = ConsoleFeed(hub)
    net = make_net(feed.wrap([Block()]))
    c = net.intercepted("h2")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    for sid, path in ((1, "/fine"), (3, "/blocked")):
        client.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"),
                                  (":path", path)], end_stream=True)
    c.send(client.data_to_send())
    by_path = {r["url"].rsplit("/", 1)[1]: r for r in records(hub)}
    assert by_path["blocked"]["status"] == 403 and by_path["blocked"]["verdict"] == "blocked"
    assert by_path["fine"]["status"] is None and by_path["fine"]["protocol"] == "h2"


def unit_flow():
    return Flow(("192.0.2.2", 5555), ("192.0.2.10", 80), protocol="websocket")


def test_websocket_messages_are_the_latest_few_each_cut():
    """Past ``ws_messages`` the oldest go (counted); each keeps at most ``ws_cap`` bytes."""
    hub = Hub(10)
    feed = ConsoleFeed(hub, ws_messages=3, ws_cap=4)
    flow = unit_flow()
    req = Request("GET", "/chat", Headers([("Upgrade", "websocket")]), authority="a.example")
    feed.head.handle(req, flow)
    feed.tail.handle(req, flow)
    resp = Response(101, "Switching Protocols", request=req)
    feed.head.handle(resp, flow)
    feed.tail.handle(resp, flow)
    for i in range(5):
        feed.head.handle(WebSocketMessage(b"message %d" % i, direction=TO_SERVER if i % 2 else TO_CLIENT), flow)
    (r,) = records(hub)
    ws = r["detail"]["websocket"]
    assert [m["text"] for m in ws] == ["mess"] * 3 and [m["size"] for m in ws] == [9, 9, 9]
    assert [m["direction"] for m in ws] == ["to_client", "to_server", "to_client"]
    assert r["detail"]["websocket_dropped"] == 2 and r["messages"] == 5 and r["protocol"] == "websocket"


def exchange(feed, flow, n, head_fields=0, body=b""):
    """One exchange through the feed's taps, as the layers would hand it over (with ``head_fields``
    header fields of about 80 bytes each, both ways: both of a head's caps reached at 100)."""
    headers = Headers([(f"X-{i:03}", "v" * 75) for i in range(head_fields)])
    req = Request("GET", f"/{n}", headers, authority="a.example", body=None)
    feed.head.handle(req, flow)
    feed.tail.handle(req, flow)
    feed.head.handle(MessageEnd(message=req, direction=TO_SERVER), flow)
    resp = Response(200, "OK", Headers(list(headers.items())), body=None, request=req)
    feed.head.handle(resp, flow)
    feed.tail.handle(resp, flow)
    feed.tail.handle(BodyChunk(body, message=resp, direction=TO_CLIENT), flow)
    feed.tail.handle(MessageEnd(message=resp, direction=TO_CLIENT), flow)


def test_the_ring_stays_at_its_size_under_many_flows():
    """Five thousand exchanges on 250 flows leave exactly ``flows`` records, the newest."""
    hub = Hub(100)
    feed = ConsoleFeed(hub)
    for i in range(250):
        flow = unit_flow()
        for n in range(20):
            exchange(feed, flow, n)
        feed.head.flow_closed(flow)
    assert len(hub.ring) == 100
    assert hub.ring.records()[-1]["id"].endswith(".20") and all(r["done"] for r in hub.ring.records())


def test_memory_is_bounded_by_the_ring_and_the_caps_not_by_the_traffic():
    """Heads and bodies far over the caps, many times the ring's size of them: the memory held stays
    under what ``flows`` full records can take, and five times the traffic holds no more."""
    def held(n):
        hub = Hub(100)
        feed = ConsoleFeed(hub, body_cap=1024)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            flow = unit_flow()
            exchange(feed, flow, i, head_fields=120, body=b"b" * 20_000)
            feed.head.flow_closed(flow)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(hub.ring) == 100
        return after - before

    small, large = held(150), held(750)
    print(f"console: {small / 100:.0f} bytes per record at every cap")
    per_record = 64 * 1024  # docs/console.md's bound per record, Python's own overhead included
    assert small < 100 * per_record, small
    assert large < small * 1.5, (small, large)  # five times the flows, the same memory


class Passing(Tap):
    """Passes every unit on: a tap between head and tail that decides nothing."""

    def handle(self, unit, flow):
        return unit


def test_with_no_tap_between_head_and_tail_the_records_are_those_of_a_chain_with_one(make_net):
    """With nothing between head and tail the feed leaves out two of its tap calls per exchange
    (`ConsoleFeed.wrap`); the records, statuses, verdicts, sizes and tunnels stay the same."""
    def run(taps):
        hub, net, c, s = proxied(make_net, taps)
        c.send(b"GET /a HTTP/1.1\r\nHost: a.example\r\n\r\n")
        s.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        c.send(b"POST /b HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\nabc")
        s.send(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
        c.take()
        keys = ("method", "url", "status", "size", "verdict", "done", "error")
        return [tuple(r[k] for k in keys) + (r["detail"]["request"]["body"]["size"],) for r in records(hub)]

    plain, with_tap = run([]), run([Passing()])
    assert plain == with_tap
    assert [(r[0], r[2], r[3], r[-1]) for r in plain] == [("GET", 200, 5, 0), ("POST", 404, 2, 3)]
