"""Counters of one proxy, in the Prometheus text format (version 0.0.4).

`Metrics` lives in the `tinspect.context.ProxyContext`; the layers count
into it where things happen once per connection or flow (never per chunk),
and `render` reads the rest (open connections and flows, the leaf
certificate cache) from the context when scraped.
`tinspect.ops.metrics_http` serves it: ``--metrics tcp:9108:interface=127.0.0.1``.

Flow errors are grouped by kind (`error_kind`): the first words of the
reason a layer gave, mapped to a short label, so that the label set stays
small whatever the reasons say.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

__all__ = ["Metrics", "error_kind", "process_usage"]

# Reason prefix -> kind label; the first match wins, so longer prefixes first.
_KINDS = (
    ("bad request", "bad_request"),
    ("bad response", "bad_response"),
    ("client rejected our certificate", "tls_client_rejected"),
    ("client TLS handshake failed", "tls_client"),
    ("no complete TLS handshake", "timeout"),
    ("client went away", "client_gone"),
    ("client closed before", "client_gone"),
    ("tap error", "tap"),
    ("a tap", "tap"),
    ("upstream", "upstream"),
    ("TLS to upstream", "upstream_tls"),
    ("WebSocket", "websocket"),
)


def error_kind(reason: str) -> str:
    """A short, bounded label for a flow's error reason."""
    for prefix, kind in _KINDS:
        if reason.startswith(prefix):
            return kind
    if "timed out" in reason or "within" in reason or "sent nothing for" in reason:
        return "timeout"
    return "other"


class Metrics:
    """What the proxy counts. Attributes are plain counters, cheap to bump."""

    def __init__(self) -> None:
        self.connections_total = 0  # client connections accepted (admitted)
        self.refused = Counter()  # refused client connections, by reason label
        self.flows = Counter()  # closed flows, by protocol
        self.errors = Counter()  # closed flows with an error, by kind
        # QUIC (tinspect/layers/udp.py): connections by version label, Initials unreadable by reason kind.
        self.quic_seen = Counter()
        self.quic_passed = Counter()
        self.quic_refused = Counter()
        self.quic_unreadable = Counter()

    def flow_closed(self, protocol: str, error: str | None) -> None:
        self.flows[protocol] += 1
        if error:
            self.errors[error_kind(error)] += 1

    def render(self, ctx: Any) -> str:
        """The exposition text for ``ctx`` (a `ProxyContext`)."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}")

        family("tinspect_connections_open", "gauge", "Client connections open now.", [("", ctx.connections)])
        family("tinspect_connections_total", "counter", "Client connections accepted.",
               [("", self.connections_total)])
        family("tinspect_connections_refused_total", "counter", "Client connections refused at accept, by reason.",
               _labelled("reason", self.refused))
        family("tinspect_flows_open", "gauge", "Flows (proxied connections and UDP sessions) open now.",
               [("", len(ctx.flows))])
        family("tinspect_flows_total", "counter", "Flows ended, by the protocol they carried.",
               _labelled("protocol", self.flows))
        family("tinspect_flow_errors_total", "counter", "Flows that ended with an error, by kind.",
               _labelled("kind", self.errors))
        chain = ctx.chain
        if chain.measuring:
            family("tinspect_payload_bytes_total", "counter",
                   "Payload bytes (bodies, messages, raw data) delivered, by direction.",
                   [(f'{{direction="{d.value}"}}', n) for d, n in chain.payload_bytes.items()])
            family("tinspect_tap_seconds_total", "counter", "Seconds spent in each tap's handle (synchronous part).",
                   [(f'{{tap="{_escape(name)}"}}', float(round(t, 6))) for name, t in chain.tap_seconds.items()])
        # QUIC: every connection is counted seen, then passed or refused.
        family("tinspect_quic_connections_total", "counter", "QUIC connections seen, by version.",
               _labelled("version", self.quic_seen))
        family("tinspect_quic_passed_total", "counter", "QUIC connections relayed, by version.",
               _labelled("version", self.quic_passed))
        family("tinspect_quic_refused_total", "counter", "QUIC connections refused, by version.",
               _labelled("version", self.quic_refused))
        family("tinspect_quic_unreadable_total", "counter",
               "QUIC connections whose Initial packets gave no ClientHello, by reason.",
               _labelled("reason", self.quic_unreadable))
        leaves = getattr(ctx.tls, "leaves", None)
        if leaves is not None:
            family("tinspect_leaf_cache_hits_total", "counter", "Leaf certificates served from the cache.",
                   [("", leaves.hits)])
            family("tinspect_leaf_cache_misses_total", "counter", "Leaf certificates minted.",
                   [("", leaves.misses)])
        rss, fds = process_usage()
        if rss is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory of the proxy's processes, bytes.",
                   [("", rss)])
        if fds is not None:
            family("process_open_fds", "gauge", "Open file descriptors of the proxy's processes.", [("", fds)])
        return "\n".join(out) + "\n"


def process_usage() -> tuple[int | None, int | None]:
    """This process's resident memory in bytes and its open descriptors, from
    /proc (``None`` where there is no /proc)."""
    rss = fds = None
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        pass
    return rss, fds


def _labelled(label: str, counts: Counter) -> list[tuple[str, int]]:
    return [(f'{{{label}="{_escape(key)}"}}', n) for key, n in sorted(counts.items())]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
