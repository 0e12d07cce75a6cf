"""The console site over a real socket: the page, records as JSON, Basic authentication, the event stream."""

import base64
import json
import socket

import pytest_twisted
from twisted.internet import reactor, threads

from tinspect.console.hub import Hub
from tinspect.console.web import console_site
from tinspect.layers.http.explicit import ClientNetworks, ProxyAuth


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
            if stream and data.count(b"data: {\"id\"") >= 2:
                break
        return data


def serve(hub, auth=None, clients=None):
    return reactor.listenTCP(0, console_site(hub, ProxyAuth([auth]) if auth else None, clients),
                             interface="127.0.0.1")


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
    assert b"text/event-stream" in data and b'event: config\ndata: {"capacity": 10}' in data
    assert b'data: {"id":"1"}' in data and b'data: {"id":"2"}' in data


EXCHANGE = {
    "id": "3.1", "flow": "3", "time": 1.0, "client": "192.0.2.2:5555", "protocol": "http/1.1", "host": "a.example",
    "method": "POST", "url": "http://a.example/form", "status": 404, "size": 2, "duration": 0.5, "verdict": None,
    "error": None, "done": True,
    "detail": {"type": "exchange", "flow": "3", "server": ["192.0.2.10", 80],
               "request": {"method": "POST", "url": "http://a.example/form", "version": "HTTP/1.1",
                           "headers": [["Host", "a.example"], ["X-A", "1"]], "body": {"size": 3, "text": "a=1"}},
               "response": {"status": 404, "reason": "Not Found", "version": "HTTP/1.1", "headers": [],
                            "body": {"size": 2, "text": "no"}},
               "timings": {"start": 1.0, "request_end": 1.1, "response_start": 1.2, "end": 1.5}},
}
OTHER = {"id": "4", "flow": "4", "host": "b.example", "status": None, "protocol": "tcp",
         "detail": {"type": "flow"}}


def body(data):
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest_twisted.inlineCallbacks
def test_one_record_comes_whole_with_its_curl_and_the_list_without_details():
    """``/api/flows/<id>`` has the detail and a curl command; the list and its filters carry summaries."""
    hub = Hub(10)
    hub.publish(dict(EXCHANGE))
    hub.publish(dict(OTHER))
    port = serve(hub)
    try:
        n = port.getHost().port
        one = yield threads.deferToThread(get, n, "/api/flows/3.1")
        listed = yield threads.deferToThread(get, n, "/api/flows")
        narrowed = yield threads.deferToThread(get, n, "/api/flows?status=4xx")
    finally:
        yield port.stopListening()
    record = body(one)
    assert record["detail"]["request"]["headers"] == [["Host", "a.example"], ["X-A", "1"]]
    assert record["curl"] == "curl -X POST http://a.example/form -H 'X-A: 1' --data-raw a=1"
    assert [r["id"] for r in body(listed)] == ["3.1", "4"] and "detail" not in body(listed)[0]
    assert [r["id"] for r in body(narrowed)] == ["3.1"]


@pytest_twisted.inlineCallbacks
def test_har_of_the_selection_opens_as_har_12():
    """``/api/har`` with a filter holds the selected exchanges only, in HAR 1.2 (the recorder's converter)."""
    hub = Hub(10)
    hub.publish(dict(EXCHANGE))
    hub.publish(dict(OTHER))
    port = serve(hub)
    try:
        n = port.getHost().port
        everything = yield threads.deferToThread(get, n, "/api/har")
        none = yield threads.deferToThread(get, n, "/api/har?host=nothing.example")
    finally:
        yield port.stopListening()
    assert b"attachment" in everything.split(b"\r\n\r\n")[0]
    log = body(everything)["log"]
    assert log["version"] == "1.2"
    (entry,) = log["entries"]  # the raw TCP flow is no HTTP exchange
    assert entry["request"]["url"] == "http://a.example/form" and entry["response"]["status"] == 404
    assert entry["timings"]["wait"] == 100.0 and entry["request"]["postData"]["text"] == "a=1"
    assert body(none)["log"]["entries"] == []


@pytest_twisted.inlineCallbacks
def test_a_client_outside_the_networks_is_closed_without_an_answer(log_events):
    """A viewer from outside the console's networks gets no byte back, and the refusal is logged."""
    def attempt(n):
        try:
            return get(n, "/")
        except ConnectionResetError:
            return b""

    port = serve(Hub(10), clients=ClientNetworks(["192.0.2.0/24"]))
    try:
        got = yield threads.deferToThread(attempt, port.getHost().port)
    finally:
        yield port.stopListening()
    assert got == b""
    assert any("not in the client networks" in (e.get("log_format") or "") for e in log_events)
