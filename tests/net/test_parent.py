"""Sans-IO parent proxies: URLs, rules, the CONNECT reply and the SOCKS5 dialogue."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.net.parent import (
    ConnectReplyReader,
    ParentProxy,
    ParentRefused,
    ParentRules,
    Socks5Dialogue,
    connect_request,
    proxy_fields,
)

SQUID = "http://alice:s3cr%40t@198.51.100.2:3128"


def test_url_with_credentials_is_parsed_and_masked():
    """Credentials are decoded, and neither str nor repr shows the password."""
    p = ParentProxy.parse(SQUID)
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("http", "198.51.100.2", 3128, "alice", "s3cr@t")
    assert str(p) == "http://alice:***@198.51.100.2:3128"
    assert "s3cr" not in repr(p) and "s3cr" not in p.display


def test_default_ports_per_scheme():
    """A URL without a port takes its scheme's usual one."""
    assert ParentProxy.parse("socks5h://[2001:db8::1]").address == ("2001:db8::1", 1080)
    assert ParentProxy.parse("https://parent.example").port == 443
    assert ParentProxy.parse("socks5h://[2001:db8::1]").display == "socks5h://[2001:db8::1]:1080"


@pytest.mark.parametrize("url", ["ftp://u:secret@x:21", "http://u:secret@:3128", "http://u:secret@x:3128/path",
                                 "http://u:secret@x:99999"])
def test_bad_urls_are_refused_without_the_password(url):
    """A bad URL gets an error that says why and never shows the password."""
    with pytest.raises(ValueError) as e:
        ParentProxy.parse(url)
    assert "secret" not in str(e.value)


