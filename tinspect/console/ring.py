"""Sans-IO core of the console: the ring of recent flow records, filtering, curl commands.

The console keeps plain dictionaries (JSON-ready) rather than live ``Flow`` objects so
that the memory it holds is bounded by ``capacity`` records whatever the proxy does.
"""

from __future__ import annotations

import shlex
from collections import OrderedDict
from typing import Any, Iterable

# Headers curl computes itself; repeating them would make the command lie about the body.
_CURL_SKIP = {"content-length", "host", "transfer-encoding", "connection"}


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


def format_addr(addr: tuple[str, int] | None) -> str:
    """``host:port`` (IPv6 in brackets), or ``""`` when unknown."""
    if not addr:
        return ""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def flow_record(flow: Any, key: str | None = None) -> dict[str, Any]:
    """A JSON-ready summary of ``flow`` (a connection, or one exchange when ``key`` is set).

    Timings come from ``flow.timings`` when the proxy records them (``None`` fields
    otherwise), so the console works with or without them.

    Args:
        flow: a `tinspect.Flow`.
        key: the record id; the flow's id for connection-level records.
    """
    timings = getattr(flow, "timings", None)
    stamps = {name: getattr(timings, name, None) for name in
              ("accepted", "upstream_connected", "client_tls_done", "upstream_tls_done", "ended")}
    dst = flow.dst
    return {
        "id": key or flow.id,
        "flow": flow.id,
        "time": flow.started,
        "client": format_addr(flow.client),
        "protocol": flow.protocol,
        "host": flow.sni or (dst[0] if dst else ""),
        "url": format_addr(dst),
        "method": None,
        "status": None,
        "size": 0,
        "duration": (flow.ended - flow.started) if flow.ended else None,
        "verdict": getattr(flow, "verdict", None),
        "error": flow.error,
        "tls": {"sni": flow.sni, "alpn": flow.alpn, "version": flow.tls_version,
                "upstream_cert": flow.upstream_cert} if flow.tls_version else None,
        "timings": stamps,
    }


def heads(message: Any) -> dict[str, Any]:
    """A request's or response's head as JSON: first line fields and header pairs."""
    out: dict[str, Any] = {"version": message.version, "headers": message.headers.items()}
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
        text: substring of the method, URL, verdict or error, case-insensitive.
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
        hay = " ".join(str(record.get(k) or "") for k in ("method", "url", "verdict", "error"))
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
