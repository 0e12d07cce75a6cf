"""The Prometheus text of tinspect.ops.metrics."""

from __future__ import annotations

import re
import sys
from collections import Counter

import pytest

from tinspect.chain import Tap, TapChain
from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.units import Request
from tinspect.ops import metrics as metrics_module
from tinspect.ops.metrics import error_kind
from tests.memnet import Net

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z]+="[^"\\\n]*"\})? \d+(\.\d+)?$')


@pytest.mark.parametrize("reason, kind", [
    ("bad request: NUL in message head", "bad_request"),
    ("bad response: reset the connection before the response was complete", "bad_response"),
    ("client went away", "client_gone"),
    ("no complete TLS handshake within 15 s of the client's first byte", "timeout"),
    ("upstream 198.51.100.2:80 sent nothing for 60 s in the middle of the response", "upstream"),
    ("tap error opening the flow: boom", "tap"),
    ("something new", "other"),
])
def test_error_kinds_are_a_small_fixed_set(reason, kind):
    assert error_kind(reason) == kind


def test_render_counts_flows_connections_and_errors():
    ctx = ProxyContext(TapChain([]), reactor=object())
    assert ctx.admit("192.0.2.2") is None
    for protocol, error in (("http/1.1", None), ("http/1.1", "client went away"), ("h2", 'odd "reason"\n')):
        flow = Flow(("192.0.2.2", 1), ("198.51.100.2", 80), listener="t", mode="transparent")
        ctx.open_flow(flow)
        flow.protocol = protocol
        ctx.close_flow(flow, error)
    ctx.open_flow(Flow(("192.0.2.2", 2), ("198.51.100.2", 80), listener="t", mode="transparent"))
    text = ctx.metrics.render(ctx)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(SAMPLE.match(line) for line in samples), samples
    assert "tinspect_connections_open 1" in samples and "tinspect_connections_total 1" in samples
    assert "tinspect_flows_open 1" in samples
    assert 'tinspect_flows_total{protocol="http/1.1"} 2' in samples and 'tinspect_flows_total{protocol="h2"} 1' in samples
    assert 'tinspect_flow_errors_total{kind="client_gone"} 1' in samples
    assert 'tinspect_flow_errors_total{kind="other"} 1' in samples
    assert "# TYPE tinspect_flows_total counter" in text


def test_the_exposition_parses_and_follows_prometheus_naming():
    """prometheus_client reads every family; counters end in _total, the process gauges are in base units."""
    from prometheus_client.parser import text_string_to_metric_families

    ctx = ProxyContext(TapChain([]), reactor=object())
    ctx.metrics.measure(ctx.chain)
    families = {f.name: f for f in text_string_to_metric_families(ctx.metrics.render(ctx))}
    for family in families.values():
        if family.type == "counter":  # the parser strips _total from a counter's family name
            assert all(s.name.endswith("_total") for s in family.samples), family
    rss = families["process_resident_memory_bytes"].samples[0].value
    assert 10 * 2**20 < rss < 2**33  # bytes, not pages or KiB
    assert families["process_open_fds"].samples[0].value >= 3


def test_latency_histograms_are_cumulative_and_parse():
    """Observations land in the first bucket that holds them; buckets are cumulative up to +Inf == _count."""
    from prometheus_client.parser import text_string_to_metric_families

    ctx = ProxyContext(TapChain([]), reactor=object())
    metrics = ctx.metrics
    assert metrics.clock is None  # off until --metrics: the layers time nothing
    metrics.measure()
    now = metrics.clock()
    metrics.first_byte.observe("http1", 0.003)
    metrics.first_byte.observe("http1", 120.0)
    metrics.response_ended("h2", now)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render(ctx))}
    first = families["tinspect_http_response_first_byte_seconds"]
    assert first.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in first.samples
               if s.name.endswith("_bucket") and s.labels["protocol"] == "http1"}
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["60.0"] == 1 and buckets["+Inf"] == 2
    count = [s.value for s in first.samples if s.name.endswith("_count")]
    assert count == [2]
    total = families["tinspect_http_response_seconds"]
    assert {s.labels["protocol"] for s in total.samples} == {"h2"}


def test_connect_failures_are_labelled_by_a_small_set_of_reasons():
    """Refused, timed out, unresolvable connects get their own label; our own cancel is not a failure."""
    from twisted.internet import error
    from twisted.python.failure import Failure

    from tinspect.net.upstream import connect_failure_kind

    assert connect_failure_kind(Failure(error.ConnectionRefusedError())) == "refused"
    assert connect_failure_kind(Failure(error.TCPTimedOutError())) == "timeout"
    assert connect_failure_kind(Failure(error.DNSLookupError())) == "dns"
    assert connect_failure_kind(Failure(error.ConnectError("odd"))) == "other"
    assert connect_failure_kind(Failure(error.ConnectingCancelledError(None))) is None


