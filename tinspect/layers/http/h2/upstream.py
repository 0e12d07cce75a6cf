"""The server leg of an HTTP/2 flow: HTTP/2 to the server, or HTTP/1.1.

The HTTP/2 layer (`tinspect.layers.http.h2.layer.H2Layer`) hands each client stream to
one of two upstreams with the same small interface (``open``, ``body``,
``end``, ``cancel``, ``credit``, ``pending``, ``pause``/``resume``,
``close``/``abort``) and hears back through the layer's ``upstream_*``
methods:

* `H2Upstream`: one HTTP/2 connection to the server; each client stream is
  one upstream stream. Used when the server chose h2 in TLS ALPN, and for
  cleartext prior-knowledge clients, after a *probe*: the connection preface
  goes out and requests wait until the server's first bytes show a SETTINGS
  frame. A server that answers anything else (an HTTP/1.1 ``400``), closes,
  or says nothing for ``sniff_timeout`` is taken to speak HTTP/1.1 only:
  the waiting streams move to an `H1Upstreams`, and the destination is
  remembered so later connections do not probe again.
* `H1Upstreams`: the requests translated to HTTP/1.1, one exchange per
  connection at a time, up to ``MAX_H1`` connections to the destination,
  kept alive between exchanges (the streams wait their turn beyond that).
  The connections are TLS again, to the same name and verified, when the
  flow is intercepted TLS.

A stream's request body that arrives before its upstream stream exists
(the probe, a full connection) is held on the stream (``held``); it counts
as not yet taken, so the client's window for it stays closed.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from tinspect.headers import Headers
from tinspect.layers.http.h2.conn import H2Endpoint, error_name, new_connection, take_data, take_whole
from tinspect.layers.http.h2.fields import H2FieldError, list_size, request_block, response_from_block, trailer_block
from tinspect.layers.http.http1.parse import (
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    ProtocolError,
    ResponseHead,
    persists,
    take_body,
)
from tinspect.layers.http.http1.upstream import Http1Upstream
from tinspect.layers.raw import PauseReason
from tinspect.net.addresses import format_addr
from tinspect.net.handoff import Upstream
from tinspect.units import Response

__all__ = ["H2Upstream", "H1Upstreams", "MAX_H1", "remember_h1_only", "known_h1_only"]

MAX_H1 = 6  # HTTP/1.1 connections per flow when translating, as browsers do

_PROBING, _READY, _CLOSING, _GONE = "probing", "ready", "closing", "gone"
_H1_ONLY_MAX = 4096


def known_h1_only(ctx: Any, dst: tuple[str, int]) -> bool:
    """Whether a cleartext probe found ``dst`` speaking HTTP/1.1 only."""
    memory = getattr(ctx, "h1_only", None)
    return memory is not None and dst in memory


def remember_h1_only(ctx: Any, dst: tuple[str, int]) -> None:
    memory = getattr(ctx, "h1_only", None)
    if memory is None:
        memory = ctx.h1_only = OrderedDict()
    memory[dst] = True
    memory.move_to_end(dst)
    while len(memory) > _H1_ONLY_MAX:
        memory.popitem(last=False)


class H2Upstream:
    """One HTTP/2 connection to the server, carrying every client stream.

    Args:
        layer: the HTTP/2 layer.
        upstream: the connection the sniffer opened (its shell's handler
            becomes this), as the sniffer knew it.
        probe: the server was not asked for h2 (cleartext): find out first.
    """

    _log = Logger()

    def __init__(self, layer: Any, upstream: Upstream, *, probe: bool) -> None:
        self.layer = layer
        self.shell = shell = upstream.shell
        shell.handler = self
        settings = layer.ctx.settings
        self.ep = H2Endpoint(new_connection(client_side=True, max_header_list_size=settings.max_header_bytes), self._took)
        self.by_id: dict[int, Any] = {}
        self.waiting: deque = deque()
        self.state = _PROBING if probe else _READY
        self.connecting = upstream.connecting
        self.failure = upstream.failure
        self._probe = b""
        self._timer: Any = None
        if upstream.transport is not None:
            self.server_connected(upstream.transport)
        elif upstream.failure is not None:
            self.state = _GONE

    # -- the layer's interface ------------------------------------------------

    def open(self, st: Any) -> None:
        if self.failure is not None:
            self.layer.upstream_failed(st, self.failure, None)
        elif self.state == _GONE or self.state == _CLOSING:
            self.layer.upstream_failed(st, "the server connection is closing", ErrorCodes.REFUSED_STREAM)
        elif self.state == _READY and self.ep.leg is not None and self._has_slot():
            self._open(st)
        else:
            self.waiting.append(st)

    def body(self, st: Any, data: bytes) -> None:
        if st.up_id is None:
            st.hold(data)
            return
        self.ep.send_data(st.up_id, data)
        self.ep.pump()

    def end(self, st: Any, trailers: Headers | None) -> None:
        if st.up_id is None:
            st.hold_end(trailers)
            return
        self.ep.send_end(st.up_id, trailer_block(trailers))
        self.ep.pump()

    def pending(self, st: Any) -> int:
        return st.held_size if st.up_id is None else self.ep.pending(st.up_id)

    def credit(self, st: Any) -> None:
        """The client took ``st``'s response data: let the server send more."""
        owed = st.owed_server
        if owed and st.up_id is not None:
            st.owed_server = 0
            self.ep.conn.acknowledge_received_data(owed, st.up_id)
            self.ep.flush()

    def cancel(self, st: Any, code: int) -> None:
        if st.up_id is None:
            if st in self.waiting:
                self.waiting.remove(st)
            return
        self.by_id.pop(st.up_id, None)
        self.ep.reset(st.up_id, code)
        self.ep.flush()
        self._start_waiting()

    def pause(self, reason: PauseReason = PauseReason.TAPS) -> None:
        if self.ep.leg is not None:
            self.ep.leg.pause(reason)

    def resume(self, reason: PauseReason = PauseReason.TAPS) -> None:
        if self.ep.leg is not None:
            self.ep.leg.resume(reason)

    def goaway(self, code: int) -> None:
        """The client is going away: say so to the server."""
        if self.ep.leg is None or self.state != _READY:
            return
        if code:
            self.ep.conn.close_connection(error_code=code)
            self.ep.flush()
        else:
            self.ep.goaway(0)  # the server opens no streams of its own: push is off

    def close(self) -> None:
        self.state = _GONE
        self._stop_timer()
        if self.ep.leg is not None:
            if self.ep.writable:
                try:
                    self.ep.conn.close_connection()
                except H2ProtocolError:
                    pass
            self.ep.close()
        elif self.connecting is not None:
            self.connecting.cancel()

    def abort(self) -> None:
        self.state = _GONE
        self._stop_timer()
        if self.ep.leg is not None:
            self.ep.abort()
        elif self.connecting is not None:
            self.connecting.cancel()

    # -- streams --------------------------------------------------------------

    def _has_slot(self) -> bool:
        conn = self.ep.conn
        return conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams

    def _open(self, st: Any) -> None:
        conn = self.ep.conn
        req = st.request
        body = req.body
        end = body is not None and not body and not req.trailers
        try:
            block = request_block(req)
            limit = conn.remote_settings.max_header_list_size
            if limit is not None and list_size(block) > limit:
                self.layer.upstream_failed(st, f"the request's header list is over the server's limit ({limit})", None, status=431)
                return
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, block, end_stream=end)
        except (H2ProtocolError, H2FieldError, ValueError) as e:
            self.layer.upstream_failed(st, f"cannot send the request as HTTP/2: {e}", None)
            return
        st.up_id = sid
        self.by_id[sid] = st
        if body is not None:
            if not end:
                self.ep.send_data(sid, body)
                self.ep.send_end(sid, trailer_block(req.trailers))
        else:
            for data in st.take_held():
                if data is None:
                    self.ep.send_end(sid, trailer_block(st.held_trailers))
                else:
                    self.ep.send_data(sid, data)
        self.ep.pump()

    def _start_waiting(self) -> None:
        while self.waiting and self.state == _READY and self._has_slot():
            self._open(self.waiting.popleft())

    def _took(self, sid: int) -> None:
        st = self.by_id.get(sid)
        if st is not None:
            self.layer.upstream_took(st)

    # -- the ServerConnection shell calls these -------------------------------

    def server_connected(self, transport: Any) -> None:
        self.connecting = None
        self.ep.attach(transport, "server")
        if self.state == _GONE:
            self.ep.close()
            return
        if self.state == _PROBING:
            ctx = self.layer.ctx
            self._timer = ctx.reactor.callLater(ctx.settings.sniff_timeout, self._not_h2, "said nothing")
        else:
            self._start_waiting()

    def server_failed(self, reason: str) -> None:
        self.connecting = None
        if self.state == _GONE:
            return
        self.failure = reason
        self.state = _GONE
        self._stop_timer()
        waiting, self.waiting = self.waiting, deque()
        for st in waiting:
            self.layer.upstream_failed(st, reason, None)

    def server_data(self, data: bytes) -> None:
        if self.state == _PROBING:
            self._probe += data
            if len(self._probe) < 5:
                return
            # A server's preface is a SETTINGS frame (type 4) without ACK.
            if self._probe[3] != 4 or self._probe[4] & 1:
                self._not_h2(f"answered {self._probe[:16]!r}")
                return
            self._stop_timer()
            self.state = _READY
            data, self._probe = self._probe, b""
        elif self.state == _GONE:
            return
        try:
            events = self.ep.conn.receive_data(data)
        except H2ProtocolError as e:
            self.ep.flush()
            self._lost(f"broke HTTP/2: {e}")
            return
        layer = self.layer
        layer.batching = True
        try:
            self._events(events)
        finally:
            layer.batching = False
        self.ep.pump()
        if self.state == _READY:
            self._start_waiting()
        self.layer.flush()

    def server_eof(self) -> None:
        if self.ep.leg is not None:
            self.ep.leg.read_closed()
        if self.state == _PROBING:
            self._not_h2("closed the connection")
            return
        self._lost("closed the connection")

    def server_lost(self, reason: Failure) -> None:
        if self.ep.leg is not None:
            self.ep.leg.lost = True
        if self.state == _PROBING:
            self._not_h2("closed the connection")
            return
        self._lost("closed the connection" if reason.check(ConnectionDone) else "reset the connection")

    # -- events ---------------------------------------------------------------

    def _not_h2(self, why: str) -> None:
        """The cleartext server does not speak HTTP/2: translate to HTTP/1.1."""
        if self.state != _PROBING:
            return
        self.state = _GONE
        self._stop_timer()
        self._log.info(
            "flow {flow_id}: {dst} {why} to the HTTP/2 preface; translating to HTTP/1.1",
            flow_id=self.layer.flow.id,
            dst=format_addr(self.layer.flow.dst),
            why=why,
        )
        remember_h1_only(self.layer.ctx, self.layer.flow.dst)
        self.ep.abort()
        waiting, self.waiting = self.waiting, deque()
        self.layer.upstream_speaks_h1(waiting)

    def _lost(self, reason: str) -> None:
        if self.state == _GONE:
            return
        self.state = _GONE
        self.ep.abort()
        streams = list(self.by_id.values()) + list(self.waiting)
        self.by_id.clear()
        self.waiting.clear()
        for st in streams:
            self.layer.upstream_failed(st, f"the server {reason}", None)
        self.layer.upstream_gone(f"the server {reason}")

    def _events(self, events: list) -> None:
        layer = self.layer
        by_id = self.by_id
        i = 0
        n = len(events)
        while i < n:
            event = events[i]
            i += 1
            kind = type(event)
            if kind is DataReceived:
                data, credit, i = take_data(events, i - 1)
                st = by_id.get(event.stream_id)
                if st is None:
                    self.ep.conn.acknowledge_received_data(credit, event.stream_id)
                    continue
                layer.upstream_body(st, data, credit)
            elif kind is ResponseReceived:
                st = by_id.get(event.stream_id)
                if st is None:
                    continue
                try:
                    resp = response_from_block(event.headers, st.request)
                except H2FieldError as e:
                    self._stream_broken(st, str(e))
                    continue
                body = trailers = None
                if event.stream_ended is not None:
                    body = b""
                    by_id.pop(event.stream_id, None)  # so its StreamEnded is skipped
                else:
                    whole = take_whole(events, i, event.stream_id)
                    if whole is not None:
                        body, trailers, credit, i = whole
                        if credit:
                            self.ep.conn.acknowledge_received_data(credit, event.stream_id)
                        by_id.pop(event.stream_id, None)
                layer.upstream_response(st, resp, body, trailers)
            elif kind is StreamEnded:
                st = by_id.pop(event.stream_id, None)
                if st is not None:
                    layer.upstream_end(st, st.resp_trailers)
            elif kind is TrailersReceived:
                st = by_id.get(event.stream_id)
                if st is not None:
                    st.resp_trailers = event.headers
            elif kind is InformationalResponseReceived:
                st = by_id.get(event.stream_id)
                if st is not None:
                    try:
                        resp = response_from_block(event.headers, st.request)
                    except H2FieldError:
                        continue
                    resp.body = b""
                    layer.upstream_response(st, resp)
            elif kind is StreamReset:
                st = by_id.pop(event.stream_id, None)
                if st is not None:
                    layer.upstream_failed(st, f"the server reset the stream ({error_name(event.error_code)})", event.error_code)
            elif kind is ConnectionTerminated:
                self._goaway(event)
                return
            elif kind is WindowUpdated or kind is RemoteSettingsChanged:
                pass  # pump and _start_waiting run after every batch

    def _stream_broken(self, st: Any, reason: str) -> None:
        self.by_id.pop(st.up_id, None)
        self.ep.reset(st.up_id, ErrorCodes.PROTOCOL_ERROR)
        self.layer.upstream_failed(st, f"the server sent a bad response: {reason}", None)

    def _goaway(self, event: ConnectionTerminated) -> None:
        """The server is going away: streams it will not answer are refused."""
        last = event.last_stream_id if event.last_stream_id is not None else 0
        self.state = _CLOSING
        refused = [st for sid, st in self.by_id.items() if sid > last] + list(self.waiting)
        self.waiting.clear()
        for st in refused:
            self.by_id.pop(st.up_id, None)
            self.layer.upstream_failed(st, "the server went away before answering", ErrorCodes.REFUSED_STREAM)
        if event.error_code:
            self._lost(f"closed the connection with GOAWAY ({error_name(event.error_code)})")
            return
        self.layer.upstream_gone("the server sent GOAWAY")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


