"""End to end, WebSocket: the ``websockets`` library as client and as server
(plain and TLS, with its own CA), through real TPROXY rules and the explicit
proxy's CONNECT, with ``twistd tinspect`` in the gateway terminating both
sides with autobahn."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from tests.conftest import DUAL, REPO
from tinspect.lab.netlab import GW_CLIENT4, SERVER6, SERVER_NAME

pytestmark = pytest.mark.netns

PLAIN, TLS, PLAIN_NO_DEFLATE = 80, 443, 8081


class Servers:
    """The websockets servers in the server namespace and the log they share."""

    def __init__(self, log):
        self.log = log

    def records(self, **match):
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            record = json.loads(line)
            if all(record.get(k) == v for k, v in match.items()):
                out.append(record)
        return out

    def wait_for(self, timeout=10, **match):
        """The first record matching ``match`` (waits for it to be written)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.records(**match)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no server record {match}; have {self.records()}")


@pytest.fixture
def ws_servers(lab, tmp_path, pki):
    """websockets servers: ws on 80, wss on 443 (the lab server's CA), ws without deflate on 8081."""
    log = tmp_path / "ws-server.jsonl"
    peer = [sys.executable, "-m", "tests.wspeers", "server"]
    for port, extra in ((PLAIN, []), (TLS, ["--tls", str(pki["chain"]), str(pki["key"])]),
                        (PLAIN_NO_DEFLATE, ["--no-deflate"])):
        proc = lab.spawn(lab.server, *peer, str(port), str(log), *extra, cwd=REPO)
        lab.wait_listening(lab.server, port, proc=proc)
    return Servers(log)


@pytest.fixture
def ws_proxy(lab, proxy, pki):
    """tinspect under TPROXY for the WebSocket ports, trusting the lab server's CA."""

    def start(*taps, extra=()):
        lab.tproxy(8080, dports=[PLAIN, TLS, PLAIN_NO_DEFLATE])
        args = ["--listen", DUAL, "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
                "--taps", ",".join(("logger", "tests.lab_taps:WsFacts", *taps)), *extra]
        return proxy(args, wait=[(8080, "tcp")])

    return start


def ws_client(lab, pki, scenario, url, *args, via=None, timeout=60):
    """Run a `tests.wspeers` client scenario in the client namespace; its JSON result."""
    argv = [sys.executable, "-m", "tests.wspeers", "client", scenario, url, "--ca", str(pki["ours"])]
    if via:
        argv += ["--proxy", via]
    out = lab.exec(lab.client, *argv, *args, cwd=REPO, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def facts(log: str) -> list[str]:
    return re.findall(r"ws facts: flow \d+ (.*)", log)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"ws://{SERVER_NAME}/echo", id="ws"),
        pytest.param(f"wss://{SERVER_NAME}/echo", id="wss"),
        pytest.param(f"ws://[{SERVER6}]/echo", id="ws-ipv6"),
    ],
)
def test_messages_cross_and_the_close_is_relayed(lab, pki, ws_servers, ws_proxy, url):
    """Text, binary, 1 MiB and fragmented messages echo intact; pings from either end are
    answered; the subprotocol the server chose and deflate reach the client; the client's close
    code reaches the server; taps see it all."""
    p = ws_proxy()
    out = ws_client(lab, pki, "basic", url)
    assert out == {
        "subprotocol": "chat",
        "extensions": ["permessage-deflate"],
        "text": "hello",
        "pings": "pinged",
        "binary": True,
        "big": True,
        "fragmented": "frag-mented",
        "server_extensions": ["permessage-deflate"],
        "close": [4000, "client bye"],
    }
    assert ws_servers.wait_for(event="closed", path="/echo") == {
        "event": "closed", "path": "/echo", "code": 4000, "reason": "client bye"}
    sizes = [(r["kind"], r["size"]) for r in ws_servers.records(event="message")]
    assert sizes == [("text", 5), ("text", 5), ("binary", 256), ("text", 1 << 20), ("text", 11), ("text", 11)]
    time.sleep(0.2)
    seen = facts(p.log())
    assert "to_server text 5 protocol=websocket" in seen
    assert "to_client binary 256 protocol=websocket" in seen
    assert "to_server text 1048576 protocol=websocket" in seen
    assert "to_client text 11 protocol=websocket" in seen  # the three fragments, joined
    assert "to_server close 4000 'client bye' protocol=websocket" in seen
    assert re.search(r"flow \d+ to_client response 101 Switching Protocols", p.log())
    assert re.search(r"flow \d+ closed websocket after", p.log()), p.log()


