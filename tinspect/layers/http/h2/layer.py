"""The HTTP/2 layer: every stream's request and response through the taps.

Theory of operation
-------------------
One `H2Layer` carries one client connection that speaks HTTP/2: after TLS
interception when the client and the server agreed on ``h2`` (ALPN), or in
cleartext when the client starts with the connection preface (prior
knowledge). The client leg is an h2 server-side state machine
(`tinspect.layers.http.h2.conn.H2Endpoint`); the server leg is an `H2Upstream` (one
HTTP/2 connection, stream for stream) or, when the server speaks only
HTTP/1.1, an `H1Upstreams` that translates (`tinspect.layers.http.h2.upstream`).

Each client stream is a `_Stream`. Its request becomes a `Request` unit
(pseudo-fields on the same unit fields as HTTP/1.1, ``version`` "HTTP/2",
``stream_id`` set), then `BodyChunk` units and a `MessageEnd` with the
trailers, or one unit with the whole body when the stream ended in the same
read, or when a tap asks for whole bodies (buffered up to ``max_body``):
one `tinspect.layers.http.assemble.MessageAssembler` per direction of the
stream decides.
Responses come back the same way. Units of all streams share the flow's two
arms, so one direction's units stay in order; `Request.stream_id` (and
``message.request`` for the rest) says which stream a unit is on, which is
how a tap's local answer (`Request.respond`) finds its stream while the
other streams go on untouched.

Flow control is end to end: DATA a peer sends is acknowledged (its window
re-opened) only when the other leg has taken it: sent within the other
peer's window, or written to an HTTP/1.1 connection whose buffer is not
full. A slow reader therefore holds the server to what the windows allow
(`STREAM_WINDOW`, `CONNECTION_WINDOW`) and the proxy's memory with it.
Bodies a tap wants whole are the exception: they are acknowledged as they
are buffered, up to ``max_body``.

RST_STREAM goes across both ways with its error code; a server's GOAWAY
refuses the streams it will not answer (``REFUSED_STREAM``, so the client
retries them) and becomes a GOAWAY to the client, after which the layer
closes once the remaining streams end. A client that breaks the protocol
(bad frames, HPACK errors, floods the h2 library refuses) gets a GOAWAY
with the error code and is closed; nothing else is affected. PINGs are
answered by each leg's state machine; SETTINGS are each leg's own.
"""

from __future__ import annotations

from typing import Any, Callable

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError as H2ProtocolError
from twisted.logger import Logger
from twisted.python.failure import Failure

from tinspect.chain import Arm
from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.layers.http.assemble import MessageAssembler
from tinspect.layers.http.h2.conn import H2Endpoint, error_name, new_connection, take_data, take_whole
from tinspect.layers.http.h2.fields import H2FieldError, list_size, request_from_block, response_block, trailer_block
from tinspect.layers.http.h2.upstream import H1Upstreams, H2Upstream, known_h1_only
from tinspect.layers.raw import PauseReason
from tinspect.net.addresses import format_addr
from tinspect.net.handoff import Upstream
from tinspect.net.timeouts import Deadline
from tinspect.units import TO_CLIENT, TO_SERVER, BodyChunk, MessageEnd, Request, Response, Unit, error_page

__all__ = ["H2Layer"]

LOW_WATER = 65536  # re-open a sender's window once the other leg holds less than this
MAX_RESETS = 1000  # client resets beyond this, and beyond the streams it finished: a flood


