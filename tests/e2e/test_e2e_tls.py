"""End to end, TLS interception: curl against nginx with its own CA, through real
TPROXY rules and the explicit proxy, with ``twistd tinspect`` in the gateway."""

from __future__ import annotations

import re
import time

import pytest

from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns


def curl(lab, *args, family="-4"):
    """curl in the client namespace (IPv4 unless told: server.test has both)."""
    return lab.exec(lab.client, "curl", "-sS", family, *args, check=False, timeout=30)


@pytest.mark.parametrize("family", ["-4", "-6"])
def test_https_is_intercepted_with_a_leaf_from_our_ca(lab, https, tls_proxy, pki, family):
    """curl trusting only our CA gets the page over IPv4 and IPv6; taps see the request and the TLS facts."""
    p = tls_proxy()
    out = curl(lab, "--http1.1", "--cacert", str(pki["ours"]), "-w", "%{http_version} %{ssl_verify_result}",
               f"https://{SERVER_NAME}/", family=family)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n1.1 0"
    time.sleep(0.2)
    log = p.log()
    assert re.search(r"flow \d+ to_server request GET https://server\.test/", log), log
    assert re.search(r"flow \d+: TLS intercepted for server\.test \(TLSv1\.3, ALPN http/1\.1\)", log), log
    assert re.search(r"tls facts: sni=server\.test alpn=http/1\.1 version=TLSv1\.3 upstream=server\.test "
                     r"issuer=Lab server CA", log), log


def test_flow_timings_stamp_each_step_in_order(lab, https, tls_proxy, pki):
    """An intercepted HTTPS flow's timings hold accept, upstream connect, both handshakes and the end, in order."""
    p = tls_proxy(taps=("tests.lab_taps:TimingFacts",))
    out = curl(lab, "--http1.1", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    time.sleep(0.2)
    log = p.log()
    assert "timings: accepted,upstream_connected,upstream_tls_done,client_tls_done,ended" in log, log


def test_client_without_sni_gets_a_leaf_for_the_ip(lab, https, tls_proxy, pki):
    """A TLS client that sends no SNI (curl to an IP) gets a leaf for the original destination IP."""
    tls_proxy()
    out = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER4}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n"


