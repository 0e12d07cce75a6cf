"""The cache tap in memory: its server's waiting requests, digest keys, workers sharing a directory, metrics."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from taps.cache import CacheTap
from tinspect.chain import TapChain
from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.taplib import KEY_HEADER
from tinspect.units import BodyChunk, Direction, MessageEnd, Request, Response


def _waiting(tmp_path):
    """A tap with a fetch in progress, its flow, and a request to its server waiting for that fetch."""
    tap = CacheTap(str(tmp_path), patterns=[r"/blob"])
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    req = Request("GET", "/blob", authority="registry.test")
    tap.handle(req, flow)
    waiting = DummyRequest([b""])
    waiting.requestHeaders.setRawHeaders(KEY_HEADER, [hashlib.sha256(req.url.encode()).hexdigest().encode()])
    tap.server.resource.render(waiting)
    return tap, flow, waiting


def test_a_waiting_request_is_told_when_the_fetch_was_not_kept(tmp_path):
    """The fetch is cut: the request that waited for it gets a 502 explaining why."""
    tap, flow, waiting = _waiting(tmp_path)
    assert waiting.written == []
    tap.flow_closed(flow)
    assert waiting.responseCode == 502
    assert waiting.written == [b"the fetch this request waited for was not kept; ask again\n"]
    assert waiting.finished == 1


def test_a_waiting_request_whose_client_went_away_gets_nothing(tmp_path):
    """The client of the waiting request disconnected before the fetch ended: nothing is written to it."""
    tap, flow, waiting = _waiting(tmp_path)
    waiting.processingFailed(Failure(ConnectionDone()))
    tap.flow_closed(flow)
    assert waiting.written == []
    assert waiting.finished == 0


DATA = b"layer bytes " * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


def _fetch(tap, url, data=DATA, flow=None):
    """One GET of ``url`` through the tap, its 200 answer carrying ``data``; the request as the tap passed it on."""
    flow = flow or Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    scheme, rest = url.split("://", 1)
    authority, _, target = rest.partition("/")
    req = tap.handle(Request("GET", "/" + target, scheme=scheme, authority=authority), flow)
    if req.destination is not None:
        return req
    resp = Response(200, headers=Headers([(b"content-length", str(len(data)).encode())]), body=None, request=req)
    tap.handle(resp, flow)
    tap.handle(BodyChunk(data, message=resp, direction=Direction.TO_CLIENT), flow)
    tap.handle(MessageEnd(message=resp, direction=Direction.TO_CLIENT), flow)
    return req


def test_a_digest_from_two_hosts_and_queries_is_one_entry(tmp_path):
    """The second URL naming the same digest, on another host with another signed query, is a hit."""
    tap = CacheTap(str(tmp_path))
    assert _fetch(tap, f"https://registry.test/v2/app/blobs/sha256:{DIGEST}").destination is None
    again = _fetch(tap, f"https://cdn.test/blobs/sha256/{DIGEST[:2]}/{DIGEST}/data?sig=2")
    assert again.destination is not None and again.headers[KEY_HEADER] == f"sha256-{DIGEST}"
    assert [p.name for p in (tmp_path / "objects").iterdir() if p.suffix != ".json"] == [f"sha256-{DIGEST}"]
    assert (tap.hits, tap.misses) == (1, 1)


def test_bytes_whose_sha256_is_not_the_digest_are_not_kept_and_the_flow_is_named(tmp_path):
    """A body that does not hash to the digest its URL names is dropped, and the log names the flow."""
    tap = CacheTap(str(tmp_path))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
        _fetch(tap, f"https://registry.test/v2/app/blobs/sha256:{'0' * 64}", flow=flow)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert list((tmp_path / "objects").iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
    (event,) = [e for e in events if "not the digest" in str(e.get("problem"))]
    assert event["flow_id"] == flow.id and formatEvent(event).startswith(f"flow {flow.id}: cache: ")
    assert ("tinspect_cache_digest_mismatches_total", "counter") == tap.metrics()[-1][:2] and tap.mismatches == 1


def test_index_files_are_not_kept_by_default(tmp_path):
    """apt's Packages.xz matches .xz but is an index: it passes through untouched."""
    tap = CacheTap(str(tmp_path))
    for _ in range(2):
        assert _fetch(tap, "http://deb.test/debian/dists/stable/main/binary-amd64/Packages.xz").destination is None
    assert list((tmp_path / "objects").iterdir()) == [] and (tap.hits, tap.misses) == (0, 0)


def _blob_request():
    return Request("GET", f"/v2/app/blobs/sha256:{DIGEST}", scheme="https", authority="registry.test")


