"""End to end, faults: servers and clients that break off, hang or talk nonsense.

One proxy (TPROXY for ports 80-83 and 443) faces each fault in turn; the
other side must get a clean error, and afterwards the proxy must hold no
more than before: client connections and flows (from its ``--metrics``
endpoint) back to zero, open descriptors back to the baseline.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from tests.conftest import DUAL, REPO
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

METRICS = "http://127.0.0.1:9108/metrics"


@pytest.fixture
def faulty(lab, proxy, tmp_path, pki):
    """nginx (80, 443 with its own CA), a cutting (81), a garbage (82) and a mute (83) server, and the proxy."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]))
    (web.root / "index.html").write_text("hello\n")
    (web.root / "big.bin").write_bytes(b"z" * (8 * 1024 * 1024))
    web.start()
    for port, peer in ((81, "cut-server"), (82, "garbage-server"), (83, "mute-server")):
        lab.spawn(lab.server, sys.executable, "-m", "tests.peers", peer, str(port), cwd=REPO)
    for port in (80, 81, 82, 83, 443):
        lab.wait_listening(lab.server, port)
    lab.tproxy(8080, dports=[80, 81, 82, 83, 443])
    p = proxy(["--listen", DUAL, "--metrics", "tcp:9108:interface=127.0.0.1", "--taps", "logger",
               "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
               "--response-timeout", "2", "--handshake-timeout", "2", "--header-timeout", "2"],
              wait=[(8080, "tcp"), (9108, "tcp")])
    return p


def metrics(lab) -> dict[str, float]:
    text = lab.exec(lab.gateway, "curl", "-sS", METRICS).stdout
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def curl(lab, *args, timeout=30):
    return lab.exec(lab.client, "curl", "-sS", *args, check=False, timeout=timeout)


def leave(lab, url: str, *cafile: str) -> int:
    """Download ``url`` until 1 MB has come, then leave; the number of bytes read."""
    out = lab.exec(lab.client, sys.executable, "-m", "tests.peers", "leave", url, "1000000", *cafile, cwd=REPO)
    return int(out.stdout)


def settled(lab, p, fds: int, timeout: float = 6) -> tuple[dict, int]:
    """Wait until the proxy holds no client connection, no flow and no more descriptors than ``fds``."""
    deadline = time.monotonic() + timeout
    while True:
        m, now = metrics(lab), p.open_fds()
        if (m["tinspect_connections_open"] == 0 and m["tinspect_flows_open"] == 0 and now <= fds) \
                or time.monotonic() > deadline:
            return m, now
        time.sleep(0.2)


def test_every_fault_gets_a_clean_error_and_leaves_nothing_behind(lab, faulty, pki):
    p = faulty
    ok = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/", f"http://{SERVER4}/")
    assert ok.stdout == "hello\nhello\n", ok.stderr  # warms up lazy state (CA, contexts)
    base_metrics, base_fds = settled(lab, p, 10_000)
    assert base_metrics["tinspect_flows_open"] == 0

    def check(what: str) -> None:
        m, fds = settled(lab, p, base_fds)
        assert m["tinspect_connections_open"] == 0, f"{what}: client connections left open: {m}"
        assert m["tinspect_flows_open"] == 0, f"{what}: flows left open: {m}"
        assert fds <= base_fds, f"{what}: {fds} descriptors open, {base_fds} before"

    # The server resets the connection in the middle of the body: the client must not get a whole-looking answer.
    cut = curl(lab, "-o", "/dev/null", "-w", "%{size_download}", f"http://{SERVER4}:81/")
    assert cut.returncode in (18, 56), (cut.returncode, cut.stderr)
    assert 0 < int(cut.stdout) < 1_000_000
    check("server reset mid-body")

    # The server answers with bytes that are not HTTP: 502 page naming it.
    garbage = curl(lab, "-w", "\n%{http_code}", f"http://{SERVER4}:82/")
    assert garbage.stdout.endswith("\n502"), garbage.stdout
    assert "upstream 198.51.100.2:82" in garbage.stdout
    check("server garbage")

    # The server hangs: 504 after --response-timeout.
    hung = curl(lab, "-w", "\n%{http_code}", f"http://{SERVER4}:83/")
    assert hung.stdout.endswith("\n504"), hung.stdout
    check("server hangs")

    # The client gives up in the middle of a download: reads 1 MB of 8 MiB, then leaves.
    # (Not curl --limit-rate: curl 7.88 sometimes lets the whole 8 MiB through at once.)
    gone = leave(lab, f"http://{SERVER4}/big.bin")
    assert 1_000_000 <= gone < 1_000_000 + 65536, gone  # left before the end of 8 MiB
    check("client gone mid-transfer")

    # ... and over TLS, through the MITM.
    gone = leave(lab, f"https://{SERVER_NAME}/big.bin", str(pki["ours"]))
    assert 1_000_000 <= gone < 1_000_000 + 65536, gone  # left before the end of 8 MiB
    check("client gone mid-transfer over TLS")

    # The client leaves in the middle of a request head, and in the middle of a TLS handshake.
    for port, payload in ((80, b"GET / HTTP/1.1\r\nHost: x"), (443, bytes.fromhex("16030100c801"))):
        lab.exec(lab.client, sys.executable, "-m", "tests.peers", "send", SERVER4, str(port), payload.hex(),
                 check=False, cwd=REPO)
    check("client gone mid-head and mid-handshake")

    # The client leaves right after the TLS handshake, before any request.
    lab.exec(lab.client, "sh", "-c", f"openssl s_client -connect {SERVER4}:443 -servername {SERVER_NAME} "
             f"-CAfile {pki['ours']} </dev/null", check=False)
    check("client gone after the handshake")

    # After all that, the proxy still serves, and counted what happened.
    again = curl(lab, "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/")
    assert again.stdout == "hello\n", again.stderr
    m, _ = settled(lab, p, base_fds)
    assert m['tinspect_flow_errors_total{kind="bad_response"}'] >= 1
    assert m['tinspect_flows_total{protocol="http/1.1"}'] >= 6
    assert m['tinspect_payload_bytes_total{direction="to_client"}'] >= 1_000_000  # the downloads, at least
    assert 0 < m['tinspect_tap_seconds_sum{tap="logger"}'] < 5 <= m['tinspect_tap_seconds_count{tap="logger"}']
    log = p.log()
    assert re.search(r"flow \d+: upstream 198\.51\.100\.2:81 (closed|reset) the connection", log) or \
        "198.51.100.2:81" in log, log
    assert "Traceback" not in log, log
    # The CA key stays where it is: private to its owner, and never in the log.
    key = pki["state"] / "ca-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    secret = "".join(key.read_text().splitlines()[1:3])
    assert "PRIVATE KEY" not in log and secret[:40] not in log.replace("\n", "")
