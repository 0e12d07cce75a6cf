"""Sans-IO core of the console: the ring of recent flow records, filtering, curl commands.

The console keeps records rather than live ``Flow`` objects so that the memory it
holds is bounded by ``capacity`` records whatever the proxy does;
`tinspect.console.feed` makes them, each of bounded size (`cut_head` cuts heads at
`HEAD_CAP`). A record is its summary fields (the list's columns) and a ``detail``
dict, served only when one flow is opened. It is kept either as a plain dictionary
(JSON-ready) or as a `LiveRecord`, which holds what it was made of (the heads' field
pairs, the first bytes of the bodies, times) and builds its dictionaries only when
they are read: an exchange nobody looks at costs the proxy no formatting.
"""

from __future__ import annotations

import shlex
from collections import OrderedDict
from itertools import chain
from typing import Any, Iterable

# Headers curl computes itself; repeating them would make the command lie about the body.
_CURL_SKIP = {"content-length", "host", "transfer-encoding", "connection", "proxy-connection", "keep-alive"}

HEAD_CAP = 8192
"""Bytes of header names and values kept per message head (`heads`)."""
HEAD_FIELDS = 100
"""Header fields kept per message head: many tiny fields cost more than their bytes."""


class LiveRecord:
    """A record built when read: `summary` its list columns, `whole` those and its ``detail``.

    Attributes:
        id: the record's id, unique in the ring.
    """

    __slots__ = ("id",)

    def summary(self) -> dict[str, Any]:
        """The record without its ``detail``, as it is now."""
        raise NotImplementedError

    def whole(self) -> dict[str, Any]:
        """The record with its ``detail``, as it is now."""
        raise NotImplementedError


def record_id(record: dict[str, Any] | LiveRecord) -> str:
    """The id of a kept record of either form."""
    return record.id if isinstance(record, LiveRecord) else record["id"]


class FlowRing:
    """The ``capacity`` most recently created records, keyed by record id.

    Args:
        capacity: how many records to keep; the oldest is evicted first.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"console ring capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: dict[str, Any] | LiveRecord) -> None:
        """Insert or update ``record`` (by its id), evicting the oldest past capacity.

        A dictionary updates the kept dictionary of its id; a `LiveRecord` is
        its own latest state, so putting it again changes nothing.
        """
        records = self._records
        key = record["id"] if type(record) is dict else record.id
        kept = records.get(key)
        if kept is not None:
            if kept is not record:
                kept.update(record)
            return
        records[key] = record
        if len(records) > self.capacity:
            records.popitem(last=False)  # one in, one out: the ring was full

    def get(self, key: str) -> dict[str, Any] | None:
        """The record ``key`` whole, or ``None`` when it was evicted or never existed."""
        return _whole(self._records.get(key))

    def entry(self, key: str) -> dict[str, Any] | LiveRecord | None:
        """The record ``key`` as kept (a `LiveRecord` unbuilt), or ``None``."""
        return self._records.get(key)

    def entries(self) -> list[dict[str, Any] | LiveRecord]:
        """All kept records as kept, oldest first."""
        return list(self._records.values())

    def records(self) -> list[dict[str, Any]]:
        """All kept records whole, oldest first."""
        return [_whole(record) for record in self._records.values()]


def _whole(record: dict[str, Any] | LiveRecord | None) -> dict[str, Any] | None:
    return record.whole() if isinstance(record, LiveRecord) else record


def summary(record: dict[str, Any] | LiveRecord) -> dict[str, Any]:
    """``record`` without its ``detail``: what the list and the live stream carry."""
    if isinstance(record, LiveRecord):
        return record.summary()
    return {key: value for key, value in record.items() if key != "detail"}


Packed = bytes | tuple[tuple[bytes, bytes], ...]
"""A head's kept fields (`cut_head`): names and values joined by NULs, or, when one holds a NUL, their pairs."""


