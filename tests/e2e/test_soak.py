"""The soak script runs: a short ``bench/soak`` passes with mixed traffic, faults included."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns


def test_short_soak_settles_and_does_not_grow():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "soak"), "--seconds", "15"], capture_output=True,
                          text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    summary = re.search(r"(\d+) rounds in \d+ s, (\d+) flows; RSS .* open connections and flows at the end: 0, 0",
                        proc.stdout)
    assert summary, proc.stdout
    rounds, flows = int(summary.group(1)), int(summary.group(2))
    assert rounds >= 5 and flows >= 8 * rounds, proc.stdout
