"""The HTTP/1.1 layer: requests and responses through the taps, one at a time.

Theory of operation
-------------------
One `Http1Layer` carries one client connection that speaks HTTP/1.x, in
transparent mode (the sniffer found a request line) or as the explicit proxy.
The client's bytes go through an `Http1Reader`; its events become units
(`Request`, then `BodyChunk`s and a `MessageEnd` when the body streams) that
the ``TO_SERVER`` arm runs through the taps; what survives is written to the
upstream connection by an `Http1Writer`, which recomputes framing. Responses
come back the same way through the ``TO_CLIENT`` arm.

Exchanges are served one at a time. While a response is outstanding the
client may pipeline more requests; their events wait in ``_queue`` (and the
client is paused, ``PauseReason.WAIT``), so responses go out in request order however
each exchange is answered: by the server, by a tap (a local answer), or by
the proxy itself (a 502/504 page). The request body and the response may
overlap (a server may answer before the upload ends).

When a message arrives whole in one read (a GET, a small response), its unit
carries the whole ``body`` and no `BodyChunk`/`MessageEnd` follow: one unit
through the taps instead of three. A tap that asks for whole bodies
(`Tap.wants_whole_body`) gets the same, buffered up to ``max_body``. One
`tinspect.layers.http.assemble.MessageAssembler` each way decides which.

The upstream connection is kept across requests (keep-alive) while the
server allows it and the destination stays the same; in transparent mode the
first one is the connection the sniffer opened when the client connected.

Backpressure: each side's transport pauses the other side's reading while its
write buffer is full (as `tinspect.layers.raw.RawRelay` does); a tap that goes
asynchronous pauses its source side; a pipelined request pauses the client.

Timeouts (one `tinspect.net.timeouts.Deadline` at a time): between requests the
connection may be idle for ``idle_timeout`` (then it is closed); once a
request head has begun it must be complete within ``header_timeout`` (else
``408``: slowloris); once the whole request went upstream, the server may
be silent for at most ``response_timeout`` while we read from it (else a
``504`` page, or an abort when the response had begun). Time the proxy
itself holds the server back (a full client, a slow tap) does not count;
but a client that reads nothing for ``idle_timeout`` while its write buffer
is full is cut (a second deadline, ``_stalled``).

Switching protocols hands both connections on. A WebSocket handshake
(`tinspect.layers.websocket.is_upgrade`) is sent upstream by autobahn, and after the
server's ``101`` has passed the taps, a `tinspect.layers.websocket.WebSocketLayer`
carries the connection message by message. Any other switch (a ``101`` to
another upgrade, a 2xx to a CONNECT sent to a transparent destination) goes
to a `RawRelay`. The explicit proxy's own CONNECT opens a tunnel and hands
it to ``ctx.next_layer`` (a `Sniffer`), so a tunnelled connection is
inspected like a transparent one. Each switch goes through
`tinspect.net.handoff.take_over`.

`tinspect.layers.websocket` is imported on the first upgrade request (`_websocket`):
autobahn and what it brings (cbor2, click, cffi, xml) hold 6 to 8 MiB of
RSS a proxy that never sees a WebSocket does not need.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from tinspect.chain import Arm
from tinspect.context import ProxyContext
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.layers.http.assemble import MessageAssembler
from tinspect.layers.http.explicit import proxy_request
from tinspect.layers.http.http1.parse import (
    BodyData,
    ConnectionClosed,
    EndOfMessage,
    Http1Reader,
    ProtocolError,
    RequestHead,
    ResponseHead,
    persists,
    take_body,
)
from tinspect.layers.http.http1.upstream import Http1Upstream, UpstreamPauser
from tinspect.layers.http.http1.write import FramingError, Http1Writer, serialize_response_head
from tinspect.layers.raw import Leg, PauseReason, SinkPauser, send
from tinspect.net.addresses import format_addr, host_port
from tinspect.net.handoff import Handoff, Upstream, relay_raw, take_over
from tinspect.net.shells import open_upstream
from tinspect.net.timeouts import Deadline
from tinspect.units import TO_CLIENT, TO_SERVER, BodyChunk, MessageEnd, Request, Response, Unit, error_page

if TYPE_CHECKING:
    from tinspect.layers.websocket import Upgrade

__all__ = ["Http1Layer"]

IDLE, HEAD, RESPONSE = "idle", "head", "response"  # what the deadline waits for

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Exchange:
    """One request and its response."""

    __slots__ = (
        "request",
        "client_version",
        "keep_alive",
        "expect_continue",
        "upstream",
        "sent",
        "answered",
        "discard",
        "request_done",
        "response_submitted",
        "response_started",
        "response_done",
        "switching",
        "websocket",
        "started",
    )

    def __init__(self, request: Request, client_version: str, keep_alive: bool) -> None:
        self.request = request
        self.client_version = client_version
        self.keep_alive = keep_alive
        self.expect_continue = False
        self.upstream: Http1Upstream | None = None
        self.sent = False  # the request head went upstream
        self.answered = False  # a tap or the proxy answered; the server's answer does not count
        self.discard = False  # drop the rest of the request body
        self.request_done = False
        self.response_submitted = False  # a final response entered the TO_CLIENT arm
        self.response_started = False  # its head was written to the client
        self.response_done = False
        self.switching = False  # upgrade or CONNECT: the readers pause after it
        self.websocket: Upgrade | None = None  # a WebSocket handshake we terminate
        self.started = 0.0  # Metrics.clock at the request head, with --metrics; 0.0: not timed
        # (first byte: the response head written to the client; total: its end written)


class Http1Layer:
    """Carries one HTTP/1.x client connection through the taps.

    Args:
        ctx: the proxy context.
        flow: the client connection's flow.
        client: the client's `ClientConnection` shell; its handler becomes
            this layer.
        on_closed: called once when the layer is done with both sides.
        explicit: the client treats us as its proxy (absolute-form targets,
            CONNECT, proxy authentication).
        upstream: a connection to ``flow.dst`` opened already (transparent
            mode). When its failure is ``sticky`` (it failed TLS
            verification), every request is answered with a 502 page saying
            why, and nothing is sent anywhere.
    """

    _log = Logger()

    def __init__(
        self,
        ctx: ProxyContext,
        flow: Flow,
        client: Any,
        on_closed: Callable[[], None],
        *,
        explicit: bool = False,
        upstream: Upstream | None = None,
    ) -> None:
        self.ctx = ctx
        self.flow = flow
        self.explicit = explicit
        self._upstream_error = upstream.failure if upstream is not None and upstream.sticky else None
        self._scheme = "https" if flow.tls_version else "http"
        self._shell = client
        client.handler = self
        self.client = Leg(client.transport, "client")
        self._on_closed = on_closed
        settings = ctx.settings
        self.reader = Http1Reader(
            "request",
            max_start_line=settings.max_request_line,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
        )
        self.writer = Http1Writer()
        self._queue: deque = deque()
        self._pumping = False
        self._exchange: _Exchange | None = None
        self._client_eof = False
        self._client_full = False
        self._finished = False  # closed, or handed to another layer
        self.upstream: Http1Upstream | None = None
        self._tunnel: _Tunnel | None = None  # an explicit CONNECT being opened
        chain = ctx.chain
        self.arms = {
            TO_SERVER: Arm(
                chain, flow, TO_SERVER, self._to_server,
                pause=lambda: self.client.pause(PauseReason.TAPS),
                resume=lambda: self.client.resume(PauseReason.TAPS),
                on_error=self._tap_failed,
                on_reply=self._replied,
                on_drop=self._dropped,
            ),
            TO_CLIENT: Arm(
                chain, flow, TO_CLIENT, self._to_client,
                pause=self._pause_upstream_for_taps,
                resume=self._resume_upstream_for_taps,
                on_error=self._tap_failed,
                on_drop=self._dropped,
            ),
        }
        # One message at a time each way: the current exchange's request and response.
        log = self._log
        self._requests = MessageAssembler(self.arms[TO_SERVER], settings.max_body, log)
        self._responses = MessageAssembler(self.arms[TO_CLIENT], settings.max_body, log)
        flow.attach(self.arms, self.abort)
        flow.protocol = "http/1.1"
        self._deadline = Deadline(ctx.reactor, self._timed_out, self._upstream_paused)
        self._deadline.start(settings.idle_timeout, IDLE)
        # Runs while the client's write buffer is full: a client that reads nothing for
        # idle_timeout holds a response (and an upstream) no longer.
        self._stalled = Deadline(ctx.reactor, self._client_stalled)
        client.transport.registerProducer(UpstreamPauser(self), True)
        self._early: Http1Upstream | None = None  # the connect made at accept, until the first request
        if upstream is not None:
            up = self.upstream = self._early = Http1Upstream(self, flow.dst, upstream.shell)
            up.connecting = upstream.connecting
            if upstream.transport is not None:
                up.server_connected(upstream.transport)
            elif upstream.failure is not None:
                up.failure = upstream.failure
                up.closed = True

    # -- the client side ------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Bytes from the client."""
        if self._finished:
            return
        try:
            events = self.reader.feed(data)
        except ProtocolError as e:
            self._queue.append(e)
        else:
            if not events:
                self._await_head()
                return
            self._queue.extend(events)
        self._pump()
        self._await_head()

    def client_eof(self) -> None:
        """The client half-closed."""
        self.client.read_closed()
        if self._finished:
            return
        try:
            events = self.reader.feed_eof()
        except ProtocolError as e:
            self._queue.append(e)
        else:
            self._queue.extend(events)
        self._pump()

    def client_lost(self, reason: Failure) -> None:
        """The client connection is gone: nothing more can be answered."""
        self.client.lost = True
        if self._finished:
            return
        ex = self._exchange
        if ex is not None and not ex.response_done:
            self.flow.mark_ended("client went away")
        if self.upstream is not None:
            self.upstream.abort()
        tunnel = self._tunnel
        if tunnel is not None and tunnel.connecting is not None:
            tunnel.connecting.cancel()
        self._finish()

    def _pump(self) -> None:
        """Act on queued client events while the current exchange allows."""
        if self._pumping:
            return
        self._pumping = True
        try:
            queue = self._queue
            while queue and not self._finished:
                event = queue[0]
                kind = type(event)
                if kind is RequestHead:
                    if self._exchange is not None:
                        self.client.pause(PauseReason.WAIT)
                        return
                    queue.popleft()
                    self._request_head(event)
                elif kind is BodyData:
                    queue.popleft()
                    self._request_body(event.data)
                elif kind is EndOfMessage:
                    queue.popleft()
                    self._request_end(event.trailers)
                elif kind is ConnectionClosed:
                    queue.popleft()
                    self._client_eof = True
                    if self._exchange is None:
                        self._close()
                else:  # a ProtocolError from the reader
                    if self._exchange is not None and self._exchange.request_done:
                        self.client.pause(PauseReason.WAIT)
                        return
                    queue.popleft()
                    self._bad_request(event)
            self.client.resume(PauseReason.WAIT)
        finally:
            self._pumping = False

    def _request_head(self, head: RequestHead) -> None:
        version = head.version.decode("latin-1")
        fields = Headers.wrap(head.headers)
        req = Request(head.method.decode("latin-1"), head.target.decode("latin-1"), fields, version, self._scheme)
        ex = self._exchange = _Exchange(req, version, persists(head))
        clock = self.ctx.metrics.clock
        if clock is not None:
            ex.started = clock()
        self._deadline.suspend()
        ex.switching = head.switching
        if head.switching and head.method == b"GET":
            websocket = _websocket()
            if websocket.is_upgrade(head.method, head.version, head.headers):
                ex.websocket = websocket.Upgrade(self.ctx, websocket.client_handshake(head.target, head.headers))
        if self.explicit:
            refusal = proxy_request(req, self.ctx.settings.proxy_auth)
            if refusal is not None:
                self._log.warn(
                    "flow {flow_id}: refusing {method} {target} from {client}: {status}",
                    flow_id=self.flow.id,
                    method=req.method,
                    target=req.target,
                    client=format_addr(self.flow.client),
                    status=refusal.status,
                )
        else:
            refusal = None
            host = fields.raw(b"host")
            req.authority = host.decode("latin-1") if host else format_addr(self.flow.dst)
        whole = take_body(self._queue)
        if whole is not None:
            ex.request_done = True
        if refusal is not None:
            ex.discard = True
            self._answer(ex, refusal)
            return
        if whole is not None:
            body, trailers = whole
            self._requests.whole(req, body, trailers)
        elif self._requests.head(req):
            if (fields.raw(b"expect") or b"").lower() == b"100-continue" and version != "HTTP/1.0":
                # The server will not see the head before the body: say
                # "go on" ourselves, or the client waits for nothing.
                fields.remove(b"expect")
                self._write_client(_CONTINUE)

    def _request_body(self, data: bytes) -> None:
        ex = self._exchange
        if ex is None or ex.discard:
            return
        self._requests.data(ex.request, data)

    def _request_end(self, trailers: list) -> None:
        ex = self._exchange
        if ex is None:
            return
        ex.request_done = True
        if not ex.discard:
            self._requests.end(ex.request, trailers)
        self._maybe_done(ex)

    # -- explicit proxy -------------------------------------------------------

    def _destination(self, req: Request) -> tuple[str, int]:
        if req.destination is not None:
            return req.destination
        if not self.explicit:
            return self.flow.dst
        return host_port(req.authority, 443 if req.scheme == "https" else 80)

    # -- towards the server ---------------------------------------------------

    def _to_server(self, unit: Unit) -> None:
        if self._finished:
            return  # an async tap let go of a unit after the connection ended
        ex = self._exchange
        kind = type(unit)
        if kind is BodyChunk:
            up = ex.upstream if ex is not None else None
            if up is not None and not ex.answered:
                up.write(up.writer.body(unit.data))
        elif kind is MessageEnd:
            up = ex.upstream if ex is not None else None
            if up is not None and not ex.answered:
                up.write(up.writer.end(unit.trailers.fields if unit.trailers else None))
                self._await_response(ex)
        elif kind is Request:
            if ex is not None and ex.sent and not ex.answered and ex.response_submitted and not ex.response_started:
                self._send_instead(ex, unit)
                return
            if ex is None or ex.sent or ex.answered:
                raise RuntimeError("taps can only pass the current request on an HTTP/1.1 connection")
            self._send_request(ex, unit)
        else:
            raise TypeError(f"an HTTP/1.1 connection cannot send a {unit.kind} to the server")

    def _send_request(self, ex: _Exchange, req: Request) -> None:
        ex.sent = True
        ex.request = req
        if req.method == "CONNECT" and self.explicit:
            self._open_tunnel(ex, req)
            return
        if self._upstream_error is not None:
            self._answer(ex, error_page(502, f"upstream {format_addr(self.flow.dst)}: {self._upstream_error}", req))
            return
        dst = self._reachable(ex, req, self._destination, check_loop=self.explicit)
        if dst is None:
            return
        up = self.upstream
        if up is not None and up is self._early:
            self._early = None
            if up.failure is not None and up.dst == dst:
                # The connect made at accept for this request failed before the request came:
                # answer with its failure, as when it fails after, rather than connect again
                # (one attempt, counted once in tinspect_upstream_connect_failures_total).
                ex.upstream = up
                self.upstream_failed(up, up.failure)
                return
        if up is None or not up.usable or up.dst != dst:
            if up is not None:
                up.close()
                self._forget_upstream()  # a closed transport never says its buffer drained
            up = self.upstream = Http1Upstream.open(self, self.ctx, self.flow, dst, req.scheme, ex.switching)
        if self.explicit:
            self.flow.dst = dst
        ex.upstream = up
        if ex.websocket is not None:
            # autobahn writes the handshake; its answer is recorded for it.
            up.record = bytearray()
            up.reader.expect_response(b"GET")
            try:
                ex.websocket.send(req, up)
            except ValueError as e:
                self._answer(ex, error_page(400, str(e), req))
                return
            self._await_response(ex)  # the handshake is a whole request
            return
        parts = up.request(req, upgrade=ex.switching)
        up.reader.expect_response(req.method.encode("latin-1"))
        up.write_parts(parts)
        if req.body is not None:
            self._await_response(ex)

    def _reachable(self, ex: _Exchange, req: Request, find: Callable[[Request], tuple[str, int]],
                   check_loop: bool = True) -> tuple[str, int] | None:
        """Where ``req`` goes (``find`` says), or ``None`` once it has been answered: a 400
        for a target that names no destination, the loop page for this proxy itself."""
        try:
            dst = find(req)
        except ValueError as e:
            self._answer(ex, error_page(400, str(e), req))
            return None
        if check_loop and self.ctx.loops(dst):
            self._answer(ex, _loop_page(dst, req))
            return None
        return dst

    def _send_instead(self, ex: _Exchange, req: Request) -> None:
        """A tap answered the server's whole response with ``req`` (a redirect it follows
        itself): send that in its place; the client gets the answer to it."""
        up = ex.upstream
        if req.body is None or not ex.request_done or ex.switching or (up is not None and up.message is not None):
            raise RuntimeError("taps can only send a whole request in place of a whole response")
        dst = self._reachable(ex, req, self._destination)
        if dst is None:
            return
        ex.response_submitted = False
        if up is not None and up is self.upstream and req.host != ex.request.host:
            # Another host, even at the same address: a connection of its own, its TLS verified for it.
            up.close()
            self._forget_upstream()
        self._send_request(ex, req)

    # -- upstream events ------------------------------------------------------

    def upstream_connected(self, up: Http1Upstream) -> None:
        """``up``'s connection is made (its `Leg` is ready)."""
        if self._finished or up is not self.upstream:
            up.close()
            return
        transport = up.leg.transport
        transport.registerProducer(SinkPauser(self.client), True)
        if self._client_full:
            up.leg.pause(PauseReason.SINK)

    def upstream_failed(self, up: Http1Upstream, reason: str) -> None:
        """``up``'s connection could not be made, for ``reason``."""
        if up is not self.upstream or self._finished:
            return
        self._log.warn(
            "flow {flow_id}: upstream {dst} failed: {reason}",
            flow_id=self.flow.id,
            dst=format_addr(up.dst),
            reason=reason,
        )
        ex = self._exchange
        if ex is not None and ex.upstream is up and not ex.answered and not ex.response_submitted:
            self._answer(ex, _gateway_error(reason, up.dst, ex.request))

    def upstream_data(self, up: Http1Upstream, data: bytes) -> None:
        """``up``'s server sent ``data``."""
        if up is not self.upstream or self._finished:
            return
        self._deadline.kick()
        if up.record is not None:
            up.record += data
        try:
            events = up.reader.feed(data)
        except ProtocolError as e:
            self._bad_response(up, str(e))
            return
        self._response_events(up, events)

    def upstream_eof(self, up: Http1Upstream) -> None:
        """``up``'s server closed its side of the connection."""
        if up is not self.upstream or self._finished:
            return
        up.keep_alive = False
        try:
            events = up.reader.feed_eof()
        except ProtocolError:
            self._bad_response(up, "closed the connection in the middle of a response")
            return
        self._response_events(up, events)
        ex = self._exchange
        if self.upstream is up and (ex is None or ex.upstream is not up or ex.response_submitted):
            up.close()  # the response (if any) is complete or queued; nothing more will come
            self._forget_upstream()

    def upstream_lost(self, up: Http1Upstream, reason: Failure) -> None:
        """``up``'s connection is gone."""
        if up is not self.upstream or self._finished:
            return
        self._forget_upstream()
        ex = self._exchange
        if ex is None or ex.upstream is not up or ex.answered or ex.response_done:
            return
        what = "closed the connection" if reason.check(ConnectionDone) else "reset the connection"
        self._bad_response(up, f"{what} before the response was complete")

    def _parent_refused(self, ex: _Exchange, up: Http1Upstream, reason: str) -> None:
        """The HTTP parent ``up`` goes to refused the request (`Http1Upstream.parent_refusal`):
        a 502 page naming it."""
        self._log.warn("flow {flow_id}: upstream {dst} failed: {reason}", flow_id=self.flow.id,
                       dst=format_addr(up.dst), reason=reason)
        up.abort()
        self._forget_upstream()
        self._answer(ex, _gateway_error(reason, up.dst, ex.request))

    def _bad_response(self, up: Http1Upstream, reason: str) -> None:
        """The server broke HTTP or the connection mid-response."""
        self._log.warn(
            "flow {flow_id}: upstream {dst} {reason}",
            flow_id=self.flow.id,
            dst=format_addr(up.dst),
            reason=reason,
        )
        up.abort()
        if self.upstream is up:
            self._forget_upstream()
        ex = self._exchange
        if ex is not None and ex.upstream is up and not ex.answered and not ex.response_submitted:
            self._answer(ex, error_page(502, f"upstream {format_addr(up.dst)} {reason}", ex.request))
        elif ex is not None and not ex.answered:
            self.flow.mark_ended(f"bad response: {reason}")
            self.client.abort()  # the client must not take a cut body for whole
            self._finish()

    def _response_events(self, up: Http1Upstream, events: list) -> None:
        if len(events) == 1 and type(events[0]) is BodyData and up.message is not None:
            # The common case while a body streams: no queue to build.
            self._responses.data(up.message, events[0].data)
            return
        queue = deque(events)
        while queue:
            event = queue.popleft()
            kind = type(event)
            ex = self._exchange
            if kind is ResponseHead:
                if ex is None or ex.upstream is not up or ex.answered:
                    self._bad_response(up, "sent a response nobody asked for")
                    return
                if up.via is not None:
                    refusal = up.parent_refusal(event)
                    if refusal is not None:
                        self._parent_refused(ex, up, refusal)
                        return
                self._response_head(ex, up, event, queue)
            elif kind is BodyData:
                resp = up.message
                if resp is not None:
                    self._responses.data(resp, event.data)
            elif kind is EndOfMessage:
                resp = up.message
                up.message = None
                if resp is not None:
                    self._responses.end(resp, event.trailers)
            elif kind is ConnectionClosed:
                up.keep_alive = False

    def _response_head(self, ex: _Exchange, up: Http1Upstream, head: ResponseHead, queue: deque) -> None:
        status = head.status
        resp = Response(
            status,
            head.reason.decode("latin-1"),
            Headers.wrap(head.headers),
            head.version.decode("latin-1"),
            body=None,
            request=ex.request,
        )
        self.ctx.quic.strip_alt_svc(resp.headers, ex.request, self.ctx.chain, self.flow)
        if up.record is not None:
            if status == 101:
                up.keep_alive = False
            elif status < 200:
                del up.record[: up.record.find(b"\r\n\r\n") + 4]  # autobahn reads only the 101
            else:
                up.record = None  # refused: the answer is relayed as HTTP
                ex.websocket = None
        if status < 200 and status != 101:
            resp.body = b""
            self.arms[TO_CLIENT].submit(resp)  # interim: no body, no end
            return
        if status == 101 and not ex.switching:
            self._bad_response(up, "switched protocols without being asked to")
            return
        ex.response_submitted = True
        if not persists(head):
            up.keep_alive = False
        whole = take_body(queue)
        if whole is not None:
            body, trailers = whole
            self._responses.whole(resp, body, trailers)
            return
        up.message = resp
        self._responses.head(resp)

    # -- towards the client ---------------------------------------------------

    def _to_client(self, unit: Unit) -> None:
        if self._finished:
            return
        ex = self._exchange
        kind = type(unit)
        if kind is BodyChunk:
            if ex is not None and ex.response_started:
                self._write_client(self.writer.body(unit.data))
        elif kind is MessageEnd:
            if ex is not None and ex.response_started:
                self._write_client(self.writer.end(unit.trailers.fields if unit.trailers else None))
                self._response_done(ex)
        elif kind is Response:
            if ex is None or ex.response_started:
                raise RuntimeError("taps can only send one response per request on an HTTP/1.1 connection")
            if unit.interim:
                if ex.client_version != "HTTP/1.0":
                    reason = unit.reason.encode("latin-1")
                    self._write_client(serialize_response_head(b"HTTP/1.1", unit.status, reason, unit.headers.fields))
                return
            if unit.status == 101 and ex.websocket is not None:
                self._open_websocket(ex, unit)
                return
            ex.response_started = True
            if ex.started:
                self.ctx.metrics.response_started("http1", ex.started)
            keep = ex.keep_alive and not self._client_eof and ex.request_done
            parts = self.writer.response(
                unit, method=ex.request.method, client_version=ex.client_version, keep_alive=keep
            )
            if not self.client.lost and self.client.write_open:
                send(self.client.transport, b"".join(parts))
            if ex.switching and (unit.status == 101 or (ex.request.method == "CONNECT" and unit.status < 300)):
                self._switch(ex)
            elif unit.body is not None:
                self._response_done(ex)
        else:
            raise TypeError(f"an HTTP/1.1 connection cannot send a {unit.kind} to the client")

    def _write_client(self, data: bytes) -> None:
        client = self.client
        if data and not client.lost and client.write_open:
            send(client.transport, data)

    def _answer(self, ex: _Exchange, response: Response) -> None:
        """Answer ``ex`` ourselves (refusal, gateway error); the taps see it."""
        ex.answered = True
        ex.response_submitted = True
        if not ex.request_done:
            ex.discard = True
        self.arms[TO_CLIENT].submit(response)

    def _replied(self, unit: Unit) -> None:
        """A tap on the TO_SERVER arm answered locally."""
        ex = self._exchange
        if ex is None or type(unit) is not Response or unit.interim:
            return
        ex.answered = True
        ex.response_submitted = True
        if not ex.request_done:
            ex.discard = True
        up = ex.upstream
        if up is not None and ex.sent:
            # Answered after the head went upstream: that connection's
            # answer is not wanted any more.
            up.abort()
            if self.upstream is up:
                self._forget_upstream()

    def _dropped(self, unit: Unit) -> None:
        kind = type(unit)
        if kind is MessageEnd:
            # The message must still end on the wire.
            (self._to_server if unit.direction is TO_SERVER else self._to_client)(unit)
        elif (kind is Request) or (kind is Response and not unit.interim):
            self._log.info(
                "flow {flow_id}: a tap dropped the {kind}; closing the client connection",
                flow_id=self.flow.id,
                kind=unit.kind,
            )
            self.flow.mark_ended(f"a tap dropped the {unit.kind}")
            self._close()

    def _response_done(self, ex: _Exchange) -> None:
        ex.response_done = True
        if ex.started:
            self.ctx.metrics.response_ended("http1", ex.started)
        if self.writer.close_after or self._client_eof or not ex.request_done:
            self._close()
            return
        self._maybe_done(ex)

    def _maybe_done(self, ex: _Exchange) -> None:
        if not (ex.request_done and ex.response_done) or self._exchange is not ex:
            return
        self._exchange = None
        self._deadline.start(self.ctx.settings.idle_timeout, IDLE)
        up = ex.upstream
        if up is not None and up is self.upstream and not up.keep_alive:
            up.close()
            self._forget_upstream()
        if self.reader.paused:
            # An upgrade or CONNECT that did not switch: back to HTTP.
            try:
                self._queue.extend(self.reader.resume())
            except ProtocolError as e:
                self._queue.append(e)
        self._pump()

    # -- switching protocols --------------------------------------------------

    def _switch(self, ex: _Exchange) -> None:
        """A 101 or a CONNECT's 2xx went to the client: relay raw bytes from now on."""
        up = ex.upstream
        if up is None or up.leg is None or not self.reader.paused or not up.reader.paused:
            self.abort("a protocol switch the two sides do not agree on")
            return
        client_rest = self.reader.switch()
        server_rest = up.reader.switch()
        self._hand_over()
        relay_raw(self.ctx.chain, self._handoff(up, client_rest, server_rest))

    def _open_websocket(self, ex: _Exchange, resp: Response) -> None:
        """The server's 101 passed the taps: WebSocket from now on, if
        autobahn agrees with it (else the client gets a 502)."""
        up = ex.upstream
        if up is None or up.leg is None or up.record is None or not self.reader.paused or not up.reader.paused:
            self.abort("a protocol switch the two sides do not agree on")
            return
        ex.response_started = True
        client_rest = self.reader.switch()
        up.reader.switch()
        record, up.record = bytes(up.record), None
        handoff = self._handoff(up, client_rest, record)
        layer = _websocket().WebSocketLayer(self.ctx, handoff, ex.websocket)
        failure = layer.open(resp)
        if failure is None:
            if ex.started:  # the exchange is the handshake: its response is the 101, head only
                self.ctx.metrics.response_started("websocket", ex.started)
                self.ctx.metrics.response_ended("websocket", ex.started)
            self._hand_over()
            take_over(handoff, layer, layer)
            return
        self._log.warn(
            "flow {flow_id}: upstream {dst} WebSocket handshake failed: {reason}",
            flow_id=self.flow.id,
            dst=format_addr(up.dst),
            reason=failure,
        )
        self.flow.mark_ended(f"WebSocket handshake failed: {failure}")
        self._last_word(ex, error_page(502, f"upstream {format_addr(up.dst)} WebSocket handshake failed: {failure}",
                                       ex.request))

    def _open_tunnel(self, ex: _Exchange, req: Request) -> None:
        """The explicit proxy's CONNECT: connect, answer 200, then sniff the tunnel."""
        dst = self._reachable(ex, req, lambda r: host_port(r.target, None))
        if dst is None:
            return
        if self.upstream is not None:
            self.upstream.close()
            self._forget_upstream()
        tunnel = self._tunnel = _Tunnel(self, ex, dst)
        tunnel.shell, tunnel.connecting = open_upstream(self.ctx, dst, tunnel, timings=self.flow.timings,
                                                        client=self.flow.client)

    def _tunnel_open(self, ex: _Exchange, dst: tuple[str, int], shell: Any, transport: Any) -> None:
        if self._finished or not self.reader.paused:
            shell.handler = None  # nobody carries this connection: its end goes unheard
            transport.loseConnection()
            return
        self.flow.dst = dst
        ex.response_started = True
        self._write_client(b"HTTP/1.1 200 Connection established\r\n\r\n")
        early = self.reader.switch()
        self._hand_over()
        handoff = Handoff(
            self.flow,
            self._shell,
            Upstream(shell, transport=transport),
            self._on_closed,
            client_early=early,
            client_eof=not self.client.read_open,
            legs=(self.client,),
        )
        self.ctx.next_layer(handoff)

    def _tunnel_failed(self, ex: _Exchange, dst: tuple[str, int], reason: str) -> None:
        if self._finished or self._exchange is not ex:
            return
        self._log.warn(
            "flow {flow_id}: CONNECT to {dst} failed: {reason}", flow_id=self.flow.id, dst=format_addr(dst), reason=reason
        )
        self._answer(ex, _gateway_error(reason, dst, ex.request))

    # -- failure and closing --------------------------------------------------

    def _bad_request(self, error: ProtocolError) -> None:
        """The client broke HTTP: a 4xx page when we can still send one, and close."""
        self.flow.mark_ended(f"bad request: {error}")
        self._log.warn(
            "flow {flow_id}: bad request from {client}: {reason} (answering {status})",
            flow_id=self.flow.id,
            client=format_addr(self.flow.client),
            reason=str(error),
            status=error.status,
        )
        ex = self._exchange
        if ex is not None and ex.response_started:
            self.abort(f"bad request: {error}")
            return
        if self.upstream is not None:
            self.upstream.abort()
            self._forget_upstream()
        page = error_page(error.status, str(error))
        self._write_client(b"".join(Http1Writer().response(page, method="GET", client_version="HTTP/1.1", keep_alive=False)))
        self._close()

    def _forget_upstream(self) -> None:
        """Stop using the current upstream; the client may have been paused
        for its full write buffer, which a lost transport never reports."""
        self.upstream = None
        self.client.resume(PauseReason.SINK)

    def client_full(self) -> None:
        """The client's write buffer is full: stop reading the upstream, and
        give the client idle_timeout to read something."""
        self._client_full = True
        self._stalled.start(self.ctx.settings.idle_timeout, "client")
        up = self.upstream
        if up is not None and up.leg is not None:
            up.leg.pause(PauseReason.SINK)

    def client_drained(self) -> None:
        """The client's write buffer drained: read the upstream again."""
        self._client_full = False
        self._stalled.stop()
        self._deadline.kick()  # the server was held back until now: its silence was ours
        up = self.upstream
        if up is not None and up.leg is not None:
            up.leg.resume(PauseReason.SINK)

    def _pause_upstream_for_taps(self) -> None:
        up = self.upstream
        if up is not None and up.leg is not None:
            up.leg.pause(PauseReason.TAPS)

    def _resume_upstream_for_taps(self) -> None:
        self._deadline.kick()  # the server was held back until now: its silence was ours
        up = self.upstream
        if up is not None and up.leg is not None:
            up.leg.resume(PauseReason.TAPS)

    def _tap_failed(self, failure: Failure) -> None:
        ex = self._exchange
        what = "framing error" if failure.check(FramingError) else "tap error"
        reason = f"{what}: {failure.getErrorMessage()}"
        if ex is not None and not ex.response_started and not self._finished:
            # Fail closed, but readably: the request is not passed on.
            self.flow.mark_ended(reason)
            self._last_word(ex, error_page(502, "a tap failed on this request; see the proxy log", ex.request))
            return
        self.abort(reason)

    def _last_word(self, ex: _Exchange, page: Response) -> None:
        """Answer ``ex`` with ``page`` straight away (past the taps) and close."""
        if self.upstream is not None:
            self.upstream.abort()
        self._write_client(
            b"".join(self.writer.response(page, method=ex.request.method, client_version=ex.client_version, keep_alive=False))
        )
        self._close()

    # -- timeouts -------------------------------------------------------------

    def _await_head(self) -> None:
        """Part of a request head came while idle: the rest must follow within header_timeout."""
        if self._exchange is None and self._deadline.what is IDLE and not self._finished and self.reader.mid_head:
            self._deadline.start(self.ctx.settings.header_timeout, HEAD)

    def _await_response(self, ex: _Exchange) -> None:
        """The whole request went upstream: its answer must come in time."""
        if not ex.response_done and self._exchange is ex:
            self._deadline.start(self.ctx.settings.response_timeout, RESPONSE)

    def _upstream_paused(self) -> bool:
        """Silence from the server is ours while we are not reading it."""
        up = self.upstream
        return self._deadline.what is RESPONSE and up is not None and up.leg is not None and up.leg.paused

    def _timed_out(self, what: str) -> None:
        if self._finished:
            return
        settings = self.ctx.settings
        if what is IDLE:
            self._log.info("flow {flow_id}: closing the connection: idle for {seconds:g} s",
                           flow_id=self.flow.id, seconds=settings.idle_timeout)
            self._close()
        elif what is HEAD:
            self._bad_request(ProtocolError(408, f"no complete request head within {settings.header_timeout:g} s"))
        else:
            ex = self._exchange
            up = ex.upstream if ex is not None else None
            if ex is None or up is None:
                return
            reason = f"sent nothing for {settings.response_timeout:g} s"
            if ex.response_submitted or ex.answered:
                self.abort(f"upstream {format_addr(up.dst)} {reason} in the middle of the response")
                return
            self._log.warn("flow {flow_id}: upstream {dst} {reason}", flow_id=self.flow.id,
                           dst=format_addr(up.dst), reason=reason)
            up.abort()
            if self.upstream is up:
                self._forget_upstream()
            self._answer(ex, error_page(504, f"upstream {format_addr(up.dst)} {reason}", ex.request))

    def abort(self, reason: str) -> None:
        """Abort both sides at once (fail closed)."""
        if self._finished:
            return
        self.flow.mark_ended(reason)
        self._log.info("flow {flow_id}: aborted: {reason}", flow_id=self.flow.id, reason=reason)
        self.client.abort()
        if self.upstream is not None:
            self.upstream.abort()
        self._finish()

    def _close(self) -> None:
        """Close the client gracefully (after what is written) and the upstream."""
        if self._finished:
            return
        self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        self._finish()

    def _handoff(self, up: Http1Upstream, client_rest: bytes, server_rest: bytes) -> Handoff:
        """Both connections, for the layer that carries them after a protocol switch."""
        return Handoff(
            self.flow,
            self._shell,
            Upstream(up.shell, transport=up.leg.transport),
            self._on_closed,
            client_early=client_rest,
            server_early=server_rest,
            client_eof=not self.client.read_open,
            server_eof=not up.leg.read_open,
            legs=(self.client, up.leg),
        )

    def _hand_over(self) -> None:
        """Stop acting on the connection: another layer carries it from now on (or it ended: `_finish`)."""
        self._finished = True
        self._deadline.stop()
        self._stalled.stop()

    def _client_stalled(self, what: str) -> None:
        self.abort(f"the client read nothing for {self.ctx.settings.idle_timeout:g} s")

    def _finish(self) -> None:
        if not self._finished:
            self._hand_over()
            self._queue.clear()
            self._on_closed()


