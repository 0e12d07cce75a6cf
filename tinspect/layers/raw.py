"""Raw TCP relay: each chunk read becomes a `Data` unit through the taps.

Theory of operation
-------------------
A relayed connection has two `Leg` objects, the client's and the server's.
Each leg reads (its transport is a producer) and writes (its transport is a
consumer). Reading from a leg may be paused for several independent reasons
(`PauseReason`, the one list of them for every layer), kept as bits so that
one reason ending does not resume reading another still needs stopped; here:

* ``SINK``: the other leg's write buffer is full. Each transport is registered
  as a streaming producer on the *other* leg's transport (as
  `twisted.protocols.portforward` does), through a `SinkPauser`.
* ``TAPS``: a tap on the arm fed by this leg went asynchronous.
* ``CONNECTING``: the client leg waits for the upstream connection.

Closing follows the bytes: when a leg reads EOF, an end marker is queued on
its arm (`Arm.finish`), and only when everything before it has been delivered
is the other leg's write side shut (``loseWriteConnection``), so a client that
half-closes still gets the whole response. A leg whose read and write sides
are both closed is closed. When a leg is lost entirely, the other is closed
gracefully after the queued units; a tap error or `Flow.abort` aborts both
(fail closed).
"""

from __future__ import annotations

import enum
from typing import Callable

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect._compat import batched_tls_reads, eager_tls_records, keep_declarations, lazy_tls_records, tls_started
from tinspect._compat import fast_write as send  # the relay's write, and the HTTP/1.1 layer's
from tinspect.chain import Arm, TapChain
from tinspect.flow import Flow
from tinspect.net.addresses import format_addr
from tinspect.units import TO_CLIENT, TO_SERVER, Data, Unit, raw_payload

__all__ = ["Leg", "PauseReason", "SinkPauser", "RawRelay", "send", "start_tls", "batch_records"]


class PauseReason(enum.IntFlag):
    """Why a `Leg` stops reading: each layer's reasons, one bit each.

    An ``IntFlag`` so that a `Leg` keeps its reasons as a plain ``int``: pausing and
    resuming happen on every read and write of a busy connection, and arithmetic on
    ``enum.Flag`` members costs 0.6 us an operation where an ``int``'s costs 0.02.
    """

    SINK = 1
    """The other side's write buffer is full (the raw relay, HTTP/1.1)."""
    TAPS = 2
    """A tap on the arm this side feeds went asynchronous."""
    CONNECTING = 4
    """The client waits for the upstream connection (the raw relay)."""
    WAIT = 8
    """A pipelined HTTP/1.1 request waits for its turn."""
    FULL = 16
    """An HTTP/2 endpoint's own write buffer is full."""
    ALL = SINK | TAPS | CONNECTING | WAIT | FULL
    """Every reason: what a layer handing the connection on lifts (`tinspect.net.handoff`)."""


EAGER_RECORDS = 8192  # see start_tls
batched_tls_reads()  # a read of many TLS records reaches the layers as one chunk, not one per record


def start_tls(transport, handshake) -> None:
    """``transport.startTLS(handshake)``, with small writes of TLS records
    sent as `send` sends (at once when nothing is queued) on a TCP transport.

    Only small ones (up to ``EAGER_RECORDS`` bytes: a request, a response
    head, a WebSocket message): a bulk transfer writes a record or two per
    write, and Twisted's buffer, flushed once per reactor turn, makes fewer
    and larger sends of them (lane e lost a sixth of its rate when every
    write went out at once). And none for HTTP/2 (`batch_records`).
    """
    transport.startTLS(handshake)
    keep_declarations(transport)
    eager_tls_records(transport, EAGER_RECORDS)


def batch_records(transport) -> None:
    """Leave all TLS records of ``transport`` to Twisted's buffer: for a
    protocol that batches its writes itself. An HTTP/2 connection writes
    the frames of a batch of events at once, and its small control frames
    (WINDOW_UPDATE, SETTINGS acknowledgements) sent one by one would only
    multiply system calls."""
    lazy_tls_records(transport)