def test_quic_counters_by_version_and_unreadable_reason():
    """QUIC connections are counted seen, passed and refused by version, unreadable Initials by reason."""
    ctx = ProxyContext(TapChain([]), reactor=object())
    m = ctx.metrics
    m.quic_seen.update(["v1", "v1", "v2", "unknown"])
    m.quic_passed["v1"] += 1
    m.quic_refused.update(["v1", "v2", "unknown"])
    m.quic_unreadable["not_quic"] += 1
    samples = [line for line in ctx.metrics.render(ctx).splitlines() if not line.startswith("#")]
    assert all(SAMPLE.match(line) for line in samples), samples
    assert 'tinspect_quic_connections_total{version="v1"} 2' in samples
    assert 'tinspect_quic_passed_total{version="v1"} 1' in samples
    assert 'tinspect_quic_refused_total{version="v2"} 1' in samples
    assert 'tinspect_quic_unreadable_total{reason="not_quic"} 1' in samples


class _Passes(Tap):
    """Sees every unit and passes it on: a chain with a tap to time."""

    def handle(self, unit, flow):
        return unit


def _metrics_calls(measured: bool, exchanges: int) -> Counter:
    """Calls into tinspect/ops/metrics.py while one connection carries ``exchanges`` requests
    and responses, each body in two reads, through a tap (after the flow opened, before it closes)."""
    net = Net([_Passes()])
    if measured:
        net.ctx.metrics.measure(net.ctx.chain)
    client = net.transparent()
    server = net.pending()[0].accept()
    calls: Counter = Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == metrics_module.__file__:
            calls[frame.f_code.co_name] += 1

    sys.setprofile(profile)
    try:
        for n in range(exchanges):
            client.send(b"POST /%d HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\n\r\nabc" % n)
            client.send(b"def")
            assert server.take().endswith(b"abcdef")
            server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
            server.send(b"llo")
            assert client.take().endswith(b"hello")
    finally:
        sys.setprofile(None)
    net.shutdown()
    return calls


def test_with_metrics_off_no_metrics_code_runs_per_unit():
    """Without --metrics, units through the chain and the HTTP/1.1 layer call nothing in tinspect.ops.metrics;
    with it, the tap timer and the payload counter run per unit and each exchange is timed."""
    assert _metrics_calls(False, 20) == Counter()
    on = _metrics_calls(True, 20)
    assert on["timed"] >= 20 * 6 and on["counted"] >= 20 * 6, on  # request, 2 chunks, end; each way
    assert on["response_started"] == on["response_ended"] == 20, on


def test_tap_time_is_a_histogram_per_tap_that_parses():
    """A measured chain times each tap's handle into tinspect_tap_seconds{tap}, cumulative buckets up to +Inf."""
    from prometheus_client.parser import text_string_to_metric_families

    ctx = ProxyContext(TapChain([_Passes()]), reactor=object())
    ctx.metrics.measure(ctx.chain)
    flow = Flow(("192.0.2.2", 1), ("198.51.100.2", 80), listener="t", mode="transparent")
    (route,) = ctx.chain.route(Request)
    for _ in range(3):
        route.handle(Request("GET", "/", authority="a.example"), flow)
    families = {f.name: f for f in text_string_to_metric_families(ctx.metrics.render(ctx))}
    family = families["tinspect_tap_seconds"]
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples if s.labels["tap"] == "_Passes"}
    assert samples[("tinspect_tap_seconds_count", None)] == samples[("tinspect_tap_seconds_bucket", "+Inf")] == 3
    assert 0 < samples[("tinspect_tap_seconds_sum", None)] < 1
    buckets = [v for (name, le), v in samples.items() if name.endswith("_bucket")]
    assert buckets == sorted(buckets)


def test_the_refused_reasons_name_the_limit_that_refused():
    """A client over --max-connections-per-client is refused and counted under reason="limit"."""
    net = Net(max_connections_per_client=1)
    first = net.transparent()
    second = net.transparent()
    assert second.transport.disconnected and not first.transport.disconnected
    samples = net.ctx.metrics.render(net.ctx).splitlines()
    assert 'tinspect_connections_refused_total{reason="limit"} 1' in samples
    net.shutdown()
