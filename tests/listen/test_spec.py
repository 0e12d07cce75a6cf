"""Tests for tinspect.listen.spec's HOST:PORT reading (the rest is covered through the service)."""

from __future__ import annotations

import pytest

from tinspect.listen.spec import SpecError, parse_hostport, parse_listen, parse_udp


@pytest.mark.parametrize(
    "text,expected",
    [("192.0.2.10:80", ("192.0.2.10", 80)), ("[2001:db8::1]:443", ("2001:db8::1", 443)), ("upstream:8080", ("upstream", 8080))],
)
def test_parse_hostport_reads_names_ipv4_and_bracketed_ipv6(text, expected):
    """HOST:PORT and [V6]:PORT give the destination, without brackets."""
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    "text,message",
    [("upstream", "no port"), ("2001:db8::1:80", "brackets"), (":80", "no host"), ("h:0", "bad port"), ("h:x", "bad port")],
)
def test_parse_hostport_says_what_is_wrong_as_a_spec_error(text, message):
    """A missing port, an unbracketed IPv6 address, no host or a bad port is a SpecError quoting the text."""
    with pytest.raises(SpecError, match=message):
        parse_hostport(text)


def test_forward_modes_take_their_destination_from_parse_hostport():
    """forward=HOST:PORT in --listen and --udp specs gives the fixed destination."""
    assert parse_listen("forward=[2001:db8::1]:80@tcp:8081").dst == ("2001:db8::1", 80)
    assert parse_udp("forward=192.0.2.10:53@5353").dst == ("192.0.2.10", 53)
