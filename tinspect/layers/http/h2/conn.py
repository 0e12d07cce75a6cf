"""One HTTP/2 connection as the proxy drives it: the h2 state machine, its
transport, and the body data waiting for flow-control window.

`H2Endpoint` is used for both legs of an HTTP/2 flow: towards the client
(an h2 server-side connection) and towards the server (client side). The
layer hands it body data per stream (`send_data`, `send_end`); `pump` sends
as much as the peer's windows allow, a slice of at most ``QUANTUM`` bytes per
stream per round so that concurrent streams progress fairly, and calls
``on_sent(stream_id)`` after it took data of a stream, so the layer can
re-open the *other* leg's window for that stream (end-to-end flow control:
what one peer sent is acknowledged only once the other peer's connection
took it). Nothing is pumped while the transport's write buffer is full
(`full`, set by the transport through `FullPauser`); reading from that
transport stops too, so the control frames a peer provokes (PING and
SETTINGS acknowledgements) cannot pile up either.

Frames the state machine produces are written once per `flush`, so that a
batch of events becomes one write.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, StreamEnded, TrailersReceived
from h2.exceptions import ProtocolError as H2ProtocolError
from h2.settings import SettingCodes, Settings
from hpack.exceptions import HPACKError, OversizedHeaderListError
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from tinspect._compat import (
    GracefulH2Connection,
    cheap_data_frame_repr,
    fast_header_validation,
    quiet_hpack_debug,
)
from tinspect.layers.raw import Leg, PauseReason, batch_records

__all__ = ["H2Endpoint", "FullPauser", "new_connection", "take_whole", "take_data", "error_name", "QUANTUM",
           "STREAM_WINDOW", "CONNECTION_WINDOW"]

QUANTUM = 16384  # bytes per stream per round of `pump`
# What a peer may send us before we acknowledge it: with end-to-end flow
# control this is also what one connection can make the proxy hold.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 4 << 20


def new_connection(*, client_side: bool, max_header_list_size: int, max_concurrent_streams: int = 100) -> H2Connection:
    """An h2 state machine with the proxy's settings, its preface queued.

    Headers stay bytes. Inbound ones are validated by h2 on every leg, since
    both peers are untrusted: field names (no upper case, no controls, SP,
    colon or DEL), values (no NUL, CR or LF, no surrounding whitespace: what
    smuggling through a translation to HTTP/1.1 would need), pseudo-fields
    (known ones, once each, before the others, the ones each kind of message
    must have), connection-specific fields and ``te``, ``:authority``
    against ``host``, and an empty ``:path``. Outbound ones are not validated
    by h2 a second time (a fifth of the library's work per relayed request,
    `bench/micro_exchange.py`): what goes out is built by
    `tinspect.layers.http.h2.fields`, which writes the pseudo-fields itself,
    lower-cases names and drops connection-specific fields, pseudo-fields
    and ``host`` from what taps left, refuses a request with no authority or
    an empty path as h2's outbound checks did, and `tinspect.headers.Headers`
    refuses CR, LF and NUL in the values taps set. Server push is refused
    towards servers; header lists are bounded (HPACK bombs); the h2 library
    bounds CONTINUATION runs itself.
    """
    config = H2Configuration(
        client_side=client_side,
        header_encoding=None,
        validate_inbound_headers=True,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    # What must be remembered of closed streams (`GracefulH2Connection`) is
    # bounded by count, not by time: the peer sent its late frame before it
    # saw our RST_STREAM, so the streams closed in between are ones it could
    # have open then, about twice the concurrency limit at most (the upstream
    # leg carries the client leg's streams). Ten times the limit (1,000
    # streams, ~150 KiB) leaves a wide margin.
    conn = GracefulH2Connection(config, max_closed_streams=10 * max_concurrent_streams)
    values = {
        SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
        SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list_size,
        SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams,
    }
    if client_side:
        values[SettingCodes.ENABLE_PUSH] = 0
    conn.local_settings = Settings(client=client_side, initial_values=values)
    conn.decoder.max_header_list_size = max_header_list_size
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return conn


cheap_data_frame_repr()  # h2 builds repr(frame) for every frame it receives
quiet_hpack_debug()  # hpack calls logging for every field it encodes or decodes
fast_header_validation()  # h2 walks every received field name and value byte by byte


class _Outgoing:
    """Body data of one stream that waits for window, and how it ends."""

    __slots__ = ("chunks", "size", "end", "trailers")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.end = False
        self.trailers: list | None = None


class H2Endpoint:
    """One h2 connection and its transport.

    Args:
        conn: the h2 state machine (client or server side).
        on_sent: called with a stream id after `pump` took some of its data.
    """

    def __init__(self, conn: H2Connection, on_sent: Callable[[int], None]) -> None:
        self.conn = conn
        self.leg: Leg | None = None
        self.full = False
        self._on_sent = on_sent
        self._out: dict[int, _Outgoing] = {}

    def attach(self, transport: Any, name: str) -> None:
        """Start using ``transport`` (writes what the state machine has queued)."""
        self.leg = Leg(transport, name)
        batch_records(transport)  # `flush` writes a batch at once already
        transport.registerProducer(FullPauser(self), True)
        self.flush()

    @property
    def writable(self) -> bool:
        leg = self.leg
        return leg is not None and leg.write_open and not leg.lost

    def flush(self) -> None:
        """Write the frames the state machine has produced (they wait in it
        until the transport is attached)."""
        if self.writable:
            data = self.conn.data_to_send()
            if data:
                self.leg.transport.write(data)

    def pending(self, stream_id: int) -> int:
        """Bytes of ``stream_id`` still waiting for window."""
        out = self._out.get(stream_id)
        return out.size if out is not None else 0

    def queued(self, stream_id: int) -> bool:
        """Whether data or an end of ``stream_id`` still waits to be sent."""
        return stream_id in self._out

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Queue body data; it goes out as windows allow (call `pump`)."""
        if not data:
            return
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outgoing()
        out.chunks.append(data)
        out.size += len(data)

    def send_end(self, stream_id: int, trailers: list | None = None) -> None:
        """End the stream (with trailers) once its queued data is sent."""
        out = self._out.get(stream_id)
        if out is None:
            out = self._out[stream_id] = _Outgoing()
        out.end = True
        out.trailers = trailers or None

    def broken(self, error: Exception) -> int:
        """The error code of the GOAWAY the state machine queued for
        ``error`` (a bad frame from the peer), corrected where h2 is vaguer
        than RFC 9113: an undecodable header block is a COMPRESSION_ERROR
        (§4.3), not a PROTOCOL_ERROR."""
        code = getattr(error, "error_code", ErrorCodes.PROTOCOL_ERROR)
        if isinstance(error.__cause__, HPACKError) and not isinstance(error.__cause__, OversizedHeaderListError):
            data = self.conn.data_to_send()
            if data[-17:-13] == b"\x00\x00\x08\x07":  # a GOAWAY frame head, no debug data
                data = data[:-4] + int(ErrorCodes.COMPRESSION_ERROR).to_bytes(4, "big")
            if data and self.writable:
                self.leg.transport.write(data)
            code = ErrorCodes.COMPRESSION_ERROR
        return code

    def forget(self, stream_id: int) -> None:
        """Drop what waits for ``stream_id`` (it was reset)."""
        self._out.pop(stream_id, None)

    def reset(self, stream_id: int, code: int) -> None:
        """Reset a stream (if it is still open) and drop what waits for it."""
        self._out.pop(stream_id, None)
        try:
            self.conn.reset_stream(stream_id, code)
        except H2ProtocolError:  # the stream, or the connection, is closed already
            pass

    def goaway(self, last_stream_id: int) -> None:
        """Send a graceful GOAWAY: no new streams beyond ``last_stream_id``.

        Written by hand after what is queued, because h2 would close the
        connection for the streams that are still to finish too.
        """
        if self.writable:
            self.flush()
            self.leg.transport.write(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=0).serialize())

    def pump(self) -> None:
        """Send queued body data while windows and the transport allow."""
        out = self._out
        if not out or self.full or not self.writable:
            self.flush()
            return
        conn = self.conn
        sent = []
        progress = True
        while progress and out and not self.full:
            progress = False
            for stream_id in list(out):
                item = out[stream_id]
                try:
                    if item.size:
                        room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, QUANTUM)
                        if room <= 0:
                            continue
                        piece = _take(item, room)
                        last = item.end and not item.size and item.trailers is None
                        conn.send_data(stream_id, piece, end_stream=last)
                        progress = True
                        sent.append(stream_id)
                        if last:
                            del out[stream_id]
                            continue
                    if item.end and not item.size:
                        if item.trailers is not None:
                            conn.send_headers(stream_id, item.trailers, end_stream=True)
                        else:
                            conn.end_stream(stream_id)
                        del out[stream_id]
                        sent.append(stream_id)
                except H2ProtocolError:  # the stream, or the connection, is closed
                    del out[stream_id]
            data = conn.data_to_send()
            if data and self.writable:
                self.leg.transport.write(data)  # may set `full`
        for stream_id in dict.fromkeys(sent):
            self._on_sent(stream_id)
        self.flush()  # what the callbacks queued (a RST_STREAM after an early answer) goes out too

    def close(self) -> None:
        if self.leg is not None:
            self.flush()
            self.leg.close()

    def abort(self) -> None:
        if self.leg is not None:
            self.leg.abort()


