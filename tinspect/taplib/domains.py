"""Domain and URL lists at scale: the category lists of blocklists, as a compact index.

The filter's ``list=`` and ``domains=`` conditions (`tinspect.taplib.filtering`)
name lists in the layout of the common blocklists (UT1, Shalla, squidGuard's): a
directory per category holding a ``domains`` file and a ``urls`` file, one entry
a line, ``#`` starting a comment; or a plain file of domains. A domain entry
matches the domain and all its subdomains (``casino.example`` matches
``www.casino.example``); a ``urls`` entry (``host/path``) matches a request to
that host, or a subdomain of it, whose path starts with that path.

Theory of operation. A list of two million domains held as Python strings in a
set would cost some 150 MiB per process. Instead each domain (lowercased,
trailing dots removed, IDNA left as written) is hashed to 64 bits with
BLAKE2b, a hash that is the same in every process and every run (Python's
``hash()`` is salted per process), and the hashes are kept sorted: 8 bytes an
entry, in 256 ``array('Q')`` by the hash's top byte, with a small table of
where each bucket's slices by the next bits start, so that `bisect` probes
about five entries, not thirteen. A request's host matches when it or one of its parent domains is
listed: `Query` takes the host apart once (``a.b.c.d``, ``b.c.d``, ``c.d``,
``d``: the one place that knows a domain covers its subdomains) for all the
lists a request is asked of.

Hashing four names with BLAKE2b would be most of a lookup's cost, and most
lookups are misses. So each list also keeps a bitmap of about 16 bits per
entry, the bit of each entry's CRC-32 set: a name whose bit is clear is not
listed (CRC-32 costs a tenth of BLAKE2b), and only a name whose bit is set
(at most 6% of unlisted names, and the listed ones) is hashed and searched. The
bitmap only saves work: what matches is decided by the 64-bit hash.

Building sorts two million 64-bit integers without holding them all as
Python ints at once (that alone would be 80 MiB), and without a second copy
of the index: the hashes are appended as bytes to the 256 buckets as the file
is read, then each bucket in turn becomes ints, is sorted and deduplicated,
and takes the place of its bytes. Reading and hashing stay in C
(``bytes.split``, ``map``) as far as they can. Measured with
``bench/micro_domains.py`` (numbers in docs/builtin-taps.md, Blocklists).

Two different names with the same 64-bit hash are the price of the compact
form: with N entries, a host of four labels that is not listed matches by
accident with probability about 4 × N / 2**64 per lookup (4e-13 for two
million entries), a false block at worst; a listed name is never missed.
(That two of the two million entries share a hash is likelier, about 1e-7,
and harmless: they are both listed.)

`urls` entries are far fewer than domains (thousands, not millions): each
host's path prefixes are a record in one blob of text, found by the host's
CRC-32 (`_Urls`).

Nothing here touches Twisted: `DomainList.build` is pure, and the readers
only read the files they are given, so a tap may build lists in a thread
(blocking, seconds for millions of entries) and swap them in when done.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import re
import stat
import sys
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from zlib import crc32

__all__ = ["DomainList", "ListError", "Query", "read_category", "read_domains"]

_blake2b8 = functools.partial(hashlib.blake2b, digest_size=8)
_digest = hashlib.blake2b.digest
_COMMENT = re.compile(rb"#[^\n]*")
_SCHEME = re.compile(rb"^[a-z][a-z0-9+.-]*://")
_CHUNK = 1 << 20  # bytes read at once: whole lines, about 60,000 domains
_BITS_PER_ENTRY = 16  # the prefilter, at least: at most 6% of unlisted names get past it
_BIT = (1, 2, 4, 8, 16, 32, 64, 128)


class ListError(ValueError):
    """A list that cannot be used (a category directory without its files)."""


def _entries(chunk: bytes) -> list[bytes]:
    """The entries of whole lines of a list: comments removed, lowercased."""
    if b"#" in chunk:
        chunk = _COMMENT.sub(b"", chunk)
    return chunk.lower().split()


class Query:
    """What a request asks the lists: its host and, for ``urls`` entries, its path.

    The host is taken apart once, however many lists are asked: its name and
    each parent domain (`suffixes`), and their CRC-32s. An IP address is
    looked up whole: its "parent domains" mean nothing.

    Args:
        host: the request's host (or the TLS SNI), without port or brackets.
        path: the request's path and query, for ``urls`` entries; ``None`` when
            there is none (a TLS decision, a CONNECT).
    """

    __slots__ = ("suffixes", "crcs", "path")

    def __init__(self, host: str, path: str | None = None) -> None:
        name = host.encode("utf-8", "surrogatepass").lower().rstrip(b".")
        suffixes = [name]
        if not (name[-1:].isdigit() or b":" in name):  # not an IPv4 address (no TLD is all digits) nor IPv6
            start = 0
            for label in name.split(b".")[:-1]:  # (faster than find() in a loop: this runs per request)
                start += len(label) + 1
                suffixes.append(name[start:])
        self.suffixes = suffixes
        self.crcs = list(map(crc32, suffixes))
        self.path = path.encode("utf-8", "surrogatepass").lower() if path is not None else None

    def hash(self, i: int) -> int:
        """The 64-bit hash of ``suffixes[i]`` (big-endian, so the digests sort like the ints)."""
        return int.from_bytes(_digest(_blake2b8(self.suffixes[i])), "big")


class DomainList:
    """One list (a category): its domains and its URL prefixes.

    Immutable once built, so one may be built in a thread and used in another.

    Attributes:
        name: the category (the directory's name, or the plain file's stem);
            what a match reports.
        source: where it was read from, for messages.
    """

    def __init__(self, name: str, domains: _Domains, urls: _Urls, source: str = "") -> None:
        self.name = name
        self.source = source
        self._domains = domains
        self._urls = urls

    @classmethod
    def build(cls, name: str, domains: Iterable[bytes] = (), urls: Iterable[bytes] = (),
              source: str = "") -> DomainList:
        """Build a list from the text of its files.

        Args:
            name: the category, reported with every match.
            domains: the ``domains`` file's bytes in pieces of whole lines (a
                file's lines, or the bigger pieces `read_domains` reads).
            urls: the same for the ``urls`` file (``host/path`` a line).
            source: where it came from, for messages.
        """
        return cls(name, _Domains(domains), _Urls(urls), source)

    def __len__(self) -> int:
        """How many different entries, domains and URLs."""
        return len(self._domains) + len(self._urls)

    def __repr__(self) -> str:
        return f"<DomainList {self.name} ({len(self._domains)} domains, {len(self._urls)} URLs)>"

    def has_domain(self, query: Query) -> bool:
        """Whether the host or one of its parent domains is a ``domains`` entry."""
        return self._domains.has(query)

    def has_url(self, query: Query) -> bool:
        """Whether a ``urls`` entry is a prefix of the request's host (or a parent
        domain of it) and path."""
        if query.path is None or not self._urls:
            return False
        prefixes = self._urls.prefixes(query)
        return bool(prefixes) and any(_under(query.path, prefix) for prefix in prefixes)

    def match(self, query: Query) -> bool:
        """Whether the request is listed, by its domain or by its URL."""
        return self._domains.has(query) or self.has_url(query)

    def may_match(self, query: Query) -> bool:
        """Whether some request to this host could be listed (for decisions made before
        the path is known: the host is listed, or has ``urls`` entries)."""
        return self._domains.has(query) or bool(self._urls.prefixes(query))


def _under(path: bytes, prefix: bytes) -> bool:
    """Whether ``path`` starts with ``prefix`` at a boundary: ``/ads`` covers ``/ads``,
    ``/ads/x``, ``/ads.html`` and ``/ads?x``, not ``/adsorption``."""
    end = len(prefix)
    return path.startswith(prefix) and (prefix.endswith(b"/") or not path[end:end + 1].isalnum())


class _Domains:
    """The index of a list's domains: their hashes in 256 sorted ``array('Q')`` by the
    top byte, where each bucket's slices by the next bits start (so a search
    probes a few entries, not thirteen), and the CRC-32 bitmap in front.

    Args:
        pieces: the ``domains`` file's bytes, in pieces of whole lines.
    """

    def __init__(self, pieces: Iterable[bytes]) -> None:
        buckets = [bytearray() for _ in range(256)]
        crcs = array("I")
        for piece in pieces:
            entries = [entry.rstrip(b".") for entry in _entries(piece)]
            crcs.extend(map(crc32, entries))
            for digest in map(_digest, map(_blake2b8, entries)):
                buckets[digest[0]] += digest
        self._bits, self._mask = _bitmap(crcs)
        slice_bits = min(10, (len(crcs) >> 11).bit_length())  # about 8 entries a slice, at most 1024 slices
        self._slices, self._shift = 1 << slice_bits, 56 - slice_bits
        del crcs
        self._buckets: list[array] = []
        self._starts = array("I")  # bucket top's slice s starts at _starts[top * (_slices + 1) + s]
        for top in range(256):
            bucket = array("Q")
            bucket.frombytes(buckets[top])
            buckets[top] = bytearray()  # each sorted bucket takes the place of its bytes
            if sys.byteorder == "little":
                bucket.byteswap()  # the digests are big-endian
            hashes = sorted(set(bucket))
            self._starts.extend(bisect.bisect_left(hashes, top << 56 | s << self._shift) for s in range(self._slices))
            self._starts.append(len(hashes))
            self._buckets.append(array("Q", hashes))

    def __len__(self) -> int:
        return sum(map(len, self._buckets))

    def has(self, query: Query) -> bool:
        """Whether one of the query's suffixes is listed."""
        bits, mask = self._bits, self._mask
        for i, crc in enumerate(query.crcs):
            if bits[(crc & mask) >> 3] & _BIT[crc & 7]:  # perhaps listed: ask the index
                h = query.hash(i)
                top = h >> 56
                at = top * (self._slices + 1) + (h >> self._shift & self._slices - 1)
                end = self._starts[at + 1]
                bucket = self._buckets[top]
                j = bisect.bisect_left(bucket, h, self._starts[at], end)
                if j < end and bucket[j] == h:
                    return True
        return False


