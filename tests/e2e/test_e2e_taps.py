"""End to end, the built-in taps for users' jobs: headers and faults (curl and nginx through TPROXY)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import DUAL, REPO, client_run
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

ECHO = ('location = /headers { add_header X-Upstream here; return 200 '
        '"a=[$http_x_a] b=[$http_x_b] ua=[$http_user_agent] secret=[$http_x_secret]\\n"; }')


@pytest.fixture
def web(lab, tmp_path):
    server = Nginx(lab, lab.server, tmp_path / "nginx", extra=ECHO)
    (server.root / "index.html").write_text("hello\n")
    return server.start()


@pytest.fixture
def tapped(lab, proxy):
    def start(*options, taps="logger"):
        lab.tproxy(8080, dports=[80])
        return proxy(["--listen", DUAL, "--taps", taps, *options], wait=[(8080, "tcp")])

    return start


def curl(lab, *args):
    return lab.exec(lab.client, "curl", "-sS", *args, check=False, timeout=30)


def test_headers_tap_sets_adds_and_removes_both_ways(lab, web, tapped):
    p = tapped("--tap-option", "headers.set=X-A: from-tap", "--tap-option", "headers.add=X-B: one",
               "--tap-option", "headers.remove=User-Agent", "--tap-option", "headers.remove=X-Secret",
               "--tap-option", "resp.direction=to_client", "--tap-option", "resp.remove=X-Upstream",
               "--tap-option", "resp.set=Server: tinspect-lab", "--tap-option", "resp.add=X-Extra: 1",
               "--tap-option", "resp.add=X-Extra: 2",
               taps="logger,headers,resp=taps.headers:HeadersTap")
    out = curl(lab, "-D", "-", "-H", "X-A: from-client", "-H", "X-Secret: s", f"http://{SERVER4}/headers")
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    assert body == "a=[from-tap] b=[one] ua=[] secret=[]\n", body
    assert "X-Upstream" not in head and re.search(r"(?im)^server: tinspect-lab$", head), head
    assert re.findall(r"(?im)^x-extra: (.*)$", head) == ["1", "2"], head
    assert "flow 1 to_server request GET" in p.log()


def test_faults_tap_latency_delays_each_request(lab, web, tapped):
    p = tapped("--tap-option", "faults.rate=1", "--tap-option", "faults.latency=0.5",
               "--tap-option", "faults.direction=to_server", "--tap-option", "faults.seed=7", taps="faults")
    started = time.monotonic()
    out = curl(lab, f"http://{SERVER4}/", f"http://{SERVER4}/")
    assert out.stdout == "hello\nhello\n", out.stderr
    assert time.monotonic() - started >= 1.0
    assert "faults tap: latency at rate 1, seed 7" in p.log()
    assert len(re.findall(r"flow \d+: faults tap: latency on a request going to_server", p.log())) == 2


def test_faults_tap_is_reproducible_with_a_seed(lab, web, tapped, proxy):
    """Twenty requests, each on its own connection, rate 0.5 of resets: the same seed cuts the same ones."""
    outcomes = []
    for _ in range(2):
        p = tapped("--tap-option", "faults.rate=0.5", "--tap-option", "faults.reset=yes",
                   "--tap-option", "faults.seed=42", taps="faults")
        got = []
        for i in range(20):
            got.append(curl(lab, "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVER4}/").stdout)
        outcomes.append(got)
        p.stop()
        lab.clear_rules()
    assert outcomes[0] == outcomes[1], outcomes
    assert "200" in outcomes[0] and "000" in outcomes[0], outcomes  # some passed, some were reset


# -- filter ------------------------------------------------------------------------------------------

FILTER_SITE = ('location = /clip { default_type video/mp4; return 200 "not really a video\\n"; } '
               'location = /secret { return 200 "secret\\n"; }')


@pytest.fixture
def site(lab, tmp_path, pki):
    """nginx with its own CA: HTTP on 80, HTTPS with h2 on 443; /, /secret, /clip (video/mp4)."""
    server = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]), extra=FILTER_SITE)
    (server.root / "index.html").write_text("hello\n")
    server.start()
    lab.wait_listening(lab.server, 443)
    return server


@pytest.fixture
def filtered(lab, proxy, pki, tmp_path):
    def start(rules: str, *options):
        path = tmp_path / "rules.txt"
        path.write_text(rules)
        lab.tproxy(8080, dports=[80, 443])
        return proxy(["--listen", DUAL, "--taps", "filter", "--tap-option", f"filter.rules={path}",
                      "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]), *options],
                     wait=[(8080, "tcp")]), path

    return start


def test_filter_blocks_by_host_url_and_type_with_a_page_and_logs_every_decision(lab, site, filtered):
    p, path = filtered("block host=server.test url=/secret\nblock type=video/*\n")
    ok = curl(lab, f"http://{SERVER_NAME}/")
    assert ok.stdout == "hello\n", ok.stderr
    blocked = curl(lab, "-w", "\n%{http_code} %{content_type}", f"http://{SERVER_NAME}/secret")
    assert blocked.stdout.endswith("\n403 text/html; charset=utf-8"), blocked.stdout
    assert "http://server.test/secret" in blocked.stdout and f"{path}:1: block host=server.test" in blocked.stdout
    clip = curl(lab, "-w", "\n%{http_code}", f"http://{SERVER_NAME}/clip")
    assert clip.stdout.endswith("\n403") and "not really a video" not in clip.stdout, clip.stdout
    assert [r for _, r, _ in site.access_log()] == ["GET / HTTP/1.1", "GET /clip HTTP/1.1"]  # /secret never left
    time.sleep(0.3)
    log = p.log()
    assert re.search(r"flow \d+: filter: allow GET http://server\.test/ \(no rule matched: the default\)", log), log
    assert re.search(rf"filter: block GET http://server\.test/secret \(rule {re.escape(str(path))}:1: ", log), log
    assert re.search(r"filter: block GET http://server\.test/clip \(rule .*:2: block type=video/\* "
                     r"\(Content-Type video/mp4\)\)", log), log


def test_filter_works_the_same_over_https_and_http2(lab, site, filtered, pki):
    filtered("block url=/secret\n")
    for version in ("--http1.1", "--http2"):
        out = curl(lab, version, "--cacert", str(pki["ours"]), "-w", "\n%{http_code} %{http_version}",
                   f"https://{SERVER_NAME}/secret")
        assert out.stdout.endswith(f"\n403 {'2' if version == '--http2' else '1.1'}"), out.stdout
        assert "This page is blocked" in out.stdout
        ok = curl(lab, version, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
        assert ok.stdout == "hello\n", ok.stderr


def test_filter_blocks_a_websocket_upgrade(lab, site, filtered):
    filtered("block url=^ws|/chat\n")
    status, _, body = client_run(lab, sys.executable, "-m", "tests.peers", "ws-status",
                                 f"ws://{SERVER_NAME}/chat").partition(" ")
    assert status == "403" and "This page is blocked" in body, body


def test_filter_passthrough_relays_tls_untouched(lab, site, filtered, pki):
    """passthrough host=...: the client sees the server's own certificate; nothing is decrypted."""
    p, _ = filtered("passthrough host=server.test\n")
    own = curl(lab, "--cacert", str(pki["server_ca"]), f"https://{SERVER_NAME}/")
    assert own.stdout == "hello\n", own.stderr
    ours = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert ours.returncode == 60  # our CA did not sign what it got: the server's certificate
    time.sleep(0.2)
    assert "filter: passthrough TLS for server.test" in p.log()