def test_compression_is_negotiated_on_each_side_on_its_own(lab, pki, ws_servers, ws_proxy):
    """A server that refuses permessage-deflate does not stop the client from getting it from us."""
    ws_proxy()
    out = ws_client(lab, pki, "basic", f"ws://{SERVER_NAME}:{PLAIN_NO_DEFLATE}/echo")
    assert out["extensions"] == ["permessage-deflate"]
    assert out["server_extensions"] == []
    assert out["big"] and out["binary"] and out["text"] == "hello"


@pytest.mark.parametrize("scheme,port", [("ws", PLAIN), ("wss", TLS)])
def test_ten_thousand_messages_arrive_in_order(lab, pki, ws_servers, ws_proxy, scheme, port):
    """10,000 messages pipelined each way arrive all, in order."""
    ws_proxy()
    out = ws_client(lab, pki, "many", f"{scheme}://{SERVER_NAME}/echo", "10000", timeout=120)
    assert out == {"received": 10000}
    assert len(ws_servers.records(event="message")) == 10000


def test_server_close_code_reaches_the_client(lab, pki, ws_servers, ws_proxy):
    """The server's close (4002 "server bye") crosses to the client after its last message."""
    ws_proxy()
    out = ws_client(lab, pki, "wait-close", f"ws://{SERVER_NAME}/close", "last words")
    assert out == {"replies": ["last words"], "close": [4002, "server bye"]}


def test_server_vanishing_closes_the_client_with_1001(lab, pki, ws_servers, ws_proxy):
    """A server that drops TCP without a close frame: the client gets 1001 (going away)."""
    p = ws_proxy()
    out = ws_client(lab, pki, "wait-close", f"wss://{SERVER_NAME}/drop")
    assert out["replies"] == []
    assert out["close"][0] == 1001, out
    assert "server went away" in out["close"][1]
    ws_servers.wait_for(event="message", path="/drop")
    time.sleep(0.2)
    assert re.search(r"flow \d+ closed websocket", p.log()), p.log()


def test_client_vanishing_closes_the_server_with_1001(lab, pki, ws_servers, ws_proxy):
    """A client that resets its TCP connection: the server gets 1001."""
    ws_proxy()
    out = ws_client(lab, pki, "reset", f"ws://{SERVER_NAME}/echo")
    assert out == {"echo": "before reset"}
    closed = ws_servers.wait_for(event="closed", path="/echo")
    assert closed["code"] == 1001 and "client went away" in closed["reason"], closed


def test_message_over_the_cap_closes_1009_and_1011(lab, pki, ws_servers, ws_proxy):
    """--max-message: the sender of a bigger message gets 1009, the other side 1011; nothing of it crosses."""
    p = ws_proxy(extra=["--max-message", "65536"])
    out = ws_client(lab, pki, "big", f"ws://{SERVER_NAME}/echo", "100000")
    assert out["close"][0] == 1009, out
    closed = ws_servers.wait_for(event="closed", path="/echo")
    assert closed["code"] == 1011, closed
    assert ws_servers.records(event="message") == []
    time.sleep(0.2)
    assert re.search(r"flow \d+: WebSocket client failed \(1009", p.log()), p.log()


def test_a_failing_tap_closes_both_sides_with_1011(lab, pki, ws_servers, ws_proxy):
    """A tap that raises on a message fails the flow closed: both ends get 1011."""
    ws_proxy("tests.lab_taps:Tripwire")
    out = ws_client(lab, pki, "wait-close", f"ws://{SERVER_NAME}/echo", "BOOM")
    assert out["replies"] == [] and out["close"][0] == 1011, out
    closed = ws_servers.wait_for(event="closed", path="/echo")
    assert closed["code"] == 1011, closed
    assert ws_servers.records(event="message") == []


