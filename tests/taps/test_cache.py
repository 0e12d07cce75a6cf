"""The cache tap's own server: a request waiting for a fetch in progress."""

from __future__ import annotations

import hashlib

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from taps.cache import KEY_HEADER, CacheTap, _Objects
from tinspect.flow import Flow
from tinspect.units import Request


def _waiting(tmp_path):
    """A tap with a fetch in progress, its flow, and a request to its server waiting for that fetch."""
    tap = CacheTap(str(tmp_path), patterns=[r"/blob"])
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    req = Request("GET", "/blob", authority="registry.test")
    tap.handle(req, flow)
    waiting = DummyRequest([b""])
    waiting.requestHeaders.setRawHeaders(KEY_HEADER, [hashlib.sha256(req.url.encode()).hexdigest().encode()])
    _Objects(tap).render(waiting)
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