def test_filter_reloads_on_sighup_without_dropping_connections(lab, site, filtered):
    """SIGHUP: new rules for later decisions on an open keep-alive connection; a broken file is refused."""
    p, path = filtered("allow host=server.test\n")
    script = (
        "import socket, sys\n"
        f"s = socket.create_connection(('{SERVER4}', 80))\n"
        "def ask(path):\n"
        "    s.sendall(b'GET ' + path + b' HTTP/1.1\\r\\nHost: server.test\\r\\n\\r\\n')\n"
        "    got = b''\n"
        "    while b'\\r\\n\\r\\n' not in got: got += s.recv(65536)\n"
        "    head, _, body = got.partition(b'\\r\\n\\r\\n')\n"
        "    length = int([l for l in head.split(b'\\r\\n') if l.lower().startswith(b'content-length')][0].split(b':')[1])\n"
        "    while len(body) < length: body += s.recv(65536)\n"
        "    return head.split(b' ')[1].decode()\n"
        "print(ask(b'/secret'), flush=True)\n"
        "sys.stdin.readline()\n"
        "print(ask(b'/secret'), flush=True)\n"
        "sys.stdin.readline()\n"
        "print(ask(b'/secret'), flush=True)\n"
    )
    client = lab.spawn(lab.client, sys.executable, "-c", script, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True)
    assert client.stdout.readline().strip() == "200"
    path.write_text("block url=/secret\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "403"  # same connection, new rules
    path.write_text("bogus line\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    client.stdin.write("go\n")
    client.stdin.flush()
    assert client.stdout.readline().strip() == "403"  # the old rules stayed
    client.wait(10)
    log = p.log()
    assert "filter: reloaded 1 rules" in log
    assert re.search(r"filter: not reloaded, the old rules stay: .*rules\.txt:1: unknown action 'bogus'", log), log
    assert len(re.findall(r"flow \d+ open|flow \d+: filter", log)) >= 3
    assert len(set(re.findall(r"flow (\d+): filter", log))) == 1, log  # one connection throughout


def test_filter_blocks_by_a_category_directory_and_reloads_it_on_sighup(lab, site, filtered, tmp_path):
    """list=DIR (UT1 layout): its domains with their subdomains and its urls prefixes are blocked, naming the
    category; other hosts and paths pass; SIGHUP reads the list again."""
    games = tmp_path / "blacklists" / "games"
    games.mkdir(parents=True)
    (games / "domains").write_text("# games\ncasino.test\nPOKER.test.\n")
    (games / "urls").write_text("server.test/secret\n")
    p, path = filtered("block list=blacklists/games\n")

    def status(name, target="/"):
        out = curl(lab, "--resolve", f"{name}:80:{SERVER4}", "-w", "\n%{http_code}", f"http://{name}{target}")
        return out.stdout.rpartition("\n")[2]

    assert (status("www.casino.test"), status("poker.test"), status("casino.test")) == ("403", "403", "403")
    assert (status(SERVER_NAME), status(SERVER_NAME, "/secret"), status(SERVER_NAME, "/secretary")) == \
        ("200", "403", "404")
    assert [r for _, r, _ in site.access_log()] == ["GET / HTTP/1.1", "GET /secretary HTTP/1.1"]
    with (games / "domains").open("a") as f:
        f.write("server.test\n")
    os.kill(p.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "filter: reloaded" not in p.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(SERVER_NAME) == "403"
    log = p.log()
    assert re.search(rf"filter: block GET http://www\.casino\.test/ \(rule {re.escape(str(path))}:1: "
                     r"block list=blacklists/games \(list games\)\)", log), log
    assert re.search(r"filter: reloaded 1 rules from .* \(4 list entries, \d+\.\d s\)", log), log


def test_a_config_file_runs_the_proxy_and_the_command_line_overrides_it(lab, web, proxy, tmp_path):
    """twistd tinspect --config tinspect.toml: listeners, taps and tap options from the file."""
    config = tmp_path / "tinspect.toml"
    config.write_text(
        'listen = ["tproxy:8080:interface=\\\\:\\\\:"]\n'
        'taps = ["logger", "mangler"]\n'
        'header-timeout = 5\n'
        '[tap.mangler]\nsearch = "hello"\nreplace = "HOWDY"\n'
    )
    lab.tproxy(8080, dports=[80])
    p = proxy(["--config", str(config)], wait=[(8080, "tcp")])
    assert curl(lab, f"http://{SERVER4}/").stdout == "HOWDY\n"
    assert "flow 1 to_client response 200 OK" in p.log()
    p.stop()
    p = proxy(["--config", str(config), "--tap-option", "mangler.replace=hi!!!"], wait=[(8080, "tcp")])
    assert curl(lab, f"http://{SERVER4}/").stdout == "hi!!!\n"


def test_json_log_has_the_logger_fields_as_data(lab, web, tapped, tmp_path):
    """--log-json: one JSON object per line, the logger tap's fields as keys, the text and time too."""
    path = tmp_path / "log.jsonl"
    p = tapped("--log-json", str(path), taps="logger")
    assert curl(lab, f"http://{SERVER4}/").stdout == "hello\n"
    time.sleep(0.3)
    p.stop()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    request = next(r for r in records if r.get("kind") == "request")
    assert request["method"] == "GET" and request["url"] == f"http://{SERVER4}/" and request["direction"] == "to_server"
    assert request["text"].startswith(f"flow {request['flow_id']} to_server request GET")
    assert request["time"].startswith(time.strftime("%Y-"))
    response = next(r for r in records if r.get("kind") == "response")
    assert response["status"] == 200 and response["flow_id"] == request["flow_id"]


# -- recorder ----------------------------------------------------------------------------------------


def test_recorder_writes_exchanges_and_websocket_messages_and_a_har_file(lab, proxy, tmp_path, pki):
    site = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]))
    (site.root / "index.html").write_text("hello\n")
    site.start()
    lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "ws-echo", "8765", cwd=REPO)
    for port in (443, 8765):
        lab.wait_listening(lab.server, port)
    recording, har = tmp_path / "flows.jsonl", tmp_path / "flows.har"
    lab.tproxy(8080, dports=[80, 443, 8765])
    p = proxy(["--listen", DUAL, "--taps", "recorder", "--state-dir", str(pki["state"]),
               "--upstream-ca", str(pki["server_ca"]), "--tap-option", f"recorder.path={recording}",
               "--tap-option", f"recorder.har={har}", "--tap-option", "recorder.bodies=yes"], wait=[(8080, "tcp")])
    assert curl(lab, f"http://{SERVER_NAME}/").stdout == "hello\n"
    assert curl(lab, "--http2", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/").stdout == "hello\n"
    curl(lab, "-d", "name=value", f"http://{SERVER_NAME}/")
    assert client_run(lab, sys.executable, "-m", "tests.peers", "ws-ask", f"ws://{SERVER_NAME}:8765/",
                      "hi", "there").split() == ["hi", "there"]
    time.sleep(0.3)
    p.stop()
    records = [json.loads(line) for line in recording.read_text().splitlines()]
    exchanges = [r for r in records if r["type"] == "exchange"]
    assert [(r["request"]["method"], r["request"]["url"], r["response"]["status"], r["protocol"]) for r in exchanges] \
        == [("GET", f"http://{SERVER_NAME}/", 200, "http/1.1"), ("GET", f"https://{SERVER_NAME}/", 200, "h2"),
            ("POST", f"http://{SERVER_NAME}/", 405, "http/1.1"),
            ("GET", f"http://{SERVER_NAME}:8765/", 101, "http/1.1")]  # the upgrade itself is HTTP/1.1
    assert exchanges[0]["response"]["body"] == {"size": 6, "text": "hello\n"}
    assert exchanges[2]["request"]["body"] == {"size": 10, "text": "name=value"}
    for r in exchanges:
        t = r["timings"]
        assert t["start"] <= t["request_end"] <= t["response_start"] <= t["end"], t
    messages = [(r["direction"], r["text"]) for r in records if r["type"] == "websocket"]
    assert messages == [("to_server", "hi"), ("to_client", "hi"), ("to_server", "there"), ("to_client", "there")]
    doc = json.loads(har.read_text())
    assert doc["log"]["version"] == "1.2" and len(doc["log"]["entries"]) == 4
    for entry in doc["log"]["entries"]:
        assert {"startedDateTime", "time", "request", "response", "cache", "timings"} <= set(entry)
        assert {"method", "url", "httpVersion", "headers", "queryString", "cookies", "headersSize", "bodySize"} \
            <= set(entry["request"])
        assert {"status", "statusText", "content", "redirectURL", "headersSize", "bodySize"} <= set(entry["response"])
    ws = doc["log"]["entries"][3]
    assert [(m["type"], m["data"]) for m in ws["_webSocketMessages"]] == \
        [("send", "hi"), ("receive", "hi"), ("send", "there"), ("receive", "there")]
    converted = subprocess.run([sys.executable, "-m", "tinspect", "har", str(recording), "-"], capture_output=True,
                               text=True, check=True, cwd=REPO)
    assert json.loads(converted.stdout) == doc
