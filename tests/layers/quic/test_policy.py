"""The QUIC policy core: holding first datagrams, the pass/refuse decision, h3 stripped from Alt-Svc."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taps.filter import FilterTap
from tests.layers.quic.test_initial import flight
from tests.layers.quic.vectors import V1_CLIENT_INITIAL, V2_CLIENT_INITIAL
from tinspect.chain import Tap, TapChain
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.layers.quic.initial import VERSION_2, QuicHello
from tinspect.layers.quic.policy import PASS, REFUSE, QuicPolicy, QuicStart, Unreadable, version_name, without_h3
from tinspect.units import Request

FLOW = Flow(("192.0.2.2", 5000), ("198.51.100.2", 443), listener="t", mode="transparent", transport="udp",
            protocol="quic")


class Says(Tap):
    """A tap with a fixed opinion on QUIC."""

    def __init__(self, answer, name="says"):
        self.answer = answer
        self.name = name
        self.asked = []

    def quic_decision(self, name, flow):
        self.asked.append(name)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


# -- QuicStart ---------------------------------------------------------------


def test_start_holds_a_three_datagram_hello_until_its_last_datagram():
    """Each datagram is held; the hello comes with the third, and all three are kept in order for replay."""
    start = QuicStart()
    packets = flight(3)
    assert [start.feed(p) for p in packets[:2]] == [None, None]
    hello = start.feed(packets[2])
    assert isinstance(hello, QuicHello) and hello.hello.sni == "server.test"
    assert start.held == list(packets)


def test_start_reads_v2_test_vector():
    """RFC 9369's client Initial reads as v2 in one datagram."""
    hello = QuicStart().feed(V2_CLIENT_INITIAL)
    assert isinstance(hello, QuicHello) and hello.version == VERSION_2 and hello.hello.sni == "example.com"


@pytest.mark.parametrize("datagram, kind", [
    (b"\x40" + bytes(60), "not_quic"),
    (b"\xc0\x1a\x2a\x3a\x4a" + V1_CLIENT_INITIAL[5:], "unknown_version"),
    (b"\xc0\x00\x00\x00\x00\x08" + bytes(8) + b"\x00\x00\x00\x00\x01", "version_negotiation"),
])
def test_start_gives_up_at_once_on_what_is_not_a_readable_start(datagram, kind):
    """A short header, an unknown version or a Version Negotiation packet is unreadable on the first datagram."""
    result = QuicStart().feed(datagram)
    assert isinstance(result, Unreadable) and result.kind == kind, result


def test_start_bounds_datagrams_and_bytes_and_time():
    """Datagrams that never complete a hello end the wait at the count or byte bound, or when the caller's timer fires."""
    truncated = V1_CLIENT_INITIAL[:100]  # under 1200 bytes: skipped, as a server skips it
    by_count = QuicStart(max_datagrams=3)
    assert [by_count.feed(truncated) for _ in range(2)] == [None, None]
    assert by_count.feed(truncated).kind == "too_many_datagrams"
    by_bytes = QuicStart(max_bytes=250)
    assert by_bytes.feed(truncated) is None and by_bytes.feed(truncated) is None
    assert by_bytes.feed(truncated).kind == "too_many_bytes"
    late = QuicStart()
    late.feed(truncated)
    gave_up = late.give_up(2.0)
    assert gave_up.kind == "timeout" and "within 2s" in gave_up.reason and gave_up.version == 1


@given(st.lists(st.binary(max_size=1500), min_size=1, max_size=20))
def test_start_never_raises_and_ends_within_its_bound(datagrams):
    """Whatever the bytes, feeding never raises, and no more than max_datagrams are held without an answer."""
    start = QuicStart(max_datagrams=8)
    for n, datagram in enumerate(datagrams, 1):
        result = start.feed(datagram)
        assert result is None or isinstance(result, (QuicHello, Unreadable))
        if result is not None:
            return
        assert n < 8


def test_version_labels_are_bounded():
    """Versions become one of four labels."""
    assert [version_name(v) for v in (1, VERSION_2, 0xFF00001D, None)] == ["v1", "v2", "other", "unknown"]


# -- QuicPolicy --------------------------------------------------------------


def test_default_decides_when_no_tap_or_pattern_does():
    """--quic refuse refuses and --quic pass passes a host nobody has an opinion on, saying so."""
    chain = TapChain([])
    refuse = QuicPolicy(REFUSE).decide("server.test", "198.51.100.2", chain, FLOW)
    passes = QuicPolicy(PASS).decide("server.test", "198.51.100.2", chain, FLOW)
    assert (refuse.action, refuse.why, passes.action, passes.why) == (REFUSE, "--quic refuse", PASS, "--quic pass")


def test_passthrough_patterns_pass_by_name_or_address():
    """A host (or the destination address when no name was read) matching --passthrough passes."""
    policy = QuicPolicy(REFUSE, ["*.bank.example", "203.0.113.0/24"])
    chain = TapChain([])
    assert policy.decide("www.bank.example", "198.51.100.2", chain, FLOW).why == "--passthrough"
    assert policy.decide(None, "203.0.113.9", chain, FLOW).passes
    assert not policy.decide("server.test", "198.51.100.2", chain, FLOW).passes


