"""End to end, timeouts: stalled clients and servers through real TPROXY rules.

Each test runs ``twistd tinspect`` with one timeout cut to a second and a
peer that stalls at the matching moment; the other side must get a clean
answer (a 408 or 504 page, or the connection closed) in a few seconds, and
the proxy must not count the time it holds a server back itself.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from tests.conftest import DUAL, REPO, client_run
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns


def hold(lab, payload: bytes, seconds: float = 8, port: int = 80) -> tuple[str, str]:
    """Send ``payload`` from the client and wait; (seconds until the proxy closed or 'open', what came back)."""
    out = client_run(lab, sys.executable, "-m", "tests.peers", "hold", SERVER4, str(port), payload.hex(), str(seconds),
                     timeout=seconds + 10)
    ended, _, reply = out.partition(" ")
    return ended, reply


@pytest.fixture
def web(lab, tmp_path):
    server = Nginx(lab, lab.server, tmp_path / "nginx")
    (server.root / "index.html").write_text("hello world\n")
    (server.root / "big.bin").write_bytes(b"x" * (3 * 1024 * 1024))
    return server.start()


def start(lab, proxy, *extra, ports=(80,)):
    lab.tproxy(8080, dports=list(ports))
    taps = "logger,filter" if any(str(e).startswith("filter.") for e in extra) else "logger"
    return proxy(["--listen", DUAL, "--taps", taps, *extra], wait=[(8080, "tcp")])


def test_a_request_head_that_never_ends_gets_408(lab, web, proxy):
    """Slowloris: a head begun but not finished within --header-timeout is answered 408 and closed."""
    p = start(lab, proxy, "--header-timeout", "1")
    ended, reply = hold(lab, b"GET / HTTP/1.1\r\nHost: server.test\r\nX-Slow: ")
    assert ended != "open" and float(ended) < 4, (ended, reply)
    assert reply.startswith("HTTP/1.1 408 "), reply
    assert "no complete request head within 1 s" in reply
    time.sleep(0.3)
    assert "bad request from" in p.log() and "(answering 408)" in p.log()


def test_an_idle_keep_alive_connection_is_closed(lab, web, proxy):
    """After a complete exchange, a connection silent for --idle-timeout is closed; the answer came first."""
    p = start(lab, proxy, "--idle-timeout", "1")
    ended, reply = hold(lab, b"GET / HTTP/1.1\r\nHost: server.test\r\n\r\n")
    assert reply.startswith("HTTP/1.1 200 ") and reply.endswith("hello world\n"), reply
    assert ended != "open" and 0.9 <= float(ended) < 4, ended
    time.sleep(0.3)
    assert "closing the connection: idle for 1 s" in p.log()


def test_a_connection_that_keeps_talking_is_not_idle(lab, web, proxy):
    """Three requests 0.7 s apart on one connection with --idle-timeout 1: all answered."""
    start(lab, proxy, "--idle-timeout", "1")
    script = (
        "import socket,sys,time\n"
        f"s=socket.create_connection(('{SERVER4}',80)); got=b''\n"
        "for i in range(3):\n"
        "    s.sendall(b'GET / HTTP/1.1\\r\\nHost: server.test\\r\\n\\r\\n')\n"
        "    while got.count(b'hello world') <= i: got+=s.recv(65536)\n"
        "    time.sleep(0.7)\n"
        "print(got.count(b'HTTP/1.1 200'))\n"
    )
    assert client_run(lab, sys.executable, "-c", script).strip() == "3"


def test_a_server_that_never_answers_gives_504(lab, proxy):
    """A server that takes the request and stays silent: 504 after --response-timeout."""
    lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "mute-server", "80", cwd=REPO)
    lab.wait_listening(lab.server, 80)
    p = start(lab, proxy, "--response-timeout", "1")
    started = time.monotonic()
    out = client_run(lab, "curl", "-sS", "-w", "\\n%{http_code}", f"http://{SERVER4}/")
    assert time.monotonic() - started < 5
    assert out.endswith("\n504"), out
    assert "sent nothing for 1 s" in out
    time.sleep(0.3)
    assert "upstream 198.51.100.2:80 sent nothing for 1 s" in p.log()


def test_a_client_that_stops_reading_is_not_taken_for_a_silent_server(lab, web, proxy):
    """A client reads a little of 3 MiB, stops for 3 s, then reads the rest, with --response-timeout 1:
    the proxy held the server back meanwhile, so that silence is not the server's and nothing times out."""
    p = start(lab, proxy, "--response-timeout", "1")
    script = (
        "import socket,time\n"
        f"s=socket.create_connection(('{SERVER4}',80))\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)\n"
        "s.sendall(b'GET /big.bin HTTP/1.1\\r\\nHost: server.test\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "got=s.recv(1000); time.sleep(3)\n"
        "while d:=s.recv(65536): got+=d\n"
        "print(len(got.partition(b'\\r\\n\\r\\n')[2]))\n"
    )
    out = lab.exec(lab.client, sys.executable, "-c", script, timeout=30, check=False)
    assert out.stdout.strip() == str(3 * 1024 * 1024), (out.stderr, p.log())
    assert "sent nothing" not in p.log()


