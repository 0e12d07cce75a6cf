"""Counters of one proxy, in the Prometheus text format (version 0.0.4).

`Metrics` lives in the `tinspect.context.ProxyContext`; the layers count
into it where things happen once per connection or flow (never per chunk),
and `render` reads the rest (open connections and flows, the leaf
certificate cache) from the context when scraped.
`tinspect.ops.metrics_http` serves it: ``--metrics tcp:9108:interface=127.0.0.1``.

Latency histograms (`Histogram`) are filled by the HTTP layers per
exchange, and only once `Metrics.measure` gave them a `Metrics.clock`
(``--metrics``): with metrics off a layer pays one ``is not None`` test per
exchange and reads no clock. TLS handshakes are counted by the creators in
`tinspect.layers.tls.handshake` (``handshakes`` on each side's owner) and
read here when scraped, as the leaf cache is.

Flow errors are grouped by kind (`error_kind`): the first words of the
reason a layer gave, mapped to a short label, so that the label set stays
small whatever the reasons say.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any, Callable

__all__ = ["Histogram", "LATENCY_BUCKETS", "Metrics", "error_kind", "process_usage"]

# Upper bounds, seconds: from a loopback answer (1 ms) to a slow origin (a minute).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

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


class Histogram:
    """A Prometheus histogram with one label: per label value, a count per
    bucket (not cumulative; `samples` adds them up), the sum and the count.

    Args:
        label: the label's name (``protocol``).
        buckets: the upper bounds, ascending; ``+Inf`` is implied.
    """

    def __init__(self, label: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.label = label
        self.buckets = buckets
        self.series: dict[str, list] = {}  # label value -> [per-bucket counts (one more for +Inf), sum]

    def observe(self, value: str, amount: float) -> None:
        """Count ``amount`` (seconds) under the label ``value``."""
        series = self.series.get(value)
        if series is None:
            series = self.series[value] = [[0] * (len(self.buckets) + 1), 0.0]
        counts = series[0]
        for i, bound in enumerate(self.buckets):
            if amount <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        series[1] += amount

    def samples(self, name: str) -> list[str]:
        """The exposition lines of the family ``name``: cumulative ``_bucket``
        lines ending in ``le="+Inf"``, then ``_sum`` and ``_count``, per label value."""
        out = []
        for value, (counts, total) in sorted(self.series.items()):
            labels = f'{self.label}="{_escape(value)}"'
            seen = 0
            for bound, n in zip((*map(repr, self.buckets), "+Inf"), counts):
                seen += n
                out.append(f'{name}_bucket{{{labels},le="{bound}"}} {seen}')
            out.append(f"{name}_sum{{{labels}}} {round(total, 6)!r}")
            out.append(f"{name}_count{{{labels}}} {seen}")
        return out


class Metrics:
    """What the proxy counts. Attributes are plain counters, cheap to bump.

    Attributes:
        clock: ``None`` until `measure`; then what the layers time exchanges
            with (`time.perf_counter`), the test they make before timing.
    """

    def __init__(self) -> None:
        self.connections_total = 0  # client connections accepted (admitted)
        self.refused = Counter()  # refused client connections, by reason label
        self.flows = Counter()  # closed flows, by protocol
        self.errors = Counter()  # closed flows with an error, by kind
        self.connect_failures = Counter()  # upstream connects that failed, by reason label
        self.worker_restarts = 0  # --workers that exited and were started again (worker 0 counts)
        self.clock: Callable[[], float] | None = None
        self.first_byte = Histogram("protocol")  # request head in -> response head back, per protocol
        self.response = Histogram("protocol")  # request head in -> response complete, per protocol
        # QUIC (tinspect/layers/udp.py): connections by version label, Initials unreadable by reason kind.
        self.quic_seen = Counter()
        self.quic_passed = Counter()
        self.quic_refused = Counter()
        self.quic_unreadable = Counter()

    def measure(self) -> None:
        """Time exchanges from now on (``--metrics``)."""
        self.clock = time.perf_counter

    def flow_closed(self, protocol: str, error: str | None) -> None:
        self.flows[protocol] += 1
        if error:
            self.errors[error_kind(error)] += 1

    def response_started(self, protocol: str, started: float) -> None:
        """The response head of an exchange begun at ``started`` (`clock`) came back."""
        self.first_byte.observe(protocol, self.clock() - started)

    def response_ended(self, protocol: str, started: float) -> None:
        """The response of an exchange begun at ``started`` (`clock`) is complete."""
        self.response.observe(protocol, self.clock() - started)

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
        family("tinspect_worker_restarts_total", "counter", "Workers (--workers) that exited and were started again.",
               [("", self.worker_restarts)])
        family("tinspect_upstream_connect_failures_total", "counter",
               "Upstream TCP connects that failed, by reason.", _labelled("reason", self.connect_failures))
        for name, histogram, help_text in (
            ("tinspect_http_response_first_byte_seconds", self.first_byte,
             "Seconds from a request's head to its response's head, by protocol (http1, h2, websocket)."),
            ("tinspect_http_response_seconds", self.response,
             "Seconds from a request's head to the end of its response, by protocol (http1, h2, websocket)."),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} histogram")
            out += histogram.samples(name)
        tls = ctx.tls
        if getattr(tls, "client_facing", None) is not None:
            family("tinspect_tls_handshakes_total", "counter",
                   "TLS handshakes the proxy made, by side (client, upstream), outcome, version and ALPN.",
                   [(f'{{side="{side}",outcome="{outcome}",version="{_escape(version)}",alpn="{_escape(alpn)}"}}', n)
                    for side, owner in (("client", tls.client_facing), ("upstream", tls.upstream))
                    for (outcome, version, alpn), n in sorted(owner.handshakes.items())])
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
        tapped: dict[str, list] = {}  # what taps count (`Tap.metrics`), summed by name
        for tap in chain.taps:
            for name, kind, help_text, value in tap.metrics():
                tapped.setdefault(name, [kind, help_text, 0])[2] += value
        for name, (kind, help_text, value) in tapped.items():
            family(name, kind, help_text, [("", value)])
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