class Leg:
    """One side of a relayed connection.

    Args:
        transport: the side's transport (TCP, or later a TLS protocol).
        name: ``"client"`` or ``"server"``, for logs.
    """

    __slots__ = ("transport", "name", "_paused", "read_open", "write_open", "lost")

    def __init__(self, transport, name: str) -> None:
        self.transport = transport
        self.name = name
        self._paused = 0  # PauseReason bits, as an int
        self.read_open = True
        self.write_open = True
        self.lost = False

    @property
    def paused(self) -> bool:
        """Whether reading is stopped, for any reason."""
        return bool(self._paused)

    def pause(self, reason: PauseReason) -> None:
        """Stop reading for ``reason``; idempotent."""
        if not self._paused and not self.lost:
            self.transport.pauseProducing()
        self._paused |= reason._value_  # int arithmetic: see PauseReason

    def resume(self, reason: PauseReason) -> None:
        """Drop ``reason``; read again once no reason is left."""
        bits = reason._value_
        if not self._paused & bits:
            return
        self._paused &= ~bits
        if not self._paused and not self.lost and self.read_open:
            self.transport.resumeProducing()

    def write(self, data: bytes) -> None:
        """Send ``data`` unless writing is over."""
        if self.write_open and not self.lost:
            send(self.transport, data)

    def shut_write(self) -> None:
        """Send EOF (half-close) once; close the leg if reading is done too.

        TLS cannot half-close (its close_notify ends both directions), so a
        TLS leg is closed instead.
        """
        if self.write_open and not self.lost:
            self.write_open = False
            if self.read_open and not tls_started(self.transport):
                self.transport.loseWriteConnection()
            else:
                self._lose()

    def read_closed(self) -> None:
        """The peer sent EOF; close the leg if writing is done too."""
        self.read_open = False
        if not self.write_open and not self.lost:
            self._lose()

    def close(self) -> None:
        """Close gracefully: flush what is buffered, then FIN."""
        self.write_open = False
        if not self.lost:
            self._lose()

    def _lose(self) -> None:
        # Nothing more is written, so no producer needs pausing on this
        # transport's buffer; and TLS sends its close_notify only once no
        # producer is registered (Twisted's TLSMemoryBIOProtocol waits for
        # unregisterProducer), so a registered one would hold the
        # connection open until the peer gave up.
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def abort(self) -> None:
        """Close at once, dropping buffered data (RST)."""
        self.write_open = False
        if not self.lost:
            self.transport.abortConnection()


@implementer(IPushProducer)
class SinkPauser:
    """Registered on one leg's transport; pauses the other leg while it is full.

    Args:
        leg: the leg to pause (for ``PauseReason.SINK``) while the transport this is
            registered on has a full write buffer.
    """

    __slots__ = ("_leg",)

    def __init__(self, leg: Leg) -> None:
        self._leg = leg

    def pauseProducing(self) -> None:
        self._leg.pause(PauseReason.SINK)

    def resumeProducing(self) -> None:
        self._leg.resume(PauseReason.SINK)

    def stopProducing(self) -> None:
        # The consumer went away; connectionLost on its protocol handles it.
        pass


