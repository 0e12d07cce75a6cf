"""Which redirects the ``cache`` tap follows inside the proxy, and where to (sans-IO).

A registry answers a blob ``GET`` with a ``307`` to a CDN URL carrying a
signed query; a client that follows it itself would fetch bytes the cache
never sees under the blob's digest. The cache follows such a redirect for
the client instead, when it is one it may follow:

* the status is ``301``, ``302``, ``303``, ``307`` or ``308`` (for a ``GET``
  every one of them means "GET that URL instead");
* fewer than ``max_hops`` redirects were followed for this request already,
  and it does not send the request back to the URL it answered;
* the ``Location`` is an absolute or relative ``http``/``https`` URL with a
  host, no user name or password, and a valid port;
* it does not go from ``https`` to ``http`` (no downgrade: what came over
  TLS keeps coming over TLS, verified as always);
* it is the same content: a URL that names another digest than the one the
  original URL named is something else;
* it does not reach into the proxy's own machine (``localhost``, a loopback,
  unspecified, link-local or multicast address) unless the original request
  was for such a host already, so an origin cannot turn the proxy into a
  relay to what the client itself could not reach through it.

The tap sends what `follow_redirect` returns through the whole tap chain as a new
request, so every other rule (the filter tap, loop detection) applies to it
as to the client's own.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from tinspect.taplib.cachekeys import cache_key

__all__ = ["MAX_REDIRECTS", "REDIRECT_STATUSES", "Redirect", "follow_redirect"]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
"""The statuses that send a GET elsewhere."""

MAX_REDIRECTS = 5
"""Redirects followed for one request by default (curl's and Go's are larger; registries use one)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Redirect(NamedTuple):
    """Where a followed redirect goes."""

    url: str  # the absolute URL, without its fragment
    scheme: str
    authority: str  # host[:port] as a Host header says it (IPv6 in brackets)
    host: str  # without brackets
    port: int
    target: str  # path and query, origin form
    same_origin: bool  # the scheme, host and port of the URL it answered: credentials may go along


def _local(host: str) -> bool:
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast


def follow_redirect(status: int, location: str | None, url: str, hops: int, max_hops: int = MAX_REDIRECTS,
           digest: str | None = None) -> Redirect | str:
    """Whether the cache follows a redirect answered to ``GET url``, and where to.

    Args:
        status: the response's status.
        location: its ``Location`` field (``None`` when it had none).
        url: the absolute URL the redirect answered.
        hops: redirects already followed for this request.
        max_hops: how many may be followed for one request.
        digest: the sha256 the original URL named, or ``None``.

    Returns:
        The `Redirect` to follow, or a short reason (for the log) why it is
        not followed: the client then gets the redirect itself.
    """
    if status not in REDIRECT_STATUSES:
        return f"status {status} is not a redirect"
    if hops >= max_hops:
        return f"more than {max_hops} redirects"
    if not location or not location.strip():
        return "no Location"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in location.strip()):
        return "a Location with spaces or control characters"
    try:
        parts = urlsplit(urljoin(url, location.strip()))
        port = parts.port
    except ValueError:
        return "a Location that is not a URL"
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in _DEFAULT_PORTS or not host:
        return f"a Location that is not an http(s) URL with a host: {location!r}"
    if parts.username is not None or parts.password is not None:
        return "a Location with a user name or password"
    original = urlsplit(url)  # the caller's own URL: its port parses
    if original.scheme.lower() == "https" and scheme != "https":
        return "a redirect from https to http"
    if _local(host) and not _local(original.hostname or ""):
        return f"a redirect to this machine ({host})"
    port = port if port is not None else _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    absolute = f"{scheme}://{authority}{target}"
    if absolute == url.split("#", 1)[0]:
        return "a redirect to the URL it answered"
    named = cache_key(absolute).digest
    if digest is not None and named is not None and named != digest:
        return "a redirect to another digest"
    original_port = original.port if original.port is not None else _DEFAULT_PORTS.get(original.scheme.lower())
    same = (scheme, host, port) == (original.scheme.lower(), (original.hostname or ""), original_port)
    return Redirect(absolute, scheme, authority, host, port, target, same)
