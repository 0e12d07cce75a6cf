"""The cache tap through real loopback sockets: twistd proxies, an origin that redirects to a "CDN", counted fetches."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO

BLOB = os.urandom(300_000)
DIGEST = hashlib.sha256(BLOB).hexdigest()
BLOB_PATH = f"/v2/library/app/blobs/sha256:{DIGEST}"


class Origin(ThreadingHTTPServer):
    """A registry and its CDN in one loopback server, counting what it is asked.

    ``/v2/.../blobs/sha256:<hex>`` answers ``307`` to ``/cdn/<hex>/data`` on
    ``cdn`` (another server) with a fresh signed query; ``/cdn/...`` serves
    ``blobs[hex]`` (at ``rate`` bytes a second when set; ``cut`` closes it
    half way). With ``token`` set, blob requests need ``Authorization: Bearer
    <token>`` (HEAD included), as a private registry's do.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.blobs: dict[str, bytes] = {}
        self.cdn: Origin | None = None
        self.token: str | None = None
        self.rate: int | None = None
        self.cut = False
        self.signed = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def count(self, method: str, prefix: str) -> int:
        """How many ``method`` requests for a path starting with ``prefix`` came."""
        return sum(1 for m, path, _ in self.requests if m == method and path.startswith(prefix))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Origin

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        srv = self.server
        srv.requests.append((self.command, self.path, self.headers.get("Authorization")))
        if srv.token is not None and self.path.startswith("/v2/") \
                and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self._empty(401)
            return
        if self.path.startswith("/v2/") and "/blobs/sha256:" in self.path and srv.cdn is not None:
            srv.signed += 1
            digest = self.path.rsplit(":", 1)[1]
            self.send_response(307)
            self.send_header("Location", f"http://127.0.0.1:{srv.cdn.port}/cdn/{digest}/data?sig={srv.signed}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = srv.blobs.get(self.path.split("?")[0].split("/")[2] if self.path.startswith("/cdn/") else self.path)
        if data is None:
            self._empty(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if head:
            return
        step = 16384
        for at in range(0, len(data), step):
            if srv.cut and at >= len(data) // 2:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data[at:at + step])
            if srv.rate:
                time.sleep(step / srv.rate)

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


def stored(cache: Path, key: str = f"sha256-{DIGEST}") -> dict:
    """The metadata of ``key``'s entry once it is in place (the proxy renames it in after the client has
    read the last byte, so the test waits for it, up to a bound)."""
    meta = cache / "objects" / f"{key}.json"
    deadline = time.monotonic() + 10
    while not meta.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return json.loads(meta.read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProxyProcess:
    """``twistd tinspect`` as an explicit proxy on loopback with the cache tap on ``cache_dir``."""

    def __init__(self, cache_dir: Path, log: Path, *options: str) -> None:
        self.port = _free_port()
        self.log_path = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             f"--logfile={log}", "tinspect", "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--taps", "cache",
             "--tap-option", f"cache.dir={cache_dir}", *options], cwd=REPO)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the proxy did not start: {self.log()}") from None
                time.sleep(0.05)

    def get(self, url: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        """One request for ``url`` through the proxy: status, headers (lower-case names), body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, url, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def logged(self, text: str) -> bool:
        """Whether the log says ``text``, waiting for it a while (the proxy may write it after the client
        has read its answer)."""
        deadline = time.monotonic() + 10
        while text not in self.log() and time.monotonic() < deadline:
            time.sleep(0.02)
        return text in self.log()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def origin():
    """A registry origin redirecting blob GETs to a CDN origin holding ``BLOB``."""
    registry, cdn = Origin(), Origin()
    registry.cdn = cdn
    cdn.blobs[DIGEST] = BLOB
    yield registry
    for srv in (registry, cdn):
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def proxies(tmp_path):
    """``start(*options)``: a proxy process on ``tmp_path/cache``; all are stopped at teardown."""
    started = []

    def start(*options):
        p = ProxyProcess(tmp_path / "cache", tmp_path / f"proxy{len(started)}.log", *options)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def test_a_redirected_blob_is_followed_by_the_proxy_kept_under_its_digest_and_then_served_from_disk(origin, proxies,
                                                                                                   tmp_path):
    """The client gets the CDN's 200 for the registry's 307; the second GET reaches neither registry nor CDN."""
    proxy = proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"
    status, headers, body = proxy.get(url)
    assert (status, hashlib.sha256(body).hexdigest()) == (200, DIGEST)
    assert "x-tinspect-cache" not in headers
    meta = stored(tmp_path / "cache")
    status, headers, body = proxy.get(url)
    assert (status, body == BLOB, headers.get("x-tinspect-cache")) == (200, True, "hit")
    assert (origin.count("GET", "/v2/"), origin.cdn.count("GET", "/cdn/")) == (1, 1)
    assert (tmp_path / "cache" / "objects" / f"sha256-{DIGEST}").read_bytes() == BLOB
    assert meta["url"] == url
    assert proxy.logged("following it to http://127.0.0.1:")


def test_redirects_are_not_followed_with_max_redirects_0(origin, proxies, tmp_path):
    """cache.max_redirects=0: the client gets the 307 itself and nothing is kept."""
    proxy = proxies("--tap-option", "cache.max_redirects=0")
    status, headers, _ = proxy.get(f"http://127.0.0.1:{origin.port}{BLOB_PATH}")
    assert status == 307 and headers["location"].startswith(f"http://127.0.0.1:{origin.cdn.port}/cdn/")
    assert origin.cdn.requests == [] and list((tmp_path / "cache" / "objects").iterdir()) == []


def test_a_redirected_blob_with_the_wrong_digest_is_relayed_not_kept_and_reported(origin, proxies, tmp_path):
    """The CDN serves other bytes than the digest names: the client gets them, the cache keeps nothing, says so."""
    origin.cdn.blobs[DIGEST] = b"corrupted " * 1000
    metrics = _free_port()
    proxy = proxies("--metrics", f"tcp:{metrics}:interface=127.0.0.1")
    status, _, body = proxy.get(f"http://127.0.0.1:{origin.port}{BLOB_PATH}")
    assert (status, body) == (200, b"corrupted " * 1000)
    assert proxy.logged("is not the digest the URL names")
    assert re.search(r"flow \d+: cache: http://\S+ not kept: sha256 [0-9a-f]{64} is not the digest", proxy.log())
    conn = http.client.HTTPConnection("127.0.0.1", metrics, timeout=30)
    conn.request("GET", "/metrics")
    assert "tinspect_cache_digest_mismatches_total 1" in conn.getresponse().read().decode().splitlines()
    conn.close()
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_redirected_transfer_cut_half_way_leaves_nothing(origin, proxies, tmp_path):
    """The CDN closes the connection in the middle of the blob: the client sees it cut, nothing is cached."""
    origin.cdn.cut = True
    proxy = proxies()
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        proxy.get(f"http://127.0.0.1:{origin.port}{BLOB_PATH}")
    assert proxy.logged("not kept: the transfer was cut")
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_a_private_entry_is_served_only_after_the_origin_confirms_each_request_with_its_own_credentials(
        origin, proxies, tmp_path):
    """Fetched with a token: a request with a wrong or no token goes to the origin (401); a right one is
    confirmed by a HEAD with its own token and served from disk."""
    origin.token = "right"
    proxy = proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"
    status, _, body = proxy.get(url, {"Authorization": "Bearer right"})
    assert (status, body == BLOB) == (200, True)
    assert stored(tmp_path / "cache")["credentials"] is True
    assert proxy.get(url, {"Authorization": "Bearer wrong"})[0] == 401
    assert proxy.get(url)[0] == 401
    status, headers, body = proxy.get(url, {"Authorization": "Bearer right"})
    assert (status, body == BLOB, headers.get("x-tinspect-cache")) == (200, True, "hit")
    heads = [(path, auth) for method, path, auth in origin.requests if method == "HEAD"]
    assert heads == [(BLOB_PATH, "Bearer wrong"), (BLOB_PATH, None), (BLOB_PATH, "Bearer right")]
    assert origin.count("GET", "/v2/") == 3  # the first fetch, and the two refused requests
    assert origin.cdn.count("GET", "/cdn/") == 1 and all(auth is None for _, _, auth in origin.cdn.requests)


def test_an_entry_fetched_without_credentials_is_served_without_asking(origin, proxies, tmp_path):
    """A public entry's hits cost no round trip, whatever the later request carries."""
    proxy = proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"
    proxy.get(url)
    assert "credentials" not in stored(tmp_path / "cache")
    assert proxy.get(url, {"Cookie": "session=1"})[2] == BLOB
    assert [m for m, _, _ in origin.requests] == ["GET"]


def test_a_client_cannot_name_an_entry_to_the_caches_own_server(origin, proxies, tmp_path):
    """A request to the tap's loopback server carrying the tap's key header has the header removed on the way:
    the server does not hand it the entry (private or not) it names."""
    proxy = proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"
    proxy.get(url)
    stored(tmp_path / "cache")
    proxy.get(url)  # a hit: the tap's own server listens now
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    ports = {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if f"pid={proxy.proc.pid}," in line}
    (own,) = ports - {proxy.port}
    status, _, body = proxy.get(f"http://127.0.0.1:{own}/anything", {"X-Tinspect-Cache-Key": f"sha256-{DIGEST}"})
    assert (status, body) == (404, b"not in the cache\n")


def test_two_proxy_processes_sharing_a_directory_fetch_a_blob_once(origin, proxies, tmp_path):
    """Two workers asked for the same blob at once: the second waits for the first's fetch and serves it from
    disk, so registry and CDN each see one request; no lock file is left."""
    origin.cdn.rate = 400_000  # the 300 kB blob streams for most of a second
    one, two = proxies(), proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"
    first: list = []
    thread = threading.Thread(target=lambda: first.append(one.get(url)))
    thread.start()
    deadline = time.monotonic() + 10
    while origin.cdn.count("GET", "/cdn/") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    status, headers, body = two.get(url)
    thread.join(30)
    assert (status, body == BLOB, headers.get("x-tinspect-cache")) == (200, True, "hit")
    assert first[0][0] == 200 and first[0][2] == BLOB
    assert (origin.count("GET", "/v2/"), origin.cdn.count("GET", "/cdn/")) == (1, 1)
    assert two.logged("another worker is fetching")
    stored(tmp_path / "cache")
    locks = tmp_path / "cache" / "locks"
    deadline = time.monotonic() + 10  # released just after the entry is renamed into place
    while list(locks.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(locks.iterdir()) == []


def test_two_proxy_processes_fetch_a_blob_once_for_http2_clients_too(origin, proxies, tmp_path):
    """The same over HTTP/2 (curl, h2c in a CONNECT tunnel): the second worker's request waits at its cache
    server, not on its connection, and is answered from the first worker's entry."""
    origin.cdn.rate = 400_000
    one, two = proxies(), proxies()
    url = f"http://127.0.0.1:{origin.port}{BLOB_PATH}"

    def curl(proxy):
        return subprocess.run(["curl", "-sS", "-p", "-x", f"http://127.0.0.1:{proxy.port}", "--http2-prior-knowledge",
                               "-D", "/dev/stderr", url], capture_output=True, timeout=60)

    first: list = []
    thread = threading.Thread(target=lambda: first.append(curl(one)))
    thread.start()
    deadline = time.monotonic() + 10
    while origin.cdn.count("GET", "/cdn/") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = curl(two)
    thread.join(60)
    assert first[0].stdout == BLOB and second.stdout == BLOB, (first[0].stderr, second.stderr)
    assert b"HTTP/2 200" in second.stderr and b"x-tinspect-cache: hit" in second.stderr
    assert (origin.count("GET", "/v2/"), origin.cdn.count("GET", "/cdn/")) == (1, 1)
    assert two.logged("another worker is fetching") and two.logged("the cache answers when it is stored")
