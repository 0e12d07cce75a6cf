"""End to end, HTTP/1.1: curl and nginx (and a few raw peers) through real
TPROXY rules and the explicit proxy, with ``twistd tinspect`` in the gateway."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time

import pytest

from tests.conftest import REPO, client_run
from tinspect.lab.netlab import SERVER4, SERVER6, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

DUAL = "tproxy:8080:interface=\\:\\:"
FAMILIES = [pytest.param(SERVER4, id="ipv4"), pytest.param(SERVER6, id="ipv6")]
ECHO_HEADERS = (
    'location = /headers { return 200 "host=[$http_host] connection=[$http_connection] '
    'keep-alive=[$http_keep_alive] secret=[$http_x_secret] te=[$http_te] seen=[$http_x_body_seen] '
    'proxy-auth=[$http_proxy_authorization]\\n"; }'
)


def url(host: str, path: str = "/", port: int = 80) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}{'' if port == 80 else f':{port}'}{path}"


@pytest.fixture
def web(lab, tmp_path):
    """nginx in the server namespace with PUT (dav) and a header-echo location."""
    server = Nginx(lab, lab.server, tmp_path / "nginx",
                   extra=f"dav_methods PUT; create_full_put_path on; client_max_body_size 0; {ECHO_HEADERS}")
    (server.root / "index.html").write_text("hello world\n")
    return server.start()


@pytest.fixture
def http_proxy(lab, proxy):
    """tinspect under a TPROXY rule for port 80 with the given taps."""

    def start(*taps, extra=()):
        lab.tproxy(8080, dports=[80])
        args = ["--listen", DUAL, *extra]
        if taps:
            args += ["--taps", ",".join(taps)]
        return proxy(args, wait=[(8080, "tcp")])

    return start


def curl(lab, *args, timeout=30):
    return client_run(lab, "curl", "-sS", *args, timeout=timeout)


def sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("server", FAMILIES)
def test_keep_alive_client_reuses_one_upstream_connection(lab, web, http_proxy, server):
    """Three requests on one client connection are three requests on one upstream connection."""
    p = http_proxy("logger")
    out = curl(lab, url(server), url(server), url(server, "/missing"), "-w", "%{http_code}\n")
    assert out.splitlines() == ["hello world", "200", "hello world", "200"] + out.splitlines()[4:]
    assert out.splitlines()[-1] == "404"
    log = web.access_log()
    assert [(r, s) for _, r, s in log] == [("GET / HTTP/1.1", "200")] * 2 + [("GET /missing HTTP/1.1", "404")]
    assert len({conn for conn, _, _ in log}) == 1, log
    time.sleep(0.2)
    assert re.search(rf"flow \d+ to_server request GET http://{re.escape(url(server)[7:])}", p.log()), p.log()
    assert re.search(r"flow \d+ to_client response 200 OK 12 bytes", p.log()), p.log()


def test_big_download_and_uploads_arrive_intact(lab, web, http_proxy, tmp_path):
    """5 MiB down, and up with Content-Length and chunked, keep their sha256."""
    blob = os.urandom(5 * 1024 * 1024)
    (web.root / "blob.bin").write_bytes(blob)
    http_proxy("logger")
    digest = hashlib.sha256(blob).hexdigest()
    down = client_run(lab, "sh", "-c", f"curl -sS {url(SERVER4, '/blob.bin')} | sha256sum", timeout=60)
    assert down.split()[0] == digest
    upload = tmp_path / "up.bin"
    upload.write_bytes(blob)
    for name, extra in (("plain.bin", []), ("chunked.bin", ["-H", "Transfer-Encoding: chunked"])):
        code = curl(lab, "-T", str(upload), *extra, "-o", "/dev/null", "-w", "%{http_code}", url(SERVER4, f"/up/{name}"),
                    timeout=60)
        assert code in ("201", "204"), code
        assert sha256_file(web.root / "up" / name) == digest


def test_expect_100_continue_is_relayed_or_answered(lab, web, http_proxy, tmp_path):
    """curl's Expect: 100-continue gets its 100 promptly, from the server or (whole-body tap) from the proxy."""
    upload = tmp_path / "up.bin"
    upload.write_bytes(os.urandom(2 * 1024 * 1024))
    for taps, name in ((("logger",), "streamed.bin"), (("tests.lab_taps:Whole",), "whole.bin")):
        p = http_proxy(*taps)
        started = time.monotonic()
        code = curl(lab, "--expect100-timeout", "8", "-H", "Expect: 100-continue", "-T", str(upload),
                    "-o", "/dev/null", "-w", "%{http_code}", url(SERVER4, f"/up/{name}"))
        assert time.monotonic() - started < 5, "the client waited for a 100 Continue that never came"
        assert code in ("201", "204")
        assert sha256_file(web.root / "up" / name) == sha256_file(upload)
        p.stop()
        lab.clear_rules()


