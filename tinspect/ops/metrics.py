"""Counters of one proxy, in the Prometheus text format (version 0.0.4).

`Metrics` lives in the `tinspect.context.ProxyContext`; the layers count
into it where things happen once per connection or flow (never per chunk),
and `render` reads the rest (open connections and flows, the leaf
certificate cache) from the context when scraped.
`tinspect.ops.metrics_http` serves it: ``--metrics tcp:9108:interface=127.0.0.1``.

Latency histograms (`Histogram`) are filled by the HTTP layers per
exchange, and only once `Metrics.measure` gave them a `Metrics.clock`
(``--metrics``): with metrics off a layer pays one ``is not None`` test per
exchange and reads no clock. What is counted per unit (each tap's time, the
payload bytes) is counted by wrappers made here (`Metrics.timed`,
`Metrics.counted`) that the tap chain puts in place only once `Metrics.measure`
was given it: with metrics off no code of this module runs per unit, and the
chain makes no test for it either (tests/ops/test_metrics.py checks this).
TLS handshakes are counted by the creators in `tinspect.layers.tls.handshake`
(``handshakes`` on each side's owner) and read here when scraped, as the leaf
cache is.

Flow errors are grouped by kind (`error_kind`): the first words of the
reason a layer gave, mapped to a short label, so that the label set stays
small whatever the reasons say.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import Counter
from typing import Any, Callable

from tinspect.units import Direction, Unit

__all__ = ["Histogram", "LATENCY_BUCKETS", "TAP_BUCKETS", "Metrics", "error_kind", "process_usage"]

# Upper bounds, seconds: from a loopback answer (1 ms) to a slow origin (a minute).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A tap's handle per unit: from a counter's bump (a few microseconds) to a blocking mistake (a second).
TAP_BUCKETS = (5e-06, 1e-05, 2.5e-05, 5e-05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)

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
        series = self.of(value)
        series[0][bisect_left(self.buckets, amount)] += 1  # the first bound >= amount; past the last: +Inf
        series[1] += amount

    def of(self, value: str) -> list:
        """The series of the label ``value`` (made empty if new): ``[counts, sum]``, for a
        caller that observes in a loop of its own (`Metrics.timed`)."""
        series = self.series.get(value)
        if series is None:
            series = self.series[value] = [[0] * (len(self.buckets) + 1), 0.0]
        return series

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
        self.tap_time = Histogram("tap", TAP_BUCKETS)  # one tap's handle, per unit (synchronous part), per tap
        # Delivered units' payload, per direction: a one-item list each, which `counted` binds
        # (an Enum key would cost a Python-level __hash__ per unit).
        self.payload_bytes = {Direction.TO_SERVER: [0], Direction.TO_CLIENT: [0]}
        # QUIC (tinspect/layers/udp.py): connections by version label, Initials unreadable by reason kind.
        self.quic_seen = Counter()
        self.quic_passed = Counter()
        self.quic_refused = Counter()
        self.quic_unreadable = Counter()

    def measure(self, chain: Any = None) -> None:
        """Time exchanges from now on (``--metrics``), and the taps and payload of
        ``chain`` (a `tinspect.chain.TapChain`: `TapChain.measure` with this registry)."""
        self.clock = time.perf_counter
        if chain is not None:
            chain.measure(self)

    def timed(self, name: str, handle: Callable[[Unit, Any], Any]) -> Callable[[Unit, Any], Any]:
        """``handle`` (a tap's), timed into `tap_time` under ``name``: two clock reads
        and a bisection per unit, only in chains that `TapChain.measure` was given this."""
        series = self.tap_time.of(name)
        counts, bounds, clock = series[0], self.tap_time.buckets, time.perf_counter

        def timed(unit: Unit, flow: Any) -> Any:
            started = clock()
            try:
                return handle(unit, flow)
            finally:
                spent = clock() - started
                counts[bisect_left(bounds, spent)] += 1
                series[1] += spent

        return timed

    def counted(self, direction: Direction, deliver: Callable[[Unit], None]) -> Callable[[Unit], None]:
        """An arm's ``deliver`` that adds each unit's payload to `payload_bytes` first."""
        total = self.payload_bytes[direction]

        def counted(unit: Unit) -> None:
            total[0] += unit.size
            deliver(unit)

        return counted

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
            ("tinspect_tap_seconds", self.tap_time,
             "Seconds in one tap's handle per unit (its synchronous part), by tap."),
        ):
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} histogram")
            out += histogram.samples(name)
        family("tinspect_payload_bytes_total", "counter",
               "Payload bytes (bodies, messages, raw data) delivered, by direction (counted with --metrics).",
               [(f'{{direction="{d.value}"}}', n) for d, (n,) in self.payload_bytes.items()])
        tls = ctx.tls
        if getattr(tls, "client_facing", None) is not None:
            family("tinspect_tls_handshakes_total", "counter",
                   "TLS handshakes the proxy made, by side (client, upstream), outcome, version and ALPN.",
                   [(f'{{side="{side}",outcome="{outcome}",version="{_escape(version)}",alpn="{_escape(alpn)}"}}', n)
                    for side, owner in (("client", tls.client_facing), ("upstream", tls.upstream))
                    for (outcome, version, alpn), n in sorted(owner.handshakes.items())])
        chain = ctx.chain
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
        tapped: dict[str, list] = {}  # what taps count (`Tap.metrics`): name -> [type, help, {labels: sum}]
        for tap in chain.taps:
            for sample in tap.metrics():
                name, kind, help_text, value = sample[:4]
                labels = _label_set(sample[4]) if len(sample) > 4 else ""
                values = tapped.setdefault(name, [kind, help_text, {}])[2]
                values[labels] = values.get(labels, 0) + value
        for name, (kind, help_text, values) in tapped.items():
            family(name, kind, help_text, sorted(values.items()))
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


def _label_set(labels: dict[str, str]) -> str:
    """``{a="1",b="2"}`` for a tap's labels, in its order (empty for none)."""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}" if labels else ""


def _labelled(label: str, counts: Counter) -> list[tuple[str, int]]:
    return [(f'{{{label}="{_escape(key)}"}}', n) for key, n in sorted(counts.items())]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