def test_a_tls_handshake_that_stalls_is_given_up(lab, proxy, tmp_path, pki):
    """A client that sends half a ClientHello and waits is disconnected after --handshake-timeout."""
    https = Nginx(lab, lab.server, tmp_path / "nginx-tls", tls=(pki["chain"], pki["key"]))
    (https.root / "index.html").write_text("hello tls\n")
    https.start()
    lab.wait_listening(lab.server, 443)
    p = start(lab, proxy, "--handshake-timeout", "1", "--state-dir", str(pki["state"]),
              "--upstream-ca", str(pki["server_ca"]), ports=(443,))
    ended, reply = hold(lab, bytes.fromhex("160301020001"), port=443)  # a record head, then nothing
    assert ended != "open" and float(ended) < 4, ended
    assert reply == ""
    time.sleep(0.3)
    assert "no complete TLS handshake within 1 s" in p.log()
    # and a real client is served by the same proxy
    out = client_run(lab, "curl", "-sS", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert out == "hello tls\n"


def test_connection_limits_refuse_the_excess_and_count_closed_ones_out(lab, web, proxy):
    """--max-connections-per-client 2: a third connection is cut at once while two are open; once one
    closes, a new one is served (the closed one no longer counts)."""
    p = start(lab, proxy, "--max-connections-per-client", "2")
    script = (
        "import socket,time\n"
        f"A=('{SERVER4}',80)\n"
        "req=b'GET / HTTP/1.1\\r\\nHost: server.test\\r\\n\\r\\n'\n"
        "def ask(s):\n"
        "    s.sendall(req); got=b''\n"
        "    while b'hello world' not in got:\n"
        "        d=s.recv(65536)\n"
        "        if not d: return 'closed'\n"
        "        got+=d\n"
        "    return 'ok'\n"
        "def ask_safely(s):\n"
        "    try: return ask(s)\n"
        "    except ConnectionResetError: return 'closed'\n"
        "one=socket.create_connection(A); two=socket.create_connection(A)\n"
        "r=[ask(one), ask(two)]\n"
        "three=socket.create_connection(A); time.sleep(0.3); r.append(ask_safely(three))\n"
        "one.close(); time.sleep(0.3)\n"
        "four=socket.create_connection(A); r.append(ask_safely(four)); r.append(ask(two))\n"
        "print(' '.join(r))\n"
    )
    assert client_run(lab, sys.executable, "-c", script).split() == ["ok", "ok", "closed", "ok", "ok"]
    time.sleep(0.3)
    assert "connections from this client are open (--max-connections-per-client)" in p.log()


H2_IDLE_CLIENT = """
import socket, ssl, sys, time
import h2.connection, h2.config, h2.events
ctx = ssl.create_default_context(cafile=sys.argv[1]); ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("{host}", 443)), server_hostname="server.test")
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "server.test"), (":path", "/")],
               end_stream=True)
s.sendall(c.data_to_send())
body, done, goaway = b"", None, None
while True:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.DataReceived):
            body += e.data
        elif isinstance(e, h2.events.StreamEnded):
            done = time.monotonic()
        elif isinstance(e, h2.events.ConnectionTerminated):
            goaway = e.error_code
    s.sendall(c.data_to_send())
print(body.decode().strip(), int(goaway) if goaway is not None else None, round(time.monotonic() - done, 1))
"""


def test_an_idle_http2_connection_gets_goaway(lab, proxy, tmp_path, pki):
    """A real h2 client (the h2 library over ssl) that stays connected after its answer gets GOAWAY
    (NO_ERROR) and the end of the connection after --idle-timeout."""
    web = Nginx(lab, lab.server, tmp_path / "nginx-tls", tls=(pki["chain"], pki["key"]))
    (web.root / "index.html").write_text("hello h2\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    start(lab, proxy, "--idle-timeout", "1", "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
          ports=(443,))
    out = client_run(lab, sys.executable, "-c", H2_IDLE_CLIENT.format(host=SERVER4), str(pki["ours"]))
    text, code, after = out.rsplit(maxsplit=2)
    assert text == "hello h2"
    assert code == "0" and 0.9 <= float(after) < 4, out


def test_an_http2_server_that_never_answers_gives_504(lab, proxy, pki):
    """curl --http2 through the MITM to an h2 server that completes TLS and then stays silent:
    504 after --response-timeout, on the stream, and the connection stays usable."""
    lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "mute-tls-server", "443", str(pki["chain"]),
              str(pki["key"]), cwd=REPO)
    lab.wait_listening(lab.server, 443)
    p = start(lab, proxy, "--response-timeout", "1", "--state-dir", str(pki["state"]), "--upstream-ca",
              str(pki["server_ca"]), ports=(443,))
    started = time.monotonic()
    out = client_run(lab, "curl", "-sS", "--http2", "--cacert", str(pki["ours"]), "-w", "\\n%{http_code} %{http_version}",
                     f"https://{SERVER_NAME}/")
    assert time.monotonic() - started < 5
    assert out.endswith("\n504 2"), out
    assert "sent nothing for 1 s" in out
    time.sleep(0.3)
    assert "sent nothing for 1 s" in p.log()