class _Stream:
    """One client stream and its way through the proxy."""

    __slots__ = (
        "cid", "request", "response", "via", "up_id", "h1", "held", "held_size", "held_trailers",
        "upload", "download", "req_trailers", "resp_trailers", "owed_client", "owed_server",
        "request_done", "answered", "response_started", "response_ending", "response_done", "closed",
        "started",
    )

    def __init__(self, cid: int, upload: MessageAssembler, download: MessageAssembler) -> None:
        self.cid = cid
        self.request: Request | None = None
        self.response: Response | None = None
        self.via: Any = None  # the upstream carrying it, once opened
        self.up_id: int | None = None  # the upstream h2 stream
        self.h1: Any = None  # the upstream HTTP/1.1 connection
        self.held: list | None = None  # request body before the upstream stream exists
        self.held_size = 0
        self.held_trailers: Headers | None = None
        self.upload = upload  # the request to the taps
        self.download = download  # the response to the taps
        self.req_trailers: list | None = None  # trailer fields come before the stream's end
        self.resp_trailers: list | None = None
        self.owed_client = 0  # request bytes received and not yet acknowledged
        self.owed_server = 0  # response bytes, likewise
        self.request_done = False
        self.answered = False  # a tap or the proxy answered; drop the rest of the request
        self.response_started = False
        self.response_ending = False
        self.response_done = False
        self.closed = False
        self.started = 0.0  # Metrics.clock at the request head, with --metrics; 0.0: not timed

    def hold(self, data: bytes) -> None:
        if self.held is None:
            self.held = []
        self.held.append(data)
        self.held_size += len(data)

    def hold_end(self, trailers: Headers | None) -> None:
        if self.held is None:
            self.held = []
        self.held.append(None)
        self.held_trailers = trailers

    def take_held(self) -> list:
        held, self.held = self.held or [], None
        self.held_size = 0
        return held


