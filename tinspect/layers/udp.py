"""UDP proxying: fixed-upstream and transparent (TPROXY), with sessions.

Theory of operation
-------------------
UDP has no connections, so the proxy makes sessions: the first datagram from
a client (to a destination) opens a `UDPSession`, which is a flow with its two
arms and its own upstream socket, connected to the destination so that only
that server's replies reach it. Each datagram either way restarts the idle
timer; when it expires the session and its flow close. When a listener holds
`Settings.udp_max_sessions`, the least recently active session makes room.

* `ForwardUDP` (``--udp forward=HOST:PORT@udp:PORT``): like transmitm's
  ``UDPProxy``, every client of the port talks to one fixed server; replies
  go back from the listening socket.
* `TransparentUDP` (``--udp tproxy:PORT``): a TPROXY rule delivers datagrams
  addressed anywhere to one IP_TRANSPARENT socket; ``IP_RECVORIGDSTADDR``
  tells each datagram's destination. A reply must come *from* that
  destination, or the client will not accept it, so replies are sent through
  a transparent socket bound to the destination's address (one per
  destination, shared by its sessions). The kernel may deliver a client's
  later datagrams to that socket instead of the listener (it is the better
  socket match), so it is read as well, through the same handler.

With ``--spoof-source`` a session's upstream socket is bound, IP_TRANSPARENT,
to the client's address (an ephemeral port), so the server sees the client.

Datagram sources cannot be paused: while a tap is slow, a session's arm queues
a bounded number of datagrams and drops the rest (UDP is lossy anyway), with
a log line.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Any, Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from tinspect.chain import Arm
from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.net.addresses import format_addr, normalize_host
from tinspect.net.sockets import SocketError, recv_with_orig_dst, transparent_socket
from tinspect.units import TO_CLIENT, TO_SERVER, Datagram, Unit, raw_payload

__all__ = ["UDPSession", "ForwardUDP", "TransparentUDP"]

_MAX_PENDING = 256
_READ_BATCH = 64


class UDPSession:
    """One client's datagram exchange with one destination.

    Args:
        ctx: the proxy context.
        flow: the session's flow (``transport="udp"``).
        send_to_client: sends a reply payload to the client.
        on_closed: called once when the session ends.

    Raises:
        SocketError: with ``--spoof-source``, the upstream socket cannot be
            bound to the client's address (the caller closes the flow).
    """

    _log = Logger()

    def __init__(
        self,
        ctx: ProxyContext,
        flow: Flow,
        send_to_client: Callable[[bytes], None],
        on_closed: Callable[["UDPSession"], None],
    ) -> None:
        reactor = ctx.reactor
        host, port = flow.dst
        self._upstream = _Upstream(self)
        client = flow.client[0]
        if ctx.settings.spoof_source and (":" in client) == (":" in host):
            # The server sees the client's address; the return route delivers its replies here.
            sock = transparent_socket(socket.SOCK_DGRAM, client, 0)
            try:
                self._port = reactor.adoptDatagramPort(sock.fileno(), sock.family, self._upstream)
            finally:
                sock.close()  # the reactor has its own copy of the descriptor
        else:
            self._port = reactor.listenUDP(0, self._upstream, interface="::" if ":" in host else "")
        self.ctx = ctx
        self.flow = flow
        self._send_to_client = send_to_client
        self._on_closed = on_closed
        self.closed = False
        self.arms = {
            TO_SERVER: Arm(ctx.chain, flow, TO_SERVER, self._to_server, on_error=self._tap_failed,
                           max_pending=_MAX_PENDING),
            TO_CLIENT: Arm(ctx.chain, flow, TO_CLIENT, self._to_client, on_error=self._tap_failed,
                           max_pending=_MAX_PENDING),
        }
        flow.attach(self.arms, self.close)
        self._port.connect(host, port)
        self._timer = reactor.callLater(ctx.settings.udp_idle_timeout, self._expire)

    def from_client(self, data: bytes) -> None:
        """A datagram from the client."""
        self._timer.reset(self.ctx.settings.udp_idle_timeout)
        self.arms[TO_SERVER].submit(Datagram(data, direction=TO_SERVER))

    def from_server(self, data: bytes) -> None:
        """A datagram from the server."""
        if self.closed:
            return
        self._timer.reset(self.ctx.settings.udp_idle_timeout)
        self.arms[TO_CLIENT].submit(Datagram(data, direction=TO_CLIENT))

    def _to_server(self, unit: Unit) -> None:
        if not self.closed:
            self._port.write(raw_payload(unit))

    def _to_client(self, unit: Unit) -> None:
        if not self.closed:
            self._send_to_client(raw_payload(unit))

    def _tap_failed(self, failure) -> None:
        self.close(f"tap error: {failure.getErrorMessage()}")

    def _expire(self) -> None:
        self._timer = None
        self.close()

    def close(self, error: str | None = None) -> None:
        """End the session: stop its timer and upstream socket, close the flow."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._port.stopListening()
        self.ctx.close_flow(self.flow, error)
        self._on_closed(self)


