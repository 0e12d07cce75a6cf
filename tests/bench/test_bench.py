"""The benchmark command runs: ``bench/run --short`` builds its lab, measures
every lane in both modes with every answer checked, and writes the table."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.netns

LANES = ["a", "b", "c", "d", "e", "f-ws-64", "f-ws-64k", "f-wss-64", "f-wss-64k", "g"]
NUMBER = re.compile(r"^[\d,]+(\.\d+)?$")


def test_short_benchmark_passes_every_lane_and_writes_the_table(tmp_path):
    """--short exits 0 and its table has a number for direct and for tinspect in every lane."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--out", str(out)],
                          capture_output=True, text=True, timeout=110, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    rows = {}
    summary = out.read_text().split("## Runs")[0]  # the run list below has rows of its own
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] in LANES:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(LANES), out.read_text()
    for lane, cells in rows.items():
        direct, tinspect, ratio = cells[3], cells[4], cells[5]
        assert NUMBER.match(direct) and NUMBER.match(tinspect), f"lane {lane}: {cells}"
        assert ratio.endswith("×"), f"lane {lane}: {cells}"
        assert "FAILED" not in " ".join(cells), f"lane {lane}: {cells}"
    assert "| a | HTTP/1.1 plain keep-alive" in proc.stdout


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
    row = next(line for line in out.read_text().splitlines() if line.startswith("| a |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert NUMBER.match(cells[3]), cells
    assert cells[4].startswith("FAILED") and "bytes of body expected" in cells[4], cells
    assert cells[5] == "–" and cells[8] == "FAILED", cells


def test_bare_relay_reference_measures_every_lane_but_new_connections(tmp_path):
    """--proxy bare puts the bare Twisted relay where tinspect was, TLS lanes included (the relay
    terminates TLS with a certificate from the proxy's CA: the lanes' certificate and ALPN checks pass),
    every lane but d, and says so."""
    out = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--short", "--proxy", "bare", "--out", str(out)],
                          capture_output=True, text=True, timeout=110, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    text = out.read_text()
    assert "NOT tinspect but the bare Twisted byte relay" in text
    assert "| lane | what | unit | direct | bare relay | bare relay/direct |" in text
    rows = [line for line in text.split("## Runs")[0].splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [
        "a", "b", "c", "e", "f-ws-64", "f-ws-64k", "f-wss-64", "f-wss-64k", "g"], text
    assert all("FAILED" not in row for row in rows), text
    refused = subprocess.run([sys.executable, str(REPO / "bench" / "run"), "--proxy", "bare", "--lanes", "d"],
                             capture_output=True, text=True, timeout=30, cwd=REPO, stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "no reference for d" in refused.stderr, refused.stderr