def test_tls_1_2_client_is_served(lab, https, tls_proxy, pki):
    """A client limited to TLS 1.2 is intercepted too."""
    tls_proxy()
    out = curl(lab, "--tls-max", "1.2", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n"


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_connection_close_request_gets_close_notify_and_eof(lab, https, tls_proxy, pki, version):
    """After answering a request with "Connection: close", the proxy ends the TLS session itself.

    openssl s_client with -ign_eof reads until the server side closes; it
    would wait until the timeout if the proxy only closed after the client
    (Twisted holds TLS shutdown while a producer is registered).
    """
    tls_proxy()
    request = f"GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    out = lab.exec(lab.client, "openssl", "s_client", "-quiet", "-ign_eof", version, "-connect", f"{SERVER4}:443",
                   "-servername", SERVER_NAME, "-CAfile", str(pki["ours"]), "-verify_return_error",
                   input=request, check=False, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200"), out.stdout
    assert out.stdout.endswith("hello tls\n"), out.stdout
    assert time.monotonic() - started < 5


def test_untrusted_upstream_certificate_gives_a_502_page(lab, https, tls_proxy, pki):
    """A server our trust store does not vouch for never yields a normal answer: the client reads why."""
    p = tls_proxy(trust=False)
    out = curl(lab, "--cacert", str(pki["ours"]), "-w", "%{http_code}", f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith("502"), out.stdout
    assert "certificate verify failed" in out.stdout, out.stdout
    assert "hello tls" not in out.stdout
    time.sleep(0.2)
    assert re.search(r"flow \d+: TLS to upstream 198\.51\.100\.2:443 failed: certificate verify failed", p.log())


def test_upstream_name_mismatch_gives_a_502_page(lab, https, tls_proxy, pki):
    """A client asking for another name than the server's certificate has gets a 502 naming the mismatch."""
    tls_proxy()
    out = curl(lab, "--cacert", str(pki["ours"]), "--resolve", f"other.test:443:{SERVER4}", "-w", "%{http_code}",
               "https://other.test/")
    assert out.stdout.endswith("502"), out.stdout
    assert "mismatch" in out.stdout, out.stdout


def test_insecure_upstream_is_allowed_and_logged_loudly(lab, https, tls_proxy, pki):
    """--insecure-upstream lets an unverifiable server through and says so in the log."""
    p = tls_proxy("--insecure-upstream", trust=False)
    out = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.stdout == "hello tls\n", out.stderr
    time.sleep(0.2)
    assert "--insecure-upstream: server certificates are NOT verified" in p.log()
    assert re.search(r"flow \d+: INSECURE: upstream 198\.51\.100\.2:443 failed verification", p.log()), p.log()


def test_client_rejecting_our_certificate_is_logged_and_learned(lab, https, tls_proxy, pki):
    """A client that does not trust our CA is detected; with --passthrough-rejected it then gets the real server."""
    p = tls_proxy("--passthrough-rejected")
    refused = curl(lab, "--cacert", str(pki["server_ca"]), f"https://{SERVER_NAME}/")
    assert refused.returncode == 60, refused.stderr  # curl: peer certificate cannot be authenticated
    time.sleep(0.3)
    assert re.search(r"client 192\.0\.2\.2:\d+ rejected our certificate for server\.test: .*; passing it through",
                     p.log()), p.log()
    direct = curl(lab, "--cacert", str(pki["server_ca"]), f"https://{SERVER_NAME}/")
    assert direct.returncode == 0, direct.stderr
    assert direct.stdout == "hello tls\n"


def test_passthrough_pattern_relays_tls_untouched(lab, https, tls_proxy, pki):
    """--passthrough '*.test' leaves TLS alone: the client sees the server's own certificate."""
    p = tls_proxy("--passthrough", "*.test")
    out = curl(lab, "--cacert", str(pki["server_ca"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n"
    time.sleep(0.2)
    assert re.search(r"flow \d+: passing TLS for server\.test through untouched", p.log()), p.log()


def test_connect_tunnel_through_the_explicit_proxy_is_intercepted(lab, https, proxy, pki):
    """curl -x with https:// tunnels through CONNECT, and the tunnel is decrypted like a transparent one."""
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
               "--upstream-ca", str(pki["server_ca"]), "--taps", "logger"], wait=[(3128, "tcp")])
    out = curl(lab, "-x", "http://192.0.2.1:3128", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n"
    time.sleep(0.2)
    assert re.search(r"flow \d+ to_server request GET https://server\.test/", p.log()), p.log()


def test_reconnecting_client_resumes_its_tls_session(lab, https, tls_proxy, pki, tmp_path):
    """A client that comes back with its session (openssl s_client -sess_in) gets an abbreviated handshake."""
    tls_proxy()
    session = tmp_path / "session.pem"
    base = f"openssl s_client -connect {SERVER4}:443 -servername {SERVER_NAME} -CAfile {pki['ours']} -tls1_2"
    first = lab.exec(lab.client, "sh", "-c", f"echo | {base} -sess_out {session}", check=False, timeout=20)
    assert "Verify return code: 0 (ok)" in first.stdout, first.stdout + first.stderr
    assert "New, TLSv1.2" in first.stdout
    second = lab.exec(lab.client, "sh", "-c", f"echo | {base} -sess_in {session}", check=False, timeout=20)
    assert "Reused, TLSv1.2" in second.stdout, second.stdout


def test_upstream_that_closes_between_requests_is_reconnected_over_tls(lab, tmp_path, tls_proxy, pki):
    """nginx closes after every request (keepalive_requests 1); three requests on one client
    connection each reach it over a new upstream connection, TLS again and verified."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]), extra="keepalive_requests 1;")
    (web.root / "index.html").write_text("hello tls\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    p = tls_proxy()
    url = f"https://{SERVER_NAME}/"
    out = curl(lab, "--http1.1", "--cacert", str(pki["ours"]), "-w", "%{num_connects} %{http_code}\n", url, url, url)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello tls\n1 200\nhello tls\n0 200\nhello tls\n0 200\n", out.stdout
    served = web.access_log()
    assert [r for _, r, _ in served] == ["GET / HTTP/1.1"] * 3, served
    assert len({conn for conn, _, _ in served}) == 3, served
    assert "tls facts" in p.log()


def test_upstream_tls_sessions_are_kept_and_resumed(lab, tmp_path, tls_proxy, pki):
    """When an upstream connection ends, its TLS session is kept and offered on the next one to the same
    server: nginx closes after every request, so three requests make three upstream connections, and nginx
    says (``$ssl_session_reused``) that a later one resumed. Verification still holds for it (the name is
    checked again on a resumed handshake; tests/layers/tls/test_tls.py)."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]),
                extra='keepalive_requests 1; add_header X-Session-Reused "$ssl_session_reused" always;')
    (web.root / "index.html").write_text("hello tls\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    tls_proxy()
    url = f"https://{SERVER_NAME}/"
    reused = []
    for _ in range(3):
        out = curl(lab, "--http1.1", "--cacert", str(pki["ours"]), "-D", "-", "-o", "/dev/null", url, url)
        assert out.returncode == 0, out.stderr
        reused += re.findall(r"(?im)^x-session-reused: (\S*)", out.stdout)
    assert len(reused) == 6 and reused[0] == ".", reused  # the first: a full handshake
    assert "r" in reused[1:], reused
    assert len({conn for conn, _, _ in web.access_log()}) == 6
