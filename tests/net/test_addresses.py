"""Tests for tinspect.net.addresses: hosts and ports, normalised, parsed and formatted."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.net.addresses import (
    authority_host,
    bracket,
    canonical_host,
    format_addr,
    host_port,
    ip_version,
    is_ip,
    normalize_host,
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True)
ports = st.integers(1, 65535)


# -- normalize_host -------------------------------------------------------------


@pytest.mark.parametrize(
    "host,expected",
    [
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:c000:201", "::ffff:c000:201"),  # not the dotted form a socket reports
        ("example.org", "example.org"),
        ("", ""),
    ],
)
def test_normalize_host_unmaps_ipv4_mapped_addresses_only(host, expected):
    """A dual-stack socket's ::ffff:a.b.c.d becomes a.b.c.d; anything else is left as it is."""
    assert normalize_host(host) == expected


@given(ipv4)
def test_normalize_host_gives_back_the_ipv4_a_dual_stack_socket_mapped(host):
    """Any IPv4 address reported in its mapped form comes back as itself."""
    assert normalize_host(f"::ffff:{host}") == host
    assert normalize_host(host) == host


# -- bracket and format_addr ----------------------------------------------------


@pytest.mark.parametrize(
    "addr,expected",
    [
        (("192.0.2.1", 80), "192.0.2.1:80"),
        (("2001:db8::1", 443), "[2001:db8::1]:443"),
        (("example.org", 8080), "example.org:8080"),
        (("::", 0), "[::]:0"),
        (None, "?"),
    ],
)
def test_format_addr_brackets_ipv6_hosts(addr, expected):
    """host:port for people, IPv6 in brackets, ? for an address not known yet."""
    assert format_addr(addr) == expected


def test_bracket_only_wraps_ipv6_addresses():
    """Names and IPv4 addresses stay as they are; an IPv6 address gets brackets."""
    assert (bracket("example.org"), bracket("192.0.2.1"), bracket("::1")) == ("example.org", "192.0.2.1", "[::1]")


@given(st.one_of(ipv4, ipv6, names), ports)
def test_host_port_reads_back_what_format_addr_wrote(host, port):
    """format_addr and host_port round-trip IPv4, IPv6 and names with any port."""
    assert host_port(format_addr((host, port)), None) == (host, port)
    assert host_port(format_addr((host, port)), 1) == (host, port)


@given(st.one_of(ipv4, ipv6, names), ports)
def test_a_bracketed_host_without_port_gets_the_default(host, port):
    """An authority without a port (bracketed when IPv6) gets the default port."""
    assert host_port(bracket(host), port) == (host, port)


@given(st.one_of(ipv4, ipv6, names), ports)
def test_authority_host_reads_the_host_format_addr_wrote(host, port):
    """The lenient host reading agrees with the strict parser on well-formed authorities."""
    assert authority_host(format_addr((host, port))) == host
    assert authority_host(bracket(host)) == host


# -- host_port ------------------------------------------------------------------


@pytest.mark.parametrize(
    "authority,default,expected",
    [
        ("example.org", 80, ("example.org", 80)),
        ("example.org:8080", 80, ("example.org", 8080)),
        ("example.org:443", None, ("example.org", 443)),
        ("example.org:", 80, ("example.org", 80)),
        ("10.0.0.1:1", None, ("10.0.0.1", 1)),
        ("[2001:db8::1]", 443, ("2001:db8::1", 443)),
        ("[2001:db8::1]:81", None, ("2001:db8::1", 81)),
        ("[::1]:65535", None, ("::1", 65535)),
    ],
)
def test_host_port(authority, default, expected):
    """host[:port] and [v6][:port] give the destination, with the default port when none is given."""
    assert host_port(authority, default) == expected


@pytest.mark.parametrize(
    "authority,default,message",
    [
        ("", 80, "no host"),
        (":80", 80, "no host"),
        ("[]:80", 80, "no host"),
        ("example.org:0", 80, "bad port"),
        ("example.org:65536", 80, "bad port"),
        ("example.org:-1", 80, "bad port"),
        ("example.org:http", 80, "bad port"),
        ("example.org: 80", 80, "bad port"),
        ("[::1]:x", 80, "bad port"),
        ("2001:db8::1", 80, "brackets"),
        ("::1:443", None, "brackets"),
        ("[::1", 80, "bad authority"),
        ("[::1]80", 80, "bad authority"),
        ("example.org", None, "no port"),
        ("[::1]", None, "no port"),
        ("example.org:", None, "no port"),
    ],
)
def test_host_port_errors(authority, default, message):
    """No host, a bad port, an unbracketed IPv6 address or a missing port without default: ValueError."""
    with pytest.raises(ValueError, match=message):
        host_port(authority, default)


def test_authority_host_takes_an_unbracketed_ipv6_address_as_a_host():
    """Where host_port refuses, authority_host still answers: the whole text is the host."""
    assert authority_host("2001:db8::1") == "2001:db8::1"
    assert authority_host("example.org") == "example.org"
    assert authority_host("") == ""


# -- is_ip and canonical_host ---------------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [("192.0.2.1", True), ("2001:db8::1", True), ("[2001:db8::1]", False), ("example.org", False), ("", False)],
)
def test_is_ip_is_true_for_address_literals_only(name, expected):
    """IPv4 and IPv6 literals are addresses; names and bracketed forms are not."""
    assert is_ip(name) is expected


@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=40)))
def test_ip_version_answers_as_ipaddress_does_asked_once_or_again(name):
    """The address family (or None for anything else) is ipaddress's, the first time and from the cache."""
    try:
        expected = ipaddress.ip_address(name).version
    except ValueError:
        expected = None
    assert ip_version(name) == expected
    assert ip_version(name) == expected
    assert is_ip(name) is (expected is not None)


@pytest.mark.parametrize(
    "host,expected",
    [
        ("Example.ORG.", "example.org"),
        (" api.example ", "api.example"),
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("2001:db8:0:0::1", "2001:db8::1"),
        ("192.0.2.1", "192.0.2.1"),
        ("*.Bank.example", "*.bank.example"),
    ],
)
def test_canonical_host_gives_one_spelling(host, expected):
    """Case, a trailing dot, brackets and IPv6 zero runs do not make two hosts differ."""
    assert canonical_host(host) == expected


@given(ipv6)
def test_canonical_host_of_any_ipv6_spelling_is_its_compressed_form(host):
    """The exploded and bracketed spellings of an IPv6 address compare equal."""
    exploded = ipaddress.IPv6Address(host).exploded.upper()
    assert canonical_host(exploded) == canonical_host(f"[{host}]") == host
