"""A ``cache`` tap's directory as the operator sees it: its entries, their sizes, purging.

What ``python3 -m tinspect cache ls|du|purge`` runs. The layout is the
tap's: ``objects/<key>`` holds a body and ``objects/<key>.json`` what the
tap noted about it (its URL, when it was stored, ``credentials`` when it
was fetched with them); an entry is listed only when both are there.
``tmp/`` holds transfers in progress and ``locks/`` the lock of each key
being fetched (gone when its fetch ends); neither is an entry. The file times say when an entry was last served
(the tap touches the ``.json`` on each hit, which is what its
least-recently-used eviction reads). Purging while the proxy runs is safe:
an entry is unlinked body first, and a worker that finds a body gone
forgets the entry and fetches it again; a response being served from a
purged file finishes from the open file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from tinspect.taplib.cachekeys import CACHE_KEY

__all__ = ["Entry", "entries", "purge"]


class Entry(NamedTuple):
    """One cached body."""

    key: str
    url: str
    size: int
    used: float  # seconds since the epoch of its last use


def entries(root: str | Path, pattern: str | None = None) -> list[Entry]:
    """The entries of the cache at ``root``, least recently used first.

    Args:
        root: the tap's ``dir``.
        pattern: a regular expression searched in each entry's URL and key;
            ``None`` lists every entry.

    Raises:
        ValueError: ``root`` is not a cache directory, or ``pattern`` is not
            a regular expression.
    """
    objects = Path(root) / "objects"
    if not objects.is_dir():
        raise ValueError(f"{root} is not a cache directory (it has no objects/)")
    try:
        wanted = re.compile(pattern) if pattern is not None else None
    except re.error as e:
        raise ValueError(f"not a regular expression: {pattern!r}: {e}") from None
    found = []
    for meta in objects.glob("*.json"):
        key = meta.stem
        if not CACHE_KEY.fullmatch(key):
            continue
        try:
            size = (objects / key).stat().st_size
            used = meta.stat().st_mtime
            url = str(json.loads(meta.read_text()).get("url", ""))
        except (OSError, ValueError):
            continue  # half-written or being purged: not an entry
        if wanted is None or wanted.search(url) or wanted.search(key):
            found.append(Entry(key, url, size, used))
    return sorted(found, key=lambda e: e.used)


def purge(root: str | Path, pattern: str | None = None) -> list[Entry]:
    """Remove the entries `entries` lists for ``pattern`` (every entry for ``None``).

    Returns:
        The entries removed.
    """
    objects = Path(root) / "objects"
    gone = entries(root, pattern)
    for entry in gone:
        (objects / entry.key).unlink(missing_ok=True)
        (objects / f"{entry.key}.json").unlink(missing_ok=True)
    return gone