def test_pipelined_requests_answered_in_order_with_a_local_answer_between(lab, web, http_proxy):
    """Three pipelined requests, the middle one blocked by a tap: three responses in request order."""
    http_proxy("tests.lab_taps:Block")
    requests = b"".join(
        b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, SERVER4.encode()) for path in (b"/", b"/blocked", b"/missing")
    )
    out = client_run(lab, sys.executable, "-m", "tests.peers", "send", SERVER4, "80", requests.hex())
    statuses = re.findall(r"^HTTP/1\.1 (\d{3})", out, re.M)
    assert statuses == ["200", "403", "404"], out
    assert "blocked by tinspect: http://198.51.100.2/blocked" in out
    assert [r for _, r, _ in web.access_log()] == ["GET / HTTP/1.1", "GET /missing HTTP/1.1"]


def test_local_answer_needs_no_server(lab, http_proxy):
    """A block page is served even when nothing listens at the destination."""
    http_proxy("tests.lab_taps:Block")
    out = curl(lab, "-w", "%{http_code}", url(SERVER4, "/blocked/page"))
    assert out == "blocked by tinspect: http://198.51.100.2/blocked/page\n403"


SMUGGLING = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4x\r\nabcd\r\n0\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  continued\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: a\rX-A: 1\r\n\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING))
def test_ambiguous_framing_gets_400_and_close_and_never_reaches_the_server(lab, web, http_proxy, name):
    """Request-smuggling shapes are refused with a 400, the connection closes, the log names the flow."""
    p = http_proxy("logger")
    out = client_run(lab, sys.executable, "-m", "tests.peers", "send", SERVER4, "80", SMUGGLING[name].hex())
    assert out.startswith("HTTP/1.1 400 Bad Request\n"), out  # (text mode: CRLF read as LF)
    assert "Connection: close" in out
    assert web.access_log() == []
    time.sleep(0.2)
    assert re.search(r"flow \d+: bad request from 192\.0\.2\.2:\d+: .+ \(answering 400\)", p.log()), p.log()


def test_responses_stream_without_waiting_for_the_whole_body(lab, http_proxy):
    """A body sent in two parts 2 s apart reaches the client part by part."""
    server = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "drip-server", "80", cwd=REPO)
    lab.wait_listening(lab.server, 80, proc=server)
    http_proxy("logger")
    out = curl(lab, "-w", "\n%{time_starttransfer} %{time_total}", url(SERVER4))
    body, _, times = out.rpartition("\n")
    first, total = map(float, times.split())
    assert body == "first\nsecond\n"
    assert first < 1.0 and total > 1.8, (first, total)


def test_mangler_rewrites_bodies_and_framing_follows(lab, web, http_proxy):
    """The mangler changes a body's length; Content-Length is recomputed and curl is satisfied."""
    http_proxy("mangler", extra=["--tap-option", "mangler.search=world", "--tap-option", "mangler.replace=wide galaxy"])
    out = curl(lab, "-i", url(SERVER4))
    head, _, body = out.partition("\n\n")
    assert body == "hello wide galaxy\n"
    assert re.search(r"^Content-Length: 18\r?$", head, re.M | re.I), head


