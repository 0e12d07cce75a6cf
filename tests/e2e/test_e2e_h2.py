"""End to end, HTTP/2: curl, nghttp, h2load and small h2 clients of our own against nginx
and nghttpd, through real TPROXY rules with ``twistd tinspect`` in the gateway.

Two ways in: TLS interception with ALPN h2 (h2 on both legs), and h2c with prior
knowledge on plain port 80, to a server that speaks h2c or, translated by the
proxy, to one that speaks only HTTP/1.1. Checks favour what really happened
(statuses, bytes, sha256, the protocol in nginx's access log, frames on the
wire) over the proxy's wording, except for the logger tap's lines, whose shape
is shared with HTTP/1.1.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from typing import Callable

import pytest

from tests.conftest import REPO
from tinspect.lab.netlab import SERVER4, SERVER6, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

FAMILIES = [pytest.param("-4", id="ipv4"), pytest.param("-6", id="ipv6")]
HTTPS = f"https://{SERVER_NAME}"
H2C = f"http://{SERVER_NAME}"


def sh(lab, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A shell command in the client namespace (from the repository, for ``-m tests...``)."""
    return lab.exec(lab.client, "sh", "-c", command, check=False, timeout=timeout, cwd=REPO)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"{proc.args} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def curl(lab, *args: str, timeout: float = 30) -> str:
    return ok(lab.exec(lab.client, "curl", "-sS", *args, check=False, timeout=timeout))


def h2peer(lab, *args: str, timeout: float = 60) -> str:
    return ok(lab.exec(lab.client, sys.executable, "-m", "tests.h2peers", *args, check=False, timeout=timeout,
                       cwd=REPO))


def wait_log(p, pattern: str, timeout: float = 5.0) -> str:
    """The proxy log once ``pattern`` is in it (log lines are written a little after the fact)."""
    deadline = time.monotonic() + timeout
    while True:
        log = p.log()
        if re.search(pattern, log):
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the proxy log:\n{log[-6000:]}")
        time.sleep(0.1)


def random_file(path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def nghttp_stats(out: str) -> dict[str, tuple[str, str]]:
    """``{path: (status, size)}`` from the table ``nghttp -s`` prints."""
    rows = re.findall(r"^\s*\d+\s+\+\S+\s+\S+\s+\S+\s+(\d{3})\s+(\S+)\s+(\S+)\s*$", out, re.M)
    return {path: (code, size) for code, size, path in rows}


def start_nghttpd(lab, tmp_path, pki, *, tls: bool, extra=()) -> Callable[[], str]:
    """nghttpd -v in the server namespace: TLS on 443 with the lab server's certificate, or
    h2c (prior knowledge only) on 80. Serves ``tmp_path/docs`` (``file.txt`` in it);
    returns a function giving its frame log so far."""
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "file.txt").write_text("trailer body\n")
    logfile = tmp_path / "nghttpd.log"
    with open(logfile, "w") as out:
        argv = ["nghttpd", "-v", "-d", str(docs), *extra]
        argv += ["443", str(pki["key"]), str(pki["chain"])] if tls else ["--no-tls", "80"]
        proc = lab.spawn(lab.server, *argv, stdout=out, stderr=subprocess.STDOUT)
    lab.wait_listening(lab.server, 443 if tls else 80, proc=proc)
    return logfile.read_text


# --- TLS interception: h2 on both legs -------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_curl_gets_h2_through_interception_and_the_server_sees_h2(lab, https, tls_proxy, pki, family):
    """curl --http2 trusting our CA gets HTTP/2; nginx is asked over HTTP/2 too; taps see the exchange."""
    p = tls_proxy()
    out = curl(lab, family, "--http2", "--cacert", str(pki["ours"]), "-w", "%{http_version}", f"{HTTPS}/")
    assert out == "hello tls\n2"
    assert [(r, s) for _, r, s in https.access_log()] == [("GET / HTTP/2.0", "200")]
    log = wait_log(p, r"flow \d+ to_client response 200\b")
    assert re.search(r"flow \d+: TLS intercepted for server\.test \(TLSv1\.3, ALPN h2\)", log), log
    assert re.search(r"flow \d+ to_server request GET https://server\.test/ ", log), log
    assert re.search(r"tls facts: sni=server\.test alpn=h2 version=TLSv1\.3", log), log


