"""The benchmark command runs: ``bench/run --short`` builds its lab, measures
every lane in both modes with every answer checked, and writes the tables."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns

MAIN = ["a", "b", "c", "d", "e-h2", "e-h1", "f-ws-64", "f-ws-64k", "f-wss-64", "f-wss-64k", "g"]
RATE = ["a-rate", "b-rate", "c-rate"]
HELD = ["h-http", "h-https", "h-ws"]
NUMBER = re.compile(r"^[\d,]+(\.\d+)?$")
MS = re.compile(r"^[\d,]+(\.\d+)? ms$")


def summary_rows(text: str) -> dict[str, list[str]]:
    """The rows of every table above the run list, by lane, as lists of cells."""
    rows = {}
    for line in text.split("## Runs")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in MAIN + RATE + HELD:
            rows[cells[0]] = cells
    return rows


def test_short_benchmark_passes_every_lane_and_writes_the_tables(tmp_path):
    """--short exits 0 and its tables have a number for direct and for tinspect in every lane: throughput,
    the fixed-rate latencies with what the proxy adds, and the connections held with their memory."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = out.read_text()
    rows = summary_rows(text)
    assert sorted(rows) == sorted(MAIN + RATE + HELD), text
    for lane, cells in rows.items():
        assert "FAILED" not in " ".join(cells), f"lane {lane}: {cells}"
    for lane in MAIN:
        cells = rows[lane]
        assert len(cells) == 11, cells
        direct, tinspect, ratio = cells[3], cells[4], cells[5]
        assert NUMBER.match(direct) and NUMBER.match(tinspect), f"lane {lane}: {cells}"
        assert ratio.endswith("×"), f"lane {lane}: {cells}"
        if lane in ("a", "b", "c", "d") or lane.startswith("f-"):
            assert all(MS.match(x) for x in cells[8].split(" / ")), f"lane {lane} has no p99.9: {cells}"
    for lane in RATE:
        cells = rows[lane]
        assert len(cells) == 9 and "req/s (80% of " in cells[2], cells
        assert all(NUMBER.match(x) for x in cells[3].split(" / ")), cells
        assert all(MS.match(x) for x in cells[6].split(" / ")), cells
        assert re.match(r"^[+−][\d,]+(\.\d+)? ms$", cells[7]), cells
    for lane in HELD:
        cells = rows[lane]
        assert len(cells) == 9 and cells[2] == "50", cells
        assert cells[5] == "50 / 50", cells
        assert re.match(r"^-?[\d.]+ KiB$", cells[6]), cells
    assert "| a | HTTP/1.1 plain keep-alive" in proc.stdout
    assert "| h-https | HTTPS HTTP/1.1 keep-alive" in proc.stdout
    assert "it raised its soft limit to" in text


def test_a_wrong_answer_is_reported_as_failed_not_as_a_number(tmp_path):
    """A proxy that changes the bodies makes the tinspect runs FAILED with the reason, the exit status 1."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--lanes", "a", "--out", str(out),
                           "--taps", "mangler", "--tap-option", "mangler.search=xxxx",
                           "--tap-option", "mangler.replace=xxxxx"],
                          capture_output=True, text=True, timeout=110, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    kept = re.search(r"work directory kept: (\S+)", proc.stderr)
    if kept and kept.group(1).startswith(tempfile.gettempdir()):
        shutil.rmtree(kept.group(1), ignore_errors=True)
    cells = summary_rows(out.read_text())["a"]
    assert NUMBER.match(cells[3]), cells
    assert cells[4].startswith("FAILED") and "bytes of body expected" in cells[4], cells
    assert cells[5] == "–" and cells[9] == "FAILED", cells


def test_bare_relay_reference_measures_every_lane_but_new_connections(tmp_path):
    """--proxy bare puts the bare Twisted relay where tinspect was, TLS lanes included (the relay
    terminates TLS with a certificate from the proxy's CA: the lanes' certificate and ALPN checks pass),
    every lane but d, and says so."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--proxy", "bare", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = out.read_text()
    assert "NOT tinspect but the bare Twisted byte relay" in text
    assert "| lane | what | unit | direct | bare relay | bare relay/direct |" in text
    rows = summary_rows(text)
    assert list(rows) == [lane for lane in MAIN + RATE + HELD if lane != "d"], text
    assert all("FAILED" not in " ".join(cells) for cells in rows.values()), text
    refused = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--proxy", "bare", "--lanes", "d"],
                             capture_output=True, text=True, timeout=30, cwd=REPO, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "no reference for d" in refused.stderr, refused.stderr


def test_proxy_args_reach_the_proxy_and_the_setup_line(tmp_path):
    """--proxy-args options go to twistd tinspect (here --metrics, which it logs serving) and are named in the setup."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--lanes", "a", "--keep",
                           "--proxy-args", "--metrics tcp:9108:interface=127.0.0.1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert "taps: none, options: --metrics tcp:9108:interface=127.0.0.1;" in out.read_text()
    work = Path(re.search(r"work directory kept: (\S+)", proc.stdout + proc.stderr).group(1))
    try:
        assert "metrics on http://127.0.0.1:9108/metrics" in (work / "proxy.log").read_text()
    finally:
        shutil.rmtree(work)
