"""The explicit proxy's rules: proxy authentication and request targets.

Clients configured to use tinspect as their proxy send ``CONNECT host:port``
for tunnels and absolute-form targets (``GET http://host/path``) for plain
HTTP. `proxy_request` checks such a request (and the optional Basic proxy
authentication, `ProxyAuth`) before any tap sees it, and rewrites an
absolute-form target into the origin form a server expects, keeping the host
in ``Request.authority`` and the ``Host`` header. The HTTP/1.1 layer
(`tinspect.layers.http.http1.layer`) calls it; the listener is
`tinspect.listen.accept.ExplicitProxyFactory`.

The explicit proxy binds to loopback by default
(``tcp:8080:interface=127.0.0.1``) so that it is not an open relay unless
told otherwise, and it serves only clients in `ClientNetworks` (by default
loopback and private networks, `LOCAL_NETWORKS`), so a listener opened to a
public interface is still not an open relay. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from typing import Iterable

from tinspect.net.addresses import host_port
from tinspect.units import Request, Response, error_page

__all__ = ["ClientNetworks", "LOCAL_NETWORKS", "ProxyAuth", "proxy_request"]

# Loopback, RFC 1918, shared address space (RFC 6598), link-local, unique local.
LOCAL_NETWORKS = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "169.254.0.0/16", "fc00::/7", "fe80::/10",
)


class ClientNetworks:
    """The networks whose clients a listener serves.

    Args:
        networks: CIDRs or single addresses (``192.0.2.0/24``, ``2001:db8::1``).

    Raises:
        ValueError: a network that does not parse, named in the message.
    """

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = []
        for text in networks:
            try:
                self.networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not a network: {text!r} (say 192.0.2.0/24 or 2001:db8::/32)") from None
        if not self.networks:
            raise ValueError("no client networks given")

    def __contains__(self, host: str) -> bool:
        """Whether a client address (IPv4-mapped IPv6 counts as IPv4) is in one of the networks."""
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def __str__(self) -> str:
        return ",".join(str(net) for net in self.networks)


class ProxyAuth:
    """Basic proxy authentication (RFC 9110 §11.7) against fixed credentials.

    Args:
        credentials: ``"user:password"`` strings.
        realm: the realm named in the challenge.

    Raises:
        ValueError: a credential without a colon or with an empty user.
    """

    def __init__(self, credentials: list[str], realm: str = "tinspect") -> None:
        self._tokens: list[bytes] = []
        for text in credentials:
            user, sep, _ = text.partition(":")
            if not sep or not user:
                raise ValueError(f"proxy credentials must be USER:PASSWORD, not {text.split(':')[0]!r}...")
            self._tokens.append(text.encode("utf-8"))
        if not self._tokens:
            raise ValueError("no proxy credentials given")
        self.challenge = (b"Proxy-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'.encode())

    def check(self, header: bytes | None) -> bool:
        """Whether a ``Proxy-Authorization`` value carries valid credentials."""
        if not header:
            return False
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        # Compare against every entry, so timing says nothing about which.
        ok = False
        for expected in self._tokens:
            ok |= hmac.compare_digest(given, expected)
        return ok


def proxy_request(req: Request, auth: ProxyAuth | None) -> Response | None:
    """Check a request sent to the explicit proxy, rewriting it in place.

    ``Proxy-Authorization`` is always removed: it is for us, checked or not,
    and must not reach the taps' logs or any server. An absolute-form target becomes origin
    form, with `Request.scheme`, `Request.authority` and the ``Host``
    header set from it; a CONNECT's target becomes its authority.

    Returns:
        ``None`` to go on, or the refusal to answer with (407 without valid
        credentials, 400 for a target a proxy cannot use, 501 for
        ``https://`` targets, which clients send through CONNECT).
    """
    credentials = req.headers.raw(b"proxy-authorization")
    if credentials is not None:
        req.headers.remove(b"proxy-authorization")
    if auth is not None and not auth.check(credentials):
        return error_page(407, "proxy authentication required", req, [auth.challenge])
    target = req.target
    if req.method == "CONNECT":
        req.authority = target
        return None
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        return error_page(400, "this is a proxy: send absolute-form targets (http://host/path) or CONNECT", req)
    if scheme == "https":
        return error_page(501, "send https:// requests through CONNECT", req)
    end = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority = rest[:end].rpartition("@")[2]  # userinfo is not for the server
    path = rest[end:].partition("#")[0]
    if not authority:
        return error_page(400, f"no host in {target!r}", req)
    try:
        host_port(authority, 80)
    except ValueError as e:
        return error_page(400, str(e), req)
    req.scheme = scheme
    req.authority = authority
    req.target = path if path.startswith("/") else "/" + path
    req.headers["Host"] = authority
    return None