def cut_head(fields: list[tuple[bytes, bytes]], cap: int = HEAD_CAP) -> tuple[Packed, int]:
    """A head's header fields as the console keeps them, and how many were left out.

    Fields are kept in order while their names and values add up to at most
    ``cap`` bytes, `HEAD_FIELDS` fields at most, so a head of many large
    cookies costs the console ``cap`` bytes, not more. They are kept packed
    into one bytes object (`unpack_head` takes them out): a copy, so a tap
    changing the message later does not change the record, that is made in
    one call, frees in one, and gives the cyclic collector nothing to walk,
    for the thousands of records the ring keeps. The usual head, under both
    caps, takes that one join and a count.
    """
    n = len(fields)
    if 0 < n <= HEAD_FIELDS:
        packed = b"\0".join(chain.from_iterable(fields))
        if len(packed) - (2 * n - 1) <= cap and packed.count(b"\0") == 2 * n - 1:
            return packed, 0
    kept, used, cut = [], 0, 0
    for name, value in fields:
        size = len(name) + len(value)
        if used + size > cap or len(kept) >= HEAD_FIELDS:
            cut += 1
            continue
        used += size
        kept.append((name, value))
    packed = b"\0".join(chain.from_iterable(kept))
    return (packed if packed.count(b"\0") == 2 * len(kept) - 1 else tuple(kept)), cut


def unpack_head(packed: Packed) -> list[tuple[str, str]]:
    """The fields `cut_head` kept, as text pairs in order."""
    if type(packed) is tuple:
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in packed]
    parts = packed.decode("latin-1").split("\0")
    return list(zip(parts[::2], parts[1::2]))


def heads(message: Any, cap: int = HEAD_CAP) -> dict[str, Any]:
    """A request's or response's head as JSON: first line fields and header pairs (cut as
    `cut_head` says; ``headers_cut`` counts the fields left out)."""
    kept, cut = cut_head(message.headers.fields, cap)
    if hasattr(message, "method"):
        return head_json(message.version, kept, cut, method=message.method, url=message.url)
    return head_json(message.version, kept, cut, status=message.status, reason=message.reason)


def head_json(version: str, kept: Packed, cut: int, **first_line: Any) -> dict[str, Any]:
    """A head as JSON from what `cut_head` kept: the version, the pairs as text, ``headers_cut``
    when fields were left out, and the first line's fields (method and URL, or status and reason)."""
    out: dict[str, Any] = {"version": version, "headers": unpack_head(kept)}
    if cut:
        out["headers_cut"] = cut
    out.update(first_line)
    return out


def matches(record: dict[str, Any], *, host: str = "", client: str = "",
            status: str = "", text: str = "") -> bool:
    """Whether ``record`` passes the console's filters (empty filter: passes).

    Args:
        record: a summary with ``host``, ``client``, ``status`` and free-text fields.
        host: substring of the host, case-insensitive.
        client: prefix of the client address.
        status: a status code (``"404"``) or class (``"4xx"``).
        text: substring of the method, URL, host, protocol, verdict or error,
            case-insensitive.
    """
    if host and host.lower() not in str(record.get("host") or "").lower():
        return False
    if client and not str(record.get("client") or "").startswith(client):
        return False
    if status:
        code = str(record.get("status") or "")
        if status.lower().endswith("xx"):
            if code[:1] != status[:1]:
                return False
        elif code != status:
            return False
    if text:
        hay = " ".join(str(record.get(k) or "") for k in ("method", "url", "host", "protocol", "verdict", "error"))
        if text.lower() not in hay.lower():
            return False
    return True


def curl_command(method: str, url: str, headers: Iterable[tuple[str, str]],
                 body: bytes | None = None) -> str:
    """A shell-quoted curl command line repeating a request.

    Args:
        method: request method.
        url: absolute URL.
        headers: request header pairs, in order.
        body: the request body if known; binary bodies are left out.
    """
    parts = ["curl", "-X", method, url]
    for name, value in headers:
        if name.lower() in _CURL_SKIP or name.startswith(":"):
            continue
        parts += ["-H", f"{name}: {value}"]
    if body:
        try:
            parts += ["--data-raw", body.decode("utf-8")]
        except UnicodeDecodeError:
            pass
    return " ".join(shlex.quote(p) for p in parts)
