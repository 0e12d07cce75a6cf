"""Tests for tinspect.layers.http.explicit: proxy authentication and absolute-form targets."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.headers import Headers
from tinspect.layers.http.explicit import LOCAL_NETWORKS, ClientNetworks, ProxyAuth, proxy_request
from tinspect.net.addresses import host_port
from tinspect.units import Request, Response


def basic(credentials: str) -> bytes:
    """A Basic Proxy-Authorization value for ``user:password``."""
    return b"Basic " + base64.b64encode(credentials.encode("utf-8"))


def request(target, method="GET", fields=()):
    """A request as the HTTP/1.1 layer hands it to `proxy_request`."""
    return Request(method, target, Headers(list(fields)))


# ---------------------------------------------------------------------------
# ProxyAuth
# ---------------------------------------------------------------------------


def test_basic_credentials_are_accepted():
    """The right user and password, Basic in any case, pass."""
    auth = ProxyAuth(["alice:s3cret"])
    assert auth.check(basic("alice:s3cret"))
    assert auth.check(b"basic " + base64.b64encode(b"alice:s3cret"))
    assert auth.check(b"BASIC  " + base64.b64encode(b"alice:s3cret") + b" ")


def test_password_may_contain_colons_and_utf8():
    """Only the first colon separates the user; passwords are compared as UTF-8 bytes."""
    auth = ProxyAuth(["bob:pa:ss", "j\u00fcrgen:\u00fc"])
    assert auth.check(basic("bob:pa:ss"))
    assert auth.check(basic("j\u00fcrgen:\u00fc"))
    assert not auth.check(basic("bob:pa"))


@pytest.mark.parametrize(
    "header",
    [
        basic("alice:wrong"),
        basic("mallory:s3cret"),
        basic("alice:s3cret "),
        basic("alice"),
        b"Bearer " + base64.b64encode(b"alice:s3cret"),
        b"Digest username=alice",
        b"Basic",
        b"Basic !!!notbase64",
        b"Basic \xff\xfe",
        b"Basic " + base64.b64encode(b"alice:s3cret")[:-1],
        base64.b64encode(b"alice:s3cret"),
        b"",
        None,
    ],
)
def test_bad_credentials_are_rejected(header):
    """Wrong password or user, another scheme, bad base64, or no header at all: rejected."""
    assert not ProxyAuth(["alice:s3cret"]).check(header)


def test_any_of_several_credentials_is_accepted():
    """With several credentials configured, each one passes and nothing else does."""
    auth = ProxyAuth(["alice:a", "bob:b", "carol:c"])
    assert auth.check(basic("alice:a"))
    assert auth.check(basic("bob:b"))
    assert auth.check(basic("carol:c"))
    assert not auth.check(basic("alice:b"))


@pytest.mark.parametrize("credentials", [[], ["alice"], [":password"], ["alice:a", "nocolon"]])
def test_bad_credential_configuration_raises(credentials):
    """No credentials, one without a colon, or an empty user name is a configuration error."""
    with pytest.raises(ValueError):
        ProxyAuth(credentials)


def test_empty_password_is_allowed():
    """'user:' is a valid credential with an empty password."""
    auth = ProxyAuth(["alice:"])
    assert auth.check(basic("alice:"))
    assert not auth.check(basic("alice:x"))


# ---------------------------------------------------------------------------
# proxy_request: authentication
# ---------------------------------------------------------------------------


def test_missing_credentials_get_407_with_challenge():
    """A request without Proxy-Authorization is answered 407 with a Basic challenge naming the realm."""
    req = request("http://example.org/", fields=[(b"Host", b"example.org")])
    resp = proxy_request(req, ProxyAuth(["alice:a"], realm="corp proxy"))
    assert isinstance(resp, Response)
    assert resp.status == 407
    assert resp.request is req
    challenge = resp.headers.get("Proxy-Authenticate")
    assert challenge.startswith("Basic ")
    assert 'realm="corp proxy"' in challenge
    assert req.target == "http://example.org/"


def test_invalid_credentials_get_407_and_header_is_removed():
    """A wrong Proxy-Authorization is answered 407 and taken off the request."""
    req = request("http://example.org/", fields=[(b"Host", b"example.org"), (b"Proxy-Authorization", basic("alice:no"))])
    resp = proxy_request(req, ProxyAuth(["alice:a"]))
    assert resp.status == 407
    assert "Proxy-Authorization" not in req.headers
    assert req.headers.fields == [(b"Host", b"example.org")]


def test_valid_credentials_pass_and_header_is_removed():
    """Valid credentials let the request through, without Proxy-Authorization for taps or server."""
    req = request(
        "http://example.org/a",
        fields=[(b"proxy-authorization", basic("alice:a")), (b"Host", b"example.org"), (b"Accept", b"*/*")],
    )
    assert proxy_request(req, ProxyAuth(["alice:a"])) is None
    assert "proxy-authorization" not in req.headers
    assert req.headers.fields == [(b"Host", b"example.org"), (b"Accept", b"*/*")]


def test_connect_needs_credentials_too():
    """CONNECT is refused with 407 without credentials, and passes with them."""
    auth = ProxyAuth(["alice:a"])
    assert proxy_request(request("example.org:443", "CONNECT"), auth).status == 407
    req = request("example.org:443", "CONNECT", [(b"Proxy-Authorization", basic("alice:a"))])
    assert proxy_request(req, auth) is None
    assert len(req.headers) == 0


def test_without_auth_requests_pass():
    """With no ProxyAuth configured, no credentials are needed."""
    req = request("http://example.org/")
    assert proxy_request(req, None) is None


def test_proxy_authorization_is_removed_without_auth_configured():
    """The docstring says Proxy-Authorization is for us and stays out of the taps' and server's sight, auth or not."""
    req = request("http://example.org/", fields=[(b"Proxy-Authorization", basic("alice:a"))])
    assert proxy_request(req, None) is None
    assert "Proxy-Authorization" not in req.headers


# ---------------------------------------------------------------------------
# proxy_request: targets
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,authority,path",
    [
        ("http://example.org/path?q=1", "example.org", "/path?q=1"),
        ("http://example.org:8080", "example.org:8080", "/"),
        ("http://example.org", "example.org", "/"),
        ("http://example.org?x=1", "example.org", "/?x=1"),
        ("http://example.org/a#frag", "example.org", "/a"),
        ("http://example.org/a?b=c#frag", "example.org", "/a?b=c"),
        ("http://example.org#frag/x", "example.org", "/"),
        ("http://user:pw@example.org/x", "example.org", "/x"),
        ("http://user@example.org:81/", "example.org:81", "/"),
        ("http://[2001:db8::1]:81/", "[2001:db8::1]:81", "/"),
        ("http://[2001:db8::1]/v6", "[2001:db8::1]", "/v6"),
        ("http://example.org/a@b/c", "example.org", "/a@b/c"),
        ("HTTP://Example.org/", "Example.org", "/"),
    ],
)
def test_absolute_form_becomes_origin_form(target, authority, path):
    """An absolute-form target is split into scheme, authority (no userinfo) and an origin-form target."""
    req = request(target)
    assert proxy_request(req, None) is None
    assert (req.scheme, req.authority, req.target) == ("http", authority, path)
    assert req.headers["Host"] == authority


def test_ipv6_authority_gives_bracketless_destination():
    """A bracketed IPv6 authority is kept as is and host_port turns it into the address and port."""
    req = request("http://[2001:db8::1]:81/")
    proxy_request(req, None)
    assert host_port(req.authority, 80) == ("2001:db8::1", 81)


def test_host_header_is_replaced_in_place():
    """An existing Host header (any case) is set to the target's authority, keeping its position."""
    req = request(
        "http://right.example/x",
        fields=[(b"Accept", b"*/*"), (b"host", b"wrong.example"), (b"User-Agent", b"t"), (b"HOST", b"dup")],
    )
    assert proxy_request(req, None) is None
    assert req.headers.fields == [(b"Accept", b"*/*"), (b"host", b"right.example"), (b"User-Agent", b"t")]


