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

* QUIC: transparent UDP to a port of `Settings.quic_ports` (443) is read as
  QUIC. The client's first datagrams are held, none forwarded, until the
  ClientHello in its Initial packets is read (`tinspect.layers.quic`); the
  flow (``protocol="quic"``, ``sni``, ``alpn`` offered, ``quic_version``)
  then opens and `tinspect.layers.quic.policy.QuicPolicy` passes the
  connection (a session as above, which gets the held datagrams first) or
  refuses it (its datagrams dropped). See the QUIC block below.

With ``--spoof-source`` a session's upstream socket is bound, IP_TRANSPARENT,
to the client's address (an ephemeral port), so the server sees the client.
A session that cannot be bound so is dropped; a listener logs the first such
drop of an interval and then a count (`_Unspoofable`), not a line a datagram.

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
from tinspect.layers.quic.initial import QuicHello, peek_dcid
from tinspect.layers.quic.policy import QuicStart, Unreadable, version_name
from tinspect.net.addresses import format_addr, normalize_host
from tinspect.net.sockets import SocketError, recv_with_orig_dst, transparent_socket
from tinspect.units import TO_CLIENT, TO_SERVER, Datagram, Unit, raw_payload

__all__ = ["UDPSession", "ForwardUDP", "TransparentUDP"]

