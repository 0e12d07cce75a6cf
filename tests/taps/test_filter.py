"""The filter tap (taps/filter.py) for a school: decisions by group and time, the ClientHello verdict
(page or alert), the block log's JSON lines, and the block page naming category and rule."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import pytest_twisted

from taps.filter import FilterTap
from tinspect.flow import Flow
from tinspect.units import Request, Response

RULES = """
timezone Europe/London
group   tablets 192.0.2.200/29 ca=no
group   pupils  192.0.2.0/24
group   staff   198.51.100.0/24
window  school  mon-fri 08:00-16:00
block group=pupils,tablets time=school list=blacklists/games
block group=staff domains=malware.txt
block host=pinned.example tls=alert
block host=<x>.example url=/a
"""
MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc).timestamp()
MONDAY_17 = datetime(2026, 12, 7, 17, 0, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def school(tmp_path):
    """A FilterTap on the school's rules, its clock at Monday 10:00, its block log in blocks.jsonl."""
    (tmp_path / "blacklists" / "games").mkdir(parents=True)
    (tmp_path / "blacklists" / "games" / "domains").write_text("casino.example\n")
    (tmp_path / "malware.txt").write_text("evil.example\n")
    (tmp_path / "rules.txt").write_text(RULES)

    def make(**options):
        options.setdefault("log", str(tmp_path / "blocks.jsonl"))
        tap = FilterTap(str(tmp_path / "rules.txt"), **options)
        tap.clock = lambda: MONDAY_10
        return tap

    return make


def flow(client):
    return Flow((client, 40000), ("203.0.113.5", 443))


def block_log(tmp_path):
    return [json.loads(line) for line in (tmp_path / "blocks.jsonl").read_text().splitlines()]


def test_the_client_hello_verdict_is_page_alert_or_nothing(school, tmp_path):
    """Pupils get the page (they trust the CA), tablets (ca=no), tls=alert rules and hosts the proxy would not
    intercept get an alert; staff and after-school pupils are not blocked at the ClientHello."""
    tap = school()
    assert tap.tls_block("www.casino.example", flow("192.0.2.10"), True) == "page"
    assert tap.tls_block("www.casino.example", flow("192.0.2.10"), False) == "alert"  # a --passthrough host
    assert tap.tls_block("www.casino.example", flow("192.0.2.201"), True) == "alert"  # tablets: ca=no
    assert tap.tls_block("pinned.example", flow("198.51.100.9"), True) == "alert"  # tls=alert
    assert tap.tls_block("www.casino.example", flow("198.51.100.9"), True) is None  # staff
    tap.clock = lambda: MONDAY_17
    assert tap.tls_block("www.casino.example", flow("192.0.2.10"), True) is None  # after school
    alerts = block_log(tmp_path)
    assert [(r["client"], r["host"], r["how"]) for r in alerts] == [
        ("192.0.2.10", "www.casino.example", "tls-alert"), ("192.0.2.201", "www.casino.example", "tls-alert"),
        ("198.51.100.9", "pinned.example", "tls-alert")]
    assert alerts[1]["group"] == "tablets" and alerts[1]["category"] == "games" and alerts[1]["url"] is None


def test_every_block_is_one_json_line_and_the_page_names_category_and_rule(school, tmp_path):
    """A pupil's blocked request: the page names the category and the rule (HTML-escaped); the block log
    has time (ISO 8601 UTC), flow, client, host, URL, rule, category, group; allowed requests write nothing."""
    tap = school()
    req = Request("GET", "/play?x=<1>", authority="www.casino.example", scheme="https")
    page = tap.handle(req, flow("192.0.2.10"))
    assert isinstance(page, Response) and page.status == 403
    body = page.body.decode()
    assert "Category: <code>games</code>" in body
    assert "rules.txt:7: block group=pupils,tablets time=school list=blacklists/games" in body
    assert "/play?x=&lt;1&gt;" in body and "<1>" not in body
    assert tap.handle(Request("GET", "/", authority="www.casino.example"), flow("198.51.100.9")).method == "GET"
    other = tap.handle(Request("GET", "/a", authority="<x>.example"), flow("198.51.100.9"))
    assert "&lt;x&gt;.example url=/a" in other.body.decode() and "Category: <code>-</code>" in other.body.decode()
    first, second = block_log(tmp_path)
    assert datetime.fromisoformat(first.pop("time").replace("Z", "+00:00")).tzinfo is not None
    assert first == {"flow": first["flow"], "client": "192.0.2.10", "host": "www.casino.example",
                     "url": "https://www.casino.example/play?x=<1>", "group": "pupils", "category": "games",
                     "rule": f"{tmp_path / 'rules.txt'}:7: block group=pupils,tablets time=school "
                             "list=blacklists/games", "how": "page"}
    assert (second["group"], second["category"], second["host"]) == ("staff", None, "<x>.example")


@pytest_twisted.ensureDeferred
async def test_a_reload_reopens_the_block_log(school, tmp_path):
    """SIGHUP's reload reopens the log: after logrotate's rename the next block goes to a new file."""
    tap = school()
    tap.handle(Request("GET", "/", authority="casino.example"), flow("192.0.2.10"))
    (tmp_path / "blocks.jsonl").rename(tmp_path / "blocks.jsonl.1")
    await tap.reload()
    tap.handle(Request("GET", "/", authority="evil.example"), flow("198.51.100.9"))
    assert [r["host"] for r in block_log(tmp_path)] == ["evil.example"]
    assert "casino.example" in (tmp_path / "blocks.jsonl.1").read_text()


