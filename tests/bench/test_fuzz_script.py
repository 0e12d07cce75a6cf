"""scripts/fuzz runs every target (briefly), so the longer fuzzing cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_fuzz_script_runs_every_target():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz"), "--seconds", "0.1", "--examples", "10"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for target in ("http1", "clienthello", "sniff", "websocket", "h2"):
        assert any(line.startswith(f"{target}: ") and line.endswith("nothing found") for line in lines), proc.stdout
