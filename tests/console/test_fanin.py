"""Worker 0's console over other workers' console sites on real Unix sockets, in one process."""

from __future__ import annotations

import json
import socket
import time

import pytest_twisted
from twisted.internet import reactor, threads

from tests.console.test_web import body, get
from tinspect.console.fanin import WorkerConsoles
from tinspect.console.hub import Hub
from tinspect.console.web import console_site


@pytest_twisted.inlineCallbacks
def _poll(check):
    """Fires once ``check()`` holds, polling between reactor turns (fails if it never does)."""
    deadline = time.monotonic() + 30
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        yield threads.deferToThread(lambda: None)


def _sites(tmp_path, hub0, hub1):
    """Worker 1's site on a Unix socket, worker 0's on TCP covering it and a worker 2 that is not there."""
    path = str(tmp_path / "console1.sock")
    unix = reactor.listenUNIX(path, console_site(hub1, reactor=reactor), mode=0o600)
    consoles = WorkerConsoles(reactor, {1: path, 2: str(tmp_path / "console2.sock")})
    tcp = reactor.listenTCP(0, console_site(hub0, reactor=reactor, workers=consoles), interface="127.0.0.1")
    return unix, tcp


@pytest_twisted.inlineCallbacks
def test_lists_and_details_cover_the_workers_that_answer(tmp_path):
    """The list merges worker 1's records with worker 0's (worker 2, not there, is left out); a record's
    detail comes from its worker, a missing worker's as 502, an unknown worker's as 404."""
    hub0, hub1 = Hub(10), Hub(10)
    hub0.publish({"id": "1", "time": 2.0, "url": "http://a/", "detail": {"type": "flow"}})
    hub1.publish({"id": "w1-7-1", "time": 1.0, "url": "http://b/", "detail": {"type": "flow", "n": 1}})
    unix, tcp = _sites(tmp_path, hub0, hub1)
    try:
        n = tcp.getHost().port
        flows = yield threads.deferToThread(get, n, "/api/flows")
        filtered = yield threads.deferToThread(get, n, "/api/flows?host=&text=b%2F")
        one = yield threads.deferToThread(get, n, "/api/flows/w1-7-1")
        missing = yield threads.deferToThread(get, n, "/api/flows/w2-5-1")
        unknown = yield threads.deferToThread(get, n, "/api/flows/w9-5-1")
    finally:
        yield unix.stopListening()
        yield tcp.stopListening()
    assert body(flows) == [{"id": "w1-7-1", "time": 1.0, "url": "http://b/"}, {"id": "1", "time": 2.0, "url": "http://a/"}]
    assert [r["id"] for r in body(filtered)] == ["w1-7-1"]
    assert body(one)["detail"] == {"type": "flow", "n": 1}
    assert b"502" in missing.split(b"\r\n")[0] and b"worker 2 did not answer" in missing
    assert b"404" in unknown.split(b"\r\n")[0]


@pytest_twisted.inlineCallbacks
def test_a_page_follows_the_workers_only_while_it_is_open(tmp_path):
    """An open page gets worker 1's records live; once it closes, worker 1 has no subscriber left, so it
    notes nothing per exchange."""
    hub0, hub1 = Hub(10), Hub(10)
    hub1.publish({"id": "w1-7-1", "time": 1.0})
    unix, tcp = _sites(tmp_path, hub0, hub1)
    try:
        assert hub1.subscribers == []
        page = socket.create_connection(("127.0.0.1", tcp.getHost().port), timeout=10)
        page.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        yield _poll(lambda: hub1.subscribers)
        hub1.publish({"id": "w1-7-2", "time": 2.0})
        data = b""
        while b'"w1-7-2"' not in data:
            data += yield threads.deferToThread(page.recv, 65536)
        page.close()
        yield _poll(lambda: not hub1.subscribers and not hub0.subscribers)
    finally:
        yield unix.stopListening()
        yield tcp.stopListening()
    assert b'"capacity": 30' in data  # three processes' rings (worker 2 counted though it is down)
    assert b'data: {"id":"w1-7-1","time":1.0}' in data and data.count(b"event: config") == 1  # worker 0's only


@pytest_twisted.inlineCallbacks
def test_a_page_that_does_not_read_is_dropped_not_buffered(tmp_path):
    """Worker 1's records pour in faster than a stalled page reads: worker 0 ends that page past its
    Hub's bound instead of holding the stream, and lets go of worker 1."""
    hub0, hub1 = Hub(10, max_pending=64 * 1024), Hub(5000)
    unix, tcp = _sites(tmp_path, hub0, hub1)
    try:
        page = socket.socket()
        page.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the rest waits in worker 0
        page.settimeout(10)
        page.connect(("127.0.0.1", tcp.getHost().port))
        page.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        yield _poll(lambda: hub1.subscribers)
        for i in range(4000):  # 16 MB of summaries, more than the kernel's buffers hold
            hub1.publish({"id": f"w1-7-{i}", "time": float(i), "url": "http://b/" + "x" * 4000})
        yield _poll(lambda: not hub1.subscribers)  # the page was ended, and its link with it
        data = b""
        try:
            while chunk := (yield threads.deferToThread(page.recv, 65536)):
                data += chunk
        except ConnectionResetError:  # aborted: what it had not read is gone
            pass
        page.close()
    finally:
        yield unix.stopListening()
        yield tcp.stopListening()
    assert data.count(b'data: {"id"') < 4000  # cut off, not all delivered
    assert json.loads(data.split(b"event: config\ndata: ", 1)[1].split(b"\n", 1)[0]) == {"capacity": 30}
