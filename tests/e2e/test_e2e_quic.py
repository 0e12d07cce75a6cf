"""End to end, QUIC: aioquic's HTTP/3 server on UDP 443 and nginx on TCP 443 for server.test, with
aioquic's HTTP/3 client and headless Chromium in the client namespace, through TPROXY rules for
TCP 443 and UDP 443 to ``twistd tinspect`` in the gateway."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import DUAL, REPO
from tinspect.lab.netlab import SERVER4, SERVER_NAME, LabError, Nginx

pytestmark = pytest.mark.netns

UDP = "tproxy:8443:interface=\\:\\:"


@pytest.fixture
def h3_server(lab, pki):
    """aioquic's HTTP/3 server on UDP 443 in the server namespace, with the lab server CA's certificate."""
    proc = lab.spawn(lab.server, sys.executable, "-m", "bench.h3peers", "serve", "443", str(pki["chain"]),
                     str(pki["key"]), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.server, 443, "udp", proc=proc)
    return proc


@pytest.fixture
def origin(lab, tmp_path, pki, h3_server):
    """nginx on TCP 443 for server.test advertising HTTP/3 on UDP 443 (and an h2 alternative to keep)."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]),
                extra='add_header Alt-Svc \'h3=":443"; ma=86400, h2="alt.server.test:443"\' always;')
    (web.root / "index.html").write_text("<html><body><p id=m>hello over tcp</p></body></html>\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    return web


@pytest.fixture
def quic_proxy(lab, proxy, pki, tmp_path):
    """tinspect under TPROXY for TCP 443 and UDP 443, trusting the lab server's CA, recording."""
    record = tmp_path / "record.jsonl"

    def start(*extra, taps="logger,recorder"):
        lab.tproxy(8080, dports=[443])
        lab.tproxy(8443, proto="udp", dports=[443])
        args = ["--listen", DUAL, "--udp", UDP, "--state-dir", str(pki["state"]), "--upstream-ca",
                str(pki["server_ca"]), "--taps", taps, "--tap-option", f"recorder.path={record}", *extra]
        p = proxy(args, wait=[(8080, "tcp"), (8443, "udp")])
        p.record = record
        return p

    return start


def h3_get(lab, ca, *extra, path="/a", check=True):
    """aioquic's HTTP/3 client in the client namespace: ``status body issuer=...``."""
    out = lab.exec(lab.client, sys.executable, "-m", "bench.h3peers", "get", SERVER4, "443", SERVER_NAME, path,
                   str(ca), *extra, cwd=REPO, check=False, timeout=30)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


def records(p):
    """The recorder's records so far."""
    return [json.loads(line) for line in p.record.read_text().splitlines()] if p.record.exists() else []


def test_h3_client_passes_with_quic_pass_and_sees_the_server_certificate(lab, origin, quic_proxy, pki):
    """With --quic pass an HTTP/3 exchange completes end to end, the server's own certificate is seen, the name logged."""
    p = quic_proxy("--quic", "pass")
    out = h3_get(lab, pki["server_ca"])
    assert out.stdout.strip() == "200 hello h3 /a issuer=O=tinspect,CN=Lab server CA", out.stdout
    log = p.log()
    assert re.search(r"flow \d+: QUIC v1 \S+ -> 198\.51\.100\.2:443 for server\.test \(ALPN h3\): pass "
                     r"\(--quic pass\)", log), log
    assert re.search(r"flow \d+ open udp \S+ -> 198\.51\.100\.2:443 via \S+ QUIC v1 server\.test ALPN h3", log), log
    assert re.search(r"to_server datagram \d+ bytes", log) and re.search(r"to_client datagram \d+ bytes", log), log


def test_h3_client_is_refused_by_default_and_the_name_logged(lab, origin, quic_proxy, pki):
    """Without --quic the connection is refused: the client gets nothing over QUIC, the log names the host."""
    p = quic_proxy()
    out = h3_get(lab, pki["server_ca"], check=False)
    assert out.returncode != 0 and "hello" not in out.stdout
    log = p.log()
    assert re.search(r"flow \d+: QUIC v1 \S+ -> 198\.51\.100\.2:443 for server\.test \(ALPN h3\): refuse "
                     r"\(--quic refuse\)", log), log
    assert "to_server datagram" not in log
    quic = [r for r in records(p) if r["type"] == "quic"]
    assert quic and quic[0]["sni"] == SERVER_NAME and quic[0]["error"] == "QUIC refused (--quic refuse)", quic


def test_v2_and_three_datagram_hellos_and_garbage_leave_the_proxy_serving(lab, origin, quic_proxy, pki):
    """QUIC v2, a ClientHello over three datagrams and garbage on UDP 443 are each handled; others are still served."""
    p = quic_proxy("--quic", "pass", "--metrics", "tcp:9108:interface=127.0.0.1")
    assert h3_get(lab, pki["server_ca"], "--version", "2", path="/v2").stdout.split()[:4] == \
        ["200", "hello", "h3", "/v2"]
    assert h3_get(lab, pki["server_ca"], "--big", path="/big").stdout.split()[:4] == ["200", "hello", "h3", "/big"]
    sent = lab.exec(lab.client, sys.executable, "-m", "bench.h3peers", "garbage", SERVER4, "443", cwd=REPO,
                    timeout=15)
    assert sent.stdout.strip() == "sent 4"
    assert h3_get(lab, pki["server_ca"], path="/after").stdout.split()[:4] == ["200", "hello", "h3", "/after"]
    log = p.log()
    assert re.search(r"QUIC v2 \S+ -> \S+ for server\.test \(ALPN h3\): pass", log), log
    assert re.search(r"QUIC v1 \S+ -> \S+ for server\.test \(ALPN h3,proto-0000,", log), log
    assert "Initial unreadable: not a QUIC Initial" in log, log
    assert re.search(r"Initial unreadable: QUIC version 0x1a2a3a4a", log), log
    metrics = lab.exec(lab.gateway, "curl", "-sS", "http://127.0.0.1:9108/metrics", timeout=15).stdout
    assert 'tinspect_quic_connections_total{version="v2"} 1' in metrics, metrics
    # /big and /after; and the truncated Initial too once its 2 s hold has run out (it is then passed unread)
    assert re.search(r'tinspect_quic_passed_total\{version="v1"\} [23]\n', metrics), metrics
    assert re.search(r'tinspect_quic_unreadable_total\{reason="not_quic"\} [1-9]', metrics), metrics
    # the wrong version; and the random datagram too when its first bit happens to make it a long header
    assert re.search(r'tinspect_quic_unreadable_total\{reason="unknown_version"\} [12]\n', metrics), metrics


def test_filter_rule_blocking_the_host_stops_quic_and_tcp(lab, origin, quic_proxy, pki, tmp_path):
    """A filter rule blocking server.test refuses its QUIC even with --quic pass, and blocks it over TCP."""
    rules = tmp_path / "rules.txt"
    rules.write_text(f"block host={SERVER_NAME}\n")
    p = quic_proxy("--quic", "pass", "--tap-option", f"filter.rules={rules}", taps="logger,filter,recorder")
    out = h3_get(lab, pki["server_ca"], check=False)
    assert out.returncode != 0 and "hello" not in out.stdout
    tcp = lab.exec(lab.client, "curl", "-sS", "-4", "--cacert", str(pki["ours"]), "-w", " %{http_code}",
                   f"https://{SERVER_NAME}/", check=False, timeout=30)
    assert tcp.stdout.endswith(" 403") and "hello over tcp" not in tcp.stdout, tcp.stdout
    assert re.search(r"QUIC v1 \S+ -> \S+ for server\.test \(ALPN h3\): refuse \(tap filter\)", p.log()), p.log()


def test_h3_alt_svc_is_stripped_over_tcp_unless_quic_passes(lab, origin, quic_proxy, pki):
    """curl over h2 and HTTP/1.1 gets nginx's Alt-Svc without its h3 entry under refuse, whole under pass."""
    p = quic_proxy()
    for version in ("--http2", "--http1.1"):
        out = lab.exec(lab.client, "curl", "-sS", "-4", version, "-D", "-", "-o", "/dev/null", "--cacert",
                       str(pki["ours"]), f"https://{SERVER_NAME}/", timeout=30).stdout
        fields = [line for line in out.splitlines() if line.lower().startswith("alt-svc")]
        assert [f.split(":", 1)[1].strip() for f in fields] == ['h2="alt.server.test:443"'], out
    p.stop()
    lab.clear_rules()
    quic_proxy("--quic", "pass")
    out = lab.exec(lab.client, "curl", "-sS", "-4", "--http2", "-D", "-", "-o", "/dev/null", "--cacert",
                   str(pki["ours"]), f"https://{SERVER_NAME}/", timeout=30).stdout
    assert 'h3=":443"' in out, out


# --------------------------------------------------------------------------
# Chromium
# --------------------------------------------------------------------------


def spki_hash(pem_path) -> str:
    """base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo (Chromium's SPKI pin)."""
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def chromium(lab, pki, tmp_path, *extra, timeout=40):
    """Headless Chromium in the client namespace, QUIC on, trusting our CA by SPKI: its DOM for server.test.

    The profile is kept between calls of one test, so that an Alt-Svc it
    was told about (its h3 cache) is used by the next load."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (scripts/install-deps)"
    profile = tmp_path / "chromium-profile"
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
            "--enable-quic", f"--ignore-certificate-errors-spki-list={spki_hash(pki['ours'])}",
            f"--host-resolver-rules=MAP {SERVER_NAME} {SERVER4}", *extra, "--dump-dom", f"https://{SERVER_NAME}/"]
    try:
        return lab.exec(lab.client, *argv, check=False, timeout=timeout)
    except (subprocess.TimeoutExpired, LabError) as e:
        raise AssertionError(f"chromium did not finish within {timeout}s: {e}") from None


def alt_services(tmp_path) -> list[tuple[str, str | None]]:
    """The alternative services Chromium's profile remembers for https://server.test: ``(protocol, host)``."""
    state = json.loads((tmp_path / "chromium-profile" / "Default" / "Network Persistent State").read_text())
    servers = state["net"]["http_server_properties"].get("servers", [])
    return [(alt["protocol_str"], alt.get("host")) for server in servers if server["server"] == f"https://{SERVER_NAME}"
            for alt in server.get("alternative_service", [])]


def test_chromium_loads_over_tcp_through_the_mitm_with_quic_refused(lab, origin, quic_proxy, pki, tmp_path):
    """Chromium with QUIC on loads the page every time over h2 through the MITM; no h3 reaches it."""
    p = quic_proxy()
    for _ in range(3):
        out = chromium(lab, pki, tmp_path)
        assert "hello over tcp" in out.stdout, out.stderr[-3000:]
    log = p.log()
    assert len(re.findall(r"flow \d+ to_server request GET https://server\.test/ ", log)) >= 3, log
    assert re.search(r"flow \d+ closed h2 ", log), log
    exchanges = [r for r in records(p) if r["type"] == "exchange" and r["request"]["url"] == f"https://{SERVER_NAME}/"]
    assert exchanges, records(p)
    for ex in exchanges:
        alt = [v for n, v in ex["response"]["headers"] if n.lower() == "alt-svc"]
        assert alt == ['h2="alt.server.test:443"'], ex["response"]["headers"]
    assert alt_services(tmp_path) == [("h2", "alt.server.test")]  # what Chromium was told: no h3
    for attempt in re.findall(r"flow \d+: QUIC .*", log):  # any QUIC attempt is refused, with its name
        assert "for server.test" in attempt and ": refuse (--quic refuse)" in attempt, attempt


def test_chromium_forced_to_quic_is_refused_and_does_not_hang(lab, origin, quic_proxy, pki, tmp_path):
    """Chromium forced onto QUIC for server.test is refused (logged with the name) and ends within the bound."""
    p = quic_proxy()
    chromium(lab, pki, tmp_path, f"--origin-to-force-quic-on={SERVER_NAME}:443", timeout=60)
    assert re.search(r"flow \d+: QUIC v1 \S+ -> 198\.51\.100\.2:443 for server\.test \(ALPN h3\): refuse "
                     r"\(--quic refuse\)", p.log()), p.log()


def test_chromium_uses_quic_when_it_passes(lab, origin, quic_proxy, pki, tmp_path):
    """The control: with --quic pass Chromium keeps nginx's h3 Alt-Svc and tries QUIC, which passes, named."""
    p = quic_proxy("--quic", "pass")
    for _ in range(2):
        assert "hello over tcp" in chromium(lab, pki, tmp_path).stdout
    assert ("quic", None) in alt_services(tmp_path)
    assert re.search(r"flow \d+: QUIC v1 \S+ -> 198\.51\.100\.2:443 for server\.test \(ALPN h3\): pass", p.log())