def test_a_websocket_server_that_never_answers_the_handshake_gives_504(lab, proxy):
    """The websockets client's upgrade to a server that takes it and says nothing: 504, not a hang."""
    lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "mute-server", "80", cwd=REPO)
    lab.wait_listening(lab.server, 80)
    start(lab, proxy, "--response-timeout", "1")
    started = time.monotonic()
    out = client_run(lab, sys.executable, "-m", "tests.peers", "ws-status", f"ws://{SERVER4}/chat")
    assert out.startswith("504 "), out
    assert time.monotonic() - started < 5


def test_a_locally_answered_request_leaves_the_connection_idle_not_waiting_for_a_head(lab, web, proxy, tmp_path):
    """After an answer the proxy gave itself (a filter's block page), the connection is idle: closed after
    --idle-timeout, never a 408 after the (shorter) --header-timeout."""
    rules = tmp_path / "rules.txt"
    rules.write_text("block url=/\n")
    start(lab, proxy, "--header-timeout", "1", "--idle-timeout", "3", "--tap-option", f"filter.rules={rules}")
    ended, reply = hold(lab, b"GET / HTTP/1.1\r\nHost: server.test\r\n\r\n")
    assert reply.startswith("HTTP/1.1 403 ") and "408" not in reply, reply
    assert ended != "open" and 2.9 <= float(ended) < 6, ended


def test_a_client_that_never_reads_is_cut_after_the_idle_timeout(lab, web, proxy):
    """A client that asks for 3 MiB and reads nothing holds the response and the upstream only for
    --idle-timeout once the proxy's buffer for it is full; then both are cut (logged)."""
    p = start(lab, proxy, "--idle-timeout", "2", "--response-timeout", "1")
    script = (
        "import socket,time\n"
        f"s=socket.create_connection(('{SERVER4}',80))\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
        "s.sendall(b'GET /big.bin HTTP/1.1\\r\\nHost: server.test\\r\\n\\r\\n')\n"
        "time.sleep(8)\n"
        "got=0\n"
        "try:\n"
        "    while d:=s.recv(65536): got+=len(d)\n"
        "except ConnectionResetError: pass\n"
        "print(got)\n"
    )
    out = client_run(lab, sys.executable, "-c", script, timeout=30)
    assert int(out) < 3 * 1024 * 1024, out  # cut, not delivered whole
    assert re.search(r"flow \d+: aborted: the client read nothing for 2 s", p.log()), p.log()