def test_host_header_is_added_when_missing():
    """Without a Host header, one is appended with the authority."""
    req = request("http://example.org:8080/x", fields=[(b"Accept", b"*/*")])
    proxy_request(req, None)
    assert req.headers.fields == [(b"Accept", b"*/*"), (b"Host", b"example.org:8080")]


@pytest.mark.parametrize("target", ["/path", "*", "example.org/x", "ftp://example.org/", "/redirect?to=http://x/"])
def test_non_absolute_targets_get_400(target):
    """Origin form, asterisk form and other schemes are refused with 400; the request is left alone."""
    req = request(target, fields=[(b"Host", b"h")])
    resp = proxy_request(req, None)
    assert resp.status == 400
    assert resp.request is req
    assert req.target == target
    assert req.headers.fields == [(b"Host", b"h")]


@pytest.mark.parametrize("target", ["http:///path", "http://user@/x", "http://example.org:99999/", "http://host:x/", "http://2001:db8::1/", "http://[::1/"])
def test_bad_authority_gets_400(target):
    """No host, a bad port or an unbracketed IPv6 address in the target is a 400."""
    resp = proxy_request(request(target), None)
    assert resp.status == 400


def test_https_target_gets_501():
    """https:// targets belong in a CONNECT tunnel: 501."""
    req = request("https://example.org/")
    resp = proxy_request(req, None)
    assert resp.status == 501
    assert req.target == "https://example.org/"