# -- HTTP/1.1 ----------------------------------------------------------------


class H1Upstreams:
    """Client streams translated to HTTP/1.1 over a few kept-alive connections.

    Args:
        layer: the HTTP/2 layer.
        first: the connection the sniffer opened, when usable for HTTP/1.1.
        dst, scheme: where to connect (a tap routed requests there), and
            whether over TLS; the flow's own destination and scheme by
            default.
    """

    _log = Logger()

    def __init__(
        self,
        layer: Any,
        first: Upstream | None = None,
        *,
        dst: tuple[str, int] | None = None,
        scheme: str | None = None,
    ) -> None:
        self.layer = layer
        self.dst = dst or layer.flow.dst
        self.scheme = scheme or layer.scheme
        self.idle: list[Http1Upstream] = []
        self.busy: dict[Http1Upstream, Any] = {}
        self.connections: set[Http1Upstream] = set()
        self.full: set[Http1Upstream] = set()
        self.waiting: deque = deque()
        self._paused = PauseReason(0)  # why the layer paused its busy connections
        if first is not None and first.failure is None:
            up = Http1Upstream(self, self.dst, first.shell)
            up.connecting = first.connecting
            self.connections.add(up)
            self.idle.append(up)
            if first.transport is not None:
                up.server_connected(first.transport)

    # -- the layer's interface ------------------------------------------------

    def open(self, st: Any) -> None:
        while self.idle:
            up = self.idle.pop()
            if up.usable:
                self._start(st, up)
                return
            self._drop(up)
        if len(self.connections) < MAX_H1:
            ctx = self.layer.ctx
            up = Http1Upstream.open(self, ctx, self.layer.flow, self.dst, self.scheme)
            self.connections.add(up)
            self._start(st, up)
        else:
            self.waiting.append(st)

    def body(self, st: Any, data: bytes) -> None:
        up = st.h1
        if up is None:
            st.hold(data)
        else:
            up.write(up.writer.body(data))

    def end(self, st: Any, trailers: Headers | None) -> None:
        up = st.h1
        if up is None:
            st.hold_end(trailers)
        else:
            up.write(up.writer.end(trailers.fields if trailers else None))

    def pending(self, st: Any) -> int:
        up = st.h1
        if up is None:
            return st.held_size
        return 1 << 30 if up in self.full else 0

    def credit(self, st: Any) -> None:
        up = st.h1
        if up is not None and up.leg is not None:
            up.leg.resume(PauseReason.SINK)

    def cancel(self, st: Any, code: int) -> None:
        up = st.h1
        if up is None:
            if st in self.waiting:
                self.waiting.remove(st)
            return
        st.h1 = None
        self.busy.pop(up, None)
        up.abort()
        self._drop(up)
        self._next()

    def pause(self, reason: PauseReason = PauseReason.TAPS) -> None:
        self._paused |= reason
        for up in self.busy:
            if up.leg is not None:
                up.leg.pause(reason)

    def resume(self, reason: PauseReason = PauseReason.TAPS) -> None:
        self._paused &= ~reason
        for up in self.busy:
            if up.leg is not None:
                up.leg.resume(reason)

    def goaway(self, code: int) -> None:
        pass  # HTTP/1.1 has nothing to say; the connections close with the flow

    def close(self) -> None:
        for up in list(self.connections):
            up.close()
        self.connections.clear()
        self.idle.clear()
        self.busy.clear()

    def abort(self) -> None:
        for up in list(self.connections):
            up.abort()
        self.connections.clear()
        self.idle.clear()
        self.busy.clear()

    # -- exchanges ------------------------------------------------------------

    def _start(self, st: Any, up: Http1Upstream) -> None:
        st.h1 = up
        self.busy[up] = st
        req = st.request
        try:
            parts = up.request(req)
        except ValueError as e:
            self.busy.pop(up, None)
            st.h1 = None
            self.idle.append(up)
            self.layer.upstream_failed(st, f"cannot send the request as HTTP/1.1: {e}", None)
            return
        up.reader.expect_response(req.method.encode("latin-1"))
        up.write_parts(parts)
        if req.body is None:
            for data in st.take_held():
                if data is None:
                    trailers = st.held_trailers
                    up.write(up.writer.end(trailers.fields if trailers else None))
                else:
                    up.write(up.writer.body(data))
        if self._paused and up.leg is not None:
            up.leg.pause(self._paused)

    def _done(self, up: Http1Upstream, st: Any) -> None:
        """``st``'s response ended: the connection is free again."""
        if self.busy.get(up) is st:
            del self.busy[up]
        if st.h1 is up:  # else a tap already sent the stream a new request (over another connection)
            st.h1 = None
        if up.leg is not None:
            up.leg.resume(PauseReason.ALL)
        if up.usable and not up.writer.streaming:
            self.idle.append(up)
        else:
            up.close()
            self._drop(up)
        self._next()

    def _next(self) -> None:
        while self.waiting and (self.idle or len(self.connections) < MAX_H1):
            self.open(self.waiting.popleft())

    def _drop(self, up: Http1Upstream) -> None:
        self.connections.discard(up)
        self.full.discard(up)
        if up in self.idle:
            self.idle.remove(up)

    def _failed(self, up: Http1Upstream, reason: str) -> None:
        st = self.busy.pop(up, None)
        self._drop(up)
        up.abort()
        if st is not None:
            st.h1 = None
            self._log.warn(
                "flow {flow_id}: upstream {dst} {reason}", flow_id=self.layer.flow.id, dst=format_addr(up.dst), reason=reason
            )
            self.layer.upstream_failed(st, reason, None)
        self._next()

    # -- Http1Upstream calls these --------------------------------------------

    def upstream_connected(self, up: Http1Upstream) -> None:
        """``up``'s connection is made (its `Leg` is ready)."""
        if up not in self.connections:
            up.close()
            return
        up.leg.transport.registerProducer(_FullMark(self, up), True)
        if self._paused and up in self.busy:
            up.leg.pause(self._paused)

    def upstream_failed(self, up: Http1Upstream, reason: str) -> None:
        """``up``'s connection could not be made, for ``reason``."""
        self._failed(up, f"cannot be reached: {reason}")

    def upstream_data(self, up: Http1Upstream, data: bytes) -> None:
        """``up``'s server sent ``data``."""
        st = self.busy.get(up)
        if st is None:
            up.abort()  # bytes nobody asked for
            self._drop(up)
            return
        try:
            events = up.reader.feed(data)
        except ProtocolError as e:
            self._failed(up, f"broke HTTP/1.1: {e}")
            return
        self._response_events(up, st, deque(events))

    def upstream_eof(self, up: Http1Upstream) -> None:
        """``up``'s server closed its side of the connection."""
        up.keep_alive = False
        st = self.busy.get(up)
        if st is None:
            up.close()
            self._drop(up)
            return
        try:
            events = up.reader.feed_eof()
        except ProtocolError:
            self._failed(up, "closed the connection in the middle of a response")
            return
        self._response_events(up, st, deque(events))

    def upstream_lost(self, up: Http1Upstream, reason: Failure) -> None:
        """``up``'s connection is gone."""
        st = self.busy.get(up)
        if st is None:
            self._drop(up)
            return
        what = "closed the connection" if reason.check(ConnectionDone) else "reset the connection"
        self._failed(up, f"{what} before the response was complete")

    def _response_events(self, up: Http1Upstream, st: Any, queue: deque) -> None:
        layer = self.layer
        while queue:
            event = queue.popleft()
            kind = type(event)
            if kind is BodyData:
                layer.upstream_body(st, event.data, 0)
            elif kind is ResponseHead:
                if up.via is not None:
                    refusal = up.parent_refusal(event)
                    if refusal is not None:
                        self._failed(up, refusal)
                        return
                status = event.status
                resp = Response(
                    status, event.reason.decode("latin-1"), Headers.wrap(event.headers),
                    event.version.decode("latin-1"), body=None, request=st.request,
                )
                if status < 200:
                    if status == 101:
                        self._failed(up, "switched protocols, which HTTP/2 cannot carry")
                        return
                    resp.body = b""
                    layer.upstream_response(st, resp)
                    continue
                if not persists(event):
                    up.keep_alive = False
                whole = take_body(queue)
                if whole is not None:
                    body, trailers = whole
                    layer.upstream_response(st, resp, body, trailers)
                    self._done(up, st)
                    return
                layer.upstream_response(st, resp)
            elif kind is EndOfMessage:
                layer.upstream_end(st, event.trailers)
                self._done(up, st)
                return
            elif kind is ConnectionClosed:
                up.keep_alive = False
        if up.leg is not None and layer.client_backlog(st):
            up.leg.pause(PauseReason.SINK)


@implementer(IPushProducer)
class _FullMark:
    """Registered on an HTTP/1.1 upstream's transport: is its buffer full?"""

    __slots__ = ("_pool", "_up")

    def __init__(self, pool: H1Upstreams, up: Http1Upstream) -> None:
        self._pool = pool
        self._up = up

    def pauseProducing(self) -> None:
        self._pool.full.add(self._up)

    def resumeProducing(self) -> None:
        pool = self._pool
        pool.full.discard(self._up)
        st = pool.busy.get(self._up)
        if st is not None:
            pool.layer.upstream_took(st)

    def stopProducing(self) -> None:
        pass