_MAX_PENDING = 256
_READ_BATCH = 64
_MAX_CIDS = 8  # connection IDs remembered per QUIC session: its first DCID, the server's, a Retry's


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
            # No SO_REUSEADDR: two sessions of one client would share an ephemeral port.
            sock = transparent_socket(socket.SOCK_DGRAM, client, 0, reuse_addr=False)
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
        self._unspoofable = _Unspoofable(ctx)

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
                self._unspoofable(flow, e)
                return
            self.sessions.add(client, session)
        session.from_client(data)

    def doStop(self) -> None:
        self.sessions.close_all()
        self._unspoofable.stop()


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
        self._unspoofable = _Unspoofable(ctx)
        self._main: _DatagramSocket | None = None
        self._repliers: dict[tuple[str, int], _DatagramSocket] = {}
        self._users: dict[tuple[str, int], int] = {}
        self._quic_ports = frozenset(ctx.settings.quic_ports)
        # Passed QUIC sessions by the client's Destination Connection IDs, per destination.
        self._cids: dict[tuple[str, int], dict[bytes, UDPSession]] = {}
        self._cids_of: dict[UDPSession, list[bytes]] = {}

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
        self._unspoofable.stop()
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
            if dst[1] in self._quic_ports:
                session = self._moved(data, client, dst) or self._quic_start(client, dst)
            else:
                session = self._open(client, dst)
            if session is None:
                return
        elif data and data[0] & 0x80 and session in self._cids_of:
            self._learn(session, dst, data)
        session.from_client(data)

    def _open(self, client: tuple[str, int], dst: tuple[str, int]) -> UDPSession | None:
        flow = Flow(client, dst, listener=self.listener, mode="transparent", transport="udp")
        if not self.ctx.open_flow(flow):
            self.ctx.close_flow(flow)
            return None
        return self._session(flow)

    def _session(self, flow: Flow) -> UDPSession | None:
        """The session relaying an open flow, with a socket replying from its destination."""
        dst = flow.dst
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
                lambda payload: _sendto(sock, payload, flow.client),  # flow.client follows a QUIC client that moves
                lambda s: self._session_closed(s, dst),
            )
        except SocketError as e:
            self._release(dst)
            self._unspoofable(flow, e)
            return None
        self.sessions.add((flow.client, dst), session)
        return session

    def _session_closed(self, session: UDPSession, dst: tuple[str, int]) -> None:
        key = (session.flow.client, dst)
        if self.sessions.get(key) is session:
            self.sessions.discard(key)
        self._forget_cids(session, dst)
        self._release(dst)

    def _release(self, dst: tuple[str, int]) -> None:
        """One session fewer replies from ``dst``; its socket closes with the last."""
        self._users[dst] -= 1
        if not self._users[dst]:
            del self._users[dst]
            replier = self._repliers.pop(dst, None)
            if replier is not None:
                self.ctx.reactor.removeReader(replier)
                replier.sock.close()

    # -- QUIC ------------------------------------------------------------------
    #
    # A datagram to a QUIC port from a new (client, destination) pair starts a
    # _QuicStart, which holds the datagrams until the ClientHello in them is
    # read (or a bound is hit); then _quic_decided makes the flow, with its
    # name, and asks the policy: a passed connection becomes a UDPSession that
    # gets the held datagrams first, a refused one a _RefusedQuic that drops
    # what follows. A passed session is also found by the Destination
    # Connection IDs of the client's long-header packets (its first DCID, and
    # the server's CID it uses once the server answered), so that a client
    # whose address changes (a NAT rebinding) keeps its session: see `_moved`.

    def _quic_start(self, client: tuple[str, int], dst: tuple[str, int]) -> "_QuicStart":
        pending = _QuicStart(self, client, dst)
        self.sessions.add((client, dst), pending)
        return pending

    def _quic_decided(self, pending: "_QuicStart", result: QuicHello | Unreadable) -> None:
        """The ClientHello is read, or cannot be: make the flow, decide, relay or refuse."""
        client, dst, ctx = pending.client, pending.dst, self.ctx
        if self.sessions.get((client, dst)) is pending:
            self.sessions.discard((client, dst))
        flow = Flow(client, dst, listener=self.listener, mode="transparent", transport="udp", protocol="quic")
        metrics = ctx.metrics
        if isinstance(result, QuicHello):
            flow.sni = result.hello.sni
            flow.alpn = ",".join(p.decode("ascii", "replace") for p in result.hello.alpn) or None
            flow.quic_version = version_name(result.version)
        else:
            flow.quic_version = version_name(result.version)
            metrics.quic_unreadable[result.kind] += 1
        metrics.quic_seen[flow.quic_version] += 1
        if not ctx.open_flow(flow):
            ctx.close_flow(flow)
            metrics.quic_refused[flow.quic_version] += 1
            self._refuse(client, dst)
            return
        verdict = ctx.quic.decide(flow.sni, dst[0], ctx.chain, flow)
        if isinstance(result, QuicHello):
            self._log.info("flow {flow_id}: QUIC {version} {client} -> {dst} for {sni} (ALPN {alpn}): {action} ({why})",
                           flow_id=flow.id, version=flow.quic_version, client=format_addr(client),
                           dst=format_addr(dst), sni=flow.sni or "no name", alpn=flow.alpn or "none",
                           action=verdict.action, why=verdict.why)
        else:
            self._log.info("flow {flow_id}: QUIC {client} -> {dst}: Initial unreadable: {reason}; {action} ({why})",
                           flow_id=flow.id, client=format_addr(client), dst=format_addr(dst),
                           reason=result.reason, action=verdict.action, why=verdict.why)
        if not verdict.passes:
            metrics.quic_refused[flow.quic_version] += 1
            ctx.close_flow(flow, f"QUIC refused ({verdict.why})")
            self._refuse(client, dst)
            return
        metrics.quic_passed[flow.quic_version] += 1
        session = self._session(flow)
        if session is None:
            return
        self._cids_of[session] = []
        for data in pending.held:
            if data and data[0] & 0x80:
                self._learn(session, dst, data)
            session.from_client(data)

    def _refuse(self, client: tuple[str, int], dst: tuple[str, int]) -> None:
        key = (client, dst)
        self.sessions.add(key, _RefusedQuic(self.ctx, lambda r: self.sessions.discard(key)
                                            if self.sessions.get(key) is r else None))

    def _learn(self, session: UDPSession, dst: tuple[str, int], data: bytes) -> None:
        """Note the Destination Connection ID of a long-header packet of a passed session."""
        cid = peek_dcid(data)
        known = self._cids_of[session]
        if not cid or cid in known or len(known) >= _MAX_CIDS:
            return
        owners = self._cids.setdefault(dst, {})
        if cid not in owners:
            owners[cid] = session
            known.append(cid)

    def _forget_cids(self, session: UDPSession, dst: tuple[str, int]) -> None:
        owners = self._cids.get(dst)
        for cid in self._cids_of.pop(session, ()):
            if owners is not None and owners.get(cid) is session:
                del owners[cid]
        if owners == {}:
            del self._cids[dst]

    def _moved(self, data: bytes, client: tuple[str, int], dst: tuple[str, int]) -> UDPSession | None:
        """The passed session a datagram from a new client address belongs to, by its connection ID.

        A short header does not say how long its connection ID is, so each
        length known for this destination is tried.  A client that migrates
        on purpose switches to a connection ID sent encrypted
        (NEW_CONNECTION_ID), which the proxy cannot see: that datagram starts
        a connection of its own (short header: unreadable, decided by
        ``--quic``).
        """
        owners = self._cids.get(dst)
        if not owners or not data:
            return None
        if data[0] & 0x80:
            session = owners.get(peek_dcid(data) or b"")
        else:
            session = next((owners[cid] for n in {len(c) for c in owners}
                            if (cid := data[1:1 + n]) in owners), None)
        if session is None or session.closed:
            return None
        old = session.flow.client
        self.sessions.discard((old, dst))
        session.flow.client = client
        self.sessions.add((client, dst), session)
        self._log.info("flow {flow_id}: QUIC client moved from {old} to {client}", flow_id=session.flow.id,
                       old=format_addr(old), client=format_addr(client))
        return session


