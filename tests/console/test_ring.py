"""The console's sans-IO core: ring bounds, filters, curl commands."""

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.console import FlowRing, curl_command, flow_record, heads, matches


def test_ring_evicts_oldest_past_capacity():
    """Only the newest ``capacity`` records stay, oldest first."""
    ring = FlowRing(3)
    for i in range(5):
        ring.put({"id": str(i)})
    assert [r["id"] for r in ring.records()] == ["2", "3", "4"]
    assert ring.get("0") is None


def test_ring_update_keeps_position():
    """Updating a record merges fields and does not count as a new one."""
    ring = FlowRing(2)
    ring.put({"id": "a", "status": None})
    ring.put({"id": "b"})
    ring.put({"id": "a", "status": 200})
    assert len(ring) == 2
    assert ring.get("a") == {"id": "a", "status": 200}


def test_ring_refuses_zero_capacity():
    """A ring of no records is a configuration error, said clearly."""
    with pytest.raises(ValueError, match="at least 1"):
        FlowRing(0)


@given(st.integers(1, 20), st.lists(st.integers(0, 50)))
def test_ring_never_exceeds_capacity(capacity, ids):
    """Whatever is put, the ring holds at most ``capacity`` records."""
    ring = FlowRing(capacity)
    for i in ids:
        ring.put({"id": str(i)})
    assert len(ring) <= capacity


REC = {"id": "1", "host": "Example.org", "client": "192.0.2.5:4000", "status": 404,
       "method": "GET", "url": "http://example.org/x", "verdict": "blocked", "error": None}


@pytest.mark.parametrize("kw, ok", [
    ({}, True),
    ({"host": "example"}, True),
    ({"host": "other"}, False),
    ({"client": "192.0.2."}, True),
    ({"client": "198.51."}, False),
    ({"status": "404"}, True),
    ({"status": "4xx"}, True),
    ({"status": "2xx"}, False),
    ({"text": "BLOCKED"}, True),
    ({"text": "/y"}, False),
])
def test_filters(kw, ok):
    """Each filter narrows by its own field; an empty filter passes everything."""
    assert matches(REC, **kw) is ok


def test_curl_command_round_trips_through_the_shell():
    """The command splits back into the method, URL, headers and body, minus curl's own."""
    cmd = curl_command("POST", "https://example.org/a b", [
        ("Host", "example.org"), ("X-Q", "it's"), ("Content-Length", "3")], b"a=1")
    assert shlex.split(cmd) == ["curl", "-X", "POST", "https://example.org/a b",
                                "-H", "X-Q: it's", "--data-raw", "a=1"]


def test_flow_record_summarises_a_tls_flow_without_timings():
    """A flow becomes a JSON-ready record; missing timings read as None, not an error."""
    import json

    from tinspect import Flow

    flow = Flow(("2001:db8::5", 4000), ("203.0.113.7", 443), protocol="h2")
    flow.sni, flow.alpn, flow.tls_version = "example.org", "h2", "TLSv1.3"
    rec = flow_record(flow)
    assert rec["client"] == "[2001:db8::5]:4000"
    assert rec["host"] == "example.org" and rec["url"] == "203.0.113.7:443"
    assert rec["tls"]["alpn"] == "h2" and rec["duration"] is None
    assert rec["timings"]["upstream_connected"] is None
    json.dumps(rec)


def test_heads_of_request_and_response():
    """Heads keep the first line and every header pair in order."""
    from tinspect.headers import Headers
    from tinspect.units import Request, Response

    req = Request("GET", "/a", headers=Headers([("Host", "x"), ("A", "1")]), authority="x")
    resp = Response(404, "Not Found", headers=Headers([("B", "2")]))
    assert heads(req) == {"version": "HTTP/1.1", "headers": [("Host", "x"), ("A", "1")],
                          "method": "GET", "url": "http://x/a"}
    assert heads(resp)["status"] == 404 and heads(resp)["headers"] == [("B", "2")]
