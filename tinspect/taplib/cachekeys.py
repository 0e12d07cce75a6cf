"""Which URLs the ``cache`` tap keeps, and under which key (sans-IO).

A URL is kept when one of the tap's ``patterns`` is found in it and none of
its ``exclude`` patterns is; both are searched in the URL without its query
string, since CDNs sign downloads with a query that changes on every
redirect. The defaults cover what build farms pull (OCI/Docker blobs, the
package and archive formats of apt, rpm, apk, pip, cargo, gem, maven,
NuGet, npm) and leave out the index files that name them (apt's
``Packages``/``Release``/``InRelease`` and everything under ``dists/``, rpm's
``repodata/``, apk's ``APKINDEX``, pip's ``simple/`` pages, registry
manifests): those change in place and must always come from the origin.

The key is what the cache files an entry under:

* ``sha256-<hex>`` when the URL names a digest, as registries and CDNs spell
  it (``.../blobs/sha256:<hex>``, ``.../sha256/<xx>/<hex>/...``): the same
  bytes fetched from any host, with any query, are one entry; the tap keeps
  them only when their sha256 is that digest.
* otherwise the sha256 of the whole URL, query included (``<hex>``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["CACHE_EXCLUDE", "CACHE_PATTERNS", "CACHE_KEY", "CacheKey", "cache_key", "cacheable"]

CACHE_PATTERNS = (
    r"/v2/.+/blobs/sha256:[0-9a-f]{64}$",
    r"/sha256/[0-9a-f]{2}/[0-9a-f]{64}/",
    r"\.(deb|udeb|rpm|apk|whl|crate|gem|jar|nupkg|tgz|zip|zst|xz|iso)$",
    r"\.tar(\.[A-Za-z0-9]+)?$",
)
"""Regular expressions for what build farms download (searched in the URL without its query)."""

CACHE_EXCLUDE = (
    r"/dists/",
    r"/(Packages|Sources|Release|InRelease|Contents-[^/]*|Translation-[^/]*)(\.[A-Za-z0-9]+)?$",
    r"/repodata/",
    r"/APKINDEX\.",
    r"/simple/",
    r"/v2/.+/manifests/",
)
"""Index files, never cached by default: they change in place under the same URL."""

CACHE_KEY = re.compile(r"(sha256-)?[0-9a-f]{64}")
"""What every key looks like (and what the tap's server accepts as one)."""

_NAMED_DIGEST = re.compile(r"sha256(?::|%3[Aa])([0-9a-f]{64})(?![0-9a-f])")
_PATH_DIGEST = re.compile(r"/sha256/([0-9a-f]{2})/([0-9a-f]{64})(?:/|$)")


class CacheKey(NamedTuple):
    """Where an entry is filed, and the digest its bytes must have (if the URL names one)."""

    key: str
    digest: str | None


def _without_query(url: str) -> str:
    return url.split("?", 1)[0].split("#", 1)[0]


def cacheable(url: str, patterns: Sequence[re.Pattern[str]], exclude: Sequence[re.Pattern[str]] = ()) -> bool:
    """Whether the cache keeps ``url``: a pattern is found in it and no exclusion is.

    Args:
        url: the absolute URL of a GET request.
        patterns: compiled regular expressions, any of which selects the URL.
        exclude: compiled regular expressions, any of which rules it out.
    """
    path = _without_query(url)
    return any(p.search(path) for p in patterns) and not any(p.search(path) for p in exclude)


def cache_key(url: str) -> CacheKey:
    """The key ``url`` is cached under: its digest if it names one, else a hash of the URL.

    Args:
        url: the absolute URL of the request (scheme, host, path, query).

    Returns:
        The key (a file name matching `CACHE_KEY`) and the digest the bytes must
        have, or ``None`` for a URL key.
    """
    path = _without_query(url)
    named = _NAMED_DIGEST.search(path)
    if named:
        digest = named.group(1)
    else:
        in_path = _PATH_DIGEST.search(path)
        digest = in_path.group(2) if in_path and in_path.group(2).startswith(in_path.group(1)) else None
    if digest is not None:
        return CacheKey(f"sha256-{digest}", digest)
    return CacheKey(hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest(), None)
