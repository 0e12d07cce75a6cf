"""Opening upstream connections, directly or through a parent proxy, and saying in
plain words why one failed.

Every layer connects upstream the same way: an IP literal (the usual case in
transparent mode) goes straight to a TCP endpoint with no resolver involved, a
host name (explicit proxy) goes through `HostnameEndpoint`. With
``--spoof-source`` the socket binds to the client's address first
(`tinspect._compat.connect_from`). Failures are turned
into a short reason (`describe_failure`) that logs and error pages can show.

Through a parent proxy (``--upstream-proxy``, `tinspect.net.parent`), the TCP
connection goes to the parent (over TLS for an ``https://`` one), and a
`ParentTunnel` runs the CONNECT or SOCKS5 dialogue on it before the upstream
protocol is built: that protocol gets the tunnel's transport as if it were a
direct connection to the server (TLS with the server's SNI is started on it as
on any other; inside an ``https://`` parent's TLS, through
`tinspect._compat.TLSInTLS`), and the tunnel only forwards events from then
on. A parent that refuses fails the connect with a `ParentRefused` naming it
and its answer.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect._compat import TLSInTLS, connect_from, keep_declarations
from tinspect.layers.tls.policy import describe_error
from tinspect.net.addresses import ip_version, is_ip
from tinspect.net.parent import (
    ConnectReplyReader,
    ParentProxy,
    ParentRefused,
    ParentUnreachable,
    Socks5Dialogue,
    connect_request,
)

__all__ = ["connect", "connect_failure_kind", "describe_failure", "ParentTunnel", "ParentTimeout", "UpstreamFactory"]


def _endpoint(reactor: Any, dst: tuple[str, int], timeout: float) -> Any:
    host, port = dst
    version = ip_version(host)
    if version is None:
        return HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    cls = TCP6ClientEndpoint if version == 6 else TCP4ClientEndpoint
    return cls(reactor, host, port, timeout=timeout)


def connect(
    reactor: Any, dst: tuple[str, int], factory: Factory, timeout: float,
    parent: ParentProxy | None = None, parent_tls: Any = None, source: str | None = None,
) -> Deferred:
    """Connect to ``dst`` with ``factory``, through ``parent`` if given.

    Args:
        reactor: the reactor.
        dst: ``(host, port)``; host an IP literal or a name.
        factory: builds the upstream protocol.
        timeout: seconds before giving up (the parent's dialogue included).
        parent: the parent proxy to go through, or ``None``.
        parent_tls: the client TLS options for an ``https://`` parent.
        source: leave from this address, a client's (``--spoof-source``:
            IP_TRANSPARENT, an ephemeral port); used for a direct connection
            when ``dst`` is an address of the same family (a name is resolved
            first). Through a parent the servers see the parent, so it is not
            used there.

    Returns:
        A Deferred firing with the connected protocol.
    """
    if parent is None:
        return _direct(reactor, dst, factory, timeout, source)
    endpoint = _endpoint(reactor, parent.address, timeout)
    if parent.scheme == "https":
        endpoint = wrapClientTLS(parent_tls, endpoint)
    return _through(reactor, endpoint, parent, dst, factory, timeout)


class ParentTimeout(ParentUnreachable):
    """The parent did not finish its dialogue in time (a 504, as a connect timeout is)."""


def _through(reactor: Any, endpoint: Any, parent: ParentProxy, dst: tuple[str, int], factory: Factory,
             timeout: float) -> Deferred:
    tunnel = ParentTunnel(reactor, parent, dst, factory)
    if parent.scheme == "socks5" and not is_ip(dst[0]):
        # socks5:// (not socks5h://): the name is resolved here, IPv4 and IPv6, and the parent
        # gets an address: of the family it is reached by when there is a choice (its own
        # address a literal of that family), else the resolver's first.
        def resolved(ips: list[str]) -> Deferred:
            if not ips:
                raise error.DNSLookupError(dst[0])
            if is_ip(parent.host):
                v6 = ipaddress.ip_address(parent.host).version == 6
                ips = sorted(ips, key=lambda ip: (":" in ip) != v6)
            tunnel.dst = (ips[0], dst[1])
            return endpoint.connect(UpstreamFactory(tunnel))

        connecting = _addresses(reactor, dst[0], dst[1]).addCallback(resolved)
    else:
        connecting = endpoint.connect(UpstreamFactory(tunnel))

    def cancel(_: Deferred) -> None:
        connecting.cancel()
        tunnel.abort()

    done: Deferred = Deferred(cancel)
    tunnel.done = done

    def unreachable(failure: Failure) -> None:
        if not done.called:
            reason = describe_failure(failure)
            cls = ParentTimeout if reason == "connect timeout" else ParentUnreachable
            done.errback(cls(parent.display, f"cannot connect to it: {reason}"))

    def too_slow() -> None:
        connecting.cancel()
        tunnel.time_out(timeout)

    connecting.addErrback(unreachable)
    timer = reactor.callLater(timeout, too_slow)
    done.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
    return done


class UpstreamFactory(Factory):
    """Connects one given protocol (one factory per connect): the upstream shell,
    or the `ParentTunnel` in front of it."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        keep_declarations(protocol=self._protocol)  # the endpoint's wrapper is declared like it
        return self._protocol


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class ParentTunnel(Protocol):
    """The connection to a parent proxy: asks for the tunnel, then hands it over.

    Until the parent has opened the tunnel, its bytes go to the sans-IO dialogue
    (`Socks5Dialogue`, or `ConnectReplyReader` after `connect_request`). Then
    the factory's protocol is built and connected to this transport (through a
    `TLSInTLS` for an ``https://`` parent, so that TLS can start inside), ``done``
    fires with it, and every later event (data, half-close, TLS handshake,
    loss) is passed straight on to it.

    Args:
        reactor: the reactor.
        parent: the parent proxy.
        dst: the destination the tunnel is for.
        factory: builds the protocol that gets the tunnel.
    """

    done: Deferred

    def __init__(self, reactor: Any, parent: ParentProxy, dst: tuple[str, int], factory: Factory) -> None:
        self._reactor = reactor
        self._parent = parent
        self.dst = dst
        self._factory = factory
        self._dialogue: Any = None
        self.inner: Any = None

    def connectionMade(self) -> None:
        host, port = self.dst
        if self._parent.is_socks:
            self._dialogue = Socks5Dialogue(self._parent, host, port)
            self.transport.write(self._dialogue.start())
        else:
            self._dialogue = ConnectReplyReader(self._parent.display)
            self.transport.write(connect_request(self._parent, host, port))

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if self.done.called:
            return  # refused or cancelled: the connection is being aborted
        try:
            if self._parent.is_socks:
                reply, rest = self._dialogue.feed(data)
                if reply:
                    self.transport.write(reply)
            else:
                rest = self._dialogue.feed(data)
        except ParentRefused as e:
            self._fail(e)
            return
        if rest is None:
            return
        protocol = self._factory.buildProtocol(self.transport.getPeer())
        self.inner = inner = TLSInTLS(protocol, client=True) if self._parent.scheme == "https" else protocol
        inner.makeConnection(self.transport)
        self.done.callback(protocol)
        if rest:
            inner.dataReceived(rest)

    def _fail(self, refusal: ParentRefused) -> None:
        if not self.done.called:
            self.done.errback(refusal)
        self.abort()

    def abort(self) -> None:
        """Give up on the tunnel (cancelled, refused or too slow)."""
        if self.transport is not None and self.inner is None:
            self.transport.abortConnection()

    def time_out(self, seconds: float) -> None:
        """The dialogue took longer than the connect timeout."""
        if self.inner is None and not self.done.called:
            self._fail(ParentTimeout(self._parent.display, f"no answer within {seconds:g} s, connect timeout"))

    def readConnectionLost(self) -> None:
        if self.inner is not None:
            if IHalfCloseableProtocol.providedBy(self.inner):
                self.inner.readConnectionLost()
            else:
                self.transport.loseConnection()
            return
        self._closed_early()

    def writeConnectionLost(self) -> None:
        if self.inner is not None and IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        if self.inner is not None and IHandshakeListener.providedBy(self.inner):
            self.inner.handshakeCompleted()

    def connectionLost(self, reason: Failure) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)
            return
        if reason.check(SSL.Error) and not self.done.called:  # an https:// parent's TLS
            self._fail(ParentUnreachable(self._parent.display, f"TLS with it failed: {describe_error(reason.value)}"))
            return
        self._closed_early()

    def _closed_early(self) -> None:
        try:
            self._dialogue.close()
        except ParentRefused as e:
            self._fail(e)


