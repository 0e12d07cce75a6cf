"""End to end, the cache tap: curl through TPROXY to nginx, registry-shaped blobs with digests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from tests.conftest import DUAL
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

MiB = 1 << 20


@pytest.fixture
def registry(lab, tmp_path):
    """nginx serving registry-shaped blobs (one with a wrong digest), packages, and slow archives."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", extra="location /slow/ { limit_rate 1m; }")
    blobs = {}
    good = os.urandom(2 * MiB)
    digest = hashlib.sha256(good).hexdigest()
    blobs["good"] = (f"/v2/library/app/blobs/sha256:{digest}", good)
    blobs["cdn"] = (f"/cdn/docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data", good)  # the same layer
    bad = os.urandom(MiB)
    blobs["bad"] = (f"/v2/library/app/blobs/sha256:{'0' * 64}", bad)
    for name in ("a", "b", "c"):
        blobs[name] = (f"/pkgs/{name}.deb", os.urandom(MiB))
    blobs["slow"] = ("/slow/big.tar.gz", os.urandom(3 * MiB))
    blobs["cut"] = ("/slow/other.tar.gz", os.urandom(3 * MiB))
    for path, data in blobs.values():
        target = web.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    web.start()
    web.blobs = blobs
    return web


@pytest.fixture
def cached(lab, proxy, tmp_path):
    def start(*options):
        lab.tproxy(8080, dports=[80])
        return proxy(["--listen", DUAL, "--taps", "logger,cache", "--tap-option", f"cache.dir={tmp_path / 'cache'}",
                      *options], wait=[(8080, "tcp")] + [(9108, "tcp")] * ("--metrics" in options))

    return start


def fetch(lab, path, *args, timeout=30):
    """sha256 of the body, the status, and curl's headers and timings."""
    proc = lab.exec(lab.client, "sh", "-c",
                    f"curl -sS -D /dev/stderr -w '%{{http_code}} %{{time_starttransfer}} %{{time_total}}' "
                    f"{' '.join(args)} -o /tmp/body.$$ http://{SERVER_NAME}{path} >/tmp/out.$$ 2>/tmp/err.$$; "
                    f"rc=$?; sha256sum </tmp/body.$$; cat /tmp/out.$$; echo; cat /tmp/err.$$; "
                    f"rm -f /tmp/*.$$; exit $rc", check=False, timeout=timeout)
    digest, rest = proc.stdout.split(" ", 1)
    status_line, _, headers = rest.lstrip(" -\n").partition("\n")
    status, first, total = status_line.split()
    return {"rc": proc.returncode, "sha256": digest, "status": int(status), "first": float(first),
            "total": float(total), "headers": headers}


def server_hits(web, path):
    return sum(1 for _, line, _ in web.access_log() if line.split()[1] == path)


def test_a_registry_blob_is_fetched_once_then_served_from_disk_with_ranges(lab, registry, cached, tmp_path):
    p = cached()
    path, data = registry.blobs["good"]
    digest = hashlib.sha256(data).hexdigest()
    first = fetch(lab, path)
    assert (first["status"], first["sha256"]) == (200, digest)
    again = fetch(lab, path)
    assert (again["status"], again["sha256"]) == (200, digest)
    assert re.search(r"(?im)^x-tinspect-cache: hit", again["headers"]), again["headers"]
    ranged = subprocess.run(["ip", "netns", "exec", lab.client, "curl", "-sS", "-D", "/dev/stderr", "-r", "100-199",
                             f"http://{SERVER_NAME}{path}"], capture_output=True, timeout=30)
    assert ranged.stdout == data[100:200]
    assert ranged.stderr.startswith(b"HTTP/1.1 206 ") and b"Content-Range: bytes 100-199/2097152" in ranged.stderr
    assert server_hits(registry, path) == 1  # the second fetch and the range came from disk
    objects = tmp_path / "cache" / "objects"
    (meta,) = objects.glob("*.json")
    assert json.loads(meta.read_text())["url"] == f"http://{SERVER_NAME}{path}"
    assert meta.with_suffix("").read_bytes() == data
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    time.sleep(0.2)
    assert re.search(r"cache: stored http://server\.test/v2/library/app/blobs/sha256:\w+ \(2097152 bytes\)", p.log())


def test_a_blob_whose_digest_does_not_match_is_relayed_but_never_kept(lab, registry, cached, tmp_path):
    p = cached()
    path, data = registry.blobs["bad"]
    for _ in range(2):
        got = fetch(lab, path)
        assert (got["status"], got["sha256"]) == (200, hashlib.sha256(data).hexdigest())
    assert server_hits(registry, path) == 2
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    time.sleep(0.2)
    assert "is not the digest the URL names" in p.log()


