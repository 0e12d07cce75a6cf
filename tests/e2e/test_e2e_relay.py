"""End to end: real clients and servers in namespaces, real TPROXY/REDIRECT rules,
the real ``twistd tinspect`` command in the gateway."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, client_run
from tinspect.lab.netlab import SERVER4, SERVER6, Nginx

pytestmark = pytest.mark.netns

FAMILIES = [pytest.param(SERVER4, id="ipv4"), pytest.param(SERVER6, id="ipv6")]
DUAL = "tproxy:8080:interface=\\:\\:"


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def echo_server(lab, port=7):
    """socat echoing TCP over IPv4 and IPv6 in the server namespace."""
    proc = lab.spawn(lab.server, "socat", f"TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0", "EXEC:cat")
    lab.wait_listening(lab.server, port, proc=proc)


def socat_send(lab, host, port, payload: str) -> str:
    """Send payload with socat, half-close, return everything received."""
    return client_run(lab, "sh", "-c", f"printf '%s' '{payload}' | socat -t 5 - TCP:{bracket(host)}:{port},shut-down")


@pytest.mark.parametrize("server", FAMILIES)
def test_tproxy_relays_tcp_intact_and_logs_units(lab, proxy, server):
    """A TCP echo through a TPROXY rule returns the same bytes; the logger logs flow and units."""
    echo_server(lab)
    lab.tproxy(8080, dports=[7])
    p = proxy([ "--listen", DUAL, "--taps", "logger"], wait=[(8080, "tcp")])
    assert socat_send(lab, server, 7, "hello through tproxy") == "hello through tproxy"
    time.sleep(0.2)
    log = p.log()
    assert re.search(rf"flow \d+ open tcp \S+ -> {re.escape(bracket(server))}:7", log), log
    assert re.search(r"flow \d+ to_server data 20 bytes", log), log
    assert re.search(r"flow \d+ to_client data 20 bytes", log), log
    assert re.search(r"flow \d+ closed tcp", log), log


@pytest.mark.parametrize("server", FAMILIES)
def test_mangler_rewrites_both_directions_through_tproxy(lab, proxy, server):
    """mangler options from the command line rewrite bytes in flight."""
    echo_server(lab)
    lab.tproxy(8080, dports=[7])
    proxy(["--listen", DUAL, "--taps", "mangler", "--tap-option", "mangler.search=cat",
           "--tap-option", "mangler.replace=dog"], wait=[(8080, "tcp")])
    # Going up "cat" becomes "dog"; the echo comes back and is left alone (no "cat" left).
    assert socat_send(lab, server, 7, "the cat sat") == "the dog sat"


@pytest.mark.parametrize("server", FAMILIES)
def test_redirect_mode_recovers_original_destination(lab, proxy, server):
    """A transparent@tcp listener behind -j REDIRECT finds the destination via SO_ORIGINAL_DST."""
    echo_server(lab)
    lab.redirect(8081, dports=[7])
    p = proxy(["--listen", "transparent@tcp6:8081", "--taps", "logger"], wait=[(8081, "tcp")])
    assert socat_send(lab, server, 7, "redirected") == "redirected"
    time.sleep(0.2)
    assert f"-> {bracket(server)}:7" in p.log()


def test_half_close_still_delivers_whole_response(lab, proxy):
    """A client that shuts its write side gets the answer the server sends only after EOF."""
    proc = lab.spawn(lab.server, "socat", "TCP6-LISTEN:9,fork,reuseaddr,ipv6only=0", "EXEC:sha256sum")
    lab.wait_listening(lab.server, 9, proc=proc)
    lab.tproxy(8080, dports=[9])
    proxy(["--listen", DUAL], wait=[(8080, "tcp")])
    payload = "x" * 100000
    out = socat_send(lab, SERVER4, 9, payload)
    assert out.split()[0] == hashlib.sha256(payload.encode()).hexdigest()


def test_curl_fetches_from_nginx_through_raw_relay(lab, proxy, tmp_path):
    """curl and nginx (real client, real server) talk through the relay, byte for byte."""
    web = Nginx(lab, lab.server, tmp_path / "nginx")
    body = os.urandom(300_000)
    (web.root / "blob.bin").write_bytes(body)
    web.start()
    lab.tproxy(8080, dports=[80])
    p = proxy(["--listen", DUAL, "--taps", "logger"], wait=[(8080, "tcp")])
    for host in (SERVER4, SERVER6):
        out = lab.exec(lab.client, "curl", "-sS", "--fail", "-o", "-", f"http://{bracket(host)}/blob.bin",
                       timeout=20, text=False)
        assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(body).digest()
    assert p.log().count(" open tcp ") >= 2


def test_forward_mode_relays_to_fixed_upstream(lab, proxy):
    """forward=HOST:PORT@tcp:PORT relays every client of the port to one server."""
    echo_server(lab)
    proxy(["--listen", f"forward={SERVER4}:7@tcp:9000"], wait=[(9000, "tcp")])
    assert socat_send(lab, "192.0.2.1", 9000, "fixed upstream") == "fixed upstream"


@pytest.mark.parametrize("server", FAMILIES)
def test_transparent_udp_replies_come_from_original_destination(lab, proxy, server):
    """UDP through TPROXY reaches the server; replies come back from its address (connected socket)."""
    echo = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "udp-echo", "5353", cwd=REPO)
    lab.wait_listening(lab.server, 5353, "udp", proc=echo)
    lab.tproxy(8053, proto="udp", dports=[5353])
    p = proxy(["--udp", "tproxy:8053:interface=\\:\\:", "--taps", "logger,mangler",
               "--tap-option", "mangler.search=ping", "--tap-option", "mangler.replace=PING"],
              wait=[(8053, "udp")])
    out = lab.exec(lab.client, sys.executable, "-m", "tests.peers", "udp-ask", server, "5353", "ping-1", "ping-2",
                   cwd=REPO, timeout=15).stdout
    assert out.split() == ["echo:PING-1", "echo:PING-2"]
    log = p.log()
    assert re.search(rf"flow \d+ open udp \S+ -> {re.escape(bracket(server))}:5353", log), log
    assert len(re.findall(r"to_server datagram 6 bytes", log)) == 2


def test_forward_udp_sessions_per_client(lab, proxy):
    """--udp forward=HOST:PORT@PORT relays datagrams to a fixed server and back."""
    echo = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "udp-echo", "5353", cwd=REPO)
    lab.wait_listening(lab.server, 5353, "udp", proc=echo)
    proxy(["--udp", f"forward={SERVER4}:5353@5300", "--udp-timeout", "1"], wait=[(5300, "udp")])
    out = lab.exec(lab.client, sys.executable, "-m", "tests.peers", "udp-ask", "192.0.2.1", "5300", "a", "b",
                   cwd=REPO, timeout=15).stdout
    assert out.split() == ["echo:a", "echo:b"]


def test_refused_upstream_closes_client_with_log_line(lab, proxy):
    """An upstream that refuses ends the client connection cleanly; the log names the flow."""
    lab.tproxy(8080, dports=[6])
    p = proxy(["--listen", DUAL], wait=[(8080, "tcp")])
    started = time.monotonic()
    out = lab.exec(lab.client, "sh", "-c", f"printf hi | socat -t 5 - TCP:{SERVER4}:6", check=False, timeout=15)
    assert time.monotonic() - started < 5
    assert out.stdout == ""
    time.sleep(0.2)
    assert re.search(r"flow \d+: upstream 198\.51\.100\.2:6 failed: connection refused", p.log()), p.log()


def test_custom_taps_by_module_path_with_async_and_options(lab, proxy):
    """module:Class taps with options, an async tap among them, run in chain order."""
    echo_server(lab)
    lab.tproxy(8080, dports=[7])
    proxy(["--listen", DUAL, "--taps", "tests.lab_taps:Dawdle,shout=tests.lab_taps:Shout",
           "--tap-option", "shout.direction=to_client", "--tap-option", "dawdle.delay=0.1"],
          wait=[(8080, "tcp")], env={"PYTHONPATH": str(REPO)})
    assert socat_send(lab, SERVER4, 7, "quiet please") == "QUIET PLEASE"


def test_tap_error_closes_only_that_flow(lab, proxy):
    """A tap that raises kills its own flow, logged with the flow id; the next flow works."""
    echo_server(lab)
    lab.tproxy(8080, dports=[7])
    p = proxy(["--listen", DUAL, "--taps", "tests.lab_taps:Tripwire"], wait=[(8080, "tcp")])
    bad = lab.exec(lab.client, "sh", "-c", f"printf BOOM | socat -t 5 - TCP:{SERVER4}:7,shut-down", check=False)
    assert "BOOM" not in bad.stdout
    assert socat_send(lab, SERVER4, 7, "fine") == "fine"
    assert re.search(r"flow \d+: tap tripwire failed", p.log()), p.log()


def test_100mib_to_slow_reader_is_intact_with_bounded_memory(lab, proxy, tmp_path):
    """100 MiB through the relay to a reader slower than the server: sha256 intact, peak RSS bounded."""
    web = Nginx(lab, lab.server, tmp_path / "nginx")
    size = 100 * 1024 * 1024
    with open(web.root / "big.bin", "wb") as f:
        digest = hashlib.sha256()
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    web.start()
    lab.tproxy(8080, dports=[80])
    p = proxy(["--listen", DUAL], wait=[(8080, "tcp")])
    baseline_kib = p.status("VmRSS")
    out = lab.exec(lab.client, "curl", "-sS", "--fail", "--limit-rate", "40M", "-o", "-",
                   f"http://{SERVER4}/big.bin", timeout=120, text=False)
    assert hashlib.sha256(out.stdout).hexdigest() == digest.hexdigest()
    peak_kib = p.status("VmHWM")
    # The body is 100 MiB; the proxy's peak must not grow with it. Measured: ~45 MiB
    # peak (mostly the interpreter and Twisted), about 1 MiB over its idle size.
    print(f"proxy RSS idle {baseline_kib} KiB, peak {peak_kib} KiB")
    assert peak_kib - baseline_kib < 16 * 1024, (baseline_kib, peak_kib)


def test_listen_failure_is_one_clear_line(tmp_path):
    """A port already taken stops twistd at start with exit 1 and one critical line, no traceback."""
    import socket

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        proc = subprocess.run(
            ["twistd", "-n", "--pidfile=", "tinspect", "--listen", f"forward=127.0.0.1:9@tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path, capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        blocker.close()
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"tinspect cannot start: --listen forward=127.0.0.1:9@tcp:{port}:interface=127.0.0.1: cannot bind: Address already in use" in out
    assert "Traceback" not in out


def test_scripted_proxy_example_runs_several_listeners(lab, tmp_path):
    """examples/scripted_proxy.py builds a proxy with a custom tap and three listeners that all work."""
    echo_server(lab)
    echo = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "udp-echo", "5353", cwd=REPO)
    lab.wait_listening(lab.server, 5353, "udp", proc=echo)
    lab.tproxy(8080, dports=[7])
    out_path = tmp_path / "script.out"
    with open(out_path, "w") as out:
        script = lab.spawn(lab.gateway, "env", f"PYTHONPATH={REPO}", sys.executable, "-u",
                           str(REPO / "examples" / "scripted_proxy.py"), SERVER4, stdout=out, stderr=subprocess.STDOUT)
    for port, proto in ((8080, "tcp"), (9000, "tcp"), (5300, "udp")):
        lab.wait_listening(lab.gateway, port, proto, proc=script)
    assert socat_send(lab, SERVER4, 7, "via tproxy") == "via tproxy"
    assert socat_send(lab, "192.0.2.1", 9000, "via forward") == "via forward"
    udp = lab.exec(lab.client, sys.executable, "-m", "tests.peers", "udp-ask", "192.0.2.1", "5300", "dgram",
                   cwd=REPO, timeout=15).stdout
    assert udp.split() == ["echo:dgram"]
    time.sleep(0.3)
    printed = out_path.read_text()
    assert re.search(r"flow \d+ tcp up=10 down=10", printed), printed
    assert re.search(r"flow \d+ tcp up=11 down=11", printed), printed


def test_upstream_connect_timeout_closes_client(lab, proxy):
    """An upstream that never answers the SYN is given up after --connect-timeout."""
    lab.exec(lab.server, "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "8", "-j", "DROP")
    lab.tproxy(8080, dports=[8])
    p = proxy(["--listen", DUAL, "--connect-timeout", "1"], wait=[(8080, "tcp")])
    started = time.monotonic()
    lab.exec(lab.client, "sh", "-c", f"socat -t 10 - TCP:{SERVER4}:8 </dev/null", check=False, timeout=15)
    elapsed = time.monotonic() - started
    assert 0.8 < elapsed < 5, elapsed
    time.sleep(0.2)
    assert re.search(r"flow \d+: upstream 198\.51\.100\.2:8 failed: connect timeout", p.log()), p.log()


def test_tproxy_without_privilege_fails_with_clear_message(tmp_path):
    """Without CAP_NET_ADMIN a tproxy: listener stops twistd with a message that says so."""
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin,-net_raw", "--inh-caps=-net_admin,-net_raw", "twistd", "-n", "--pidfile=",
         "tinspect", "--listen", "tproxy:18999"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "tinspect cannot start: --listen tproxy:18999: cannot make a transparent socket" in out, out
    assert out.count("needs root, CAP_NET_ADMIN or CAP_NET_RAW") == 1, out  # said once, not twice


def test_explicit_proxy_connect_tunnel_with_curl(lab, proxy, tmp_path):
    """curl -p -x tunnels through CONNECT, plain curl -x uses absolute form; an unreachable target gets 502."""
    web = Nginx(lab, lab.server, tmp_path / "nginx")
    (web.root / "index.html").write_text("tunnelled\n")
    web.start()
    p = proxy(["--listen", "tcp:3128:interface=192.0.2.1", "--allow-clients", "192.0.2.0/24", "--taps", "logger"], wait=[(3128, "tcp")])
    via = "http://192.0.2.1:3128"
    assert client_run(lab, "curl", "-sS", "-p", "-x", via, f"http://{SERVER4}/") == "tunnelled\n"
    assert client_run(lab, "curl", "-sS", "-p", "-x", via, f"http://[{SERVER6}]/") == "tunnelled\n"
    assert client_run(lab, "curl", "-sS", "-x", via, f"http://{SERVER4}/") == "tunnelled\n"
    refused = lab.exec(lab.client, "curl", "-sS", "-p", "-x", via, f"http://{SERVER4}:6/", check=False)
    assert "502" in refused.stderr, refused.stderr
    time.sleep(0.2)
    assert re.search(r"flow \d+ open tcp 192\.0\.2\.2:\d+ -> \? via tcp:3128", p.log()), p.log()
    assert re.search(r"flow \d+ to_server request CONNECT 198\.51\.100\.2:80 0 bytes", p.log()), p.log()


def test_default_listener_is_explicit_proxy_on_loopback(lab, proxy, tmp_path):
    """With no --listen, tinspect is an explicit proxy on 127.0.0.1:8080 and nowhere else."""
    web = Nginx(lab, lab.server, tmp_path / "nginx")
    (web.root / "index.html").write_text("default listener\n")
    web.start()
    proxy([], wait=[(8080, "tcp")])
    listening = lab.exec(lab.gateway, "ss", "-Hltn", "sport = :8080").stdout.split()
    assert "127.0.0.1:8080" in listening
    out = lab.exec(lab.gateway, "curl", "-sS", "-p", "-x", "http://127.0.0.1:8080", f"http://{SERVER4}/").stdout
    assert out == "default listener\n"
    blocked = lab.exec(lab.client, "curl", "-sS", "-p", "-x", "http://192.0.2.1:8080", f"http://{SERVER4}/",
                       check=False)
    assert blocked.returncode != 0


def test_upstream_reset_closes_client_after_delivering_data(lab, proxy):
    """A server that resets mid-stream: the client gets what was sent, then a clean close; the log names the flow."""
    server = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "reset-server", "11", cwd=REPO)
    lab.wait_listening(lab.server, 11, proc=server)
    lab.tproxy(8080, dports=[11])
    p = proxy(["--listen", DUAL, "--taps", "logger"], wait=[(8080, "tcp")])
    out = lab.exec(lab.client, "sh", "-c", f"socat -t 5 - TCP:{SERVER4}:11 </dev/null", timeout=15, check=False)
    assert out.stdout == "partial"
    time.sleep(0.2)
    log = p.log()
    assert re.search(r"flow (\d+): upstream 198\.51\.100\.2:11 reset the connection", log), log
    assert re.search(r"flow \d+ closed tcp after \S+ \(upstream reset\)", log), log