def test_connect_target_becomes_authority():
    """A CONNECT's target is taken as its authority, unchanged."""
    req = request("example.org:443", "CONNECT")
    assert proxy_request(req, None) is None
    assert (req.authority, req.target) == ("example.org:443", "example.org:443")
    req = request("[2001:db8::1]:443", "CONNECT")
    proxy_request(req, None)
    assert req.authority == "[2001:db8::1]:443"


# -- client networks ----------------------------------------------------------


@pytest.mark.parametrize("host, inside", [
    ("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("172.31.255.255", True), ("172.32.0.1", False),
    ("192.168.0.9", True), ("::ffff:192.168.0.9", True), ("fd00::1", True), ("fe80::1%eth0", True),
    ("192.0.2.2", False), ("2001:db8::1", False), ("8.8.8.8", False), ("not an address", False),
])
def test_local_networks_are_loopback_and_private_only(host, inside):
    assert (host in ClientNetworks(LOCAL_NETWORKS)) is inside


def test_client_networks_take_cidrs_and_single_addresses():
    nets = ClientNetworks(["192.0.2.0/25", "2001:db8::7", "198.51.100.9/24"])  # host bits are allowed
    assert "192.0.2.127" in nets and "192.0.2.128" not in nets
    assert "2001:db8::7" in nets and "2001:db8::8" not in nets
    assert "198.51.100.200" in nets
    assert str(nets) == "192.0.2.0/25,2001:db8::7/128,198.51.100.0/24"


@pytest.mark.parametrize("bad", [["192.0.2.0/33"], ["example.com"], []])
def test_bad_client_networks_are_named(bad):
    with pytest.raises(ValueError, match="not a network" if bad else "no client networks"):
        ClientNetworks(bad)


@given(st.ip_addresses())
def test_an_address_is_in_its_own_network(ip):
    """(IPv4-mapped IPv6 addresses are IPv4 clients of a dual-stack socket: they match as IPv4.)"""
    mapped = getattr(ip, "ipv4_mapped", None)
    net = f"{mapped}/32" if mapped is not None else f"{ip}/{ip.max_prefixlen}"
    assert str(ip) in ClientNetworks([net])
