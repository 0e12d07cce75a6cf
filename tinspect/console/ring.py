"""Sans-IO core of the console: the ring of recent flow records, filtering, curl commands.

The console keeps plain dictionaries (JSON-ready) rather than live ``Flow`` objects so
that the memory it holds is bounded by ``capacity`` records whatever the proxy does;
`tinspect.console.feed` makes them, each of bounded size (`heads` cuts heads at
`HEAD_CAP`). A record is its summary fields (the list's columns) and a ``detail``
dict, served only when one flow is opened.
"""

from __future__ import annotations

import shlex
from collections import OrderedDict
from typing import Any, Iterable

# Headers curl computes itself; repeating them would make the command lie about the body.
_CURL_SKIP = {"content-length", "host", "transfer-encoding", "connection", "proxy-connection", "keep-alive"}

HEAD_CAP = 8192
"""Bytes of header names and values kept per message head (`heads`)."""
HEAD_FIELDS = 100
"""Header fields kept per message head: many tiny fields cost more than their bytes."""


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

    def put(self, record: dict[str, Any]) -> None:
        """Insert or update ``record`` (by its ``"id"``), evicting the oldest past capacity."""
        key = record["id"]
        if key in self._records:
            self._records[key].update(record)
            return
        self._records[key] = record
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record ``key``, or ``None`` when it was evicted or never existed."""
        return self._records.get(key)

    def records(self) -> list[dict[str, Any]]:
        """All kept records, oldest first."""
        return list(self._records.values())


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its ``detail``: what the list and the live stream carry."""
    return {key: value for key, value in record.items() if key != "detail"}


def heads(message: Any, cap: int = HEAD_CAP) -> dict[str, Any]:
    """A request's or response's head as JSON: first line fields and header pairs.

    Header fields are kept in order while their names and values add up to
    at most ``cap`` bytes, `HEAD_FIELDS` fields at most; ``headers_cut``
    counts the fields left out, so a head of many large cookies costs the
    console ``cap`` bytes, not more.
    """
    kept, used, cut = [], 0, 0
    for name, value in message.headers.items():
        size = len(name) + len(value)
        if used + size > cap or len(kept) >= HEAD_FIELDS:
            cut += 1
            continue
        used += size
        kept.append((name, value))
    out: dict[str, Any] = {"version": message.version, "headers": kept}
    if cut:
        out["headers_cut"] = cut
    if hasattr(message, "method"):
        out.update(method=message.method, url=message.url)
    else:
        out.update(status=message.status, reason=message.reason)
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
