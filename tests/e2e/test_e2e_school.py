"""End to end, the filter as a school runs it (curl, openssl s_client and nginx through TPROXY): groups of
client addresses, a category list directory, a time window around the real current time, the block page or
a TLS alert decided at the ClientHello, the JSON block log and its reopening on SIGHUP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import DUAL
from tinspect.lab.netlab import CLIENT4, CLIENT6, SERVER4, SERVER_NAME, Nginx
from tinspect.taplib.conditions import DAYS

pytestmark = pytest.mark.netns

STAFF4, TABLET4 = "192.0.2.3", "192.0.2.4"  # second and third addresses on the client's interface


def window_around(now: datetime, before: timedelta, after: timedelta) -> str:
    """``DAY HH:MM-HH:MM`` from ``now - before`` to ``now + after`` (overnight when it crosses midnight)."""
    start, end = now - before, now + after
    return f"{DAYS[start.weekday()]} {start:%H:%M}-{end:%H:%M}"


@pytest.fixture
def school(lab, proxy, pki, tmp_path):
    """nginx on 80/443 for server.test; the school's rules, lists and block log; the proxy with
    --passthrough pinned.test under TPROXY; staff and tablet addresses added to the client."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]))
    (web.root / "index.html").write_text("hello\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    for address in (STAFF4, TABLET4):
        lab.exec(lab.client, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
    games = tmp_path / "blacklists" / "games"
    games.mkdir(parents=True)
    (games / "domains").write_text("# games\nserver.test\npinned.test\n")
    (tmp_path / "blacklists" / "social").mkdir()
    (tmp_path / "blacklists" / "social" / "domains").write_text("chat.test\n")
    (tmp_path / "malware.txt").write_text("evil.test\n")
    now = datetime.now(timezone.utc)
    rules = tmp_path / "rules.txt"
    rules.write_text(
        "timezone UTC\n"
        f"group  pupils  {CLIENT4},{CLIENT6}/128\n"
        f"group  tablets {TABLET4}/32 ca=no\n"
        f"group  staff   {STAFF4}\n"
        f"window lessons {window_around(now, timedelta(hours=1), timedelta(hours=1))}\n"  # now
        f"window evening {window_around(now, -timedelta(hours=3), timedelta(hours=4))}\n"  # not now
        "block group=pupils,tablets time=lessons list=blacklists/games\n"
        "block group=pupils,tablets time=evening list=blacklists/social\n"
        "block group=staff domains=malware.txt\n"
    )
    lab.tproxy(8080, dports=[80, 443])
    blocks = tmp_path / "blocks.jsonl"
    p = proxy(["--listen", DUAL, "--taps", "filter", "--tap-option", f"filter.rules={rules}",
               "--tap-option", f"filter.log={blocks}", "--passthrough", "pinned.test",
               "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"])], wait=[(8080, "tcp")])
    return p, web, blocks


def curl(lab, source, url, *args):
    """curl from ``source`` (one of the client's addresses); every name resolves to the server."""
    name = re.match(r"https?://([^/:]+)", url).group(1)
    six = ":" in source
    resolve = [] if name == SERVER_NAME else ["--resolve", f"{name}:{443 if url.startswith('https') else 80}:"
                                                           f"{SERVER4}"]
    return lab.exec(lab.client, "curl", "-sS", "-6" if six else "-4", "--interface", source, "-m", "10",
                    "-w", "\n%{http_code}", *resolve, *args, url, check=False, timeout=30)


