"""``tinspect cache ls|du|purge``, run as an operator would on a directory the cache tap filled."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from taps.cache import CacheTap
from tests.conftest import REPO
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.units import Request, Response

BLOB = b"b" * 3000
DIGEST = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def filled(tmp_path):
    """A cache directory holding a registry blob and a .deb, stored by the tap itself."""
    tap = CacheTap(str(tmp_path))
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    for target, body in ((f"/v2/app/blobs/sha256:{DIGEST}", BLOB), ("/pool/curl.deb", b"d" * 1000)):
        req = tap.handle(Request("GET", target, authority="mirror.test"), flow)
        tap.handle(Response(200, headers=Headers([(b"content-length", str(len(body)).encode())]), body=body,
                            request=req), flow)
    assert len(tap.index) == 2
    return tmp_path


def tinspect(*args):
    """The real command's exit status and output."""
    proc = subprocess.run([sys.executable, "-m", "tinspect", "cache", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.returncode, proc.stdout, proc.stderr


def test_ls_lists_each_entry_with_its_size_key_and_url(filled):
    """ls prints a line per entry: bytes, last use, key, URL."""
    rc, out, _ = tinspect("ls", "--dir", str(filled))
    assert rc == 0
    lines = sorted(line.split() for line in out.splitlines())
    assert [(size, key, url) for size, _, key, url in lines] == [
        ("1000", hashlib.sha256(b"http://mirror.test/pool/curl.deb").hexdigest(), "http://mirror.test/pool/curl.deb"),
        ("3000", f"sha256-{DIGEST}", f"http://mirror.test/v2/app/blobs/sha256:{DIGEST}"),
    ]


def test_du_sums_the_entries_a_pattern_selects(filled):
    """du counts every entry, or those whose URL the pattern is found in."""
    assert tinspect("du", "--dir", str(filled))[:2] == (0, "4000\t2 entries\n")
    assert tinspect("du", r"\.deb$", "--dir", str(filled))[:2] == (0, "1000\t1 entries\n")


def test_purge_removes_only_what_the_pattern_selects(filled):
    """purge PATTERN deletes the matching entries' files and leaves the others."""
    assert tinspect("purge", "blobs", "--dir", str(filled))[:2] == (0, "purged 1 entries, 3000 bytes\n")
    assert sorted(p.name for p in (filled / "objects").iterdir()) == sorted(
        [hashlib.sha256(b"http://mirror.test/pool/curl.deb").hexdigest() + suffix for suffix in ("", ".json")])
    assert tinspect("purge", "--dir", str(filled))[:2] == (0, "purged 1 entries, 1000 bytes\n")
    assert list((filled / "objects").iterdir()) == []


def test_a_directory_that_is_not_a_cache_is_a_clear_error(tmp_path):
    """A wrong --dir or a bad pattern is one line on stderr and status 2, nothing removed."""
    assert tinspect("ls", "--dir", str(tmp_path / "nope")) == (
        2, "", f"tinspect cache: {tmp_path / 'nope'} is not a cache directory (it has no objects/)\n")
    (tmp_path / "objects").mkdir()
    rc, _, err = tinspect("purge", "(", "--dir", str(tmp_path))
    assert rc == 2 and err.startswith("tinspect cache: not a regular expression: '('")
