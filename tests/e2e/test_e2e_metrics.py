"""End to end, metrics: a real proxy carries HTTP/1.1, h2, TLS, WebSocket, a refused
connect and requests its filter tap blocks, and its ``--metrics`` exposition, scraped over
HTTP, reads back right through prometheus_client's parser; the alert rules and the dashboard
in docs/ use only what it exposes.
"""

from __future__ import annotations

import json
import re
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DUAL, REPO, client_run
from tinspect.lab.netlab import SERVER4, SERVER_NAME, Nginx

pytestmark = pytest.mark.netns

METRICS = "http://127.0.0.1:9108/metrics"
RULES = REPO / "docs" / "prometheus" / "tinspect-rules.yml"
DASHBOARD = REPO / "docs" / "grafana" / "tinspect.json"


@pytest.fixture
def scraped(lab, proxy, tmp_path, pki):
    """The proxy's exposition after real exchanges of every kind, as prometheus_client families."""
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]))
    (web.root / "index.html").write_text("hello\n")
    web.start()
    ws = lab.spawn(lab.server, sys.executable, "-m", "tests.peers", "ws-echo", "8765", cwd=REPO)
    lab.wait_listening(lab.server, 80)
    lab.wait_listening(lab.server, 443)
    lab.wait_listening(lab.server, 8765, proc=ws)
    lab.tproxy(8080, dports=[80, 81, 443, 8765])  # nothing listens on 81: a refused connect
    rules = tmp_path / "rules.txt"
    rules.write_text("block host=blocked.test\nblock host=pinned.test tls=alert\n")
    proxy(["--listen", DUAL, "--metrics", "tcp:9108:interface=127.0.0.1", "--taps", "logger,filter",
           "--tap-option", f"filter.rules={rules}",
           "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"])],
          wait=[(8080, "tcp"), (9108, "tcp")])
    ours = str(pki["ours"])
    assert client_run(lab, "curl", "-sS", f"http://{SERVER4}/", f"http://{SERVER4}/") == "hello\nhello\n"
    assert client_run(lab, "curl", "-sS", "--http2", "--cacert", ours, f"https://{SERVER_NAME}/") == "hello\n"
    assert client_run(lab, "curl", "-sS", "--http1.1", "--cacert", ours, f"https://{SERVER_NAME}/") == "hello\n"
    refused = lab.exec(lab.client, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{SERVER4}:81/",
                       check=False)
    assert refused.stdout in ("502", "000"), refused.stdout
    blocked = lab.exec(lab.client, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: blocked.test",
                       f"http://{SERVER4}/")
    assert blocked.stdout == "403", blocked.stdout
    alert = lab.exec(lab.client, "curl", "-sS", "--cacert", ours, "--resolve", f"pinned.test:443:{SERVER4}",
                     "https://pinned.test/", check=False)
    assert alert.returncode != 0, alert.stdout  # refused with a TLS alert at the ClientHello
    out = client_run(lab, sys.executable, "-m", "tests.peers", "ws-ask", f"ws://{SERVER4}:8765/", "one")
    assert out == "one\n"
    text = lab.exec(lab.gateway, "curl", "-sS", "--max-time", "10", METRICS).stdout
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def series(family, suffix: str, **labels) -> dict[str, float]:
    """The samples of ``family`` named with ``suffix`` whose labels include ``labels``, keyed by ``le``
    (or "" where there is none)."""
    return {s.labels.get("le", ""): s.value for s in family.samples
            if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())}