def test_nghttp_downloads_intact_over_intercepted_h2(lab, https, tls_proxy, pki):
    """nghttp (h2 only, no HTTP/1.1 fallback) fetches 5 MiB and three pages on one connection."""
    digest = random_file(https.root / "blob.bin", 5 * 1024 * 1024)
    p = tls_proxy(taps=("logger",))
    out = ok(sh(lab, f"nghttp {HTTPS}/blob.bin | sha256sum"))
    assert out.split()[0] == digest
    out = ok(sh(lab, f"nghttp -n -s {HTTPS}/ {HTTPS}/missing {HTTPS}/blob.bin"))
    stats = nghttp_stats(out)
    assert {path: code for path, (code, _) in stats.items()} == {"/": "200", "/missing": "404", "/blob.bin": "200"}, out
    assert stats["/"][1] == "10" and stats["/blob.bin"][1] == "5M", out  # (nghttp rounds to units)
    wait_log(p, r"flow \d+: TLS intercepted for server\.test \(TLSv1\.3, ALPN h2\)")
    assert all(r.endswith(" HTTP/2.0") for _, r, _ in https.access_log()), https.access_log()


def test_tap_answers_one_stream_while_the_others_get_the_server(lab, https, tls_proxy, pki):
    """Three streams on one connection, the middle one answered by the Block tap: 200, 403, 404."""
    p = tls_proxy(taps=("logger", "tests.lab_taps:Block"))
    out = ok(sh(lab, f"nghttp -n -s {HTTPS}/ {HTTPS}/blocked/x {HTTPS}/missing"))
    block_page = f"blocked by tinspect: {HTTPS}/blocked/x\n"
    stats = nghttp_stats(out)
    assert {path: code for path, (code, _) in stats.items()} == {"/": "200", "/blocked/x": "403", "/missing": "404"}, out
    assert stats["/"][1] == "10" and stats["/blocked/x"][1] == str(len(block_page)), out
    page = ok(sh(lab, f"nghttp {HTTPS}/blocked/x"))
    assert page == block_page
    log = https.access_log()
    assert sorted(r for _, r, _ in log) == ["GET / HTTP/2.0", "GET /missing HTTP/2.0"], log
    assert len({conn for conn, _, _ in log}) == 1, f"the two forwarded streams should share one upstream: {log}"
    wait_log(p, r"flow \d+ to_client response 403\b")


@pytest.mark.parametrize("version", ["--http2", "--http1.1"])
def test_tap_routes_some_requests_to_another_http1_server(lab, https, tls_proxy, pki, tmp_path, version):
    """The Route tap sends /routed/... to a plain HTTP/1.1 nginx on port 8081 (translated from h2,
    or a second destination for HTTP/1.1); the rest of the connection still goes to the original server."""
    other = Nginx(lab, lab.server, tmp_path / "other", port=8081)
    (other.root / "routed").mkdir()
    (other.root / "routed" / "x.txt").write_text("from the other server\n")
    other.start()
    tls_proxy(taps=("logger", "tests.lab_taps:Route"))
    out = curl(lab, version, "--cacert", str(pki["ours"]), "-w", "%{http_version} %{http_code}\n",
               f"{HTTPS}/", f"{HTTPS}/routed/x.txt", f"{HTTPS}/")
    expected_version = "2" if version == "--http2" else "1.1"
    assert out == (f"hello tls\n{expected_version} 200\nfrom the other server\n{expected_version} 200\n"
                   f"hello tls\n{expected_version} 200\n"), out
    assert [r for _, r, _ in other.access_log()] == ["GET /routed/x.txt HTTP/1.1"], other.access_log()
    assert [r for _, r, _ in https.access_log()] == [f"GET / HTTP/{'2.0' if version == '--http2' else '1.1'}"] * 2


