"""The console with --workers 2, through real sockets: twistd's two processes, one page showing both."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

AUTH = "Basic " + base64.b64encode(b"ops:s3cret").decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    """A plain HTTP server on loopback answering hello PATH."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def two_workers(origin, tmp_path):
    """``twistd -n tinspect --workers 2 --console ... --console-auth``, forwarding to the origin; yields
    (proxy port, console port, log path, process) and stops it, waiting, however the test ends."""
    port, console = _free_port(), _free_port()
    log = tmp_path / "tinspect.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         f"--logfile={log}", "tinspect", "--listen", f"forward=127.0.0.1:{origin}@tcp:{port}:interface=127.0.0.1",
         "--workers", "2", "--console", str(console), "--console-auth", "ops:s3cret",
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: (log.parent / "tinspect.log.worker1").exists()
              and "_ConsoleSite starting on" in (log.parent / "tinspect.log.worker1").read_text()
              and "console on http://" in log.read_text(), "the workers did not start", proc)
        yield port, console, log, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _wait(check, what, proc, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert proc.poll() is None, f"twistd exited ({proc.returncode})"
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _get(port: int, path: str, auth: bool = True) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"authorization": AUTH} if auth else {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def _traffic(port: int, tag: str, n: int) -> None:
    """``n`` requests, each on its own connection (so SO_REUSEPORT spreads them over the workers)."""
    for i in range(n):
        status, body = _get(port, f"/{tag}{i}", auth=False)
        assert (status, body) == (200, f"hello /{tag}{i}".encode())


class _Stream:
    """One page's /events, read on a thread: the record ids seen so far."""

    def __init__(self, console: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", console), timeout=60)
        self.sock.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode())
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.data += chunk
        except OSError:
            pass

    def ids(self) -> set[str]:
        return set(re.findall(rb'"id":"([^"]+)"', self.data))

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=10)


def _flows(console: int) -> list[dict]:
    status, body = _get(console, "/api/flows")
    assert status == 200, body
    return json.loads(body)


def _by_worker(flows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"0": [], "1": []}
    for record in flows:
        out["1" if record["id"].startswith("w1-") else "0"].append(record)
    return out


def test_the_console_of_two_workers_shows_both_and_a_restarted_worker_again(two_workers):
    """Worker 0's console lists, streams and opens the flows of both workers, behind its password, and
    a worker killed and restarted by the supervisor shows its new flows on a page left open."""
    port, console, log, proc = two_workers
    assert _get(console, "/api/flows", auth=False)[0] == 401  # the fan-in does not bypass --console-auth
    page = _Stream(console)
    try:
        _traffic(port, "a", 24)
        _wait(lambda: len(_flows(console)) == 24, "the console does not list the 24 exchanges", proc)
        flows = _flows(console)
        worker1 = Path(str(log) + ".worker1").read_text()
        sockets = re.search(r"_ConsoleSite starting on '([^']+)'", worker1).group(1)
        assert stat.S_IMODE(os.stat(sockets).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(sockets)).st_mode) == 0o700
        by = _by_worker(flows)
        assert by["0"] and by["1"], [r["id"] for r in flows]  # the kernel spread the connections
        assert sorted(r["url"].rsplit("/", 1)[1] for r in flows) == sorted(f"a{i}" for i in range(24))
        assert len({r["id"] for r in flows}) == 24
        one = by["1"][0]
        status, body = _get(console, f"/api/flows/{one['id']}")
        detail = json.loads(body)
        assert status == 200 and detail["id"] == one["id"] and detail["detail"]["type"] == "exchange"
        assert detail["detail"]["response"]["status"] == 200 and detail["curl"].startswith("curl -X GET")
        assert _get(console, "/api/flows/w1-1-999.1")[0] == 404  # the worker's answer, passed on
        status, body = _get(console, "/api/har")
        assert status == 200 and len(json.loads(body)["log"]["entries"]) == 24
        status, body = _get(console, f"/api/har?ids={one['id']},{by['0'][0]['id']}")
        assert {e["request"]["url"] for e in json.loads(body)["log"]["entries"]} == {one["url"], by["0"][0]["url"]}
        _wait(lambda: page.ids() >= {r["id"].encode() for r in flows}, "the page did not get both workers'", proc)

        pid = int(re.findall(r"worker 1 started \(pid (\d+)\)", log.read_text())[-1])
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: len(re.findall(r"worker 1 started", log.read_text())) == 2, "worker 1 not restarted", proc)
        _wait(lambda: worker1.count("_ConsoleSite starting on") < Path(str(log) + ".worker1").read_text().count(
            "_ConsoleSite starting on"), "the restarted worker serves no console", proc)
        for _ in range(20):  # until the restarted worker got some
            _traffic(port, "b", 8)
            if any(r["id"].startswith("w1-") for r in _flows(console)):
                break
        fresh = [r for r in _flows(console) if r["id"].startswith("w1-")]
        assert fresh and all(r["url"].rsplit("/", 1)[1].startswith("b") for r in fresh)
        assert not {r["id"] for r in fresh} & {r["id"] for r in by["1"]}  # a new run's ids are new ids
        _wait(lambda: page.ids() >= {r["id"].encode() for r in fresh}, "the open page lost worker 1", proc)
        status, body = _get(console, f"/api/flows/{fresh[0]['id']}")
        assert status == 200 and json.loads(body)["url"] == fresh[0]["url"]
    finally:
        page.close()
