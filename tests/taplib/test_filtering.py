"""Filter rules (tinspect.taplib.filtering): parsing, first match wins, requests / responses / TLS."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.taplib.filtering import ALLOW, BLOCK, Rules, RulesError

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
    ("passthrough url=/x", "passthrough takes host= only"),
    ("passthrough host=a method=GET", "passthrough takes host= only"),
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