def test_h2load_16_streams_per_connection_all_succeed(lab, https, tls_proxy, pki):
    """h2load -c 2 -m 16 -n 2000 through the proxy: every request started, done and succeeded."""
    tls_proxy(taps=("logger",))
    out = ok(sh(lab, f"h2load -c 2 -m 16 -n 2000 {HTTPS}/", timeout=120))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out)
    assert m, out
    assert tuple(map(int, m.groups())) == (2000, 2000, 2000, 2000, 0, 0, 0), out
    assert re.search(r"status codes: 2000 2xx", out), out
    served = [r for _, r, s in https.access_log() if s == "200"]
    assert served == ["GET / HTTP/2.0"] * 2000, (len(served), set(served))


def test_large_download_to_a_slow_reader_keeps_memory_bounded(lab, https, tls_proxy, pki, tmp_path):
    """256 MiB over h2 to curl --limit-rate 20M (slower than nginx): intact, and the proxy's
    peak RSS stays under 100 MiB: flow control, not buffering, carries the difference."""
    size = 256 * 1024 * 1024
    with open(https.root / "big.bin", "wb") as f:
        f.truncate(size)  # sparse: zeros on the wire, no disk
    zeros, digest = bytes(1 << 20), hashlib.sha256()
    for _ in range(size >> 20):
        digest.update(zeros)
    p = tls_proxy(taps=("logger",))
    assert curl(lab, "--http2", "--cacert", str(pki["ours"]), f"{HTTPS}/") == "hello tls\n"  # warm: h2 code loaded
    baseline = p.status("VmRSS")
    sha_out, meta = tmp_path / "big.sha", tmp_path / "big.meta"
    reader = lab.spawn(lab.client, "sh", "-c",
                       f"curl -sS --http2 --cacert {pki['ours']} --limit-rate 20M --max-time 50 -o - "
                       f"-w '%{{stderr}}%{{http_version}} %{{size_download}}\\n' {HTTPS}/big.bin "
                       f"2>{meta} | sha256sum >{sha_out}")
    samples = []
    deadline = time.monotonic() + 60
    while reader.poll() is None:
        samples.append(p.status("VmRSS"))
        assert time.monotonic() < deadline, "the download did not finish in 60 s"
        time.sleep(0.1)
    peak = p.status("VmHWM")
    print(f"proxy RSS before {baseline} KiB, sampled max {max(samples, default=0)} KiB, peak {peak} KiB")
    assert reader.returncode == 0
    assert meta.read_text().split() == ["2", str(size)], meta.read_text()
    assert sha_out.read_text().split()[0] == digest.hexdigest()
    assert peak < 100 * 1024, (baseline, max(samples, default=0), peak)
    assert peak - baseline < 48 * 1024, (baseline, peak)


# --- trailers (nghttpd) ----------------------------------------------------------------


@pytest.mark.parametrize("tls", [pytest.param(True, id="tls"), pytest.param(False, id="h2c")])
def test_response_trailers_reach_the_client(lab, tls_proxy, pki, tmp_path, tls):
    """nghttpd --trailer 'x-check: ok': nghttp -v sees the trailer (a HEADERS frame after the DATA)."""
    start_nghttpd(lab, tmp_path, pki, tls=tls, extra=["--trailer", "x-check: ok"])
    tls_proxy(taps=("logger",))
    out = ok(sh(lab, f"nghttp -v {HTTPS if tls else H2C}/file.txt"))
    assert "trailer body\n" in out
    data = out.find("recv DATA frame")
    trailer = re.search(r"recv \(stream_id=\d+\) x-check: ok", out)
    assert data != -1 and trailer and trailer.start() > data, out
    assert re.search(r"recv \(stream_id=\d+\) :status: 200", out), out


def test_request_body_and_trailers_reach_the_server(lab, tls_proxy, pki, tmp_path):
    """nghttp -d (3 MiB) --trailer 'x-sent: yes': nghttpd gets every byte, then the trailer, and echoes the body."""
    server_log = start_nghttpd(lab, tmp_path, pki, tls=True, extra=["--echo-upload"])
    upload = tmp_path / "up.bin"
    digest = random_file(upload, 3 * 1024 * 1024)
    tls_proxy(taps=("logger",))
    out = ok(sh(lab, f"nghttp -d {upload} --trailer 'x-sent: yes' {HTTPS}/echo | sha256sum"))
    assert out.split()[0] == digest
    deadline = time.monotonic() + 5
    while not re.search(r"recv \(stream_id=\d+\) x-sent: yes", server_log()) and time.monotonic() < deadline:
        time.sleep(0.1)
    log = server_log()
    trailer = re.search(r"recv \(stream_id=(\d+)\) x-sent: yes", log)
    assert trailer, log[-4000:]
    stream = trailer.group(1)
    received = [(m.start(), int(m.group(1)))
                for m in re.finditer(rf"recv DATA frame <length=(\d+), flags=0x\w+, stream_id={stream}>", log)]
    assert sum(n for _, n in received) == 3 * 1024 * 1024, received[-3:]
    assert received and received[-1][0] < trailer.start(), "the trailer came before the body's end"