def take_whole(events: list, i: int, sid: int) -> tuple[bytes, list | None, int, int] | None:
    """A message's whole body, if its end follows at ``events[i:]`` with no
    other stream's event in between: ``(body, trailers, credit, next i)``."""
    parts = []
    credit = 0
    trailers = None
    n = len(events)
    while i < n:
        event = events[i]
        if getattr(event, "stream_id", None) != sid:
            return None
        kind = type(event)
        i += 1
        if kind is DataReceived:
            parts.append(event.data)
            credit += event.flow_controlled_length
        elif kind is TrailersReceived:
            trailers = event.headers
        elif kind is StreamEnded:
            return (parts[0] if len(parts) == 1 else b"".join(parts)), trailers, credit, i
        else:
            return None
    return None


def take_data(events: list, i: int) -> tuple[bytes, int, int]:
    """The body data of the run of DATA frames of one stream that starts at
    ``events[i]`` (a `DataReceived`): ``(data, credit, next i)``.

    A peer sends a body in frames of its choosing (nginx: 8 KiB), and a read
    of the connection holds several; passed on as one piece, they cost one
    unit through the taps and one queueing on the other leg instead of one
    per frame. Events of other streams are not passed over, so the order of
    what each stream carries stays as it came.
    """
    first = events[i]
    sid = first.stream_id
    n = len(events)
    j = i + 1
    while j < n and type(events[j]) is DataReceived and events[j].stream_id == sid:
        j += 1
    if j == i + 1:
        return first.data, first.flow_controlled_length, j
    run = events[i:j]
    return b"".join([e.data for e in run]), sum([e.flow_controlled_length for e in run]), j