def test_the_first_tap_with_an_opinion_wins_over_patterns_and_default():
    """Taps are asked in order with the name (the address without one); the first non-None answer decides."""
    silent, refuser, passer = Says(None, "silent"), Says(False, "refuser"), Says(True, "passer")
    chain = TapChain([silent, refuser, passer])
    verdict = QuicPolicy(PASS, ["server.test"]).decide("server.test", "198.51.100.2", chain, FLOW)
    assert (verdict.action, verdict.why) == (REFUSE, "tap refuser")
    assert QuicPolicy(REFUSE).decide(None, "198.51.100.2", chain, FLOW).why == "tap refuser"
    assert silent.asked == ["server.test", "198.51.100.2"] and passer.asked == []


def test_a_tap_that_raises_refuses():
    """Policy fails closed: a tap raising in quic_decision refuses the connection."""
    chain = TapChain([Says(RuntimeError("boom"), "broken"), Says(True)])
    verdict = QuicPolicy(PASS).decide("server.test", "198.51.100.2", chain, FLOW)
    assert (verdict.action, verdict.why) == (REFUSE, "tap broken")


def test_a_bad_default_is_refused():
    """--quic takes refuse or pass only."""
    with pytest.raises(ValueError, match="refuse or pass"):
        QuicPolicy("maybe")


def test_filter_tap_passes_passthrough_hosts_refuses_blocked_ones_and_leaves_others(tmp_path):
    """The filter tap's host rules answer QUIC: passthrough passes, block refuses, anything else is --quic's."""
    rules = tmp_path / "rules.txt"
    rules.write_text("passthrough host=*.bank.example\nblock host=*.casino.example\nblock url=^https://x\\.example/ads\n")
    tap = FilterTap(str(rules))
    assert [tap.quic_decision(name, FLOW) for name in ("www.bank.example", "www.casino.example", "x.example")] == \
        [True, False, None]
    strict = tmp_path / "strict.txt"
    strict.write_text("allow host=ok.example\n")
    assert FilterTap(str(strict), default="block").quic_decision("other.example", FLOW) is False


# -- Alt-Svc -----------------------------------------------------------------


@pytest.mark.parametrize("value, kept", [
    ('h3=":443"; ma=86400', None),
    ('h3=":443"; ma=86400, h3-29=":443"; ma=86400', None),
    ('h3=":443", h2="alt.example:443"; ma=60', 'h2="alt.example:443"; ma=60'),
    ('h2="a,b:443", H3=":443"', 'h2="a,b:443"'),
    ("clear", "clear"),
    ('quic=":443"; v="46"', None),
])
def test_without_h3_keeps_other_alternatives(value, kept):
    """h3 (any draft, and gQUIC's quic) entries go; others stay as written, quoted commas included."""
    assert without_h3(value) == kept


@given(st.lists(st.sampled_from(['h3=":443"', 'h3-29=":8443"; ma=3600', 'h2=":443"', 'h2="x.example:1"; persist=1',
                                 "clear"]), min_size=1, max_size=6))
def test_without_h3_leaves_no_h3_and_loses_nothing_else(entries):
    """Whatever the mix, no h3 entry survives and every other entry does, in order."""
    result = without_h3(", ".join(entries))
    others = [e for e in entries if not e.startswith("h3")]
    assert (result.split(", ") if result else []) == others


def test_strip_alt_svc_changes_headers_only_when_quic_would_be_refused():
    """Under refuse, h3 entries leave the response (a field left empty goes); under pass, or a passthrough host, they stay."""
    chain = TapChain([])
    request = Request("GET", "/", authority="server.test:443")
    headers = Headers([(b"Alt-Svc", b'h3=":443"'), (b"Content-Type", b"text/html"), (b"alt-svc", b'h2=":8443"')])
    assert QuicPolicy(REFUSE).strip_alt_svc(headers, request, chain, FLOW)
    assert headers.fields == [(b"Content-Type", b"text/html"), (b"Alt-Svc", b'h2=":8443"')]
    kept = Headers([(b"Alt-Svc", b'h3=":443"')])
    assert not QuicPolicy(PASS).strip_alt_svc(kept, request, chain, FLOW)
    assert not QuicPolicy(REFUSE, ["server.test"]).strip_alt_svc(kept, request, chain, FLOW)
    assert kept.fields == [(b"Alt-Svc", b'h3=":443"')]
    asked = Says(None)
    assert not QuicPolicy(REFUSE).strip_alt_svc(Headers([(b"Alt-Svc", b'h2=":1"')]), Request("GET", "/", authority="x"), TapChain([asked]),
                                             FLOW)
    assert asked.asked == []  # no h3 entry: nobody is asked


def test_random_bytes_are_unreadable_not_errors():
    """Random datagrams (the e2e garbage) give an Unreadable or need more, never an exception."""
    for _ in range(50):
        result = QuicStart().feed(os.urandom(1200))
        assert result is None or isinstance(result, Unreadable)
