"""End to end, parent proxies: Squid (HTTP parent, with and without Basic authentication, and an
HTTPS one on its https_port) and
microsocks (SOCKS5, with and without a password) in a namespace of their own beside the
gateway, with curl, nghttp and a WebSocket client going through tinspect under TPROXY and
through its explicit proxy. The gateway itself cannot reach the servers (its own packets to
them are rejected): only the parent can, so a page that arrives came through it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, client_run
from tinspect.lab.netlab import PARENT4, SERVER6, SERVER_NAME, Lab, remove_stale_labs

pytestmark = pytest.mark.netns

WS_PORT = 8765
EXPLICIT = "tcp:3128:interface=192.0.2.1"


@pytest.fixture
def lab():
    """The lab with a parent namespace, where the gateway's own packets to the servers are rejected."""
    remove_stale_labs()
    with Lab(parent=True) as the_lab:
        for tool, net in (("iptables", "198.51.100.0/24"), ("ip6tables", "2001:db8:2::/64")):
            # TCP only: the gateway still routes for the parent (IPv6 neighbour discovery included).
            the_lab.exec(the_lab.gateway, tool, "-A", "OUTPUT", "-p", "tcp", "-d", net, "-j", "REJECT")
        yield the_lab


@pytest.fixture
def workdir():
    """A directory the parents' unprivileged users can read and write (pytest's is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="tinspect-parent-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_squid(lab, workdir, users=None, tls=None, open_connect=False):
    """Squid on PARENT4:3128, with Basic authentication for ``users`` ({name: password}) if given
    (not for CONNECT with ``open_connect``), and an HTTPS proxy port PARENT4:3129 with ``tls``
    ((certificate, key) paths) if given."""
    auth = ""
    if users:
        lines = []
        for name, password in users.items():
            hashed = subprocess.run(["openssl", "passwd", "-apr1", password], capture_output=True, text=True,
                                    check=True).stdout.strip()
            lines.append(f"{name}:{hashed}\n")
        (workdir / "htpasswd").write_text("".join(lines))
        (workdir / "htpasswd").chmod(0o644)
        auth = (f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {workdir}/htpasswd\n"
                "auth_param basic realm parent\nacl authed proxy_auth REQUIRED\n"
                + ("http_access allow CONNECT\n" if open_connect else "") + "http_access deny !authed\n")
    https_port = f"https_port {PARENT4}:3129 tls-cert={tls[0]} tls-key={tls[1]}\n" if tls else ""
    (workdir / "squid.conf").write_text(
        f"http_port {PARENT4}:3128\n{https_port}visible_hostname parent.test\npid_filename {workdir}/squid.pid\n"
        f"access_log stdio:{workdir}/access.log\ncache_log {workdir}/cache.log\ncache deny all\n"
        f"coredump_dir {workdir}\nshutdown_lifetime 0 seconds\nhosts_file /etc/hosts\n"
        f"{auth}http_access allow all\n")
    proc = lab.spawn(lab.parent, "squid", "-N", "-f", str(workdir / "squid.conf"),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.parent, 3128, proc=proc)
    if tls:
        lab.wait_listening(lab.parent, 3129, proc=proc)
    return workdir / "access.log"


@pytest.fixture
def parent_pki(workdir):
    """A CA of the parent's own and Squid's certificate for PARENT4 (readable by Squid's user)."""
    from cryptography.hazmat.primitives import serialization

    from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates

    authority = CertificateAuthority.generate(workdir / "parent-ca", common_name="Lab parent CA")
    cert, key = LeafCertificates(authority).get_cryptography(PARENT4, ["parent.test"])
    paths = {"ca": workdir / "parent-ca.pem", "cert": workdir / "parent.pem", "key": workdir / "parent.key"}
    paths["ca"].write_bytes(authority.cert_pem)
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    for path in paths.values():
        path.chmod(0o644)
    return paths


def start_ws(lab):
    """The WebSocket echo server on WS_PORT, diverted to tinspect under TPROXY with ports 80 and 443."""
    ws = lab.spawn(lab.server, sys.executable, "-m", "tests.wspeers", "server", str(WS_PORT),
                   str(Path(tempfile.gettempdir()) / f"ws-{lab.server}.jsonl"), cwd=REPO)
    lab.wait_listening(lab.server, WS_PORT, proc=ws)
    lab.tproxy(8080, dports=[WS_PORT])


def ws_says(lab, text, *opts):
    """A WebSocket client in the client namespace sends ``text`` to the echo server: what it printed."""
    return client_run(lab, sys.executable, "-m", "tests.wspeers", "client", "say",
                      f"ws://{SERVER_NAME}:{WS_PORT}/echo", *opts, text)


def start_microsocks(lab, user=None, password=None):
    """microsocks on PARENT4:1080, asking for ``user``/``password`` if given."""
    creds = ["-u", user, "-P", password] if user else []
    proc = lab.spawn(lab.parent, "microsocks", "-i", PARENT4, "-p", "1080", *creds,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.parent, 1080, proc=proc)


def squid_log(path, lines=1):
    """Squid's access log once it has ``lines`` lines (it writes a tunnel's line when the tunnel
    closes, a moment after curl has its answer), or what it has after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text() if path.exists() else ""
        if text.count("\n") >= lines or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def curl(lab, pki, *args):
    """curl in the client namespace: ``(status, body)``, trusting our CA."""
    out = lab.exec(lab.client, "curl", "-sS", "--max-time", "20", "--cacert", str(pki["ours"]),
                   "-w", "\n%{http_code}", *args, check=False, timeout=30)
    body, _, status = out.stdout.rpartition("\n")
    return status, body


def test_squid_carries_http_https_and_h2_under_tproxy(lab, pki, https, tls_proxy, workdir):
    """Plain HTTP, intercepted HTTPS (HTTP/1.1 and h2 with nghttp) reach the server through Squid."""
    access = start_squid(lab, workdir)
    start_ws(lab)
    tls_proxy("--upstream-proxy", f"http://{PARENT4}:3128")
    assert curl(lab, pki, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert "hello tls" in client_run(lab, "nghttp", f"https://{SERVER_NAME}/")
    assert "hello squid" in ws_says(lab, "hello squid")
    log = squid_log(access, 4)
    assert log.count("TCP_TUNNEL/200") == 4 and log.count("]:443 ") == 2 and "]:80 " in log, log  # (IPv6 first)
    assert f"]:{WS_PORT} " in log, log


def test_https_squid_carries_http_https_h2_and_websocket_under_tproxy(lab, pki, https, tls_proxy, workdir,
                                                                     parent_pki):
    """Through an https:// parent (Squid's https_port, verified with --upstream-proxy-ca): plain HTTP,
    intercepted HTTPS (curl, nghttp: TLS to the server inside the TLS to the parent) and a WebSocket."""
    access = start_squid(lab, workdir, tls=(parent_pki["cert"], parent_pki["key"]))
    start_ws(lab)
    p = tls_proxy("--upstream-proxy", f"https://{PARENT4}:3129", "--upstream-proxy-ca", str(parent_pki["ca"]))
    assert curl(lab, pki, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, "--http1.1", f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert "hello tls" in client_run(lab, "nghttp", f"https://{SERVER_NAME}/")
    assert "hello tls squid" in ws_says(lab, "hello tls squid")
    log = squid_log(access, 4)
    assert log.count("TCP_TUNNEL/200") == 4 and log.count("]:443 ") == 2, log
    facts = p.log()
    assert "TLS intercepted for server.test (TLSv1.3, ALPN http/1.1)" in facts, facts
    assert "TLS intercepted for server.test (TLSv1.3, ALPN h2)" in facts, facts


def test_https_parent_with_the_wrong_ca_gives_a_page_naming_the_parent(lab, pki, https, tls_proxy, workdir,
                                                                      parent_pki):
    """An https:// parent whose certificate does not verify against --upstream-proxy-ca: a 502 page
    naming the parent, for plain HTTP and intercepted HTTPS alike; Squid never sees a request."""
    access = start_squid(lab, workdir, tls=(parent_pki["cert"], parent_pki["key"]))
    p = tls_proxy("--upstream-proxy", f"https://{PARENT4}:3129", "--upstream-proxy-ca", str(pki["server_ca"]))
    for url in (f"http://{SERVER_NAME}/", f"https://{SERVER_NAME}/"):
        status, body = curl(lab, pki, url)
        assert status == "502", body
        assert f"parent proxy https://{PARENT4}:3129" in body and "certificate verify failed" in body, body
    assert not access.exists() or "TCP_" not in access.read_text()
    assert "certificate verify failed" in p.log()


def test_squid_407_to_requests_translated_from_h2_gives_a_page_naming_the_parent(lab, pki, https, tls_proxy,
                                                                                 workdir):
    """HTTP/2 in cleartext to an HTTP/1.1 server goes to Squid as absolute-form HTTP/1.1; Squid's 407 to
    it (CONNECT needs no password there, requests do) is a 502 page naming the parent, not a 407."""
    start_squid(lab, workdir, {"alice": "s3cret"}, open_connect=True)
    p = tls_proxy("--upstream-proxy", f"http://alice:wrong@{PARENT4}:3128")
    status, body = curl(lab, pki, "--http2-prior-knowledge", f"http://{SERVER_NAME}/")
    assert status == "502", body
    assert f"parent proxy http://alice:***@{PARENT4}:3128 answered: 407 Proxy Authentication Required" in body
    assert "translating to HTTP/1.1" in p.log() and "wrong" not in p.log()


def test_socks5_resolves_an_ipv6_only_name_at_the_gateway(lab, pki, https, proxy):
    """socks5:// (names resolved by the gateway): a name with only an IPv6 address reaches the server."""
    lab.add_host("server6.test", SERVER6)
    start_microsocks(lab)
    proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--upstream-proxy", f"socks5://{PARENT4}:1080"],
          wait=[(3128, "tcp")])
    assert curl(lab, pki, "--proxy", "http://192.0.2.1:3128", "http://server6.test/") == ("200", "hello tls\n")