class _Upstream(DatagramProtocol):
    noisy = False

    def __init__(self, session: UDPSession) -> None:
        self.session = session

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.session.from_server(data)

    def connectionRefused(self) -> None:
        # ICMP port unreachable from the server: nothing listens there. The
        # client would see the same silence without a proxy; keep the session.
        UDPSession._log.debug("flow {flow_id}: upstream refused a datagram", flow_id=self.session.flow.id)


class _Sessions:
    """The sessions of one listener, least recently opened first, bounded."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.by_key: OrderedDict[Any, UDPSession] = OrderedDict()

    def get(self, key: Any) -> UDPSession | None:
        return self.by_key.get(key)

    def add(self, key: Any, session: UDPSession) -> None:
        if len(self.by_key) >= self.ctx.settings.udp_max_sessions:
            _, oldest = next(iter(self.by_key.items()))
            oldest.close("too many UDP sessions")
        self.by_key[key] = session

    def discard(self, key: Any) -> None:
        self.by_key.pop(key, None)

    def close_all(self) -> None:
        for session in list(self.by_key.values()):
            session.close("listener stopped")


class ForwardUDP(DatagramProtocol):
    """A UDP port whose clients all talk to one fixed server.

    Args:
        ctx: the proxy context.
        listener: the spec, for logs.
        dst: the server.
    """

    def __init__(self, ctx: ProxyContext, listener: str, dst: tuple[str, int]) -> None:
        self.ctx = ctx
        self.listener = listener
        self.dst = dst
        self.sessions = _Sessions(ctx)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        client = (normalize_host(addr[0]), addr[1])
        session = self.sessions.get(client)
        if session is None:
            flow = Flow(client, self.dst, listener=self.listener, mode="forward", transport="udp")
            if not self.ctx.open_flow(flow):
                self.ctx.close_flow(flow)
                return
            try:
                session = UDPSession(
                    self.ctx,
                    flow,
                    lambda payload, addr=addr: self.transport.write(payload, addr),
                    lambda s, key=client: self.sessions.discard(key),
                )
            except SocketError as e:
                _unspoofable(self.ctx, flow, e)
                return
            self.sessions.add(client, session)
        session.from_client(data)

    def doStop(self) -> None:
        self.sessions.close_all()


class TransparentUDP:
    """A TPROXY UDP listener: datagrams to any destination, sessions per pair.

    Args:
        ctx: the proxy context.
        listener: the spec, for logs.
        port: the port the TPROXY rule points at.
        interface: address to bind (``""`` IPv4, ``"::"`` IPv6).
    """

    _log = Logger()

    def __init__(self, ctx: ProxyContext, listener: str, port: int, interface: str = "") -> None:
        self.ctx = ctx
        self.listener = listener
        self.port = port
        self.interface = interface
        self.sessions = _Sessions(ctx)
        self._main: _DatagramSocket | None = None
        self._repliers: dict[tuple[str, int], _DatagramSocket] = {}
        self._users: dict[tuple[str, int], int] = {}

    def start(self) -> None:
        """Bind and start reading.

        Raises:
            SocketError: the socket cannot be made (privilege, port in use).
        """
        sock = transparent_socket(socket.SOCK_DGRAM, self.interface, self.port, recv_orig_dst=True)
        self._main = _DatagramSocket(sock, self._datagram)
        self.ctx.reactor.addReader(self._main)

    def stop(self) -> None:
        """Close every session and socket."""
        self.sessions.close_all()
        for reader in [self._main, *self._repliers.values()]:
            if reader is not None:
                self.ctx.reactor.removeReader(reader)
                reader.sock.close()
        self._main = None
        self._repliers.clear()

    def _datagram(self, data: bytes, client: tuple[str, int], dst: tuple[str, int] | None) -> None:
        if dst is None:
            self._log.warn("dropping a datagram from {client}: no original destination", client=format_addr(client))
            return
        key = (client, dst)
        session = self.sessions.get(key)
        if session is None:
            session = self._open(client, dst)
            if session is None:
                return
        session.from_client(data)

    def _open(self, client: tuple[str, int], dst: tuple[str, int]) -> UDPSession | None:
        flow = Flow(client, dst, listener=self.listener, mode="transparent", transport="udp")
        if not self.ctx.open_flow(flow):
            self.ctx.close_flow(flow)
            return None
        replier = self._repliers.get(dst)
        if replier is None:
            try:
                sock = transparent_socket(socket.SOCK_DGRAM, dst[0], dst[1], recv_orig_dst=True)
            except Exception as e:
                self._log.warn("flow {flow_id}: cannot reply from {dst}: {err}", flow_id=flow.id,
                               dst=format_addr(dst), err=str(e))
                self.ctx.close_flow(flow, "cannot bind the reply address")
                return None
            replier = self._repliers[dst] = _DatagramSocket(sock, self._datagram, default_dst=dst)
            self.ctx.reactor.addReader(replier)
        self._users[dst] = self._users.get(dst, 0) + 1
        sock = replier.sock
        try:
            session = UDPSession(
                self.ctx,
                flow,
                lambda payload: _sendto(sock, payload, client),
                lambda s: self._session_closed((client, dst)),
            )
        except SocketError as e:
            self._session_closed((client, dst))
            _unspoofable(self.ctx, flow, e)
            return None
        self.sessions.add((client, dst), session)
        return session

    def _session_closed(self, key: tuple[tuple[str, int], tuple[str, int]]) -> None:
        self.sessions.discard(key)
        dst = key[1]
        self._users[dst] -= 1
        if not self._users[dst]:
            del self._users[dst]
            replier = self._repliers.pop(dst, None)
            if replier is not None:
                self.ctx.reactor.removeReader(replier)
                replier.sock.close()


def _unspoofable(ctx: ProxyContext, flow: Flow, error: SocketError) -> None:
    """A session that cannot leave from its client's address does not start (fail closed)."""
    Logger().warn("flow {flow_id}: --spoof-source: {err}; dropping the session", flow_id=flow.id, err=str(error))
    ctx.close_flow(flow, "cannot bind the client's address upstream")


def _sendto(sock: socket.socket, payload: bytes, addr: tuple[str, int]) -> None:
    try:
        sock.sendto(payload, addr)
    except (BlockingIOError, OSError) as e:  # full buffer or unreachable: drop, as UDP does
        TransparentUDP._log.debug("reply to {client} dropped: {err}", client=format_addr(addr), err=str(e))


@implementer(IReadDescriptor)
class _DatagramSocket:
    """Reads datagrams with their original destination off a raw socket."""

    def __init__(self, sock: socket.socket, handler, default_dst: tuple[str, int] | None = None) -> None:
        self.sock = sock
        self._handler = handler
        self._default_dst = default_dst

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        for _ in range(_READ_BATCH):
            try:
                data, src, dst = recv_with_orig_dst(self.sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP errors queued on the socket: nothing to read
                return
            self._handler(data, src, dst or self._default_dst)

    def connectionLost(self, reason) -> None:
        self.sock.close()

    def logPrefix(self) -> str:
        return "tinspect-udp"

