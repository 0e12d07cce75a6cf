"""The console site over a real socket: the page, records as JSON, Basic authentication, the event stream."""

import base64
import json
import socket

import pytest_twisted
from twisted.internet import reactor, threads

from tinspect.console.hub import Hub
from tinspect.console.web import console_site


def get(port, path, auth=None, stream=False):
    """One raw HTTP/1.1 GET; for streams, read until the second event arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        if auth:
            head += "Authorization: Basic " + base64.b64encode(auth.encode()).decode() + "\r\n"
        s.sendall(head.encode() + b"\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if stream and data.count(b"data: ") >= 2:
                break
        return data


def serve(hub, auth=None):
    return reactor.listenTCP(0, console_site(hub, auth), interface="127.0.0.1")


@pytest_twisted.inlineCallbacks
def test_page_and_records_are_served():
    """``/`` is the packaged page, ``/api/flows`` the ring, ``/api/flows/<id>`` one record or 404."""
    hub = Hub(10)
    hub.publish({"id": "7", "url": "http://x/"})
    port = serve(hub)
    try:
        n = port.getHost().port
        page = yield threads.deferToThread(get, n, "/")
        flows = yield threads.deferToThread(get, n, "/api/flows")
        one = yield threads.deferToThread(get, n, "/api/flows/7")
        gone = yield threads.deferToThread(get, n, "/api/flows/8")
        escape = yield threads.deferToThread(get, n, "/../setup.cfg")
    finally:
        yield port.stopListening()
    assert b"200 OK" in page and b"tinspect console" in page
    assert json.loads(flows.split(b"\r\n\r\n", 1)[1]) == [{"id": "7", "url": "http://x/"}]
    assert b'"id": "7"' in one and b"404" in gone.split(b"\r\n")[0] and b"404" in escape.split(b"\r\n")[0]


@pytest_twisted.inlineCallbacks
def test_basic_auth_is_required_when_set():
    """With auth, no credentials or wrong ones get 401; the right ones get the page."""
    port = serve(Hub(10), "ops:s3cret")
    try:
        n = port.getHost().port
        none = yield threads.deferToThread(get, n, "/")
        wrong = yield threads.deferToThread(get, n, "/", "ops:nope")
        right = yield threads.deferToThread(get, n, "/", "ops:s3cret")
    finally:
        yield port.stopListening()
    assert b"401" in none.split(b"\r\n")[0] and b"401" in wrong.split(b"\r\n")[0]
    assert b"200" in right.split(b"\r\n")[0]


@pytest_twisted.inlineCallbacks
def test_event_stream_replays_and_follows():
    """``/events`` is text/event-stream: the kept record first, then one published while it is open."""
    hub = Hub(10)
    hub.publish({"id": "1"})
    port = serve(hub)
    try:
        reading = threads.deferToThread(get, port.getHost().port, "/events", None, True)
        while not hub.subscribers:
            yield threads.deferToThread(lambda: None)
        hub.publish({"id": "2"})
        data = yield reading
    finally:
        yield port.stopListening()
    assert b"text/event-stream" in data
    assert b'data: {"id":"1"}' in data and b'data: {"id":"2"}' in data