class _Tunnel:
    """The upstream of an explicit CONNECT until it is up (then the sniffer's): a
    `tinspect.net.shells.ConnectHandler`, which hears how the connect ends and
    hands the connection on as soon as it is made."""

    def __init__(self, layer: Http1Layer, ex: _Exchange, dst: tuple[str, int]) -> None:
        self.layer = layer
        self.ex = ex
        self.dst = dst
        self.shell: Any = None
        self.connecting: Any = None

    def server_connected(self, transport: Any) -> None:
        self.connecting = None
        self.layer._tunnel_open(self.ex, self.dst, self.shell, transport)

    def server_failed(self, reason: str) -> None:
        self.connecting = None
        self.layer._tunnel_failed(self.ex, self.dst, reason)


def _websocket() -> Any:
    """`tinspect.layers.websocket`, loaded when first needed (see the module's docstring)."""
    import tinspect.layers.websocket

    return tinspect.layers.websocket


def _loop_page(dst: tuple[str, int], request: Request) -> Response:
    return error_page(508, f"{format_addr(dst)} is this proxy itself; the request would go round in a loop", request)


def _gateway_error(reason: str, dst: tuple[str, int], request: Request) -> Response:
    status = 504 if reason.endswith("connect timeout") else 502
    return error_page(status, f"cannot reach {format_addr(dst)}: {reason}", request)