class _Urls:
    """A list's ``urls`` entries: each host's path prefixes, in one blob of text.

    A record per host (the host and its prefixes, tab-separated), sorted by the
    host's CRC-32, with the CRC-32s and the records' offsets in two
    ``array('I')`` and a bitmap of the CRC-32s in front: some 10 bytes a host
    beside the text. (A dict from host to prefixes held 100,000 entries in 24
    to 45 MiB, as Python objects and the holes they leave; this, in 7.6.)

    Args:
        pieces: the ``urls`` file's bytes, in pieces of whole lines.
    """

    def __init__(self, pieces: Iterable[bytes]) -> None:
        records = set()  # CRC-32 (4 bytes, big-endian: sorts as the number), host, tab, prefix: one object each
        for piece in pieces:
            for entry in _entries(piece):
                host, slash, path = _SCHEME.sub(b"", entry).partition(b"/")
                host = host.rstrip(b".")
                if host:
                    records.add(crc32(host).to_bytes(4, "big") + host + b"\t" + (slash + path or b"/"))
        self._count = len(records)
        self._crcs, self._offsets, text = array("I"), array("I"), []
        size = 0
        for key, group in itertools.groupby(sorted(records), key=lambda r: r[:r.index(b"\t", 4)]):  # (a CRC-32 byte may be a tab)
            record = b"\t".join([key[4:], *(r[len(key) + 1:] for r in group)])
            self._crcs.append(int.from_bytes(key[:4], "big"))
            self._offsets.append(size)
            text.append(record)
            size += len(record)
        del records
        self._offsets.append(size)
        self._text = b"".join(text)
        self._bits, self._mask = _bitmap(self._crcs)

    def __len__(self) -> int:
        return self._count

    def prefixes(self, query: Query) -> list[bytes]:
        """The path prefixes of the query's host and its parent domains."""
        found: list[bytes] = []
        bits, mask = self._bits, self._mask
        for i, crc in enumerate(query.crcs):
            if bits[(crc & mask) >> 3] & _BIT[crc & 7]:  # perhaps listed: look for its record
                crcs, name = self._crcs, query.suffixes[i]
                j = bisect.bisect_left(crcs, crc)
                while j < len(crcs) and crcs[j] == crc:  # (two hosts may share a CRC-32)
                    host, *paths = self._text[self._offsets[j]:self._offsets[j + 1]].split(b"\t")
                    if host == name:
                        found += paths
                    j += 1
        return found


