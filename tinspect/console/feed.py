"""What feeds the console: every flow and HTTP exchange, as a record of bounded size in the `Hub`.

Theory of operation
-------------------
With ``--console`` the proxy's tap chain is wrapped in the two taps of a
`ConsoleFeed` (`ConsoleFeed.wrap`): `head` runs first, `tail` last. Without
``--console`` neither exists, and nothing of the console runs per unit.

* The head sees each request as the client sent it, its body as it streams,
  every response (a server's, or a tap's local answer: a reply enters the
  response arm from its front, `tinspect.chain`), WebSocket messages as their
  sender sent them, and raw TCP and UDP payloads (counted, never kept).
* The tail sees what survived the taps: a request that reaches it goes
  upstream; a response that reaches it is what the client gets.

The taps' verdict on one exchange is read from `Flow.verdict`, with
`Flow.decisions` telling this exchange's decision from an earlier one's: a
decision made while a request (or its response) went from head to tail is
this exchange's. A request that never reached the tail but was answered
was answered locally: ``"blocked"`` or ``"cached"`` when a tap said so, else
``"local"``. Flows that carry no HTTP exchange (raw TCP, TLS passed through
or refused, UDP, QUIC) get one record of their own, made at their first
payload (so a long connection shows while it lasts) or when they end.

HTTP/2 exchanges are told apart by stream id; HTTP/1.1 ones are answered in
order (pipelining included), so the oldest open exchange is the one a
response belongs to.

Bounds: a record holds at most two heads of `tinspect.console.ring.HEAD_CAP`
bytes, two bodies of ``body_cap`` bytes, and the last ``ws_messages``
WebSocket messages of at most ``ws_cap`` bytes each; the ring holds at most
its capacity of records. State for exchanges in progress lives on their
flow (``flow.state``) and goes with it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from tinspect.chain import Tap
from tinspect.console.hub import Hub
from tinspect.console.ring import heads
from tinspect.flow import Flow
from tinspect.net.addresses import format_addr
from tinspect.taplib.har import encode_body
from tinspect.units import TO_SERVER, BodyChunk, Data, Datagram, MessageEnd, Request, Response, Unit, WebSocketMessage

__all__ = ["ConsoleFeed", "BODY_CAP", "WS_MESSAGES", "WS_CAP"]

BODY_CAP = 4096
"""Bytes of each request and response body kept (``--console-body``)."""
WS_MESSAGES = 20
"""WebSocket messages kept per connection: the most recent ones."""
WS_CAP = 512
"""Bytes kept of each WebSocket message (at most ``body_cap``)."""
_WS_REPUBLISH = 0.25  # seconds between live updates of one WebSocket record: a flood of messages is not a flood of events

_KEY = "console"  # flow.state key


class _Exchange:
    """One request/response exchange being recorded."""

    __slots__ = ("record", "detail", "stream", "reached", "seen_response", "answered", "d_request", "d_response",
                 "req_body", "req_size", "resp_body", "resp_size", "tunnel")

    def __init__(self, record: dict, stream: int | None, decisions: int) -> None:
        self.record = record
        self.detail = record["detail"]
        self.stream = stream
        self.reached = False  # the request passed the tail: it went upstream
        self.seen_response = False  # the head saw the final response
        self.answered = False  # the tail saw it
        self.d_request = decisions
        self.d_response = decisions
        self.req_body = bytearray()
        self.req_size = 0
        self.resp_body = bytearray()
        self.resp_size = 0
        self.tunnel = False  # the explicit proxy's CONNECT: its 200 does not cross the taps


class _FlowState:
    """What the feed knows of one flow."""

    __slots__ = ("h1", "h2", "requests", "count", "ws", "ws_published", "conn", "up", "down")

    def __init__(self) -> None:
        self.h1: list[_Exchange] = []  # open HTTP/1.1 exchanges, oldest first
        self.h2: dict[int, _Exchange] = {}  # open HTTP/2 exchanges by stream id
        self.requests: dict[int, _Exchange] = {}  # id(request as the head saw it) -> exchange, while its body streams
        self.count = 0
        self.ws: _Exchange | None = None  # the upgrade whose WebSocket messages are recorded
        self.ws_published = 0.0
        self.conn: dict | None = None  # the flow's own record (no HTTP on it)
        self.up = 0
        self.down = 0


class ConsoleFeed:
    """Turns what two taps see into console records, published to ``hub``.

    Args:
        hub: where records go.
        body_cap: bytes kept of each body (0: sizes only).
        ws_messages: WebSocket messages kept per connection.
        ws_cap: bytes kept of each WebSocket message.
        clock: ``time.time``.
    """

    def __init__(self, hub: Hub, body_cap: int = BODY_CAP, ws_messages: int = WS_MESSAGES, ws_cap: int = WS_CAP,
                 clock: Callable[[], float] = time.time) -> None:
        self.hub = hub
        self.body_cap = body_cap
        self.ws_messages = ws_messages
        self.ws_cap = min(ws_cap, body_cap)
        self.clock = clock
        self.head = _Head(self)
        self.tail = _Tail(self)

    def wrap(self, taps: Iterable[Tap]) -> list[Tap]:
        """``taps`` between the feed's head and tail."""
        return [self.head, *taps, self.tail]

    # -- records ---------------------------------------------------------------------

    @staticmethod
    def _state(flow: Flow) -> _FlowState:
        fs = flow.state.get(_KEY)
        if fs is None:
            fs = flow.state[_KEY] = _FlowState()
        return fs

    def _base(self, flow: Flow, key: str, kind: str, now: float) -> dict[str, Any]:
        dst = flow.dst
        return {
            "id": key, "flow": flow.id, "time": now, "client": format_addr(flow.client) if flow.client else "",
            "protocol": flow.protocol, "host": flow.sni or (dst[0] if dst else ""), "method": None,
            "url": format_addr(dst) if dst else "", "status": None, "size": 0, "duration": None,
            "verdict": flow.verdict if kind == "flow" else None, "error": None, "done": False,
            "detail": {"type": kind, "flow": flow.id, "client": list(flow.client) if flow.client else None,
                       "server": list(dst) if dst else None, "protocol": flow.protocol},
        }

    def _connection(self, flow: Flow, detail: dict) -> None:
        """The flow's connection facts: its steps' times and TLS, as known now."""
        t = flow.timings
        detail["connection"] = {"accepted": t.accepted, "upstream_connected": t.upstream_connected,
                                "client_tls_done": t.client_tls_done, "upstream_tls_done": t.upstream_tls_done}
        detail["tls"] = None if flow.tls_version is None and flow.sni is None else {
            "sni": flow.sni, "alpn": flow.alpn, "version": flow.tls_version, "upstream_cert": flow.upstream_cert}

    def request(self, req: Request, flow: Flow) -> None:
        """The head saw a request: a new exchange, shown at once."""
        fs = self._state(flow)
        fs.count += 1
        now = self.clock()
        self._tunnelled(fs, now)
        record = self._base(flow, f"{flow.id}.{fs.count}", "exchange", now)
        record.update(method=req.method, url=req.url, host=req.host or record["host"])
        detail = record["detail"]
        detail["request"] = heads(req)
        detail["response"] = None
        detail["timings"] = {"start": now}
        self._connection(flow, detail)
        ex = _Exchange(record, req.stream_id, flow.decisions)
        if req.stream_id is None:
            fs.h1.append(ex)
        else:
            fs.h2[req.stream_id] = ex
        if req.body is None:
            fs.requests[id(req)] = ex
        else:
            self._request_done(ex, req.body, now)
        self.hub.publish(record)

    def request_part(self, unit: BodyChunk | MessageEnd, flow: Flow) -> None:
        """The head saw a request's body chunk or end."""
        fs = flow.state.get(_KEY)
        ex = fs.requests.get(id(unit.message)) if fs is not None else None
        if ex is None:
            return
        if type(unit) is BodyChunk:
            ex.req_size += len(unit.data)
            self._keep(ex.req_body, unit.data)
        else:
            del fs.requests[id(unit.message)]
            self._request_done(ex, None, self.clock())

    def _request_done(self, ex: _Exchange, whole: bytes | None, now: float) -> None:
        if whole is not None:
            ex.req_size = len(whole)
            self._keep(ex.req_body, whole)
        ex.detail["timings"]["request_end"] = now
        ex.detail["request"]["body"] = self._body(ex.req_body, ex.req_size)
        ex.req_body = bytearray()

    def reached(self, req: Request, flow: Flow) -> None:
        """The tail saw a request: it goes upstream (a tap's decision on the way is this exchange's)."""
        fs = flow.state.get(_KEY)
        if fs is None:
            return
        ex = self._find(fs, req.stream_id, lambda e: not e.reached)
        if ex is None:
            return
        ex.reached = True
        ex.tunnel = req.method == "CONNECT" and flow.mode == "explicit"
        if flow.decisions != ex.d_request:
            ex.record["verdict"] = flow.verdict

    def response_seen(self, resp: Response, flow: Flow) -> None:
        """The head saw a final response: decisions from here on are about it."""
        fs = flow.state.get(_KEY)
        if fs is None or resp.interim:
            return
        ex = self._find(fs, _stream(resp), lambda e: not e.seen_response)
        if ex is not None:
            ex.seen_response = True
            ex.d_response = flow.decisions

    def response(self, resp: Response, flow: Flow) -> None:
        """The tail saw a final response: what the client gets."""
        fs = flow.state.get(_KEY)
        if fs is None or resp.interim:
            return
        ex = self._find(fs, _stream(resp), lambda e: not e.answered)
        if ex is None:
            return
        ex.answered = True
        now = self.clock()
        record = ex.record
        if not ex.reached:
            record["verdict"] = flow.verdict if flow.decisions != ex.d_request else "local"
        elif flow.decisions != ex.d_response:
            record["verdict"] = flow.verdict
        record["status"] = resp.status
        if flow.dst:  # an explicit proxy's flow learns it from the request
            ex.detail["server"] = list(flow.dst)
        self._connection(flow, ex.detail)  # the upstream connect and handshakes are done by now
        ex.detail["response"] = heads(resp)
        ex.detail["timings"]["response_start"] = now
        if resp.status == 101:
            record["protocol"] = ex.detail["protocol"] = "websocket"
            fs.ws = ex
            self._finish(fs, ex, now)
        elif resp.body is not None:
            record["error"] = _proxy_error(resp)
            ex.resp_size = len(resp.body)
            self._keep(ex.resp_body, resp.body)
            self._finish(fs, ex, now)
        else:
            self.hub.publish(record)

    def response_part(self, unit: BodyChunk | MessageEnd, flow: Flow) -> None:
        """The tail saw a response's body chunk or end."""
        fs = flow.state.get(_KEY)
        message = unit.message
        if fs is None or message is None:
            return
        ex = self._find(fs, _stream(message), lambda e: e.answered)
        if ex is None:
            return
        if type(unit) is BodyChunk:
            ex.resp_size += len(unit.data)
            self._keep(ex.resp_body, unit.data)
        else:
            self._finish(fs, ex, self.clock())

    def websocket(self, msg: WebSocketMessage, flow: Flow) -> None:
        """The head saw a WebSocket message: kept (the latest few, cut), counted."""
        fs = flow.state.get(_KEY)
        ex = fs.ws if fs is not None else None
        if ex is None:
            return
        now = self.clock()
        size = len(msg.data)
        messages = ex.detail.setdefault("websocket", [])
        record = {"type": "websocket", "flow": flow.id, "direction": str(msg.direction), "binary": msg.binary,
                  "size": size, "time": now}
        record.update(encode_body(msg.data[: self.ws_cap], self.ws_cap, size))
        messages.append(record)
        if len(messages) > self.ws_messages:
            del messages[0]
            ex.detail["websocket_dropped"] = ex.detail.get("websocket_dropped", 0) + 1
        ex.record["size"] += size
        ex.record["messages"] = ex.record.get("messages", 0) + 1
        if now - fs.ws_published >= _WS_REPUBLISH:
            fs.ws_published = now
            self.hub.publish(ex.record)

    def payload(self, unit: Data | Datagram, flow: Flow) -> None:
        """The head saw raw bytes: counted; the flow's own record is shown at the first."""
        fs = self._state(flow)
        if fs.h1:
            self._tunnelled(fs, self.clock())
        if unit.direction is TO_SERVER:
            fs.up += len(unit.data)
        else:
            fs.down += len(unit.data)
        if fs.conn is None:
            fs.conn = self._base(flow, flow.id, "flow", flow.started)
            self._connection(flow, fs.conn["detail"])
            self.hub.publish(fs.conn)

    def closed(self, flow: Flow) -> None:
        """The flow ended: its open exchanges end with its error; a flow without HTTP gets its record."""
        fs = flow.state.get(_KEY)
        now = self.clock()
        error = flow.error
        if fs is not None:
            if flow.timings.upstream_connected is not None:
                self._tunnelled(fs, now)
            for ex in [*fs.h1, *fs.h2.values()]:
                ex.record["error"] = error or "the connection ended before the response did"
                self._finish(fs, ex, now)
            if fs.ws is not None:
                record = fs.ws.record
                record["duration"] = now - record["time"]
                record["error"] = error
                self.hub.publish(record)
            if fs.count and fs.conn is None:
                return
        record = fs.conn if fs is not None and fs.conn is not None else None
        if record is None:
            record = self._base(flow, flow.id, "flow", flow.started)
        record.update(protocol=flow.protocol, host=flow.sni or record["host"], verdict=flow.verdict, error=error,
                      duration=(flow.ended or now) - flow.started, done=True,
                      size=(fs.up + fs.down) if fs is not None else 0)
        detail = record["detail"]
        self._connection(flow, detail)
        detail.update(protocol=flow.protocol, bytes_up=fs.up if fs else 0, bytes_down=fs.down if fs else 0,
                      ended=flow.ended, error=error)
        if flow.quic_version:
            detail["quic_version"] = flow.quic_version
        self.hub.publish(record)

    def _tunnelled(self, fs: _FlowState, now: float) -> None:
        """Something crossed (or ended) a tunnel the explicit proxy opened: its CONNECT was answered 200."""
        for ex in [e for e in fs.h1 if e.tunnel and not e.answered]:
            ex.answered = True
            ex.record["status"] = 200
            self._finish(fs, ex, now)

    def _finish(self, fs: _FlowState, ex: _Exchange, now: float) -> None:
        record, detail = ex.record, ex.detail
        if ex.stream is None:
            if ex in fs.h1:
                fs.h1.remove(ex)
        else:
            fs.h2.pop(ex.stream, None)
        for key in [k for k, v in fs.requests.items() if v is ex]:
            del fs.requests[key]
        if "body" not in detail["request"]:  # ended before its request did
            detail["request"]["body"] = self._body(ex.req_body, ex.req_size)
        if detail["response"] is not None:
            detail["response"]["body"] = self._body(ex.resp_body, ex.resp_size)
            if record["protocol"] != "websocket":
                record["size"] = ex.resp_size
        ex.req_body = ex.resp_body = bytearray()
        detail["timings"]["end"] = now
        if record["error"]:
            detail["error"] = record["error"]
        record["duration"] = now - record["time"]
        record["done"] = True
        self.hub.publish(record)

    @staticmethod
    def _find(fs: _FlowState, stream: int | None, wanted: Callable[[_Exchange], bool]) -> _Exchange | None:
        if stream is not None:
            return fs.h2.get(stream)
        for ex in fs.h1:
            if wanted(ex):
                return ex
        return None

    def _keep(self, kept: bytearray, data: bytes) -> None:
        room = self.body_cap - len(kept)
        if room > 0:
            kept += data[:room]

    def _body(self, kept: bytearray, size: int) -> dict:
        return encode_body(bytes(kept), self.body_cap, size) if self.body_cap else {"size": size}


