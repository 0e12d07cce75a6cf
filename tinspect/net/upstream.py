"""Opening upstream connections, and saying in plain words why one failed.

Every layer connects upstream the same way: an IP literal (the usual case in
transparent mode) goes straight to a TCP endpoint with no resolver involved, a
host name (explicit proxy) goes through `HostnameEndpoint`. With
``--spoof-source`` the socket binds to the client's address first
(`tinspect._compat.connect_from`). Failures are turned
into a short reason (`describe_failure`) that logs and error pages can show.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from tinspect._compat import connect_from

__all__ = ["connect", "describe_failure"]


def connect(
    reactor: Any, dst: tuple[str, int], factory: Factory, timeout: float, source: str | None = None
) -> Deferred:
    """Connect to ``dst`` with ``factory``.

    Args:
        reactor: the reactor.
        dst: ``(host, port)``; host an IP literal or a name.
        factory: builds the upstream protocol.
        timeout: seconds before giving up.
        source: leave from this address, a client's (``--spoof-source``:
            IP_TRANSPARENT, an ephemeral port); used when ``dst`` is an
            address of the same family (a name is resolved first).

    Returns:
        A Deferred firing with the connected protocol.
    """
    host, port = dst
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if source is not None:
            return _resolve_then_connect(reactor, host, port, factory, timeout, source)
        endpoint = HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    else:
        if source is not None and ipaddress.ip_address(source).version == ip.version:
            return connect_from(reactor, host, port, factory, timeout, source)
        cls = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        endpoint = cls(reactor, host, port, timeout=timeout)
    return endpoint.connect(factory)


def _resolve_then_connect(reactor: Any, host: str, port: int, factory: Factory, timeout: float, source: str) -> Deferred:
    """A name, from a client's address: its first address of the client's family."""
    family = socket.AF_INET6 if ipaddress.ip_address(source).version == 6 else socket.AF_INET

    def resolved(infos: list) -> Deferred:
        if not infos:
            raise error.DNSLookupError(f"{host} has no address of the client's family")
        return connect_from(reactor, infos[0][4][0], port, factory, timeout, source)

    d = deferToThreadPool(reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
    d.addErrback(lambda failure: Failure(error.DNSLookupError(host)) if failure.check(OSError) else failure)
    return d.addCallback(resolved)


def describe_failure(failure: Failure) -> str:
    """A short, human reason for a failed or broken upstream connection."""
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.TimeoutError):
        return "connect timeout"
    if failure.check(error.DNSLookupError):
        return "cannot resolve host name"
    if failure.check(error.NoRouteError):
        return "no route to host"
    if failure.check(error.ConnectionLost):
        return "connection reset"
    if failure.check(error.ConnectError):
        return failure.getErrorMessage().strip().rstrip(".") or "cannot connect"
    return failure.getErrorMessage()
