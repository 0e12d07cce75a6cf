"""The block log's file (tinspect.taplib.jsonlog): one JSON line a record, rotation by size with N kept,
reopening after an outside rename, several writers (workers) on one file."""

from __future__ import annotations

import json
import os

import pytest

from tinspect.taplib.jsonlog import JsonLinesLog


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_record_is_one_json_line_appended(tmp_path):
    """Records, with non-ASCII text and newlines in values, come back one a line, in order, after a reopen too."""
    path = tmp_path / "blocks.jsonl"
    path.write_text('{"old":true}\n')
    log = JsonLinesLog(path)
    log.write({"host": "é.example", "url": "http://x/\na"})
    log.write({"n": 2})
    assert lines(path) == [{"old": True}, {"host": "é.example", "url": "http://x/\na"}, {"n": 2}]


def test_rotation_by_size_keeps_n_files(tmp_path):
    """At max_bytes the file becomes PATH.1, PATH.1 becomes PATH.2...; beyond keep the oldest goes."""
    path = tmp_path / "blocks.jsonl"
    log = JsonLinesLog(path, max_bytes=30, keep=2)
    for n in range(8):
        log.write({"n": n, "pad": "x" * 10})  # 25 bytes a line: every second write rotates
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.jsonl", "blocks.jsonl.1", "blocks.jsonl.2"]
    assert [r["n"] for r in lines(path)] == [6, 7]
    assert [r["n"] for r in lines(tmp_path / "blocks.jsonl.1")] == [4, 5]
    assert [r["n"] for r in lines(tmp_path / "blocks.jsonl.2")] == [2, 3]


def test_keep_zero_starts_afresh(tmp_path):
    path = tmp_path / "blocks.jsonl"
    log = JsonLinesLog(path, max_bytes=10, keep=0)
    log.write({"n": 1, "pad": "x" * 10})
    log.write({"n": 2})
    assert lines(path) == [{"n": 2}] and os.listdir(tmp_path) == ["blocks.jsonl"]


def test_reopen_after_an_outside_rename_starts_a_new_file(tmp_path):
    """logrotate's way: rename, SIGHUP (reopen); the old file keeps what came before."""
    path = tmp_path / "blocks.jsonl"
    log = JsonLinesLog(path)
    log.write({"n": 1})
    path.rename(tmp_path / "old.jsonl")
    log.write({"n": 2})  # still to the renamed file: nothing told the log
    log.reopen()
    log.write({"n": 3})
    assert lines(tmp_path / "old.jsonl") == [{"n": 1}, {"n": 2}] and lines(path) == [{"n": 3}]


def test_two_writers_on_one_file_rotate_it_once(tmp_path):
    """Two workers: the first to see the file full rotates it; the other sees it moved and only reopens."""
    path = tmp_path / "blocks.jsonl"
    a, b = JsonLinesLog(path, max_bytes=20, keep=3), JsonLinesLog(path, max_bytes=20, keep=3)
    a.write({"w": "a", "n": 1})
    b.write({"w": "b", "n": 1})  # 32 bytes now
    a.write({"w": "a", "n": 2})  # a rotates
    b.write({"w": "b", "n": 2})  # b finds PATH is not its file: reopens, into the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.jsonl", "blocks.jsonl.1"]
    assert lines(tmp_path / "blocks.jsonl.1") == [{"w": "a", "n": 1}, {"w": "b", "n": 1}]
    assert lines(path) == [{"w": "a", "n": 2}, {"w": "b", "n": 2}]


def test_a_write_that_fails_raises(tmp_path):
    """A full disk (/dev/full) is an OSError for the caller to report, not a record silently lost."""
    log = JsonLinesLog("/dev/full")
    with pytest.raises(OSError):
        log.write({"n": 1})


def test_negative_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="cannot be negative"):
        JsonLinesLog(tmp_path / "x", max_bytes=-1)
