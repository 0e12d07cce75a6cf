"""The ``tproxy:`` server endpoint and its string parser plugin.

``tproxy:8080`` listens on all IPv4 addresses with IP_TRANSPARENT set, so a
``-j TPROXY --on-port 8080`` rule can hand it connections addressed anywhere.
``tproxy:8080:interface=\\:\\:`` does the same for IPv6 (a dual-stack socket,
which also takes IPv4 connections). Under TPROXY the accepted connection's
``transport.getHost()`` is the original destination.

Like `twisted.internet.endpoints.AdoptedStreamServerEndpoint`, the endpoint
builds the socket itself (the option must be set before ``bind``) and hands it
to the reactor with ``adoptStreamPort``.

The parsers are Twisted plugins (``twisted/plugins/tinspect_plugin.py``), so
``serverFromString(reactor, "tproxy:8080")`` works in any program. The proxy
itself builds its listeners with `server_endpoint`, which parses its own
types and ``tcp6:`` directly: ``serverFromString`` finds a type that is not
built into Twisted (``tcp:``, ``unix:``, ``ssl:`` are) by importing every
endpoint plugin installed, and autobahn's imports all of autobahn (6 MiB
more RSS at start, measured; `tinspect.layers.websocket` otherwise loads it on the
first WebSocket upgrade only).
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.endpoints import TCP6ServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

from tinspect.listen.spec import split_endpoint
from tinspect.net.sockets import SocketError, transparent_socket

__all__ = ["BACKLOG", "TProxyServerEndpoint", "TProxyServerParser", "SharedTCPServerParser", "server_endpoint"]

# The listen backlog of every stream listener unless its string says otherwise. Twisted's
# default of 50 overflows when a school's worth of clients connect at once while the
# reactor is busy (SYNs dropped, clients retrying after a second or more); the kernel caps
# this at net.core.somaxconn.
BACKLOG = socket.SOMAXCONN


@implementer(IStreamServerEndpoint)
class TProxyServerEndpoint:
    """A TCP listening endpoint with IP_TRANSPARENT set before bind.

    Args:
        reactor: a reactor providing ``adoptStreamPort``.
        port: port to listen on.
        interface: address to bind (``""`` all IPv4, ``"::"`` all IPv6).
        backlog: listen backlog.
        reuse_port: share the port between processes (SO_REUSEPORT).
        transparent: set IP_TRANSPARENT (``False`` for `SharedTCPServerParser`).
    """

    def __init__(self, reactor, port: int, interface: str = "", backlog: int = BACKLOG, reuse_port: bool = False,
                 transparent: bool = True):
        self._reactor = reactor
        self.port = port
        self.interface = interface
        self._backlog = backlog
        self._reuse_port = reuse_port
        self._transparent = transparent

    def listen(self, factory):
        """Bind, listen and start accepting for ``factory``.

        Returns:
            A Deferred firing with the `IListeningPort`, or failing with
            `CannotListenError` whose message says what went wrong.
        """
        try:
            sock = transparent_socket(
                socket.SOCK_STREAM,
                self.interface,
                self.port,
                backlog=self._backlog,
                reuse_port=self._reuse_port,
                transparent=self._transparent,
            )
        except SocketError as e:
            return defer.fail(CannotListenError(self.interface, self.port, e))
        try:
            port = self._reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
        except Exception as e:  # the reactor refused the socket
            return defer.fail(CannotListenError(self.interface, self.port, e))
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor
        return defer.succeed(port)

    def __repr__(self) -> str:
        return f"TProxyServerEndpoint({self.interface or '0.0.0.0'}:{self.port})"


@implementer(IPlugin, IStreamServerEndpointStringParser)
class TProxyServerParser:
    """Parses ``tproxy:PORT[:interface=ADDR][:backlog=N][:reuseport=yes]``."""

    prefix = "tproxy"

    def parseStreamServer(self, reactor, port, interface="", backlog=str(BACKLOG), reuseport="no"):
        """Build a `TProxyServerEndpoint` from the endpoint string's fields."""
        return TProxyServerEndpoint(
            reactor,
            int(port),
            interface,
            int(backlog),
            reuse_port=reuseport.lower() in ("yes", "true", "1"),
        )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class SharedTCPServerParser:
    """Parses ``tcpshared:PORT[:interface=ADDR][:backlog=N]``: an ordinary TCP
    listener with SO_REUSEPORT, which ``--workers`` gives each worker in
    place of ``tcp:``."""

    prefix = "tcpshared"

    def parseStreamServer(self, reactor, port, interface="", backlog=str(BACKLOG)):
        """Build a non-transparent, port-sharing `TProxyServerEndpoint`."""
        return TProxyServerEndpoint(reactor, int(port), interface, int(backlog), reuse_port=True, transparent=False)


class _TCP6ServerParser:
    """``tcp6:PORT[:backlog=N][:interface=ADDR]``, as Twisted's own plugin
    for it parses it (here so that it loads no other plugin either)."""

    prefix = "tcp6"

    def parseStreamServer(self, reactor, port, backlog=str(BACKLOG), interface="::"):
        return TCP6ServerEndpoint(reactor, int(port), int(backlog), interface)


_OWN = {parser.prefix: parser for parser in (TProxyServerParser(), SharedTCPServerParser(), _TCP6ServerParser())}


def server_endpoint(reactor, text: str):
    """The server endpoint an endpoint string describes: the types tinspect
    parses itself (``tproxy:``, ``tcpshared:``, ``tcp6:``) here, any other
    through ``serverFromString``.

    Raises:
        ValueError: a malformed string (the message says why and, for
            tinspect's own types, what the string should look like).
    """
    kind, _, rest = text.partition(":")
    parser = _OWN.get(kind)
    if parser is None:
        if kind in ("tcp", "ssl") and "backlog=" not in rest:
            text += f":backlog={BACKLOG}"
        return serverFromString(reactor, text)
    try:
        args, kwargs = split_endpoint(rest)
        return parser.parseStreamServer(reactor, *args, **kwargs)
    except (TypeError, ValueError) as e:
        usage = parser.__doc__.split("``")[1]
        raise ValueError(f"{e} (the form is {usage})") from None