# --- streams and errors (our own h2 client) ----------------------------------------------


@pytest.mark.parametrize("way", [pytest.param("tls", id="tls-ipv4"), pytest.param("h2c", id="h2c-ipv6")])
def test_client_reset_of_one_stream_leaves_the_others_intact(lab, tls_proxy, pki, tmp_path, request, way):
    """Three streams; the 64 MiB one is reset (CANCEL) after 1 MiB; the other two and a later
    one on the same connection complete with the right bytes."""
    if way == "tls":
        web, url, extra = request.getfixturevalue("https"), f"{HTTPS}/", ["--cafile", str(pki["ours"])]
    else:
        web = Nginx(lab, lab.server, tmp_path / "h2c", http2=True).start()
        url, extra = f"http://[{SERVER6}]/", []
    with open(web.root / "big.bin", "wb") as f:
        f.truncate(64 * 1024 * 1024)
    a = random_file(web.root / "a.bin", 3 * 1024 * 1024)
    b = random_file(web.root / "b.bin", 2 * 1024 * 1024)
    p = tls_proxy(taps=("logger",))
    out = h2peer(lab, "reset", url, "/big.bin", "/a.bin", "/b.bin", *extra)
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert re.fullmatch(r"/big\.bin reset after \d+", lines[0]), out
    assert int(lines[0].split()[-1]) < 64 * 1024 * 1024
    assert sorted(lines[1:3]) == [f"/a.bin 200 {3 << 20} {a}", f"/b.bin 200 {2 << 20} {b}"], out
    assert lines[3] == f"again /a.bin 200 {3 << 20} {a}", out
    # The proxy is still fine, and says nothing broke.
    assert "Traceback" not in p.log(), p.log()[-4000:]


MALFORMED = [
    pytest.param("tls", "data-on-stream-0", 1, id="tls-data-on-stream-0"),
    pytest.param("tls", "bad-hpack", 9, id="tls-bad-hpack"),
    pytest.param("h2c", "data-on-stream-0", 1, id="h2c-to-http1-data-on-stream-0"),
    pytest.param("h2c", "bad-hpack", 9, id="h2c-to-http1-bad-hpack"),
]


@pytest.mark.parametrize("way,kind,code", MALFORMED)
def test_malformed_frames_get_goaway_while_another_flow_carries_on(lab, https, tls_proxy, pki, tmp_path,
                                                                   way, kind, code):
    """A DATA frame on stream 0 gets GOAWAY(PROTOCOL_ERROR), an undecodable HPACK block
    GOAWAY(COMPRESSION_ERROR); a curl download over h2 running meanwhile is unharmed. In the h2c
    case the server speaks only HTTP/1.1, so the GOAWAY can only be the proxy's own."""
    digest = random_file(https.root / "slow.bin", 8 * 1024 * 1024)
    p = tls_proxy(taps=("logger",))
    base, how = (HTTPS, f"--http2 --cacert {pki['ours']}") if way == "tls" else (H2C, "--http2-prior-knowledge")
    sha_out, meta = tmp_path / "slow.sha", tmp_path / "slow.meta"
    other = lab.spawn(lab.client, "sh", "-c",
                      f"curl -sS {how} --limit-rate 4M -o - -w '%{{stderr}}%{{http_version}} %{{http_code}}\\n' "
                      f"{base}/slow.bin 2>{meta} | sha256sum >{sha_out}")
    time.sleep(0.7)
    assert other.poll() is None, "the concurrent download ended too soon to overlap"
    extra = ["--cafile", str(pki["ours"])] if way == "tls" else []
    out = h2peer(lab, "malformed", f"{base}/", kind, *extra)
    assert re.fullmatch(rf"goaway last_stream=\d+ error={code}\n", out), out
    assert other.wait(30) == 0
    assert meta.read_text().split() == ["2", "200"], meta.read_text()
    assert sha_out.read_text().split()[0] == digest
    # Nothing of the malformed connection reached the server as a request.
    assert all(r.startswith(("GET /slow.bin ", "PRI * ")) for _, r, _ in https.access_log()), https.access_log()
    assert "Traceback" not in p.log(), p.log()[-4000:]