def _direct(reactor: Any, dst: tuple[str, int], factory: Factory, timeout: float, source: str | None) -> Deferred:
    if source is None:
        return _endpoint(reactor, dst, timeout).connect(factory)
    host, port = dst
    if not is_ip(host):
        return _resolve_then_connect(reactor, host, port, factory, timeout, source)
    if ipaddress.ip_address(source).version == ipaddress.ip_address(host).version:
        return connect_from(reactor, host, port, factory, timeout, source)
    return _endpoint(reactor, dst, timeout).connect(factory)


def _resolve_then_connect(reactor: Any, host: str, port: int, factory: Factory, timeout: float, source: str) -> Deferred:
    """A name, from a client's address: its first address of the client's family; a name with
    addresses of the other family only is connected to normally, as such an address is."""
    version = ipaddress.ip_address(source).version

    def resolved(ips: list[str]) -> Deferred:
        same = [ip for ip in ips if ipaddress.ip_address(ip).version == version]
        if same:
            return connect_from(reactor, same[0], port, factory, timeout, source)
        return _endpoint(reactor, (ips[0], port), timeout).connect(factory)

    return _addresses(reactor, host, port).addCallback(resolved)


def _addresses(reactor: Any, host: str, port: int) -> Deferred:
    """The addresses of the name ``host``, IPv4 and IPv6, in the resolver's order: ``getaddrinfo`` in the reactor's thread pool, as Twisted's
    ``HostnameEndpoint`` resolves (``reactor.resolve`` knows IPv4 only). A name that
    does not resolve fails it with ``DNSLookupError``."""
    d = deferToThreadPool(reactor, reactor.getThreadPool(), socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    d.addErrback(lambda failure: Failure(error.DNSLookupError(host)) if failure.check(OSError) else failure)
    return d.addCallback(lambda infos: list(dict.fromkeys(info[4][0] for info in infos)))


def describe_failure(failure: Failure) -> str:
    """A short, human reason for a failed or broken upstream connection."""
    if failure.check(ParentRefused):
        return str(failure.value)
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