def test_squid_with_basic_auth_through_the_explicit_proxy(lab, pki, https, proxy, workdir):
    """The explicit proxy's plain HTTP goes to Squid as absolute-form requests, its CONNECT as a CONNECT,
    both with the user's credentials; with --upstream-proxy-connect plain HTTP is tunnelled too."""
    access = start_squid(lab, workdir, {"alice": "s3cret"})
    proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
           "--upstream-ca", str(pki["server_ca"]), "--upstream-proxy", f"http://alice:s3cret@{PARENT4}:3128"],
          wait=[(3128, "tcp")])
    via = ["--proxy", "http://192.0.2.1:3128"]
    assert curl(lab, pki, *via, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, *via, f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    log = squid_log(access, 2)
    assert log.count(" alice ") == 2 and f"CONNECT {SERVER_NAME}:443" in log, log
    assert f"GET http://{SERVER_NAME}/ alice" in log, log


def test_wrong_squid_password_for_absolute_form_gives_a_page_naming_the_parent(lab, pki, https, proxy, workdir):
    """Squid's 407 to an absolute-form request is not relayed (the client would take it for ours): a 502 page."""
    start_squid(lab, workdir, {"alice": "s3cret"})
    p = proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
               "--upstream-proxy", f"http://alice:wrong@{PARENT4}:3128"], wait=[(3128, "tcp")])
    status, body = curl(lab, pki, "--proxy", "http://192.0.2.1:3128", f"http://{SERVER_NAME}/")
    assert status == "502", body
    assert f"parent proxy http://alice:***@{PARENT4}:3128 answered: 407 Proxy Authentication Required" in body
    assert "wrong" not in p.log() and "flow " in p.log()


