"""Addresses: hosts and ports, normalised, parsed and formatted (sans-IO).

Every layer meets addresses in text: a dual-stack socket reports IPv4 peers as
``::ffff:192.0.2.1``, an HTTP authority or a ``forward=HOST:PORT`` spec says
``[2001:db8::1]:443``, a log line or an error page prints ``(host, port)``.
The rules for those spellings live here once, so that an IPv6 address is
bracketed, unbracketed and compared the same way everywhere:

* `normalize_host`: the plain IPv4 form of an IPv4-mapped IPv6 address;
* `bracket` and `format_addr`: ``[v6]`` in an authority, ``host:port`` for
  people;
* `host_port`: ``host[:port]`` / ``[v6][:port]`` to a ``(host, port)``
  destination, strictly; `authority_host`: the host of an authority, leniently;
* `is_ip`, `ip_version` and `canonical_host`: names as the TLS passthrough
  rules compare them.

No I/O, no name resolution. The last three are kept for the last names
asked (`functools.lru_cache`): every new connection asks them of the same
few names (its SNI, its destination), and parsing an address costs more
than the lookup.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = [
    "authority_host",
    "bracket",
    "canonical_host",
    "format_addr",
    "host_port",
    "ip_version",
    "is_ip",
    "normalize_host",
]


def normalize_host(host: str) -> str:
    """Turn an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) into IPv4.

    A dual-stack socket reports IPv4 peers that way; flows, logs and upstream
    connections should see the plain IPv4 address.
    """
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def bracket(host: str) -> str:
    """``host`` as it goes before ``:port``: IPv6 addresses in brackets (RFC 3986 §3.2.2)."""
    return f"[{host}]" if ":" in host else host


def format_addr(addr: tuple[str, int] | None) -> str:
    """``host:port``, with IPv6 hosts in brackets; ``?`` for ``None``."""
    if addr is None:
        return "?"
    return f"{bracket(addr[0])}:{addr[1]}"


def host_port(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` as a ``(host, port)`` destination.

    Args:
        authority: an HTTP authority, a CONNECT target or a ``HOST:PORT`` spec.
        default_port: the port when the authority names none; ``None`` when
            a port is required.

    Returns:
        The host (an IPv6 address without its brackets) and the port.

    Raises:
        ValueError: no host, a bad port, or no port and no default.
    """
    host, port = authority, None
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"bad authority {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad authority {authority!r}")
            port = rest[1:]
    elif ":" in authority:
        host, _, port = authority.rpartition(":")
        if ":" in host:
            raise ValueError(f"write IPv6 addresses in brackets: {authority!r}")
    if not host:
        raise ValueError(f"no host in {authority!r}")
    if not port:
        if default_port is None:
            raise ValueError(f"{authority!r} has no port")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {authority!r}")
    return host, int(port)


def authority_host(authority: str) -> str:
    """The host of an authority, without port or IPv6 brackets; never raises.

    Lenient where `host_port` is strict, for what a tap reads
    (`tinspect.units.Request.host`): an unbracketed IPv6 address is taken
    as a host without a port.
    """
    if authority.startswith("["):
        return authority[1 : authority.find("]")]
    return authority.rpartition(":")[0] if authority.count(":") == 1 else authority


@functools.lru_cache(maxsize=4096)
def ip_version(name: str) -> int | None:
    """4 or 6 if ``name`` is an IPv4 or IPv6 address literal (no brackets), else ``None``."""
    try:
        return ipaddress.ip_address(name).version
    except ValueError:
        return None


def is_ip(name: str) -> bool:
    """Whether ``name`` is an IPv4 or IPv6 address literal (no brackets)."""
    return ip_version(name) is not None


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """``host`` in one spelling for comparisons: lower case, no trailing dot,
    no brackets, and an IP address in its compressed form (``2001:DB8:0::1``
    and ``[2001:db8::1]`` are both ``2001:db8::1``)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
