"""Which redirects the cache follows itself (`tinspect.taplib.redirects`): statuses, hops, schemes, same content."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.taplib import REDIRECT_STATUSES, Redirect, follow_redirect

DIGEST = "ab" * 32
BLOB = f"https://registry.test/v2/app/blobs/sha256:{DIGEST}"


@pytest.mark.parametrize("status", sorted(REDIRECT_STATUSES))
def test_every_redirect_status_of_a_get_is_followed(status):
    """301, 302, 303, 307 and 308 all mean "GET that instead" for a GET."""
    where = follow_redirect(status, "https://cdn.test/blob?sig=1", BLOB, 0)
    assert where == Redirect("https://cdn.test/blob?sig=1", "https", "cdn.test", "cdn.test", 443, "/blob?sig=1", False)


@pytest.mark.parametrize("status", [200, 300, 304, 305, 404])
def test_other_statuses_are_not_redirects(status):
    """304 Not Modified and 300 Multiple Choices name no single target: not followed."""
    assert follow_redirect(status, "https://cdn.test/blob", BLOB, 0) == f"status {status} is not a redirect"


def test_the_hop_bound_stops_a_loop():
    """With max_hops followed already, the next redirect goes to the client."""
    assert isinstance(follow_redirect(307, "/again", BLOB, 4, 5), Redirect)
    assert follow_redirect(307, "/again", BLOB, 5, 5) == "more than 5 redirects"


def test_a_relative_location_keeps_the_origin_and_its_credentials():
    """A path-only Location resolves against the request's URL: same origin, so credentials may go along."""
    where = follow_redirect(302, "../other/x.deb?v=2#frag", "http://mirror.test:8080/debian/pool/a.deb", 0)
    assert where.url == "http://mirror.test:8080/debian/other/x.deb?v=2"
    assert (where.authority, where.port, where.target, where.same_origin) == (
        "mirror.test:8080", 8080, "/debian/other/x.deb?v=2", True)


def test_https_is_never_downgraded_to_http():
    """A redirect from TLS to cleartext is refused; http to https is fine."""
    assert follow_redirect(307, "http://cdn.test/blob", BLOB, 0) == "a redirect from https to http"
    assert follow_redirect(307, "https://cdn.test/a.deb", "http://mirror.test/a.deb", 0).scheme == "https"


@pytest.mark.parametrize("location", ["ftp://cdn.test/blob", "//", "https://", "javascript:alert(1)",
                                      "https://user:pw@cdn.test/blob", "https://cdn.test:99999/blob",
                                      "https://cdn.test/a b", "https://cdn.test/\r\nX-Evil: 1", "", None])
def test_locations_that_are_not_plain_http_urls_are_refused(location):
    """Other schemes, no host, credentials in the URL, bad ports, spaces and control characters: not followed."""
    assert isinstance(follow_redirect(302, location, BLOB, 0), str)


@pytest.mark.parametrize("host", ["localhost", "api.localhost", "127.0.0.1", "[::1]", "0.0.0.0", "169.254.169.254",
                                  "[fe80::1]", "[::ffff:127.0.0.1]", "224.0.0.1"])
def test_a_public_origin_cannot_redirect_the_proxy_to_its_own_machine(host):
    """An origin must not make the proxy fetch from loopback, link-local (cloud metadata) or multicast."""
    assert follow_redirect(307, f"https://{host}/blob", BLOB, 0).startswith("a redirect to this machine")


def test_a_local_origin_may_redirect_to_a_local_host():
    """A request that was for a loopback origin already reaches nothing new by a loopback redirect."""
    assert isinstance(follow_redirect(307, "http://127.0.0.1:9/cdn", "http://127.0.0.1:8/a.deb", 0), Redirect)


def test_a_target_naming_another_digest_is_other_content():
    """The CDN URL names the same digest (followed) or another one (not the same content: not followed)."""
    same = f"https://cdn.test/registry/v2/blobs/sha256/ab/{DIGEST}/data?verify=1"
    assert isinstance(follow_redirect(307, same, BLOB, 0, digest=DIGEST), Redirect)
    other = f"https://cdn.test/blobs/sha256:{'cd' * 32}"
    assert follow_redirect(307, other, BLOB, 0, digest=DIGEST) == "a redirect to another digest"


def test_ipv6_targets_keep_their_brackets_in_the_authority():
    """An IPv6 literal is bracketed in the Host field, bare in the address to connect to."""
    where = follow_redirect(307, "https://[2001:db8::5]:8443/blob", BLOB, 0)
    assert (where.authority, where.host, where.port) == ("[2001:db8::5]:8443", "2001:db8::5", 8443)


@given(st.integers(100, 599), st.one_of(st.none(), st.text(max_size=80)), st.integers(0, 6))
def test_any_location_gives_a_reason_or_a_target_that_keeps_the_scheme_rules(status, location, hops):
    """Whatever the server says, the answer is a reason or an http(s) target, never a downgrade from https."""
    where = follow_redirect(status, location, BLOB, hops)
    assert isinstance(where, (str, Redirect))
    if isinstance(where, Redirect):
        assert where.scheme == "https" and where.target.startswith("/") and where.host
        assert status in REDIRECT_STATUSES and hops < 5
