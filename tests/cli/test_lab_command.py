"""``tinspect lab``: the README's first command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns


def test_lab_command_shows_taps_at_work_and_cleans_up():
    """tinspect lab relays HTTP, HTTPS over h1 and h2, WebSocket, TCP and UDP through TPROXY, prints the
    taps' log, leaves no namespace."""
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    proc = subprocess.run(
        [sys.executable, "-m", "tinspect", "lab", "--taps", "logger,mangler",
         "--tap-option", "mangler.search=hello", "--tap-option", "mangler.replace=HELLO"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("<h1>HELLO from the lab server</h1>") == 4  # HTTP v4 and v6, HTTPS h1 and h2
    assert "== WebSocket (websockets library)\nHELLO over websocket" in out
    assert "TLS intercepted for server.test (TLSv1.3, ALPN h2)" in out
    assert "to_server websocket text message" in out
    assert "echo:HELLO over udp" in out
    assert "to_server datagram 14 bytes" in out
    assert "all exchanges succeeded" in out
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert sorted(after.split()) == sorted(before.split())