def test_upstream_proxy_connect_tunnels_plain_http(lab, pki, https, proxy, workdir):
    """--upstream-proxy-connect sends the explicit proxy's plain HTTP through a CONNECT tunnel."""
    access = start_squid(lab, workdir)
    proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--upstream-proxy-connect",
           "--upstream-proxy", f"http://{PARENT4}:3128"], wait=[(3128, "tcp")])
    assert curl(lab, pki, "--proxy", "http://192.0.2.1:3128", f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    log = squid_log(access)
    assert f"CONNECT {SERVER_NAME}:80" in log and "GET http" not in log, log


def test_wrong_squid_password_gives_a_page_naming_the_parent(lab, pki, https, tls_proxy, workdir):
    """A 407 from Squid becomes a 502 page naming the parent (password masked) and its answer."""
    start_squid(lab, workdir, {"alice": "s3cret"})
    p = tls_proxy("--upstream-proxy", f"http://alice:wrong@{PARENT4}:3128")
    for url in (f"http://{SERVER_NAME}/", f"https://{SERVER_NAME}/"):
        status, body = curl(lab, pki, url)
        assert status == "502", body
        assert f"parent proxy http://alice:***@{PARENT4}:3128 answered: 407 Proxy Authentication Required" in body
    assert "wrong" not in p.log()
    assert "407 Proxy Authentication Required" in p.log()


@pytest.mark.parametrize("scheme,user", [("socks5", "bob:pw@"), ("socks5h", "bob:pw@"), ("socks5h", "")])
def test_microsocks_under_tproxy(lab, pki, https, tls_proxy, scheme, user):
    """curl (HTTP, HTTPS), nghttp and a WebSocket client reach the servers through SOCKS5, with a
    password and without."""
    start_microsocks(lab, *(["bob", "pw"] if user else []))
    start_ws(lab)
    tls_proxy("--upstream-proxy", f"{scheme}://{user}{PARENT4}:1080")
    assert curl(lab, pki, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert "hello tls" in client_run(lab, "nghttp", f"https://{SERVER_NAME}/")
    assert "hello parent" in ws_says(lab, "hello parent")


def test_websocket_through_the_explicit_proxy_and_squid(lab, pki, https, proxy, workdir):
    """A WebSocket client configured with the explicit proxy: its CONNECT goes on through Squid."""
    access = start_squid(lab, workdir)
    start_ws(lab)
    proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--upstream-proxy", f"http://{PARENT4}:3128"],
          wait=[(3128, "tcp")])
    assert "hello explicit" in ws_says(lab, "hello explicit", "--proxy", "http://192.0.2.1:3128")
    assert f"CONNECT {SERVER_NAME}:{WS_PORT}" in squid_log(access), access.read_text()


def test_microsocks_without_password_and_a_direct_exception(lab, pki, https, proxy):
    """Through the explicit proxy: SOCKS5 without authentication; a 'direct' rule really goes direct."""
    start_microsocks(lab)
    proxy(["--listen", EXPLICIT, "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
           "--upstream-ca", str(pki["server_ca"]), "--upstream-proxy", f"direct for {SERVER_NAME}.",
           "--upstream-proxy", f"socks5h://{PARENT4}:1080"], wait=[(3128, "tcp")])
    via = ["--proxy", "http://192.0.2.1:3128"]
    assert curl(lab, pki, *via, "https://198.51.100.2/") == ("200", "hello tls\n")
    # server.test goes direct, and the gateway cannot reach the server itself.
    status, body = curl(lab, pki, *via, f"http://{SERVER_NAME}/")
    assert status == "502" and "cannot reach" in body and "parent" not in body, body


def test_wrong_socks_password_gives_a_page_naming_the_parent(lab, pki, https, tls_proxy):
    """A SOCKS5 authentication failure becomes a 502 page naming the parent; the flow is logged."""
    start_microsocks(lab, "bob", "pw")
    p = tls_proxy("--upstream-proxy", f"socks5://bob:nope@{PARENT4}:1080")
    status, body = curl(lab, pki, f"http://{SERVER_NAME}/")
    assert status == "502", body
    assert f"parent proxy socks5://bob:***@{PARENT4}:1080 answered: user name/password authentication failed" in body
    assert "nope" not in p.log() and "authentication failed" in p.log()
