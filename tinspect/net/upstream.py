"""Opening upstream connections, and saying in plain words why one failed.

Every layer connects upstream the same way: an IP literal (the usual case in
transparent mode) goes straight to a TCP endpoint with no resolver involved, a
host name (explicit proxy) goes through `HostnameEndpoint`. Failures are turned
into a short reason (`describe_failure`) that logs and error pages can show.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

__all__ = ["connect", "connect_failure_kind", "describe_failure"]


def connect(reactor: Any, dst: tuple[str, int], factory: Factory, timeout: float) -> Deferred:
    """Connect to ``dst`` with ``factory``.

    Args:
        reactor: the reactor.
        dst: ``(host, port)``; host an IP literal or a name.
        factory: builds the upstream protocol.
        timeout: seconds before giving up.

    Returns:
        A Deferred firing with the connected protocol.
    """
    host, port = dst
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    else:
        cls = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
        endpoint = cls(reactor, host, port, timeout=timeout)
    return endpoint.connect(factory)


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


def connect_failure_kind(failure: Failure) -> str | None:
    """A short, bounded label for a failed connect (the metrics' ``reason``), or
    ``None`` for a connect we cancelled ourselves (the client went away)."""
    if failure.check(error.ConnectingCancelledError, CancelledError):
        return None
    for kind, cls in _FAILURE_KINDS:
        if failure.check(cls):
            return kind
    return "other"


# Most specific first: TimeoutError and the rest are ConnectErrors.
_FAILURE_KINDS = (
    ("refused", error.ConnectionRefusedError),
    ("timeout", error.TimeoutError),  # ours: connect_timeout passed
    ("timeout", error.TCPTimedOutError),  # the kernel's: no answer to its SYNs
    ("dns", error.DNSLookupError),
    ("no_route", error.NoRouteError),
    ("reset", error.ConnectionLost),
)