def test_refused_upgrade_is_relayed_as_http(lab, pki, ws_servers, ws_proxy):
    """A server that answers the upgrade with 403 has its answer relayed as it is."""
    ws_proxy()
    out = ws_client(lab, pki, "basic", f"wss://{SERVER_NAME}/refuse")
    assert out == {"status": 403, "body": "go away\n"}


def test_a_tap_refuses_the_upgrade(lab, pki, ws_servers, ws_proxy):
    """A tap answering the handshake request (a block page) stops it before the server."""
    ws_proxy("tests.lab_taps:Block")
    out = ws_client(lab, pki, "basic", f"ws://{SERVER_NAME}/blocked")
    assert out == {"status": 403, "body": f"blocked by tinspect: http://{SERVER_NAME}/blocked\n"}
    assert ws_servers.records() == []


def test_mangler_rewrites_a_text_message(lab, pki, ws_servers, ws_proxy):
    """mangler's search and replace applies to WebSocket text messages."""
    ws_proxy("mangler", extra=["--tap-option", "mangler.search=hello", "--tap-option", "mangler.replace=HOWDY"])
    out = ws_client(lab, pki, "say", f"ws://{SERVER_NAME}/echo", "hello there")
    assert out == {"replies": ["HOWDY there"], "close": [1000, ""]}
    assert ws_servers.wait_for(event="message")["head"] == "HOWDY there"


def test_a_tap_injects_a_message_to_the_client(lab, pki, ws_servers, ws_proxy):
    """A tap's injected message reaches the client, ahead of the echo it provoked."""
    ws_proxy("tests.lab_taps:WsInject")
    out = ws_client(lab, pki, "say", f"wss://{SERVER_NAME}/echo", "inject?", "after")
    assert out["replies"] == ["injected", "inject?"]
    assert [r["head"] for r in ws_servers.records(event="message")] == ["inject?", "after"]


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_explicit_proxy_connect_carries_websocket(lab, pki, ws_servers, proxy, scheme):
    """Through the explicit proxy's CONNECT, plain and TLS WebSocket are decoded the same way."""
    p = proxy(["--listen", f"tcp:3128:interface={GW_CLIENT4}", "--allow-clients", "192.0.2.0/24", "--state-dir", str(pki["state"]),
               "--upstream-ca", str(pki["server_ca"]), "--taps", "logger,tests.lab_taps:WsFacts"],
              wait=[(3128, "tcp")])
    out = ws_client(lab, pki, "basic", f"{scheme}://{SERVER_NAME}/echo", via=f"http://{GW_CLIENT4}:3128")
    assert out["subprotocol"] == "chat" and out["big"] and out["close"] == [4000, "client bye"], out
    time.sleep(0.2)
    assert re.search(r"flow \d+ to_server request CONNECT server\.test:(80|443)", p.log()), p.log()
    assert "to_server text 1048576 protocol=websocket" in facts(p.log())


def test_flood_to_a_slow_reader_keeps_memory_bounded(lab, pki, ws_servers, ws_proxy):
    """64 MiB of 64 KiB messages over wss to a client reading 16 MB/s: all intact, in order,
    and the proxy's peak RSS grows by far less: the slow side pauses the fast one."""
    p = ws_proxy()
    assert ws_client(lab, pki, "say", f"wss://{SERVER_NAME}/echo", "warm")["replies"] == ["warm"]
    baseline = p.status("VmRSS")
    out = ws_client(lab, pki, "slow-read", f"wss://{SERVER_NAME}/flood", "1024", str(16 * 1000 * 1000))
    peak = p.status("VmHWM")
    print(f"proxy RSS before {baseline} KiB, peak {peak} KiB")
    assert out == {"good": 1024}
    assert peak - baseline < 24 * 1024, (baseline, peak)
