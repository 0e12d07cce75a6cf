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
types directly: ``serverFromString`` finds a non-built-in type by importing
every endpoint plugin installed, and autobahn's imports all of autobahn
(6 MiB of the proxy's memory, which `tinspect.websocket` otherwise loads on
the first WebSocket upgrade only).
"""

from __future__ import annotations

import socket

from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

from tinspect.sockets import SocketError, transparent_socket

__all__ = ["TProxyServerEndpoint", "TProxyServerParser", "SharedTCPServerParser", "server_endpoint"]


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

    def __init__(self, reactor, port: int, interface: str = "", backlog: int = 50, reuse_port: bool = False,
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

    def parseStreamServer(self, reactor, port, interface="", backlog="50", reuseport="no"):
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

    def parseStreamServer(self, reactor, port, interface="", backlog="50"):
        """Build a non-transparent, port-sharing `TProxyServerEndpoint`."""
        return TProxyServerEndpoint(reactor, int(port), interface, int(backlog), reuse_port=True, transparent=False)


_OWN = {parser.prefix: parser for parser in (TProxyServerParser(), SharedTCPServerParser())}


def server_endpoint(reactor, text: str):
    """The server endpoint an endpoint string describes: tinspect's own
    types (``tproxy:``, ``tcpshared:``) parsed here, any other through
    ``serverFromString``.

    Raises:
        ValueError, TypeError: a malformed string (the message says why).
    """
    kind, _, rest = text.partition(":")
    parser = _OWN.get(kind)
    if parser is None:
        return serverFromString(reactor, text)
    args, kwargs = _fields(rest)
    return parser.parseStreamServer(reactor, *args, **kwargs)


def _fields(text: str) -> tuple[list[str], dict[str, str]]:
    """Positional and ``key=value`` fields of an endpoint string's arguments,
    with Twisted's escapes: a backslash takes the next character literally
    (``interface=\\:\\:``)."""
    args: list[str] = []
    kwargs: dict[str, str] = {}
    fields: list[tuple[str, int]] = []  # (text, index of the first unescaped "=" or -1)
    field: list[str] = []
    equals = -1
    chars = iter(text)
    for c in chars:
        if c == "\\":
            field.append(next(chars, ""))
        elif c == ":":
            fields.append(("".join(field), equals))
            field, equals = [], -1
        else:
            if c == "=" and equals < 0:
                equals = len(field)
            field.append(c)
    fields.append(("".join(field), equals))
    for value, equals in fields:
        if equals < 0:
            args.append(value)
        else:
            kwargs[value[:equals]] = value[equals + 1:]
    return args, kwargs