def test_a_block_log_that_cannot_be_written_is_said_once_and_blocks_go_on(school, log_events):
    """/dev/full: the request is still blocked; one error is logged however many blocks fail."""
    tap = school(log="/dev/full")
    for _ in range(3):
        assert tap.handle(Request("GET", "/", authority="casino.example"), flow("192.0.2.10")).status == 403
    errors = [e for e in log_events if "cannot write the block log" in e.get("log_format", "")]
    assert len(errors) == 1 and errors[0]["error"] == "No space left on device"


@pytest.mark.parametrize("options, message", [
    ({"log_max_bytes": "1M"}, "log_max_bytes and log_keep must be numbers"),
    ({"log_keep": "-1"}, "cannot be negative"),
])
def test_bad_block_log_options_stop_the_start(school, options, message):
    with pytest.raises(ValueError, match=message):
        school(**options)


def test_a_block_log_that_cannot_be_opened_stops_the_start(tmp_path):
    (tmp_path / "rules.txt").write_text("block host=x\n")
    with pytest.raises(ValueError, match="cannot open the block log: No such file or directory"):
        FilterTap(str(tmp_path / "rules.txt"), log=str(tmp_path / "missing" / "blocks.jsonl"))


def test_a_block_states_the_verdict_on_the_flow(school):
    """A blocked request marks its flow ``blocked`` for the console; an allowed one leaves it ``None``."""
    tap = school()
    pupil, staff = flow("192.0.2.10"), flow("198.51.100.9")
    tap.handle(Request("GET", "/", authority="www.casino.example"), pupil)
    tap.handle(Request("GET", "/", authority="www.casino.example"), staff)
    assert (pupil.verdict, staff.verdict) == ("blocked", None)


def test_decisions_are_counted_by_action_rule_and_category_and_parse(school):
    """Allowed, blocked, passthrough and TLS-refused decisions reach --metrics as one labelled counter family."""
    from prometheus_client.parser import text_string_to_metric_families

    from tinspect.chain import TapChain
    from tinspect.context import ProxyContext

    tap = school()
    pupil, staff = flow("192.0.2.10"), flow("198.51.100.9")
    tap.handle(Request("GET", "/", authority="www.casino.example"), pupil)  # blocked, rules.txt:7, games
    tap.handle(Request("GET", "/", authority="www.casino.example"), pupil)
    tap.handle(Request("GET", "/", authority="www.casino.example"), staff)  # allowed by the default
    assert tap.tls_block("pinned.example", staff, True) == "alert"  # tls_refused, rules.txt:9
    ctx = ProxyContext(TapChain([tap]), reactor=object())
    (family,) = [f for f in text_string_to_metric_families(ctx.metrics.render(ctx)) if f.name.startswith("tinspect_filter")]
    assert family.type == "counter" and family.name == "tinspect_filter_decisions"
    got = {(s.labels["action"], s.labels["rule"], s.labels["category"]): s.value for s in family.samples}
    assert got == {("blocked", "rules.txt:7", "games"): 2, ("allowed", "default", "none"): 1,
                   ("tls_refused", "rules.txt:9", "none"): 1}


def test_a_passthrough_decision_is_counted(tmp_path):
    """A TLS connection the rules pass through counts under its rule as passthrough."""
    (tmp_path / "rules.txt").write_text("passthrough host=bank.example\n")
    tap = FilterTap(str(tmp_path / "rules.txt"))
    assert tap.tls_passthrough("bank.example", flow("192.0.2.10"))
    assert list(tap.metrics()) == [("tinspect_filter_decisions_total", "counter",
                                    "Filter tap decisions, by action, rule and category.", 1,
                                    {"action": "passthrough", "rule": "rules.txt:1", "category": "none"})]


@pytest_twisted.ensureDeferred
async def test_a_reload_starts_the_decision_counts_afresh(school, tmp_path):
    """After a reload rules.txt:7 may be another rule: the counts of the old file's lines are gone."""
    tap = school()
    tap.handle(Request("GET", "/", authority="www.casino.example"), flow("192.0.2.10"))  # blocked, rules.txt:7
    (tmp_path / "rules.txt").write_text(RULES.replace("block group=pupils", "allow group=pupils"))
    await tap.reload()
    tap.handle(Request("GET", "/", authority="www.casino.example"), flow("192.0.2.10"))  # allowed, rules.txt:7
    assert {labels["action"]: n for *_, n, labels in tap.metrics()} == {"allowed": 1}


@pytest_twisted.ensureDeferred
async def test_a_refused_reload_keeps_the_decision_counts(school, tmp_path):
    """A rules file with a mistake leaves the old rules deciding, and their counts stand."""
    tap = school()
    tap.handle(Request("GET", "/", authority="www.casino.example"), flow("192.0.2.10"))
    (tmp_path / "rules.txt").write_text("frobnicate host=x\n")
    await tap.reload()
    assert [n for *_, n, _ in tap.metrics()] == [1]