class RawRelay:
    """Relays a byte stream between two legs through the tap chain.

    The client leg exists from the start; the server leg is added by
    `server_connected` once the upstream connection is up. Until then the
    client is paused (``CONNECTING``).

    Args:
        chain: the taps.
        flow: the flow being relayed.
        client_transport: the client's transport.
        on_closed: called once when both legs are gone.
        on_server_connected: called when the upstream connection is up,
            before anything is relayed.
    """

    _log = Logger()

    def __init__(
        self,
        chain: TapChain,
        flow: Flow,
        client_transport,
        on_closed: Callable[[], None],
        on_server_connected: Callable[[], None] | None = None,
    ) -> None:
        self.flow = flow
        self._on_server_connected = on_server_connected
        self.client = Leg(client_transport, "client")
        self.server: Leg | None = None
        self._connecting = True
        self._held: list[bytes] = []  # client bytes that came before the server
        self._held_eof = False
        self._closed = False
        self._on_closed = on_closed
        self.arms = {
            TO_SERVER: Arm(
                chain,
                flow,
                TO_SERVER,
                self._to_server,
                pause=lambda: self.client.pause(PauseReason.TAPS),
                resume=lambda: self.client.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_end=self._client_ended,
            ),
            TO_CLIENT: Arm(
                chain,
                flow,
                TO_CLIENT,
                self._to_client,
                pause=lambda: self.server and self.server.pause(PauseReason.TAPS),
                resume=lambda: self.server and self.server.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_end=self._server_ended,
            ),
        }
        flow.attach(self.arms, self.abort)
        self.client.pause(PauseReason.CONNECTING)

    # -- wiring ------------------------------------------------------------

    def server_connected(self, server_transport) -> None:
        """The upstream connection is up: wire backpressure and start reading."""
        self._connecting = False
        self.server = server = Leg(server_transport, "server")
        client = self.client
        if client.lost:
            server.close()
            return
        if self._on_server_connected is not None:
            # Before any server byte is relayed: an explicit proxy's "200
            # Connection established" must precede what the server says.
            self._on_server_connected()
        server.transport.registerProducer(SinkPauser(client), True)
        client.transport.registerProducer(SinkPauser(server), True)
        held, self._held = self._held, []
        for data in held:
            self.client_data(data)
        if self._held_eof:
            self.arms[TO_SERVER].finish()
        client.resume(PauseReason.CONNECTING)

    def server_failed(self, reason: str) -> None:
        """The upstream connection could not be made: close the client."""
        self._connecting = False
        self.flow.mark_ended(reason)
        self._log.warn(
            "flow {flow_id}: upstream {dst} failed: {reason}; closing client {client}",
            flow_id=self.flow.id,
            dst=format_addr(self.flow.dst),
            reason=reason,
            client=format_addr(self.flow.client),
        )
        self.client.close()
        self._maybe_closed()

    # -- data in --------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client (held until the server is connected)."""
        if self.server is None:
            if self._connecting:
                self._held.append(data)
            return
        self.arms[TO_SERVER].submit(Data(data, direction=TO_SERVER))

    def server_data(self, data: bytes) -> None:
        """Bytes from the server."""
        self.arms[TO_CLIENT].submit(Data(data, direction=TO_CLIENT))

    def client_eof(self) -> None:
        """The client half-closed (or closed)."""
        self.client.read_closed()
        if self.server is None and self._connecting:
            self._held_eof = True
            return
        self.arms[TO_SERVER].finish()

    def server_eof(self) -> None:
        """The server half-closed (or closed)."""
        if self.server is not None:
            self.server.read_closed()
        self.arms[TO_CLIENT].finish()

    def client_lost(self, reason: Failure) -> None:
        """The client connection is gone."""
        self.client.lost = True
        if self.client.read_open:
            self.client.read_open = False
            self.arms[TO_SERVER].finish()
        self._maybe_closed()

    def server_lost(self, reason: Failure) -> None:
        """The server connection is gone."""
        if self.server is None:
            return
        if not reason.check(ConnectionDone) and not self.flow.closed:
            self.flow.error = self.flow.error or "upstream reset"
            self._log.warn(
                "flow {flow_id}: upstream {dst} reset the connection; closing client {client}",
                flow_id=self.flow.id,
                dst=format_addr(self.flow.dst),
                client=format_addr(self.flow.client),
            )
        self.server.lost = True
        if self.server.read_open:
            self.server.read_open = False
            self.arms[TO_CLIENT].finish()
        self._maybe_closed()

    # -- data out -------------------------------------------------------------

    def _to_server(self, unit: Unit) -> None:
        if self.server is not None:
            self.server.write(raw_payload(unit))

    def _to_client(self, unit: Unit) -> None:
        self.client.write(raw_payload(unit))

    def _client_ended(self) -> None:
        # Everything the client sent has been delivered: carry its EOF across.
        if self.server is not None:
            if self.client.lost:
                self.server.close()
            else:
                self.server.shut_write()

    def _server_ended(self) -> None:
        if self.server is not None and self.server.lost:
            self.client.close()
        else:
            self.client.shut_write()

    # -- failure --------------------------------------------------------------

    def _tap_failed(self, failure: Failure) -> None:
        self.abort(f"tap error: {failure.getErrorMessage()}")

    def abort(self, reason: str) -> None:
        """Abort both legs at once (fail closed)."""
        self.flow.mark_ended(reason)
        self._log.info("flow {flow_id}: aborted: {reason}", flow_id=self.flow.id, reason=reason)
        self.client.abort()
        if self.server is not None:
            self.server.abort()

    def _maybe_closed(self) -> None:
        if self.client.lost and (self.server.lost if self.server else not self._connecting):
            if not self._closed:
                self._closed = True
                self._on_closed()
        elif self.client.lost and self.server is not None and self.arms[TO_SERVER].idle:
            self.server.close()
        elif self.server is not None and self.server.lost and self.arms[TO_CLIENT].idle:
            self.client.close()