@pytest_twisted.ensureDeferred
async def test_a_key_another_worker_is_fetching_waits_for_it_and_is_then_a_hit(tmp_path):
    """Two workers on one directory: while one holds the key's lock the other's request waits, then is
    served from what the first stored; the lock file is gone."""
    one, other = CacheTap(str(tmp_path)), CacheTap(str(tmp_path))
    flow, other_flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80)), Flow(("192.0.2.3", 40000), ("198.51.100.2", 80))
    req = one.handle(_blob_request(), flow)
    waiting = other.handle(_blob_request(), other_flow)
    assert isinstance(waiting, Deferred) and not waiting.called
    one.handle(Response(200, headers=Headers([(b"content-length", str(len(DATA)).encode())]), body=DATA,
                        request=req), flow)
    routed = await waiting
    assert routed.destination is not None and routed.headers[KEY_HEADER] == f"sha256-{DIGEST}"
    assert (other.hits, other.misses) == (1, 0)
    assert list((tmp_path / "locks").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_fetch_another_worker_let_go_is_taken_over_by_the_waiting_one(tmp_path):
    """The first worker's fetch is cut: the waiting request goes upstream itself, and its answer is kept."""
    one, other = CacheTap(str(tmp_path)), CacheTap(str(tmp_path))
    flow, other_flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80)), Flow(("192.0.2.3", 40000), ("198.51.100.2", 80))
    one.handle(_blob_request(), flow)
    waiting = other.handle(_blob_request(), other_flow)
    one.flow_closed(flow)
    req = await waiting
    assert req.destination is None and f"sha256-{DIGEST}" in other._fills
    other.handle(Response(200, headers=Headers([(b"content-length", str(len(DATA)).encode())]), body=DATA,
                          request=req), other_flow)
    assert (tmp_path / "objects" / f"sha256-{DIGEST}").read_bytes() == DATA
    assert list((tmp_path / "locks").iterdir()) == []


def test_lock_files_left_by_a_crashed_worker_are_removed_at_start(tmp_path):
    """A lock file nobody holds (its worker died) is cleaned up when a tap starts on the directory."""
    CacheTap(str(tmp_path))
    (tmp_path / "locks" / f"sha256-{DIGEST}").write_bytes(b"")
    CacheTap(str(tmp_path))
    assert list((tmp_path / "locks").iterdir()) == []


def test_an_entry_another_worker_stored_is_a_hit(tmp_path):
    """A worker serves from disk what another worker sharing the directory stored after it started."""
    one, other = CacheTap(str(tmp_path)), CacheTap(str(tmp_path))
    url = f"https://registry.test/v2/app/blobs/sha256:{DIGEST}"
    _fetch(one, url)
    assert _fetch(other, url).destination is not None and other.hits == 1


def test_the_lock_is_a_flock_other_processes_see(tmp_path):
    """While a fetch is in progress another process cannot take ``locks/<key>``; once stored, the file is gone."""
    tap = CacheTap(str(tmp_path))
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    req = tap.handle(Request("GET", f"/v2/app/blobs/sha256:{DIGEST}", authority="registry.test"), flow)
    probe = [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'rb');"
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path / "locks" / f"sha256-{DIGEST}")]
    assert subprocess.run(probe, capture_output=True).returncode != 0
    resp = Response(200, headers=Headers([(b"content-length", str(len(DATA)).encode())]), body=DATA, request=req)
    tap.handle(resp, flow)
    assert not (tmp_path / "locks" / f"sha256-{DIGEST}").exists()


def test_hits_misses_and_served_bytes_reach_the_metrics(tmp_path):
    """The tap's counters are rendered under their Prometheus names."""
    tap = CacheTap(str(tmp_path))
    tap.hits, tap.misses, tap.served_bytes = 3, 2, 12345
    ctx = ProxyContext(TapChain([tap]), reactor=object())
    samples = ctx.metrics.render(ctx).splitlines()
    assert {"tinspect_cache_hits_total 3", "tinspect_cache_misses_total 2",
            "tinspect_cache_served_bytes_total 12345", "# TYPE tinspect_cache_hits_total counter"} <= set(samples)


@pytest_twisted.ensureDeferred
async def test_the_caches_server_waiting_for_another_workers_private_fetch_fails_closed(tmp_path):
    """HTTP/2 requests wait at the tap's server for another worker's fetch; if that turns out to be a private
    entry, they get a 502 (ask again, and be checked), never its bytes."""
    one, other = CacheTap(str(tmp_path)), CacheTap(str(tmp_path))
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    private = _blob_request()
    private.headers["Cookie"] = "session=1"
    req = one.handle(private, flow)
    (tmp_path / "locks" / f"sha256-{DIGEST}").write_bytes(b"")  # as if its mark had not been written yet
    waiting = DummyRequest([b""])
    waiting.requestHeaders.setRawHeaders(KEY_HEADER, [f"sha256-{DIGEST}".encode()])
    finished = waiting.notifyFinish()
    other.server.resource.render(waiting)
    one.handle(Response(200, headers=Headers([(b"content-length", str(len(DATA)).encode())]), body=DATA,
                        request=req), flow)
    await finished
    assert waiting.responseCode == 502 and b"".join(waiting.written).startswith(b"the fetch this request waited")


def test_http2_requests_for_another_workers_private_fetch_go_to_the_origin(tmp_path):
    """The lock file says the other worker's fetch is private: an HTTP/2 request is not routed to wait for it."""
    one, other = CacheTap(str(tmp_path)), CacheTap(str(tmp_path))
    private = _blob_request()
    private.headers["Authorization"] = "Bearer t"
    one.handle(private, Flow(("192.0.2.2", 40000), ("198.51.100.2", 80)))
    h2 = _blob_request()
    h2.stream_id = 1
    assert other.handle(h2, Flow(("192.0.2.3", 40000), ("198.51.100.2", 80))).destination is None
    public_too = _blob_request()
    public_too.stream_id = 3
    (tmp_path / "locks" / f"sha256-{DIGEST}").write_bytes(b"")
    assert other.handle(public_too, Flow(("192.0.2.3", 40001), ("198.51.100.2", 80))).destination is not None