class H2Layer:
    """Carries one HTTP/2 client connection through the taps.

    Args:
        ctx: the proxy context.
        flow: the client connection's flow.
        client: the client's `ClientConnection` shell.
        on_closed: called once when the layer is done with both sides.
        upstream: the connection to ``flow.dst`` the sniffer opened. When its
            failure is ``sticky`` (it failed TLS verification), every request
            gets a 502 page saying why.
        upstream_h2: the server agreed on h2 in TLS (``True``), did not
            (``False``: translate to HTTP/1.1), or was not asked (``None``,
            cleartext: probe it).
    """

    _log = Logger()

    def __init__(
        self,
        ctx: ProxyContext,
        flow: Flow,
        client: Any,
        on_closed: Callable[[], None],
        *,
        upstream: Upstream,
        upstream_h2: bool | None,
    ) -> None:
        self.ctx = ctx
        self.flow = flow
        self._on_closed = on_closed
        self._upstream_error = upstream.failure if upstream.sticky else None
        self.scheme = "https" if flow.tls_version else "http"  # the client's, and the upstream's by default
        settings = ctx.settings
        self._max_body = settings.max_body
        self._body_log = self._log  # for every stream's assemblers: each `self._log` makes a new Logger
        conn = new_connection(client_side=False, max_header_list_size=settings.max_header_bytes)
        self.client = H2Endpoint(conn, self._client_took)
        self.client.attach(client.transport, "client")
        self.streams: dict[int, _Stream] = {}
        self._highest = 0
        self._resets = 0
        self._finished_streams = 0
        self._goaway_sent = False
        self._finished = False
        # Set while the server leg hands over a batch of events: what they send to the
        # client goes out in one pump at the end, in frames as large as the client allows.
        self.batching = False
        self._routes: dict[tuple, H1Upstreams] = {}  # requests taps sent elsewhere
        self._idle = Deadline(ctx.reactor, self._idle_out)  # runs while no stream is open
        self._idle.start(settings.idle_timeout, "idle")
        # Runs while a whole request waits for its answer; any data from a server is progress.
        self._answers = Deadline(ctx.reactor, self._response_timed_out, self._taps_busy)
        chain = ctx.chain
        self.arms = {
            TO_SERVER: Arm(
                chain, flow, TO_SERVER, self._to_server,
                pause=lambda: self.client.leg.pause(PauseReason.TAPS),
                resume=lambda: self.client.leg.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_reply=self._replied,
                on_drop=self._dropped,
            ),
            TO_CLIENT: Arm(
                chain, flow, TO_CLIENT, self._to_client,
                pause=lambda: [up.pause(PauseReason.TAPS) for up in self._upstreams()],
                resume=lambda: [up.resume(PauseReason.TAPS) for up in self._upstreams()],
                on_error=self._tap_failed,
                on_drop=self._dropped,
            ),
        }
        flow.attach(self.arms, self.abort)
        flow.protocol = "h2"
        if upstream_h2 is False or (upstream_h2 is None and known_h1_only(ctx, flow.dst)):
            self.upstream: Any = H1Upstreams(self, upstream)
            how = "HTTP/1.1 (translated)"
        else:
            self.upstream = H2Upstream(self, upstream, probe=upstream_h2 is None)
            how = "h2" if upstream_h2 else "h2 if it answers the preface"
        self._log.info("flow {flow_id}: HTTP/2 from the client, to the server: {how}", flow_id=flow.id, how=how)

    # -- the client leg -------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self._finished:
            return
        try:
            events = self.client.conn.receive_data(data)
        except H2ProtocolError as e:
            self._client_broke(e)
            return
        self._client_events(events)
        self.flush()

    def client_eof(self) -> None:
        if self.client.leg is not None:
            self.client.leg.read_closed()
        if not self._finished:
            self._close()

    def client_lost(self, reason: Failure) -> None:
        self.client.leg.lost = True
        if self._finished:
            return
        if any(not st.response_done for st in self.streams.values()):
            self.flow.mark_ended("client went away")
        for up in self._upstreams():
            up.abort()
        self._finish()

    def flush(self) -> None:
        """Send what both legs' state machines have queued."""
        self.client.pump()
        self.upstream_flush()

    def upstream_flush(self) -> None:
        ep = getattr(self.upstream, "ep", None)
        if ep is not None:
            ep.flush()

    def _client_events(self, events: list) -> None:
        i = 0
        n = len(events)
        streams = self.streams
        conn = self.client.conn
        while i < n and not self._finished:
            event = events[i]
            i += 1
            kind = type(event)
            if kind is DataReceived:
                data, credit, i = take_data(events, i - 1)
                st = streams.get(event.stream_id)
                if st is None:
                    conn.acknowledge_received_data(credit, event.stream_id)
                else:
                    self._request_data(st, data, credit)
            elif kind is RequestReceived:
                whole = None
                if event.stream_ended is None:
                    whole = take_whole(events, i, event.stream_id)
                    if whole is not None:
                        i = whole[3]
                self._request_head(event, whole)
            elif kind is StreamEnded:
                st = streams.get(event.stream_id)
                if st is not None and not st.request_done:
                    self._request_end(st)
            elif kind is TrailersReceived:
                st = streams.get(event.stream_id)
                if st is not None:
                    st.req_trailers = event.headers
            elif kind is StreamReset:
                self._client_reset(event.stream_id, event.error_code)
            elif kind is ConnectionTerminated:
                self._client_goaway(event.error_code)

    def _request_head(self, event: RequestReceived, whole: tuple | None) -> None:
        cid = event.stream_id
        self._highest = max(self._highest, cid)
        if self._goaway_sent:
            self.client.reset(cid, ErrorCodes.REFUSED_STREAM)
            return
        try:
            req = request_from_block(event.headers, stream_id=cid, scheme=self.scheme)
        except H2FieldError as e:
            self._log.warn("flow {flow_id}: stream {cid}: {error}", flow_id=self.flow.id, cid=cid, error=str(e))
            self.client.reset(cid, ErrorCodes.PROTOCOL_ERROR)
            return
        if not req.authority:
            req.authority = format_addr(self.flow.dst)
        arms = self.arms
        upload = MessageAssembler(arms[TO_SERVER], self._max_body, self._body_log)
        download = MessageAssembler(arms[TO_CLIENT], self._max_body, self._body_log)
        st = self.streams[cid] = _Stream(cid, upload, download)
        clock = self.ctx.metrics.clock
        if clock is not None:
            st.started = clock()
        self._idle.suspend()
        st.request = req
        if event.stream_ended is not None:
            st.request_done = True
            upload.whole(req, b"", None)
        elif whole is not None:
            body, trailers, credit, _ = whole
            st.request_done = True
            if credit:
                self.client.conn.acknowledge_received_data(credit, cid)
            upload.whole(req, body, trailers)
        elif upload.head(req):
            return  # buffered for a tap
        if st.request_done:
            self._await_answers()

    def _request_data(self, st: _Stream, data: bytes, credit: int) -> None:
        upload = st.upload
        buffering = upload.buffering
        if st.answered or buffering or not data:
            # Acknowledged at once: dropped (answered), buffered for a tap, or empty.
            self.client.conn.acknowledge_received_data(credit, st.cid)
            if buffering:
                upload.data(st.request, data)
            return
        st.owed_client += credit
        upload.data(st.request, data)

    def _request_end(self, st: _Stream) -> None:
        st.request_done = True
        if st.answered:
            self._maybe_done(st)
            return
        st.upload.end(st.request, st.req_trailers)
        self._await_answers()

    def _client_reset(self, cid: int, code: int) -> None:
        self._resets += 1
        st = self.streams.get(cid)
        if st is not None:
            self._via(st).cancel(st, code)
            self._forget(st)
        if self._resets > MAX_RESETS and self._resets > self._finished_streams:
            self._log.warn(
                "flow {flow_id}: {client} reset {n} streams; closing the connection (ENHANCE_YOUR_CALM)",
                flow_id=self.flow.id,
                client=format_addr(self.flow.client),
                n=self._resets,
            )
            self.client.conn.close_connection(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
            self.abort("too many stream resets", flush=True)

    def _client_goaway(self, code: int) -> None:
        self.upstream.goaway(code)
        if code:
            self.abort(f"the client closed the connection with GOAWAY ({error_name(code)})")
        else:
            self._goaway_sent = True  # no new streams either way
            self._maybe_close()

    def _client_broke(self, error: H2ProtocolError) -> None:
        """Bad frames from the client: GOAWAY (the h2 library queued it) and close."""
        code = self.client.broken(error)
        self._log.warn(
            "flow {flow_id}: HTTP/2 protocol error from {client}: {error} (GOAWAY {code})",
            flow_id=self.flow.id,
            client=format_addr(self.flow.client),
            error=str(error) or type(error).__name__,
            code=error_name(code),
        )
        self.abort(f"client broke HTTP/2: {error}", flush=True)

    def _client_took(self, cid: int) -> None:
        """The client leg sent some of ``cid``'s response: credit the server."""
        st = self.streams.get(cid)
        if st is None:
            return
        self._answers.kick()  # the client took data: the servers were held back until now
        if self.client.pending(cid) < LOW_WATER:
            self._via(st).credit(st)
            if st.response_ending and not self.client.queued(cid):
                self._response_sent(st)

    def client_backlog(self, st: _Stream) -> bool:
        """Whether ``st``'s response data piles up towards the client."""
        return self.client.pending(st.cid) >= LOW_WATER

    # -- towards the server ---------------------------------------------------

    def _stream_of(self, message: Request | Response | None) -> _Stream | None:
        if type(message) is Response:
            message = message.request
        if message is None or message.stream_id is None:
            raise RuntimeError("on an HTTP/2 connection a unit must belong to a request of it (stream_id)")
        st = self.streams.get(message.stream_id)
        return None if st is None or st.closed else st

    def _to_server(self, unit: Unit) -> None:
        if self._finished:
            return
        kind = type(unit)
        if kind is BodyChunk:
            st = self._stream_of(unit.message)
            if st is not None and not st.answered:
                self._via(st).body(st, unit.data)
                self._credit_client(st)
        elif kind is MessageEnd:
            st = self._stream_of(unit.message)
            if st is not None and not st.answered:
                self._via(st).end(st, unit.trailers)
        elif kind is Request:
            st = self._stream_of(unit)
            if st is None or st.answered:
                return
            other_host = False
            if st.response is not None:
                # A tap answered the server's whole response with this request (a redirect it
                # follows itself): it goes in that one's place, on a new upstream stream; to
                # another host over a connection of its own, verified for that host.
                if st.response_started or unit.body is None or not st.request_done:
                    raise RuntimeError("taps can only send a whole request in place of a whole response")
                other_host = unit.host != st.request.host
                st.response = st.resp_trailers = st.up_id = None
            st.request = unit
            route = unit.destination
            if route is not None and (route != self.flow.dst or other_host):
                st.via = self._route(route, unit.scheme)
            elif self._upstream_error is not None:
                self._answer(st, error_page(502, f"upstream {format_addr(self.flow.dst)}: {self._upstream_error}", unit))
                return
            else:
                st.via = self.upstream
            st.via.open(st)
        else:
            raise TypeError(f"an HTTP/2 connection cannot send a {unit.kind} to the server")
        self.upstream_flush()

    def _via(self, st: _Stream) -> Any:
        return st.via or self.upstream

    def _upstreams(self) -> list:
        return [self.upstream, *self._routes.values()]

    def _route(self, dst: tuple[str, int], scheme: str) -> H1Upstreams:
        """The HTTP/1.1 upstream for requests a tap sends to ``dst``."""
        key = (dst, scheme)
        up = self._routes.get(key)
        if up is None:
            up = self._routes[key] = H1Upstreams(self, dst=dst, scheme=scheme)
        return up

    def _credit_client(self, st: _Stream) -> None:
        if st.owed_client and self._via(st).pending(st) < LOW_WATER:
            self.client.conn.acknowledge_received_data(st.owed_client, st.cid)
            st.owed_client = 0
            self.client.flush()

    def upstream_took(self, st: _Stream) -> None:
        """The server leg sent some of ``st``'s request body."""
        if not st.closed:
            self._credit_client(st)

    # -- from the server ------------------------------------------------------

    def upstream_response(
        self, st: _Stream, resp: Response, body: bytes | None = None, trailers: list | None = None
    ) -> None:
        """``st``'s response head (``body`` ``None``: the body follows, `upstream_body`
        and `upstream_end`), or the whole response when it came in one read."""
        self._answers.kick()
        if st.closed or st.answered:
            return
        self.ctx.quic.strip_alt_svc(resp.headers, st.request, self.ctx.chain, self.flow)
        if resp.interim:
            self.arms[TO_CLIENT].submit(resp)
            return
        st.response = resp
        if body is None:
            st.download.head(resp)
        else:
            st.download.whole(resp, body, trailers)

    def upstream_body(self, st: _Stream, data: bytes, credit: int) -> None:
        self._answers.kick()
        if st.closed or st.answered or not data:
            st.owed_server += credit
            self._via(st).credit(st)
            return
        st.owed_server += credit
        download = st.download
        if download.buffering:
            self._via(st).credit(st)  # taken at once: a tap waits for the whole body
        download.data(st.response, data)

    def upstream_end(self, st: _Stream, trailers: list | None) -> None:
        self._answers.kick()
        if not st.request_done:
            st.answered = True  # the server is done: the rest of the upload goes nowhere
        if st.closed or st.response is None:
            return
        st.download.end(st.response, trailers)

    def upstream_failed(self, st: _Stream, reason: str, code: int | None, status: int | None = None) -> None:
        """The server leg cannot carry ``st`` (any more): a page with
        ``status`` (502, or 504 for a timeout) before its response began,
        else a reset with ``code``."""
        if st.closed:
            return
        self._log.warn(
            "flow {flow_id}: stream {cid} to {dst}: {reason}",
            flow_id=self.flow.id, cid=st.cid, dst=format_addr(self.flow.dst), reason=reason,
        )
        if st.response is None and not st.answered and code is None:
            if status is None:
                status = 504 if reason.endswith("connect timeout") else 502
            self._answer(st, error_page(status, f"upstream {format_addr(self.flow.dst)}: {reason}", st.request))
            return
        self._reset(st, ErrorCodes.INTERNAL_ERROR if code is None else code)

    def upstream_gone(self, reason: str) -> None:
        """The server connection is closing: the client must open a new one."""
        if self._finished:
            return
        if not self._goaway_sent:
            self._goaway_sent = True
            self.client.goaway(self._highest)
        self._maybe_close()

    def upstream_speaks_h1(self, waiting: list) -> None:
        """The cleartext probe found an HTTP/1.1 server: translate from now on."""
        self.upstream = H1Upstreams(self)
        for st in waiting:
            if not st.closed:
                st.via = self.upstream
                self.upstream.open(st)

    # -- towards the client ---------------------------------------------------

    def _to_client(self, unit: Unit) -> None:
        if self._finished:
            return
        kind = type(unit)
        client = self.client
        if kind is BodyChunk:
            st = self._stream_of(unit.message)
            if st is not None and st.response_started:
                client.send_data(st.cid, unit.data)
        elif kind is MessageEnd:
            st = self._stream_of(unit.message)
            if st is not None and st.response_started:
                st.response_ending = True
                client.send_end(st.cid, trailer_block(unit.trailers))
        elif kind is Response:
            st = self._stream_of(unit)
            if st is None:
                return
            if st.response_started:
                raise RuntimeError("taps can only send one response per HTTP/2 stream")
            if not self._send_head(st, unit):
                return
        else:
            raise TypeError(f"an HTTP/2 connection cannot send a {unit.kind} to the client")
        if not self.batching:  # else the batch's end pumps once for all its units (`flush`)
            client.pump()

    def _send_head(self, st: _Stream, resp: Response) -> bool:
        conn = self.client.conn
        try:
            block = response_block(resp, st.request.method)
            limit = conn.remote_settings.max_header_list_size
            if limit is not None and list_size(block) > limit:
                raise ValueError(f"its header list is over the client's limit ({limit})")
            if resp.interim:
                if resp.status != 101:
                    conn.send_headers(st.cid, block)
                return True
            body = resp.body
            end = body is not None and not body and not resp.trailers
            conn.send_headers(st.cid, block, end_stream=end)
        except (H2ProtocolError, ValueError) as e:
            self._log.warn(
                "flow {flow_id}: stream {cid}: cannot send the response: {error}",
                flow_id=self.flow.id, cid=st.cid, error=str(e),
            )
            self._reset(st, ErrorCodes.INTERNAL_ERROR)
            self._via(st).cancel(st, ErrorCodes.CANCEL)
            return False
        st.response_started = True
        st.response = resp
        if st.started:
            self.ctx.metrics.response_started("h2", st.started)
        if end:
            self._response_sent(st)
        elif body is not None:
            self.client.send_data(st.cid, body)
            self.client.send_end(st.cid, trailer_block(resp.trailers))
            st.response_ending = True
        return True

    def _response_sent(self, st: _Stream) -> None:
        st.response_ending = False
        st.response_done = True
        if st.started:
            self.ctx.metrics.response_ended("h2", st.started)
        if not st.request_done:
            # Answered before the upload ended: nobody wants the rest of it.
            self.client.reset(st.cid, ErrorCodes.NO_ERROR)
            self._via(st).cancel(st, ErrorCodes.CANCEL)
            st.answered = st.request_done = True
        self._maybe_done(st)

    def _answer(self, st: _Stream, response: Response) -> None:
        """Answer ``st`` ourselves (a gateway error); the taps see it."""
        st.answered = True
        self._drop_upload(st)
        self.arms[TO_CLIENT].submit(response)

    def _replied(self, unit: Unit) -> None:
        """A tap on the TO_SERVER arm answered locally."""
        if type(unit) is not Response or unit.interim:
            return
        st = self._stream_of(unit)
        if st is None:
            return
        st.answered = True
        self._drop_upload(st)
        if st.up_id is not None or st.h1 is not None:
            self._via(st).cancel(st, ErrorCodes.CANCEL)

    def _drop_upload(self, st: _Stream) -> None:
        """Acknowledge what the client sent of ``st`` and drop what waits."""
        if st.owed_client:
            self.client.conn.acknowledge_received_data(st.owed_client, st.cid)
            st.owed_client = 0
        st.take_held()

    def _dropped(self, unit: Unit) -> None:
        kind = type(unit)
        if kind is MessageEnd:
            (self._to_server if unit.direction is TO_SERVER else self._to_client)(unit)
        elif kind is Request or (kind is Response and not unit.interim):
            st = self._stream_of(unit)
            if st is None:
                return
            self._log.info(
                "flow {flow_id}: a tap dropped the {kind} of stream {cid}; resetting it",
                flow_id=self.flow.id, kind=unit.kind, cid=st.cid,
            )
            self._via(st).cancel(st, ErrorCodes.CANCEL)
            self._reset(st, ErrorCodes.CANCEL)

    # -- ending streams and the connection ------------------------------------

    def _reset(self, st: _Stream, code: int) -> None:
        self.client.reset(st.cid, code)
        self._forget(st)
        self.client.flush()

    def _maybe_done(self, st: _Stream) -> None:
        if st.request_done and st.response_done:
            self._finished_streams += 1
            self._forget(st)

    def _forget(self, st: _Stream) -> None:
        if st.closed:
            return
        st.closed = True
        self._drop_upload(st)  # its bytes still count in the connection's window
        self.streams.pop(st.cid, None)
        self.client.forget(st.cid)
        self._maybe_close()
        if not self.streams and not self._finished:
            self._idle.start(self.ctx.settings.idle_timeout, "idle")

    def _awaiting(self) -> list[_Stream]:
        return [st for st in self.streams.values()
                if st.request_done and not st.response_done and not st.answered and not st.closed]

    def _await_answers(self) -> None:
        if self._finished:
            return
        if self._answers.running:
            self._answers.kick()  # a new request gets a whole period, not what is left of one
        else:
            self._answers.start(self.ctx.settings.response_timeout, "response")

    def _taps_busy(self) -> bool:
        """A tap still holds a unit (async): the servers' silence is not theirs yet."""
        return not all(arm.idle for arm in self.arms.values())

    def _response_timed_out(self, what: str) -> None:
        """No server sent anything for ``response_timeout`` while requests waited:
        504 for the streams not answered yet, a reset for those cut mid-response.
        A stream whose data waits for the client's window is left alone: the
        server's silence is ours there (we have not credited it)."""
        if self._finished:
            return
        reason = f"sent nothing for {self.ctx.settings.response_timeout:g} s"
        held = False
        for st in self._awaiting():
            if st.closed or self._finished:
                continue  # ended by what an earlier one in this loop set off
            if self.client.pending(st.cid):
                held = True
                continue
            self._via(st).cancel(st, ErrorCodes.CANCEL)
            if st.response is None:
                self.upstream_failed(st, reason, None, status=504)
            else:
                self.upstream_failed(st, f"{reason} in the middle of the response", ErrorCodes.CANCEL)
        self.client.pump()
        if held:
            self._await_answers()

    def _idle_out(self, what: str) -> None:
        if self.streams or self._finished:
            return
        self._log.info("flow {flow_id}: closing the connection: idle for {seconds:g} s",
                       flow_id=self.flow.id, seconds=self.ctx.settings.idle_timeout)
        self._close()

    def _maybe_close(self) -> None:
        if self._goaway_sent and not self.streams and not self._finished:
            self._close()

    def _tap_failed(self, failure: Failure) -> None:
        self.client.conn.close_connection(error_code=ErrorCodes.INTERNAL_ERROR, last_stream_id=self._highest)
        self.abort(f"tap error: {failure.getErrorMessage()}", flush=True)

    def abort(self, reason: str, *, flush: bool = False) -> None:
        """Close both legs at once (fail closed); ``flush`` sends a queued GOAWAY first."""
        if self._finished:
            return
        self.flow.mark_ended(reason)
        self._log.info("flow {flow_id}: aborted: {reason}", flow_id=self.flow.id, reason=reason)
        if flush:
            self.client.close()
        else:
            self.client.abort()
        for up in self._upstreams():
            up.abort()
        self._finish()

    def _close(self) -> None:
        if self._finished:
            return
        if not self._goaway_sent and self.client.writable:
            try:
                self.client.conn.close_connection()
            except H2ProtocolError:
                pass
        self.client.close()
        for up in self._upstreams():
            up.close()
        self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._idle.stop()
            self._answers.stop()
            for st in self.streams.values():
                st.closed = True
            self.streams.clear()
            self._on_closed()