def error_name(code: int) -> str:
    """An HTTP/2 error code's name (``PROTOCOL_ERROR``), for logs."""
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)


def _take(item: _Outgoing, room: int) -> bytes | memoryview:
    """Up to ``room`` bytes from the front of ``item``'s queue."""
    chunks = item.chunks
    first = chunks[0]
    if len(first) <= room:
        chunks.popleft()
        parts = [first]
        size = len(first)
        while chunks and size + len(chunks[0]) <= room:
            nxt = chunks.popleft()
            parts.append(nxt)
            size += len(nxt)
        piece = parts[0] if len(parts) == 1 else b"".join(parts)
    else:
        # A view, so that taking a frame's worth from a large piece copies nothing of what stays.
        view = first if type(first) is memoryview else memoryview(first)
        piece = view[:room]
        chunks[0] = view[room:]
    item.size -= len(piece)
    return piece


@implementer(IPushProducer)
class FullPauser:
    """Registered on an endpoint's transport: tells it when its buffer is full."""

    __slots__ = ("_endpoint",)

    def __init__(self, endpoint: H2Endpoint) -> None:
        self._endpoint = endpoint

    def pauseProducing(self) -> None:
        ep = self._endpoint
        ep.full = True
        if ep.leg is not None:
            ep.leg.pause(PauseReason.FULL)

    def resumeProducing(self) -> None:
        ep = self._endpoint
        ep.full = False
        if ep.leg is not None:
            ep.leg.resume(PauseReason.FULL)
        ep.pump()

    def stopProducing(self) -> None:
        pass
