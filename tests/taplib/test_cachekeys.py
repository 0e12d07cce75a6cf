"""Which URLs the cache keeps, and the keys it files them under."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.taplib.cachekeys import CACHE_EXCLUDE, CACHE_KEY, CACHE_PATTERNS, cache_key, cacheable

PATTERNS = [re.compile(p) for p in CACHE_PATTERNS]
EXCLUDE = [re.compile(p) for p in CACHE_EXCLUDE]
HEX = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"

hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){1,3}(:[0-9]{2,5})?", fullmatch=True)
queries = st.one_of(st.just(""), st.from_regex(r"\?[A-Za-z0-9=&%._~-]{0,60}", fullmatch=True))
hexes = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@pytest.mark.parametrize("url", [
    f"https://registry-1.docker.io/v2/library/debian/blobs/sha256:{HEX}",
    f"https://cdn.example/registry-v2/docker/registry/v2/blobs/sha256/ab/{HEX}/data?sig=x&expires=1",
    "http://deb.debian.org/debian/pool/main/c/curl/curl_8.5.0-2_amd64.deb",
    "http://deb.debian.org/debian/pool/main/d/debian-installer/di-utils_1.0_amd64.udeb",
    "https://mirror.example/fedora/Packages/c/curl-8.6.0-1.fc40.x86_64.rpm",
    "https://dl-cdn.alpinelinux.org/alpine/v3.19/main/x86_64/curl-8.5.0-r0.apk",
    "https://files.pythonhosted.org/packages/ab/cd/requests-2.31.0-py3-none-any.whl",
    "https://static.crates.io/crates/serde/serde-1.0.0.crate",
    "https://rubygems.org/gems/rake-13.1.0.gem",
    "https://repo1.maven.org/maven2/junit/junit/4.13.2/junit-4.13.2.jar",
    "https://api.nuget.org/v3-flatcontainer/newtonsoft.json/13.0.3/newtonsoft.json.13.0.3.nupkg",
    "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",
    "https://example.org/src/linux-6.7.tar.xz", "https://example.org/a.tar", "https://example.org/a.zip",
    "https://example.org/a.zst", "https://example.org/a.xz", "https://example.org/debian-12.4.0-amd64-netinst.iso",
])
def test_the_defaults_keep_what_build_farms_download(url):
    """Blobs, packages and archives of every format the build farm pulls are kept by default."""
    assert cacheable(url, PATTERNS, EXCLUDE)


@pytest.mark.parametrize("url", [
    "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz",
    "http://deb.debian.org/debian/dists/bookworm/InRelease",
    "http://deb.debian.org/debian/dists/bookworm/Release",
    "http://repo.example/flat/Packages.gz", "http://repo.example/flat/Release",
    "http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.xz",
    "https://mirror.example/fedora/repodata/abc-primary.xml.zst",
    "https://dl-cdn.alpinelinux.org/alpine/v3.19/main/x86_64/APKINDEX.tar.gz",
    "https://pypi.org/simple/requests/", "https://pypi.example/simple/requests/index.tar",
    f"https://registry-1.docker.io/v2/library/debian/manifests/sha256:{HEX}",
    "https://registry-1.docker.io/v2/library/debian/manifests/latest",
    "https://example.org/index.html", "https://example.org/a.deb.asc",
])
def test_index_files_and_other_urls_are_not_kept_by_default(url):
    """Index files (which change in place) and anything else are never kept by default."""
    assert not cacheable(url, PATTERNS, EXCLUDE)


def test_patterns_ignore_the_query_string():
    """A signed query after a package name does not stop it matching."""
    assert cacheable("https://cdn.example/pool/a.deb?X-Amz-Signature=abc", PATTERNS, EXCLUDE)


@given(hosts, hosts, queries, queries, hexes)
def test_a_digest_is_one_key_whatever_the_host_or_query(host_a, host_b, query_a, query_b, digest):
    """The same blob named by two hosts and two signed queries is one entry, keyed by its digest."""
    one = cache_key(f"https://{host_a}/v2/library/app/blobs/sha256:{digest}{query_a}")
    other = cache_key(f"http://{host_b}/docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data{query_b}")
    assert one == other == (f"sha256-{digest}", digest)


@given(hosts, hexes)
def test_a_percent_encoded_colon_names_the_digest_too(host, digest):
    """``sha256%3A<hex>`` (a client that encodes the colon) is the same key."""
    assert cache_key(f"https://{host}/v2/a/blobs/sha256%3A{digest}").key == f"sha256-{digest}"


@given(hosts, st.from_regex(r"/[A-Za-z0-9/._-]{0,60}", fullmatch=True), queries)
def test_other_urls_are_keyed_by_the_whole_url(host, path, query):
    """A URL naming no digest is keyed by the sha256 of the URL, query included."""
    url = f"https://{host}{path}{query}"
    if "sha256" in url:
        return
    assert cache_key(url) == (hashlib.sha256(url.encode()).hexdigest(), None)


@given(st.text(max_size=200))
def test_every_key_is_a_safe_file_name(url):
    """Whatever the URL, the key is 64 hex digits (optionally ``sha256-``): never a path."""
    assert CACHE_KEY.fullmatch(cache_key(url).key)


def test_a_path_digest_whose_prefix_disagrees_is_not_a_digest():
    """``/sha256/<xx>/<hex>/`` names a digest only when ``xx`` is its first two digits."""
    url = f"https://cdn.example/blobs/sha256/ff/{HEX}/data"
    assert cache_key(url).digest is None


def test_a_longer_hex_run_is_not_a_digest():
    """65 hex digits after ``sha256:`` are not a sha256 digest."""
    assert cache_key(f"https://r.example/v2/a/blobs/sha256:{HEX}0").digest is None
