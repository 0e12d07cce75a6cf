"""Filter rules (tinspect.taplib.filtering): parsing, first match wins, requests / responses / TLS, lists;
and the filter tap's reload, which loads them in a thread and swaps."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from taps.filter import FilterTap
from tinspect.flow import Flow
from tinspect.taplib.filtering import ALLOW, BLOCK, Rules, RulesError
from tinspect.units import Request, Response

RULES = """
# a comment
block       host=*.casino.example
passthrough host=*.bank.example
allow       host=intranet.example.org       # trailing comment
block       url=^https?://[^/]+/ads/ method=GET,HEAD
block       type=video/*
allow       type=video/* host=teach.example
block       host="*.example.net" url=/login
"""


@pytest.fixture
def rules():
    return Rules.parse(RULES, "rules.txt")


@pytest.mark.parametrize("method, host, url, action, line", [
    ("GET", "www.casino.example", "https://www.casino.example/", BLOCK, 3),
    ("GET", "casino.example", "https://casino.example/", ALLOW, None),  # the glob is the subdomains
    ("GET", "WWW.CASINO.EXAMPLE", "https://WWW.CASINO.EXAMPLE/", BLOCK, 3),
    ("GET", "news.example", "http://news.example/ads/1.js", BLOCK, 6),
    ("POST", "news.example", "http://news.example/ads/1.js", ALLOW, None),
    ("GET", "a.example.net", "https://a.example.net/login?x", BLOCK, 9),
    ("GET", "a.example.net", "https://a.example.net/", ALLOW, None),
    ("GET", "online.bank.example", "https://online.bank.example/", ALLOW, 4),  # passthrough: HTTP is allowed
])
def test_requests_first_match_wins(rules, method, host, url, action, line):
    decision = rules.request(method, host, url)
    assert decision.action == action
    assert (decision.rule.where if decision.rule else None) == (f"rules.txt:{line}" if line else None)


def test_responses_are_decided_by_media_type(rules):
    assert rules.response("GET", "v.example", "https://v.example/a.mp4", "video/mp4").action == BLOCK
    assert rules.response("GET", "v.example", "https://v.example/a.mp4", "Video/MP4; codecs=x").action == BLOCK
    assert rules.response("GET", "teach.example", "https://teach.example/a.mp4", "video/mp4").action == BLOCK
    assert rules.response("GET", "v.example", "https://v.example/", "text/html") is None
    assert rules.response("GET", "v.example", "https://v.example/", None) is None
    assert rules.wants_types


def test_tls_passthrough_needs_the_first_host_only_rule_to_say_so(rules):
    assert rules.tls_passthrough("online.bank.example").where == "rules.txt:4"
    assert rules.tls_passthrough("www.casino.example") is None  # blocked: intercept to show the page
    assert rules.tls_passthrough("elsewhere.example") is None


def test_default_block():
    r = Rules.parse("allow host=*.school.example\n", default=BLOCK)
    assert r.request("GET", "a.school.example", "https://a.school.example/").action == ALLOW
    decision = r.request("GET", "b.example", "https://b.example/")
    assert decision.action == BLOCK and decision.rule is None and "default" in decision.why


@pytest.mark.parametrize("text, words", [
    ("deny host=x", "unknown action 'deny'"),
    ("block host", "is not a condition"),
    ("block colour=red", "is not a condition"),
    ("block host=a host=b", "host= given twice"),
    ("block url=(", "not a regular expression"),
    ("passthrough url=/x", "passthrough takes host=, list=, domains=, group= and time= only"),
    ("passthrough host=a method=GET", "passthrough takes host=, list=, domains=, group= and time= only"),
    ('block host="unterminated', "No closing quotation"),
    ("block host=", "host= needs a value"),
])
def test_mistakes_name_the_line(text, words):
    with pytest.raises(RulesError) as e:
        Rules.parse("# fine\n" + text, "r.txt")
    assert str(e.value).startswith("r.txt:2: ") and words in str(e.value)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_rules_error(text):
    try:
        Rules.parse(text)
    except RulesError:
        pass


def test_a_trailing_dot_does_not_escape_a_rule(rules):
    assert rules.request("GET", "www.casino.example.", "https://www.casino.example./").action == BLOCK
    assert rules.tls_passthrough("online.bank.example.") is not None


# -- lists -------------------------------------------------------------------------------------------

@pytest.fixture
def lists(tmp_path):
    """A blocklist tree beside the rules file: categories games and bank, and a plain ads.txt."""
    for category, domains, urls in [("games", "casino.example\npoker.example\n", "portal.example/play\n"),
                                    ("bank", "bank.example\n", "mixed.example/\n")]:
        (tmp_path / "blacklists" / category).mkdir(parents=True)
        (tmp_path / "blacklists" / category / "domains").write_text(domains)
        (tmp_path / "blacklists" / category / "urls").write_text(urls)
    (tmp_path / "ads.txt").write_text("# ads\nads.example\n")

    def parse(text):
        return Rules.parse(text, str(tmp_path / "rules.txt"))

    return parse


def test_a_rule_names_category_directories_and_plain_lists(lists):
    """list= and domains=: the host, a parent domain or a URL prefix listed; the decision names the list."""
    rules = lists("allow host=ok.casino.example\n"
                  "block list=blacklists/games,blacklists/bank\n"
                  "block domains=ads.txt method=GET\n")
    decision = rules.request("GET", "www.casino.example", "https://www.casino.example/")
    assert (decision.action, decision.rule.where, decision.category) == (BLOCK, rules.rules[1].where, "games")
    assert decision.why.endswith("block list=blacklists/games,blacklists/bank (list games)")
    assert rules.request("GET", "bank.example", "https://bank.example/").category == "bank"
    assert rules.request("GET", "portal.example", "http://portal.example/play/1").category == "games"
    assert rules.request("GET", "portal.example", "http://portal.example/news").action == ALLOW
    assert rules.request("GET", "ok.casino.example", "https://ok.casino.example/").action == ALLOW  # first match
    assert rules.request("GET", "x.ads.example", "http://x.ads.example/").category == "ads"
    assert rules.request("POST", "x.ads.example", "http://x.ads.example/").action == ALLOW  # and method=GET
    assert rules.request("CONNECT", "portal.example", "portal.example:443").action == ALLOW  # no path, no URL
    default = rules.request("GET", "elsewhere.example", "https://elsewhere.example/")
    assert default.category is None and default.why == "no rule matched: the default"


def test_a_list_named_twice_is_read_once(lists):
    """Two rules naming one list share it; Rules.lists has each list once."""
    rules = lists("allow list=blacklists/games method=HEAD\nblock list=blacklists/games\nblock domains=ads.txt\n")
    assert rules.rules[0].lists[0] is rules.rules[1].lists[0]
    assert sorted(lst.name for lst in rules.lists) == ["ads", "games"]


def test_responses_by_type_and_list(lists):
    """A type= rule with a list decides responses from listed hosts only."""
    rules = lists("block type=video/* list=blacklists/games\n")
    assert rules.response("GET", "casino.example", "http://casino.example/a", "video/mp4").category == "games"
    assert rules.response("GET", "school.example", "http://school.example/a", "video/mp4") is None


def test_tls_passthrough_by_list(lists):
    """passthrough list=: by domains entries; a block list's host, or one with urls entries, is decrypted."""
    rules = lists("block list=blacklists/games\npassthrough list=blacklists/bank\npassthrough host=*\n")
    assert rules.tls_passthrough("online.bank.example").where == rules.rules[1].where
    assert rules.tls_passthrough("www.casino.example") is None  # blocked: intercept to show the page
    assert rules.tls_passthrough("portal.example") is None  # its /play is blocked: the path must be seen
    assert rules.tls_passthrough("mixed.example").where == rules.rules[2].where  # bank's urls: not passthrough
    assert rules.tls_passthrough("elsewhere.example").where == rules.rules[2].where


@pytest.mark.parametrize("text, words", [
    ("block list=blacklists/nothing", "cannot read it: No such file or directory"),
    ("block list=ads.txt", "is not a directory (a plain list of domains goes in domains=)"),
    ("block list=.", "holds neither a domains nor a urls file"),
    ("block domains=blacklists/games", "cannot read it: Is a directory"),
    ("passthrough list=blacklists/bank url=/x", "passthrough takes host=, list=, domains=, group= and time= only"),
])
def test_a_list_that_cannot_be_read_names_the_line(lists, text, words):
    """A missing or misplaced list is a RulesError naming the rules file's line and the list."""
    with pytest.raises(RulesError) as e:
        lists("# fine\n" + text)
    assert ":2: " in str(e.value) and words in str(e.value)


# -- who and when ------------------------------------------------------------------------------------

SCHOOL = """
timezone Europe/London
group   tablets 192.0.2.200/29 ca=no
group   pupils  192.0.2.0/24,2001:db8:10::/64
group   staff   198.51.100.0/26
window  school  mon-fri 08:00-16:00
allow   host=*.school.example
block   group=pupils,tablets time=school list=blacklists/games,blacklists/social
block   group=staff domains=malware.txt
block   host=pinned.example tls=alert
"""

MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc).timestamp()  # 10:00 GMT, school hours
MONDAY_17 = datetime(2026, 12, 7, 17, 0, tzinfo=timezone.utc).timestamp()
SATURDAY_10 = datetime(2026, 12, 12, 10, 0, tzinfo=timezone.utc).timestamp()


@pytest.fixture
def school(tmp_path):
    """The school's rules beside category directories games and social and a plain malware.txt."""
    for category, domain in [("games", "casino.example"), ("social", "chat.example")]:
        (tmp_path / "blacklists" / category).mkdir(parents=True)
        (tmp_path / "blacklists" / category / "domains").write_text(domain + "\n")
    (tmp_path / "malware.txt").write_text("evil.example\n")
    return Rules.parse(SCHOOL, str(tmp_path / "rules.txt"))


@pytest.mark.parametrize("client, now, host, action, category, group", [
    ("192.0.2.10", MONDAY_10, "www.casino.example", BLOCK, "games", "pupils"),
    ("2001:db8:10::7", MONDAY_10, "chat.example", BLOCK, "social", "pupils"),
    ("192.0.2.201", MONDAY_10, "chat.example", BLOCK, "social", "tablets"),
    ("192.0.2.10", MONDAY_17, "www.casino.example", ALLOW, None, "pupils"),  # after school
    ("192.0.2.10", SATURDAY_10, "www.casino.example", ALLOW, None, "pupils"),
    ("192.0.2.10", MONDAY_10, "evil.example", ALLOW, None, "pupils"),  # malware.txt is the staff's rule
    ("198.51.100.5", MONDAY_10, "www.casino.example", ALLOW, None, "staff"),
    ("198.51.100.5", MONDAY_10, "evil.example", BLOCK, "malware", "staff"),
    ("203.0.113.9", MONDAY_10, "www.casino.example", ALLOW, None, None),  # in no group
    ("192.0.2.10", MONDAY_10, "games.school.example", ALLOW, None, "pupils"),  # first match wins
])
def test_rules_by_group_and_window(school, client, now, host, action, category, group):
    """Pupils (and tablets) lose games and social in school hours, staff only malware; first match wins."""
    decision = school.request("GET", host, f"https://{host}/", client=client, now=now)
    assert (decision.action, decision.category, decision.group) == (action, category, group)


def test_the_client_hello_decides_blocks_pages_alerts_and_passthrough(school):
    """hello(): a blocked host is refused at the ClientHello; an alert for ca=no groups and tls=alert rules."""
    pupil = school.hello("www.casino.example", "192.0.2.10", MONDAY_10)
    assert (pupil.action, pupil.alert, pupil.category, pupil.group) == (BLOCK, False, "games", "pupils")
    tablet = school.hello("chat.example", "192.0.2.201", MONDAY_10)
    assert (tablet.action, tablet.alert, tablet.group) == (BLOCK, True, "tablets")
    pinned = school.hello("pinned.example", "198.51.100.5", MONDAY_10)
    assert (pinned.action, pinned.alert) == (BLOCK, True)
    assert school.hello("www.casino.example", "192.0.2.10", MONDAY_17) is None
    assert school.hello("www.casino.example", "198.51.100.5", MONDAY_10) is None


def test_a_block_at_the_client_hello_waits_when_an_earlier_rule_may_allow_a_request():
    """allow url=... before block host=...: the requests decide, not the ClientHello; block url= rules do not
    stand in the way; default=block blocks at the ClientHello too."""
    rules = Rules.parse("block url=/ads/\nblock host=a.example\nallow host=b.example url=/ok\nblock host=b.example\n")
    assert rules.hello("a.example").action == BLOCK
    assert rules.hello("b.example") is None
    assert rules.request("GET", "b.example", "https://b.example/ok").action == ALLOW
    assert Rules.parse("allow host=c.example\n", default=BLOCK).hello("d.example").action == BLOCK
    assert Rules.parse("allow host=c.example\n", default=BLOCK).hello("c.example") is None
    assert Rules.parse("allow url=/x\n", default=BLOCK).hello("d.example") is None


def test_passthrough_may_be_for_a_group_only():
    """passthrough group=staff: staff's TLS to the bank is relayed, pupils' is intercepted."""
    rules = Rules.parse("group staff 198.51.100.0/24\npassthrough group=staff host=*.bank.example\n")
    assert rules.tls_passthrough("online.bank.example", "198.51.100.4") is not None
    assert rules.tls_passthrough("online.bank.example", "192.0.2.4") is None


@pytest.mark.parametrize("text, words", [
    ("block group=pupils", "no group 'pupils' is defined"),
    ("block time=school", "no window 'school' is defined"),
    ("group g 192.0.2.0/24\ngroup g 192.0.2.0/24", "group g is defined twice"),
    ("group g", "group needs a name and what it holds"),
    ("window w mon-fri", "windows need a timezone line"),
    ("timezone Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("timezone UTC\ntimezone UTC", "a second timezone"),
    ("timezone", "timezone takes one IANA name"),
    ("window w funday", "'funday' is neither days"),
    ("group g 192.0.2.0/24 ca=maybe", "ca=yes or ca=no"),
    ("allow host=x tls=alert", "tls= is for block rules"),
    ("block host=x tls=loud", "tls= is for block rules"),
])
def test_definition_mistakes_name_the_line(text, words):
    with pytest.raises(RulesError) as e:
        Rules.parse("# fine\n" + text, "r.txt")
    assert str(e.value).startswith("r.txt:") and words in str(e.value), str(e.value)


# -- the filter tap's reload -------------------------------------------------------------------------

FLOW = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))


def ask(tap, host):
    """The status the tap answers a GET for http://HOST/ with (200: passed on to the server)."""
    out = tap.handle(Request("GET", "/", authority=host), FLOW)
    return out.status if isinstance(out, Response) else 200


@pytest.fixture
def gated(monkeypatch):
    """Rules.parse waits for ``gate`` (in the reload's thread); ``entered`` is set when it starts waiting."""
    entered, gate, calls = threading.Event(), threading.Event(), []
    parse = Rules.parse

    def slow(cls, *args, **kwargs):
        calls.append(threading.current_thread())
        entered.set()
        assert gate.wait(10)
        return parse(*args, **kwargs)

    monkeypatch.setattr(Rules, "parse", classmethod(slow))
    return entered, gate, calls


@pytest_twisted.ensureDeferred
async def test_reload_decides_with_the_old_rules_until_the_new_ones_are_built(tmp_path, lists, gated, log_events):
    """SIGHUP's reload reads rules and lists in a thread; requests meanwhile get the old rules, then the new."""
    rules = tmp_path / "rules.txt"
    rules.write_text("block domains=ads.txt\n")
    entered, gate, calls = gated
    gate.set()
    tap = FilterTap(str(rules))
    gate.clear()
    entered.clear()
    assert (ask(tap, "ads.example"), ask(tap, "casino.example")) == (403, 200)
    rules.write_text("block list=blacklists/games\n")
    done = tap.reload()
    assert entered.wait(10)
    assert calls[-1] is not threading.current_thread()  # not in the reactor's thread
    assert (ask(tap, "ads.example"), ask(tap, "casino.example")) == (403, 200)  # served meanwhile, old rules
    gate.set()
    await done
    assert (ask(tap, "ads.example"), ask(tap, "www.casino.example")) == (200, 403)
    reloaded = [e for e in log_events if "reloaded" in e.get("log_format", "")]
    assert len(reloaded) == 1 and reloaded[0]["entries"] == 3  # two domains and a URL


@pytest_twisted.ensureDeferred
async def test_a_list_that_fails_to_load_keeps_the_old_rules(tmp_path, lists, log_events):
    """A list gone missing: the reload is refused, logged with the line and the list; the old rules stay."""
    rules = tmp_path / "rules.txt"
    rules.write_text("block list=blacklists/games\n")
    tap = FilterTap(str(rules))
    for name in ("domains", "urls"):
        (tmp_path / "blacklists" / "games" / name).unlink()
    await tap.reload()
    assert ask(tap, "casino.example") == 403
    (refused,) = [e for e in log_events if "not reloaded" in e.get("log_format", "")]
    assert "rules.txt:1: list=" in refused["error"] and "holds neither a domains nor a urls file" in refused["error"]


@pytest_twisted.ensureDeferred
async def test_reloads_asked_for_during_a_load_make_one_more_load(tmp_path, gated):
    """Two SIGHUPs during a load: one more load after it, which sees the last file; every caller is told."""
    entered, gate, calls = gated
    rules = tmp_path / "rules.txt"
    rules.write_text("allow host=*\n")
    gate.set()
    tap = FilterTap(str(rules))
    gate.clear()
    entered.clear()
    first = tap.reload()
    assert entered.wait(10)
    rules.write_text("block host=a.example\n")
    second, third = tap.reload(), tap.reload()
    gate.set()
    await first
    await second
    await third
    assert len(calls) == 3  # start, the first reload, and one for both later ones
    assert ask(tap, "a.example") == 403