def test_whole_body_tap_is_told_when_a_body_is_too_large(lab, web, http_proxy):
    """Over --max-body a body streams instead of buffering, and the tap sees body_too_large."""
    (web.root / "big.bin").write_bytes(os.urandom(300_000))
    http_proxy("tests.lab_taps:Whole", extra=["--max-body", "100000"])
    head = curl(lab, "-sS", "-D", "-", "-o", "/dev/null", url(SERVER4, "/big.bin"))
    assert re.search(r"^X-Body-Seen: streamed\r?$", head, re.M | re.I), head
    small = curl(lab, "-sS", "-D", "-", "-o", "/dev/null", url(SERVER4, "/"))
    assert re.search(r"^X-Body-Seen: 12\r?$", small, re.M | re.I), small
    digest = client_run(lab, "sh", "-c", f"curl -sS {url(SERVER4, '/big.bin')} | sha256sum").split()[0]
    assert digest == sha256_file(web.root / "big.bin")


def test_hop_by_hop_headers_are_not_forwarded(lab, web, http_proxy):
    """Connection, Keep-Alive, TE and the fields Connection names stop at the proxy; Host goes on."""
    http_proxy()
    out = curl(lab, "-H", "Connection: keep-alive, X-Secret", "-H", "X-Secret: s3cret", "-H", "Keep-Alive: 5",
               "-H", "TE: trailers", url(SERVER4, "/headers"))
    assert out == "host=[198.51.100.2] connection=[] keep-alive=[] secret=[] te=[] seen=[] proxy-auth=[]\n"


def test_upstream_failures_become_readable_502_and_504(lab, http_proxy):
    """Refused and timed-out upstreams give the client a page naming the reason, never a hang."""
    lab.exec(lab.server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "81", "-j", "DROP")
    lab.tproxy(8080, dports=[80, 81])
    http_proxy("logger", extra=["--connect-timeout", "1"])
    refused = curl(lab, "-w", "%{http_code}", url(SERVER4))
    assert refused.endswith("502") and "connection refused" in refused, refused
    started = time.monotonic()
    timeout = curl(lab, "-w", "%{http_code}", url(SERVER4, "/", port=81))
    assert timeout.endswith("504") and "connect timeout" in timeout, timeout
    assert time.monotonic() - started < 5


def test_server_that_breaks_http_gets_a_502(lab, http_proxy):
    """A server answering garbage (then resetting) gives the client a 502 page, not the garbage."""
    server = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "reset-server", "80", cwd=REPO)
    lab.wait_listening(lab.server, 80, proc=server)
    p = http_proxy("logger")
    out = curl(lab, "-w", "%{http_code}", url(SERVER4))
    assert out.endswith("502"), out
    assert "upstream 198.51.100.2:80" in out
    time.sleep(0.2)
    assert re.search(r"flow \d+: upstream 198\.51\.100\.2:80 ", p.log()), p.log()


def test_server_speaks_first_protocol_is_relayed_raw(lab, http_proxy, proxy):
    """A server that talks first (SMTP-like) reaches the client at once, then the relay is raw."""
    server = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "banner-server", "25", cwd=REPO)
    lab.wait_listening(lab.server, 25, proc=server)
    lab.tproxy(8080, dports=[25])
    proxy(["--listen", DUAL, "--sniff-timeout", "30"], wait=[(8080, "tcp")])
    started = time.monotonic()
    out = client_run(lab, "sh", "-c", f"(sleep 0.5; printf 'EHLO x\\r\\n') | socat -t 2 - TCP:{SERVER4}:25")
    assert out == "220 banner\nEHLO x\n"  # (text mode: CRLF read as LF)
    assert time.monotonic() - started < 10