class _QuicStart:
    """A QUIC connection whose ClientHello is not read yet: its datagrams are held, none forwarded.

    It sits in the listener's sessions (so their bound covers it too) until
    the reader has the hello or gives up, or `Settings.quic_hold_timeout`
    passes.
    """

    def __init__(self, listener: TransparentUDP, client: tuple[str, int], dst: tuple[str, int]) -> None:
        self.listener = listener
        self.client = client
        self.dst = dst
        self.closed = False
        self._start = QuicStart()
        self._seconds = listener.ctx.settings.quic_hold_timeout
        self._timer = listener.ctx.reactor.callLater(self._seconds, self._timeout)

    @property
    def held(self) -> list[bytes]:
        """The datagrams held, in arrival order."""
        return self._start.held

    def from_client(self, data: bytes) -> None:
        """Hold and read a datagram; decide once the hello is whole or unreadable."""
        if self.closed:
            return
        result = self._start.feed(data)
        if result is not None:
            self._decided(result)

    def _timeout(self) -> None:
        self._timer = None
        self._decided(self._start.give_up(self._seconds))

    def _decided(self, result: QuicHello | Unreadable) -> None:
        self.close()
        self.listener._quic_decided(self, result)

    def close(self, error: str | None = None) -> None:
        """Stop waiting (decided, or evicted: its held datagrams are dropped)."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        key = (self.client, self.dst)
        if self.listener.sessions.get(key) is self:
            self.listener.sessions.discard(key)


class _RefusedQuic:
    """A refused QUIC connection: its datagrams are dropped until it has been quiet for
    ``--udp-timeout``.  Nothing is answered (no ICMP either): to the client the server
    is silent, and a browser falls back to TCP.

    Args:
        ctx: the proxy context.
        on_closed: called once when it ends.
    """

    def __init__(self, ctx: ProxyContext, on_closed: Callable[["_RefusedQuic"], None]) -> None:
        self.ctx = ctx
        self.closed = False
        self.dropped = 0
        self._on_closed = on_closed
        self._timer = ctx.reactor.callLater(ctx.settings.udp_idle_timeout, self.close)

    def from_client(self, data: bytes) -> None:
        """Drop a datagram of the refused connection."""
        self.dropped += 1
        self._timer.reset(self.ctx.settings.udp_idle_timeout)

    def close(self, error: str | None = None) -> None:
        """Forget the connection: later datagrams would be decided again."""
        if self.closed:
            return
        self.closed = True
        if self._timer.active():
            self._timer.cancel()
        self._on_closed(self)


class _Unspoofable:
    """Sessions of a listener that cannot leave from their client's address: dropped, logged in bulk.

    Such a session does not start (fail closed), so the client's next datagram
    tries a session again: under load, one failure a datagram. The first in
    an interval of `INTERVAL` seconds is logged with its flow id and reason;
    the others are counted, and one line at the interval's end says how many.

    Args:
        ctx: the proxy context (its reactor's timer ends an interval).
    """

    INTERVAL = 10.0
    _log = Logger()

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.dropped = 0  # sessions dropped since the last line, not logged one by one
        self._timer: Any = None

    def __call__(self, flow: Flow, error: SocketError) -> None:
        """Drop ``flow``'s session, which could not bind its client's address (``error``)."""
        self.ctx.close_flow(flow, "cannot bind the client's address upstream")
        if self._timer is not None:
            self.dropped += 1
            return
        self._log.warn("flow {flow_id}: --spoof-source: {err}; dropping the session", flow_id=flow.id,
                       err=str(error))
        self._timer = self.ctx.reactor.callLater(self.INTERVAL, self._summary)

    def _summary(self) -> None:
        """An interval ends: its count, if any, is said, and a new one starts (the failures go on)."""
        self._timer = None
        if self.dropped:
            self._say()
            self._timer = self.ctx.reactor.callLater(self.INTERVAL, self._summary)

    def _say(self) -> None:
        self._log.warn("--spoof-source: {n} more UDP sessions dropped in {seconds:.0f} s: they could not leave "
                       "from their client's address", n=self.dropped, seconds=self.INTERVAL)
        self.dropped = 0

    def stop(self) -> None:
        """The listener stops: the interval's count is said now, not after it."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.dropped:
            self._say()


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