def test_the_first_client_streams_while_it_is_written_and_concurrent_ones_coalesce(lab, registry, cached):
    cached()
    path, data = registry.blobs["slow"]
    digest = hashlib.sha256(data).hexdigest()
    script = " & ".join(f"curl -sS -o /dev/null -w '%{{time_starttransfer}} %{{time_total}}\\n' "
                        f"http://{SERVER_NAME}{path}" for _ in range(3)) + " & wait"
    proc = lab.exec(lab.client, "sh", "-c", script, timeout=60)
    times = sorted(tuple(map(float, line.split())) for line in proc.stdout.split("\n") if line.strip())
    assert len(times) == 3
    first_byte, total = times[0]
    assert total >= 1.0 and first_byte < total / 2, times  # the first client got bytes long before the end
    assert server_hits(registry, path) == 1  # three clients, one fetch
    assert fetch(lab, path)["sha256"] == digest


def test_a_cut_transfer_leaves_no_entry(lab, registry, cached, tmp_path):
    p = cached()
    path, data = registry.blobs["cut"]
    cut = fetch(lab, path, "--max-time", "1")
    assert cut["rc"] == 28
    time.sleep(0.5)
    assert list((tmp_path / "cache" / "objects").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert "not kept: the transfer was cut" in p.log()
    whole = fetch(lab, path)
    assert whole["sha256"] == hashlib.sha256(data).hexdigest()
    assert server_hits(registry, path) == 2


def test_the_size_cap_evicts_the_least_recently_used(lab, registry, cached):
    cached("--tap-option", "cache.max_size=2600K")
    paths = {name: registry.blobs[name][0] for name in ("a", "b", "c")}
    for name in ("a", "b", "a", "c"):  # a is used again after b, so b is the least recently used
        fetch(lab, paths[name])
    assert [server_hits(registry, paths[n]) for n in "abc"] == [1, 1, 1]
    fetch(lab, paths["a"])  # still there
    fetch(lab, paths["b"])  # evicted: fetched again
    assert [server_hits(registry, paths[n]) for n in "abc"] == [1, 2, 1]


def test_http2_requests_for_a_fetch_in_progress_are_answered_from_it(lab, registry, cached):
    """Over HTTP/2 (h2c prior knowledge) a request for a URL being fetched is answered by the cache once the
    fetch is stored, without the connection waiting: the server sees one request for three clients."""
    p = cached()
    path, data = registry.blobs["slow"]
    digest = hashlib.sha256(data).hexdigest()
    one = f"curl -sS --http2-prior-knowledge http://{SERVER_NAME}{path} | sha256sum"
    script = f"({one}) & sleep 0.7; ({one}) & ({one}) & wait"
    proc = lab.exec(lab.client, "sh", "-c", script, timeout=60)
    assert [line.split()[0] for line in proc.stdout.splitlines()] == [digest] * 3, proc.stdout + proc.stderr
    assert server_hits(registry, path) == 1
    time.sleep(0.2)
    assert "the cache answers when it is stored" in p.log()


def test_a_digest_named_by_two_hosts_and_signed_queries_is_fetched_once(lab, registry, cached):
    """The registry URL, then the CDN's for the same digest (another host, another signed query): the second
    is served from disk, and --metrics counts one miss, one hit and the bytes served."""
    cached("--metrics", "tcp:9108:interface=127.0.0.1")
    path, data = registry.blobs["good"]
    cdn_path, _ = registry.blobs["cdn"]
    got = [lab.exec(lab.client, "sh", "-c", f"curl -sS '{url}' | sha256sum").stdout.split()[0]
           for url in (f"http://{SERVER_NAME}{path}?X-Signature=one", f"http://{SERVER4}{cdn_path}?X-Signature=two")]
    assert got == [hashlib.sha256(data).hexdigest()] * 2
    requests = [line for _, line, _ in registry.access_log()]
    assert requests == [f"GET {path}?X-Signature=one HTTP/1.1"], requests
    text = lab.exec(lab.gateway, "curl", "-sS", "http://127.0.0.1:9108/metrics").stdout
    assert {"tinspect_cache_hits_total 1", "tinspect_cache_misses_total 1",
            f"tinspect_cache_served_bytes_total {len(data)}"} <= set(text.splitlines()), text