def test_silent_client_is_relayed_after_the_sniff_timeout(lab, http_proxy, proxy):
    """A client that says nothing is relayed raw after --sniff-timeout: an HTTP request after it is bytes."""
    server = lab.spawn(lab.server, "socat", "TCP6-LISTEN:7,fork,reuseaddr,ipv6only=0", "EXEC:cat")
    lab.wait_listening(lab.server, 7, proc=server)
    lab.tproxy(8080, dports=[7])
    proxy(["--listen", DUAL, "--sniff-timeout", "0.3", "--taps", "logger"], wait=[(8080, "tcp")])
    out = client_run(lab, "sh", "-c", f"(sleep 1; printf 'GET / HTTP/1.1\\r\\n\\r\\n') | socat -t 2 - TCP:{SERVER4}:7")
    assert out == "GET / HTTP/1.1\n\n"


def test_explicit_proxy_absolute_form_and_names(lab, web, proxy):
    """curl -x with http:// URLs: origin-form upstream, Host set, host names resolved, keep-alive kept."""
    proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24"], wait=[(3128, "tcp")])
    via = "http://192.0.2.1:3128"
    out = curl(lab, "-x", via, f"http://{SERVER_NAME}/headers", f"http://{SERVER_NAME}/")
    assert out == f"host=[{SERVER_NAME}] connection=[] keep-alive=[] secret=[] te=[] seen=[] proxy-auth=[]\nhello world\n"
    log = web.access_log()
    assert [r for _, r, _ in log] == ["GET /headers HTTP/1.1", "GET / HTTP/1.1"]
    assert log[0][0] == log[1][0], "the two requests should share one upstream connection"
    bad = curl(lab, "-x", via, "-w", "%{http_code}", "http://no-such-host.test/")
    assert bad.endswith("502") and "cannot resolve host name" in bad, bad


def test_explicit_proxy_serves_only_its_client_networks(lab, web, proxy):
    """Listening on a non-loopback address is not an open relay: only local/private clients by default,
    exactly the --allow-clients networks when given."""
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1"], wait=[(3128, "tcp")])
    refused = lab.exec(lab.client, "curl", "-sS", "-x", "http://192.0.2.1:3128", url(SERVER4), check=False)
    assert refused.returncode != 0 and "hello world" not in refused.stdout
    time.sleep(0.2)
    assert re.search(r"refusing 192\.0\.2\.2:\d+ on tcp:3128:interface=192\.0\.2\.1: not in the client networks "
                     r"it serves \(127\.0\.0\.0/8,", p.log()), p.log()
    p.stop()
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.2/32,2001:db8::/32"],
              wait=[(3128, "tcp")])
    assert curl(lab, "-x", "http://192.0.2.1:3128", url(SERVER4)) == "hello world\n"
    p.stop()
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.128/25"], wait=[(3128, "tcp")])
    refused = lab.exec(lab.client, "curl", "-sS", "-x", "http://192.0.2.1:3128", url(SERVER4), check=False)
    assert refused.returncode != 0 and "hello world" not in refused.stdout


def test_transparent_listener_with_allow_clients_refuses_others(lab, web, http_proxy):
    """--allow-clients applies to transparent listeners too: a client outside is cut, not relayed."""
    p = http_proxy("logger", extra=("--allow-clients", "203.0.113.0/24"))
    refused = lab.exec(lab.client, "curl", "-sS", url(SERVER4), check=False)
    assert refused.returncode != 0 and "hello world" not in refused.stdout
    assert web.access_log() == []
    time.sleep(0.2)
    assert "not in the client networks it serves (203.0.113.0/24)" in p.log()


def test_explicit_proxy_basic_authentication(lab, web, proxy):
    """--proxy-auth: 407 without credentials, through with them, and the credentials go no further."""
    proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--proxy-auth", "alice:wonder land"], wait=[(3128, "tcp")])
    via = "http://192.0.2.1:3128"
    denied = lab.exec(lab.client, "curl", "-sS", "-i", "-x", via, url(SERVER4), check=False).stdout
    assert denied.startswith("HTTP/1.1 407 Proxy Authentication Required"), denied
    assert 'Proxy-Authenticate: Basic realm="tinspect"' in denied
    wrong = curl(lab, "-x", via, "-U", "alice:nope", "-w", "%{http_code}", "-o", "/dev/null", url(SERVER4))
    assert wrong == "407"
    out = curl(lab, "-x", via, "-U", "alice:wonder land", url(SERVER4, "/headers"))
    assert out.endswith("proxy-auth=[]\n"), out
    tunnelled = curl(lab, "-p", "-x", via, "-U", "alice:wonder land", url(SERVER4))
    assert tunnelled == "hello world\n"
    refused = lab.exec(lab.client, "curl", "-sS", "-p", "-x", via, url(SERVER4), check=False)
    assert "407" in refused.stderr, refused.stderr