def _proxy_error(resp: Response) -> str | None:
    """What went wrong, when ``resp`` is the proxy's own error page (`tinspect.units.error_page`:
    an upstream refused or timed out, a bad request); ``None`` for anything else."""
    body = resp.body
    if resp.status < 400 or not body or not body.startswith(b"%d " % resp.status):
        return None
    _, found, rest = body[:1024].partition(b"\n\ntinspect: ")
    if not found:
        return None
    return rest.decode("utf-8", "replace").strip() or None


def _stream(message: Request | Response) -> int | None:
    """The HTTP/2 stream of a message (``None`` for HTTP/1.x)."""
    if type(message) is Request:
        return message.stream_id
    request = message.request
    return request.stream_id if request is not None else None


class _Head(Tap):
    """First in the chain: units as their sender sent them."""

    name = "console"
    kinds = (Request, Response, BodyChunk, MessageEnd, WebSocketMessage, Data, Datagram)

    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        kind = type(unit)
        feed = self.feed
        if kind is Request:
            feed.request(unit, flow)
        elif kind is Response:
            feed.response_seen(unit, flow)
        elif kind is BodyChunk or kind is MessageEnd:
            if type(unit.message) is Request:
                feed.request_part(unit, flow)
        elif kind is WebSocketMessage:
            feed.websocket(unit, flow)
        else:
            feed.payload(unit, flow)
        return unit

    def flow_closed(self, flow: Flow) -> None:
        self.feed.closed(flow)


class _Tail(Tap):
    """Last in the chain: what goes upstream and what the client gets."""

    name = "console-tail"
    kinds = (Request, Response, BodyChunk, MessageEnd)

    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        kind = type(unit)
        feed = self.feed
        if kind is Request:
            feed.reached(unit, flow)
        elif kind is Response:
            feed.response(unit, flow)
        elif type(unit.message) is Response:
            feed.response_part(unit, flow)
        return unit