def test_basic_credentials_for_http_parents():
    """An HTTP parent's CONNECT carries the user's Basic credentials."""
    req = connect_request(ParentProxy.parse(SQUID), "example.org", 443)
    assert req.startswith(b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n")
    assert b"Proxy-Authorization: Basic YWxpY2U6czNjckB0\r\n\r\n" in req
    assert b"[2001:db8::5]:443" in connect_request(ParentProxy.parse("http://p"), "2001:db8::5", 443)


def test_rules_first_match_wins_and_direct():
    """Rules are tried in order; 'direct' exempts, and unmatched destinations go direct."""
    rules = ParentRules([
        "direct for intranet.corp.example,10.1.0.0/16",
        "socks5h://198.51.100.3 for *.corp.example,10.0.0.0/8",
        "http://198.51.100.2:3128 for *.example.org,203.0.113.7",
    ])
    assert rules.choose("intranet.corp.example") is None
    assert rules.choose("10.1.2.3") is None
    assert rules.choose("wiki.corp.example").scheme == "socks5h"
    assert rules.choose("10.9.9.9").scheme == "socks5h"
    assert rules.choose("WWW.Example.Org.").port == 3128
    assert rules.choose("203.0.113.7").port == 3128
    assert rules.choose("example.net") is None
    assert rules.choose("corp.example") is None  # *.corp.example is the names below it


def test_rule_without_patterns_matches_everything():
    """A bare URL is a catch-all rule."""
    rules = ParentRules(["direct for 192.0.2.0/24", "http://p:3128"])
    assert rules.choose("192.0.2.9") is None
    assert rules.choose("anything.example").host == "p"
    assert not ParentRules(["direct"]) and not ParentRules()


@pytest.mark.parametrize("spec", ["http://u:secret@p for", "http://u:secret@p to x", "direct for 10.0.0.0/33", ""])
def test_bad_rules_are_refused(spec):
    """A rule that cannot be parsed is refused, its password masked."""
    with pytest.raises(ValueError) as e:
        ParentRules([spec])
    assert "secret" not in str(e.value)


def test_connect_reply_200_opens_the_tunnel_in_pieces():
    """The head may come in several reads; bytes after it are the tunnel's."""
    r = ConnectReplyReader("http://p:3128")
    assert r.feed(b"HTTP/1.1 200 Connection est") is None
    assert r.feed(b"ablished\r\nVia: squid\r\n\r\nSSH-2.0") == b"SSH-2.0"


@pytest.mark.parametrize("head,answer,auth", [
    (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", "407 Proxy Authentication Required", True),
    (b"HTTP/1.0 403 Forbidden\r\nX: y\r\n\r\n", "403 Forbidden", False),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP reply", False),
])
def test_connect_refusals_name_the_answer(head, answer, auth):
    """A non-2xx reply or nonsense is a refusal naming the parent and what it said."""
    with pytest.raises(ParentRefused) as e:
        ConnectReplyReader("http://u:***@p:3128").feed(head)
    assert answer in str(e.value) and "http://u:***@p:3128" in str(e.value)
    assert e.value.auth is auth


def test_connect_reply_too_long_is_refused():
    """A parent that never ends its head is cut off at 16 KiB."""
    with pytest.raises(ParentRefused):
        ConnectReplyReader("p").feed(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 4000)


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_connect_reader_never_fails_otherwise(data, cut):
    """Any bytes, split anywhere, give None, the rest, or a ParentRefused."""
    r = ConnectReplyReader("p")
    try:
        r.feed(data[:cut])
        r.feed(data[cut:])
    except ParentRefused:
        pass


def _socks(url="socks5h://198.51.100.3", host="example.org", port=443):
    return Socks5Dialogue(ParentProxy.parse(url), host, port)


def test_socks5_without_auth_sends_the_name():
    """socks5h without a user: greeting, then CONNECT with the domain name."""
    d = _socks()
    assert d.start() == b"\x05\x01\x00"
    out, rest = d.feed(b"\x05\x00")
    assert out == b"\x05\x01\x00\x03\x0bexample.org\x01\xbb" and rest is None
    assert d.feed(b"\x05\x00\x00\x01" + bytes(4)) == (b"", None)
    assert d.feed(b"\x00\x00data") == (b"", b"data")


def test_socks5_with_password_and_ipv6_destination():
    """With a user: RFC 1929 sub-negotiation, then an IPv6 address."""
    d = _socks("socks5://bob:pw@198.51.100.3:1080", "2001:db8::5", 80)
    assert d.start() == b"\x05\x02\x00\x02"
    assert d.feed(b"\x05\x02")[0] == b"\x01\x03bob\x02pw"
    out, rest = d.feed(b"\x01\x00")
    assert out == b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000005") + b"\x00\x50"
    assert d.feed(b"\x05\x00\x00\x03\x04abcd\x00\x50") == (b"", b"")


@pytest.mark.parametrize("replies,answer,auth", [
    ([b"\x05\x02", b"\x01\x01"], "authentication failed", True),
    ([b"\x05\xff"], "no acceptable authentication method", True),
    ([b"\x05\x02", b"\x01\x00", b"\x05\x05\x00\x01" + bytes(6)], "SOCKS5 reply 5: connection refused", False),
    ([b"\x04\x5a"], "not SOCKS5", False),
])
def test_socks5_refusals(replies, answer, auth):
    """Each SOCKS5 refusal names the parent (masked) and the reason."""
    d = _socks("socks5://bob:pw@198.51.100.3")
    d.start()
    with pytest.raises(ParentRefused) as e:
        for r in replies:
            d.feed(r)
    assert answer in str(e.value) and "socks5://bob:***@198.51.100.3:1080" in str(e.value)
    assert e.value.auth is auth and "pw@" not in str(e.value)


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=40))
def test_socks5_dialogue_never_fails_otherwise(data, cut):
    """Any reply bytes, split anywhere, give output, the rest, or a ParentRefused."""
    d = _socks("socks5://bob:pw@198.51.100.3")
    d.start()
    try:
        d.feed(data[:cut])
        d.feed(data[cut:])
    except (ParentRefused, RuntimeError):
        pass


def test_proxy_fields_carry_basic_credentials_only_with_a_user():
    """Absolute-form requests to a parent carry Proxy-Authorization only when it has a user."""
    assert ParentProxy.parse(SQUID).takes_absolute_form
    assert not ParentProxy.parse("socks5h://p").takes_absolute_form
    assert proxy_fields(ParentProxy.parse(SQUID)) == [(b"Proxy-Authorization", b"Basic YWxpY2U6czNjckB0")]
    assert proxy_fields(ParentProxy.parse("http://p:3128")) == []
