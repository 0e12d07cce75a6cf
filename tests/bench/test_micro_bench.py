"""The micro-benchmarks run (their speed is not judged: that is bench/, by hand)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


@pytest.mark.parametrize("script", ["micro_http1.py", "micro_clienthello.py", "micro_chain.py", "micro_h2.py",
                                    "micro_quic.py", "micro_domains.py --domains 20000",
                                    "micro_timers.py", "micro_tls_memory.py --connections 200",
                                    "micro_exchange.py --repeat 1 --exchanges 256",
                                    "micro_handshake.py --repeat 1 --connections 20 --warmup 5"])
def test_micro_benchmark_runs_and_prints_figures(script):
    name, *args = script.split()
    out = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    figures = re.findall(r"(\d+\.\d+) (?:us(?:/parse)?|s/GiB|s|MiB|KiB|calls)$", out.stdout, re.M)
    assert len(figures) >= 3 and all(float(f) > 0 for f in figures), out.stdout