def test_websocket_upgrade_goes_through_the_http_layer(lab, http_proxy):
    """A WebSocket upgrade (websockets library on both ends) passes the taps, then carries messages."""
    server = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "ws-echo", "80", cwd=REPO)
    lab.wait_listening(lab.server, 80, proc=server)
    p = http_proxy("logger")
    out = client_run(lab, sys.executable, "-m", "tests.peers", "ws-ask", f"ws://{SERVER4}/", "one", "two")
    assert out == "one\ntwo\n"
    time.sleep(0.2)
    assert re.search(r"flow \d+ to_client response 101 Switching Protocols", p.log()), p.log()


@pytest.mark.parametrize("options, shown", [
    ((), False),
    (("--tap-option", "logger.headers=yes"), False),
    (("--tap-option", "logger.headers=yes", "--tap-option", "logger.private=yes"), True),
])
def test_credentials_stay_out_of_the_log_unless_asked_for(lab, web, http_proxy, options, shown):
    """Authorization and Cookie values are never logged by default; with headers=yes they are
    redacted; only private=yes shows them. The request still carries them to the server."""
    p = http_proxy("logger", extra=options)
    out = curl(lab, "-H", "Authorization: Bearer s3cret-token", "-H", "Cookie: session=c00kie-value",
               "-H", "X-Secret: visible", url(SERVER4, "/headers"))
    assert "secret=[visible]" in out
    time.sleep(0.3)
    log = p.log()
    assert re.search(r"to_server request GET http://198\.51\.100\.2/headers", log), log
    assert ("s3cret-token" in log) is shown and ("c00kie-value" in log) is shown, log
    if options:
        assert "X-Secret: visible" in log
        if not shown:
            assert "Authorization: [redacted 19 bytes]" in log and "Cookie: [redacted 20 bytes]" in log


def test_the_proxy_never_connects_to_itself(lab, web, proxy, http_proxy):
    """A request or CONNECT through the explicit proxy to the proxy's own address gets 508; a client
    that connects to a transparent port directly is refused, not relayed to itself round and round."""
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--taps", "logger"],
              wait=[(3128, "tcp")])
    via = "http://192.0.2.1:3128"
    out = lab.exec(lab.client, "curl", "-sS", "-x", via, "-w", "\n%{http_code}", "http://192.0.2.1:3128/",
                   check=False).stdout
    assert out.endswith("\n508") and "192.0.2.1:3128 is this proxy itself" in out, out
    tunnel = lab.exec(lab.client, "curl", "-sS", "-p", "-x", via, "http://127.0.0.1:3128/", check=False)
    assert tunnel.returncode != 0 and "508" in tunnel.stderr, tunnel.stderr
    assert curl(lab, "-x", via, url(SERVER4)) == "hello world\n"  # and it still serves
    time.sleep(0.2)
    assert len(re.findall(r"flow \d+ open", p.log())) == 3, p.log()  # no flow begot another
    p.stop()
    p = http_proxy("logger")
    direct = lab.exec(lab.client, "curl", "-sS", "--max-time", "5", "http://192.0.2.1:8080/", check=False)
    assert direct.returncode != 0 and "hello world" not in direct.stdout
    time.sleep(0.2)
    assert re.search(r"refusing 192\.0\.2\.2:\d+ on tproxy:8080.*: it connected to the proxy itself "
                     r"\(192\.0\.2\.1:8080\), which would loop", p.log()), p.log()
