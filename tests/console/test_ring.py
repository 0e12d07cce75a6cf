"""The console's sans-IO core: ring bounds, filters, curl commands."""

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.console import FlowRing, curl_command, heads, matches, summary
from tinspect.console.ring import cut_head, unpack_head
from tinspect.headers import Headers


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


def test_heads_of_request_and_response():
    """Heads keep the first line and every header pair in order."""
    from tinspect.headers import Headers
    from tinspect.units import Request, Response

    req = Request("GET", "/a", headers=Headers([("Host", "x"), ("A", "1")]), authority="x")
    resp = Response(404, "Not Found", headers=Headers([("B", "2")]))
    assert heads(req) == {"version": "HTTP/1.1", "headers": [("Host", "x"), ("A", "1")],
                          "method": "GET", "url": "http://x/a"}
    assert heads(resp)["status"] == 404 and heads(resp)["headers"] == [("B", "2")]


def test_heads_are_cut_at_the_cap_and_say_how_much():
    """Fields past the cap's bytes are left out and counted; those before are kept in order."""
    from tinspect.headers import Headers
    from tinspect.units import Response

    resp = Response(200, headers=Headers([("A", "1"), ("Big", "x" * 50), ("B", "2"), ("C", "3")]))
    assert heads(resp, cap=10) == {"version": "HTTP/1.1", "headers": [("A", "1"), ("B", "2"), ("C", "3")],
                                   "headers_cut": 1, "status": 200, "reason": ""}


def test_summary_leaves_the_detail_out():
    """The list's summary is the record minus its detail."""
    assert summary({"id": "1", "status": 200, "detail": {"x": 1}}) == {"id": "1", "status": 200}


def test_packed_heads_give_back_their_fields_even_with_a_nul_or_none():
    """`cut_head` packs fields into bytes and `unpack_head` restores them: empty values, a NUL inside a
    value (kept as pairs) and an empty head all come back as they were."""
    for fields in ([], [(b"A", b"")], [(b"A", b"x\0y"), (b"B", b"c")], [(b"Host", b"a"), (b"X", b"1")]):
        packed, cut = cut_head(fields)
        assert cut == 0 and unpack_head(packed) == [(n.decode(), v.decode()) for n, v in fields]


def test_a_packed_head_is_a_copy_a_later_change_does_not_reach():
    """Changing the message's headers after the console kept them leaves the kept head as it was."""
    headers = Headers([("Host", "a.example"), ("Cookie", "x")])
    packed, _ = cut_head(headers.fields)
    headers["Cookie"] = "changed"
    del headers["Host"]
    assert unpack_head(packed) == [("Host", "a.example"), ("Cookie", "x")]