# --- h2c with prior knowledge on port 80 -------------------------------------------------


def h2c_url(family: str) -> str:
    """nghttp has no -4/-6: the address picks the family."""
    return f"http://{SERVER4 if family == '-4' else f'[{SERVER6}]'}"


@pytest.mark.parametrize("family", FAMILIES)
def test_h2c_prior_knowledge_to_an_h2c_server(lab, tls_proxy, tmp_path, family):
    """curl --http2-prior-knowledge and nghttp (two streams) to nginx speaking h2c on port 80: h2 both ways."""
    web = Nginx(lab, lab.server, tmp_path / "h2c", http2=True)
    (web.root / "index.html").write_text("hello h2c\n")
    web.start()
    p = tls_proxy(taps=("logger",))
    out = curl(lab, family, "--http2-prior-knowledge", "-w", "%{http_code} %{http_version}", f"{H2C}/")
    assert out == "hello h2c\n200 2"
    # (Several URLs in one curl would test curl 7.88, which cannot reuse a prior-knowledge
    # connection even without a proxy; nghttp multiplexes them.)
    base = h2c_url(family)
    stats = nghttp_stats(ok(sh(lab, f"nghttp -n -s {base}/ {base}/missing")))
    assert {path: code for path, (code, _) in stats.items()} == {"/": "200", "/missing": "404"}, stats
    requests = sorted((r, s) for _, r, s in web.access_log() if not r.startswith("PRI "))
    assert requests == [("GET / HTTP/2.0", "200")] * 2 + [("GET /missing HTTP/2.0", "404")], web.access_log()
    log = wait_log(p, r"flow \d+ to_client response 404\b")
    assert re.search(r"flow \d+ to_server request GET http://server\.test/ ", log), log


@pytest.mark.parametrize("family", FAMILIES)
def test_h2c_prior_knowledge_to_an_http1_server_is_translated(lab, tls_proxy, tmp_path, family):
    """h2 with prior knowledge to nginx speaking only HTTP/1.1: the clients speak h2, nginx gets
    HTTP/1.1 requests; statuses, three concurrent streams and a 5 MiB body come back intact."""
    web = Nginx(lab, lab.server, tmp_path / "http1")
    (web.root / "index.html").write_text("hello world\n")
    digest = random_file(web.root / "blob.bin", 5 * 1024 * 1024)
    web.start()
    p = tls_proxy(taps=("logger",))
    out = curl(lab, family, "--http2-prior-knowledge", "-w", "%{http_code} %{http_version}", f"{H2C}/")
    assert out == "hello world\n200 2"
    blob = ok(sh(lab, f"curl -sS {family} --http2-prior-knowledge {H2C}/blob.bin | sha256sum"))
    assert blob.split()[0] == digest
    base = h2c_url(family)
    stats = nghttp_stats(ok(sh(lab, f"nghttp -n -s {base}/ {base}/missing {base}/blob.bin")))
    assert {path: code for path, (code, _) in stats.items()} == {"/": "200", "/missing": "404", "/blob.bin": "200"}, \
        stats
    assert stats["/blob.bin"][1] == "5M", stats
    requests = sorted((r, s) for _, r, s in web.access_log() if not r.startswith("PRI "))
    assert requests == sorted([("GET / HTTP/1.1", "200"), ("GET /blob.bin HTTP/1.1", "200"),
                               ("GET / HTTP/1.1", "200"), ("GET /missing HTTP/1.1", "404"),
                               ("GET /blob.bin HTTP/1.1", "200")]), web.access_log()
    log = wait_log(p, r"flow \d+ to_server request GET http://server\.test/blob\.bin ")
    assert "HTTP/1.1" in log, log
