"""End to end, parent proxies: Squid (HTTP parent, with and without Basic authentication) and
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
from tinspect.lab.netlab import PARENT4, SERVER_NAME, Lab, remove_stale_labs

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


def start_squid(lab, workdir, users=None):
    """Squid on PARENT4:3128, with Basic authentication for ``users`` ({name: password}) if given."""
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
                "auth_param basic realm parent\nacl authed proxy_auth REQUIRED\nhttp_access deny !authed\n")
    (workdir / "squid.conf").write_text(
        f"http_port {PARENT4}:3128\nvisible_hostname parent.test\npid_filename {workdir}/squid.pid\n"
        f"access_log stdio:{workdir}/access.log\ncache_log {workdir}/cache.log\ncache deny all\n"
        f"coredump_dir {workdir}\nshutdown_lifetime 0 seconds\nhosts_file /etc/hosts\n"
        f"{auth}http_access allow all\n")
    proc = lab.spawn(lab.parent, "squid", "-N", "-f", str(workdir / "squid.conf"),
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(lab.parent, 3128, proc=proc)
    return workdir / "access.log"


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
    tls_proxy("--upstream-proxy", f"http://{PARENT4}:3128")
    assert curl(lab, pki, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert "hello tls" in client_run(lab, "nghttp", f"https://{SERVER_NAME}/")
    log = squid_log(access, 3)
    assert log.count("TCP_TUNNEL/200") == 3 and log.count("]:443 ") == 2 and "]:80 " in log, log  # (IPv6 first)


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


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_microsocks_with_password_under_tproxy(lab, pki, https, tls_proxy, scheme):
    """curl (HTTP, HTTPS), nghttp and a WebSocket client reach the servers through SOCKS5 with a password."""
    start_microsocks(lab, "bob", "pw")
    ws = lab.spawn(lab.server, sys.executable, "-m", "tests.wspeers", "server", str(WS_PORT),
                   str(Path(tempfile.gettempdir()) / f"ws-{lab.server}.jsonl"), cwd=REPO)
    lab.wait_listening(lab.server, WS_PORT, proc=ws)
    lab.tproxy(8080, dports=[WS_PORT])
    tls_proxy("--upstream-proxy", f"{scheme}://bob:pw@{PARENT4}:1080")
    assert curl(lab, pki, f"http://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert curl(lab, pki, f"https://{SERVER_NAME}/") == ("200", "hello tls\n")
    assert "hello tls" in client_run(lab, "nghttp", f"https://{SERVER_NAME}/")
    out = client_run(lab, sys.executable, "-m", "tests.wspeers", "client", "say", f"ws://{SERVER_NAME}:{WS_PORT}/echo",
                     "hello parent")
    assert "hello parent" in out


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