def test_a_scrape_after_real_traffic_has_latency_tls_and_connect_failure_families(scraped):
    """Each protocol's exchanges fill cumulative latency buckets whose +Inf is the count; the TLS
    handshakes are counted by side, version and ALPN, and the refused connect by its reason."""
    _, families = scraped
    at_least = {"http1": 3, "h2": 1, "websocket": 1}  # two plain and one TLS HTTP/1.1 exchange
    for name in ("tinspect_http_response_first_byte_seconds", "tinspect_http_response_seconds"):
        family = families[name]
        assert family.type == "histogram"
        for protocol, least in at_least.items():
            buckets = series(family, "_bucket", protocol=protocol)
            counts = [buckets[le] for le in sorted(buckets, key=float)]
            assert counts == sorted(counts) and list(buckets)[-1] == "+Inf", (name, protocol, buckets)
            (count,) = series(family, "_count", protocol=protocol).values()
            assert buckets["+Inf"] == count >= least, (name, protocol, count)
            (total,) = series(family, "_sum", protocol=protocol).values()
            assert 0 < total < 60 * count
    handshakes = {tuple(s.labels[k] for k in ("side", "outcome", "version", "alpn")): s.value
                  for s in families["tinspect_tls_handshakes"].samples}
    assert handshakes.get(("client", "ok", "TLSv1.3", "h2"), 0) >= 1, handshakes
    assert handshakes.get(("client", "ok", "TLSv1.3", "http/1.1"), 0) >= 1, handshakes
    assert sum(n for (side, outcome, _, _), n in handshakes.items() if side == "upstream" and outcome == "ok") >= 2
    failures = series(families["tinspect_upstream_connect_failures"], "_total", reason="refused")
    assert failures[""] == 1, failures  # one refused request, one attempt (made at accept), counted once
    for family in families.values():  # Prometheus naming: counters end in _total, durations in _seconds
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


def test_the_alert_rules_and_the_dashboard_use_only_metrics_a_real_proxy_exposes(scraped):
    """Every tinspect_/process_ name in docs/prometheus and docs/grafana is sampled or declared by a real scrape."""
    text, _ = scraped
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for line in text.splitlines():  # a labelled counter with no series yet is still declared by its TYPE line
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exposed |= {name + "_bucket", name + "_sum", name + "_count"} if kind == "histogram" else {name}
    exposed.add("tinspect_workers_reporting")  # served by /metrics itself (tinspect.ops.metrics_http)
    rules = yaml.safe_load(RULES.read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert {rule.get("alert") for group in rules["groups"] for rule in group["rules"]} >= {
        "TinspectHighErrorRate", "TinspectSlowResponses", "TinspectRefusingConnections", "TinspectWorkerRestarts"}
    dashboard = json.loads(DASHBOARD.read_text())
    expressions += [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    expressions += [var["definition"] for var in dashboard["templating"]["list"] if "definition" in var]
    used = {name for expr in expressions for name in re.findall(r"\b(?:tinspect|process)_[a-z0-9_]+", expr)}
    assert used and used <= exposed, sorted(used - exposed)
    assert any("histogram_quantile(0.99" in expr for expr in expressions)


def test_taps_time_filter_decisions_and_process_usage_after_real_traffic(scraped):
    """Each tap's time per unit is a histogram by tap; the filter's decisions are counted by action and
    rule; the process gauges are in base units."""
    _, families = scraped
    taps = families["tinspect_tap_seconds"]
    assert taps.type == "histogram"
    for tap in ("logger", "filter"):
        buckets = series(taps, "_bucket", tap=tap)
        (count,) = series(taps, "_count", tap=tap).values()
        (total,) = series(taps, "_sum", tap=tap).values()
        assert buckets["+Inf"] == count >= 5 and 0 < total < count, (tap, buckets, total)
    decisions = {(s.labels["action"], s.labels["rule"]): s.value for s in families["tinspect_filter_decisions"].samples}
    assert decisions[("blocked", "rules.txt:1")] == 1, decisions
    assert decisions[("tls_refused", "rules.txt:2")] == 1, decisions
    assert decisions[("allowed", "default")] >= 5, decisions  # the plain, TLS and WebSocket requests
    (rss,) = [s.value for s in families["process_resident_memory_bytes"].samples]
    (fds,) = [s.value for s in families["process_open_fds"].samples]
    assert 10 * 2**20 < rss < 2**32 and 5 < fds < 1000, (rss, fds)