def test_pupils_get_the_page_or_an_alert_staff_pass_and_every_block_is_logged(lab, school, pki):
    """Pupils (IPv4 and IPv6) get the block page naming category and rule, over HTTPS with no request to
    the server; tablets (ca=no) and a --passthrough host get a TLS access_denied alert (curl, openssl
    s_client, TLS 1.2 and 1.3), plain HTTP the page; staff reach the site, and lose only malware; a window
    that is not now blocks nothing; the block log has one JSON line per block."""
    p, web, blocks = school
    ca = ["--cacert", str(pki["ours"])]
    page = curl(lab, CLIENT4, f"https://{SERVER_NAME}/", *ca)
    assert page.stdout.endswith("\n403"), page.stderr
    assert "This page is blocked" in page.stdout and "Category: <code>games</code>" in page.stdout
    assert "block group=pupils,tablets time=lessons list=blacklists/games" in page.stdout
    assert curl(lab, CLIENT6, f"https://{SERVER_NAME}/x", *ca).stdout.endswith("\n403")
    assert curl(lab, CLIENT4, f"http://{SERVER_NAME}/", *ca).stdout.endswith("\n403")
    assert curl(lab, CLIENT4, "http://chat.test/").stdout == "hello\n\n200"  # social: only in the evening

    tablet = curl(lab, TABLET4, f"https://{SERVER_NAME}/", *ca)
    assert tablet.returncode == 35 and "alert access denied" in tablet.stderr, tablet.stderr
    assert curl(lab, TABLET4, f"http://{SERVER_NAME}/").stdout.endswith("\n403")
    pinned = curl(lab, CLIENT4, "https://pinned.test/", *ca)
    assert pinned.returncode == 35 and "alert access denied" in pinned.stderr, pinned.stderr
    for version in ("-tls1_2", "-tls1_3"):
        hello = lab.exec(lab.client, "openssl", "s_client", version, "-bind", f"{TABLET4}:0", "-connect",
                         f"{SERVER4}:443", "-servername", SERVER_NAME, stdin=subprocess.DEVNULL, check=False,
                         timeout=30)
        assert hello.returncode != 0 and "alert access denied" in hello.stderr, hello.stderr

    staff = curl(lab, STAFF4, f"https://{SERVER_NAME}/", *ca)
    assert staff.stdout == "hello\n\n200", staff.stderr
    evil = curl(lab, STAFF4, "https://evil.test/", *ca)  # no certificate for evil.test upstream: never asked
    assert evil.stdout.endswith("\n403") and "Category: <code>malware</code>" in evil.stdout, evil.stderr
    assert [r.split()[:2] for _, r, _ in web.access_log()] == [["GET", "/"]] * 2  # chat.test's, the staff's

    records = [json.loads(line) for line in blocks.read_text().splitlines()]
    summary = [(r["client"], r["host"], r["url"], r["group"], r["category"], r["how"]) for r in records]
    assert summary == [
        (CLIENT4, SERVER_NAME, f"https://{SERVER_NAME}/", "pupils", "games", "page"),
        (CLIENT6, SERVER_NAME, f"https://{SERVER_NAME}/x", "pupils", "games", "page"),
        (CLIENT4, SERVER_NAME, f"http://{SERVER_NAME}/", "pupils", "games", "page"),
        (TABLET4, SERVER_NAME, None, "tablets", "games", "tls-alert"),
        (TABLET4, SERVER_NAME, f"http://{SERVER_NAME}/", "tablets", "games", "page"),
        (CLIENT4, "pinned.test", None, "pupils", "games", "tls-alert"),
        (TABLET4, SERVER_NAME, None, "tablets", "games", "tls-alert"),
        (TABLET4, SERVER_NAME, None, "tablets", "games", "tls-alert"),
        (STAFF4, "evil.test", "https://evil.test/", "staff", "malware", "page"),
    ], summary
    assert all(r["time"].endswith("Z") and r["rule"].startswith(str(blocks.parent / "rules.txt")) for r in records)
    log = p.log()
    assert re.search(r"flow \d+: TLS for server\.test from 192\.0\.2\.4:\d+ refused with an access_denied alert",
                     log), log
    assert re.search(r"flow \d+: TLS for server\.test blocked at the ClientHello: intercepted without contacting",
                     log), log


def test_the_block_log_is_reopened_on_sighup(lab, school, pki):
    """logrotate's way: rename the block log, SIGHUP; the next block goes to a new file."""
    p, _, blocks = school
    assert curl(lab, CLIENT4, f"http://{SERVER_NAME}/one").stdout.endswith("\n403")
    blocks.rename(blocks.with_name("blocks.jsonl.1"))
    os.kill(p.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "filter: reloaded" not in p.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert curl(lab, CLIENT4, f"http://{SERVER_NAME}/two").stdout.endswith("\n403")
    old = [json.loads(line)["url"] for line in blocks.with_name("blocks.jsonl.1").read_text().splitlines()]
    new = [json.loads(line)["url"] for line in blocks.read_text().splitlines()]
    assert (old, new) == ([f"http://{SERVER_NAME}/one"], [f"http://{SERVER_NAME}/two"])