def _bitmap(crcs: array) -> tuple[bytearray, int]:
    """The prefilter: a bitmap of at least `_BITS_PER_ENTRY` bits an entry (a power of
    two, so a mask picks the bit) with each CRC-32's bit set, and that mask."""
    size = 1 << max(9, (len(crcs) * _BITS_PER_ENTRY - 1).bit_length())
    bits, mask, bit = bytearray(size >> 3), size - 1, _BIT  # (locals: this runs per entry)
    for crc in crcs:
        bits[(crc & mask) >> 3] |= bit[crc & 7]
    return bits, mask


def _pieces(path: Path) -> Iterator[bytes]:
    """A file's bytes in pieces of whole lines, about `_CHUNK` bytes each."""
    with path.open("rb") as f:
        tail = b""
        while chunk := f.read(_CHUNK):
            chunk = tail + chunk
            cut = chunk.rfind(b"\n") + 1
            tail = chunk[cut:]
            yield chunk[:cut]
        yield tail


def read_category(directory: Path) -> DomainList:
    """Read a category directory: its ``domains`` and ``urls`` files (either may be missing).

    Raises:
        ListError: neither file is there.
        OSError: a file cannot be read.
    """
    domains, urls = directory / "domains", directory / "urls"
    if not stat.S_ISDIR(directory.stat().st_mode):  # (OSError when it is not there)
        raise ListError(f"{directory} is not a directory (a plain list of domains goes in domains=)")
    if not domains.is_file() and not urls.is_file():
        raise ListError(f"{directory} holds neither a domains nor a urls file")
    return DomainList.build(directory.resolve().name,
                            _pieces(domains) if domains.is_file() else (),
                            _pieces(urls) if urls.is_file() else (), str(directory))


def read_domains(path: Path) -> DomainList:
    """Read a plain list of domains (one a line); its category is the file's stem (``ads.txt``: ads).

    Raises:
        OSError: the file cannot be read.
    """
    return DomainList.build(path.stem, _pieces(path), source=str(path))
