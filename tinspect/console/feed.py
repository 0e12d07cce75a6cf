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

Cost: an exchange's record is an `_Exchange` (a `tinspect.console.ring.LiveRecord`)
holding references and packed heads, not JSON: its summary and detail are built
when a page reads it, so the feed's work per exchange is a few attribute stores,
two `cut_head` joins and the ring's insertion: about 18 µs of CPU and 36 Python calls per
HTTP/1.1 exchange with no tap between head and tail, in-memory figures from
``bench/micro_console.py`` on a 2-core AMD EPYC machine; end to end it costs more
(docs/console.md, "Cost").

Bounds: a record holds at most two heads of `tinspect.console.ring.HEAD_CAP`
bytes, two bodies of ``body_cap`` bytes, and the last ``ws_messages``
WebSocket messages of at most ``ws_cap`` bytes each; the ring holds at most
its capacity of records. State for exchanges in progress lives on their
flow (``flow.state``) and goes with it.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Iterable

from tinspect.chain import Tap
from tinspect.console.hub import Hub
from tinspect.console.ring import LiveRecord, cut_head, head_json
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.net.addresses import authority_host, format_addr
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
_NO_HEADERS = Headers()  # of the request a record's URL is made from, which has none (never changed)


class _Exchange(LiveRecord):
    """One request/response exchange: what it was made of, its record built only when read.

    It keeps references, not copies: the flow while the exchange is open (its
    connection facts are read from it when the record is), the heads' field
    lists as `cut_head` cut them, the bodies' first ``body_cap`` bytes. At its
    end it takes the few connection facts it shows and lets the flow go, so a
    kept record holds no more than its caps.
    """

    # Class-level defaults: an exchange stores only what it sets (a dozen attributes, not thirty).
    reached = False  # the request passed the tail: it went upstream
    seen_response = False  # the head saw the final response
    answered = False  # the tail saw it
    tunnel = False  # the explicit proxy's CONNECT: its 200 does not cross the taps
    done = False
    size = req_size = resp_size = ws_count = 0
    status = duration = verdict = error = None
    response: tuple | None = None  # status, reason, version, `cut_head`'s two
    req_body: bytes | bytearray | None = None  # the bodies' first body_cap bytes
    resp_body: bytes | bytearray | None = None
    request_end = response_start = end = None  # times
    connection: tuple | None = None  # the flow's `_facts`, once the flow is let go
    ws: deque | None = None  # the latest WebSocket messages: (direction, binary, first bytes, size, time)
    shown: tuple[str, str, str] | None = None  # client, host and URL as text, made at the first read

    def __init__(self, feed: ConsoleFeed, flow: Flow, key: str, req: Request, now: float) -> None:
        self.feed = feed
        self.flow: Flow | None = flow
        self.id = key
        self.flow_id = flow.id
        self.time = now
        self.client = flow.client
        self.protocol = flow.protocol
        self.sni = flow.sni
        self.server = flow.dst
        self.stream = req.stream_id
        self.d_request = self.d_response = flow.decisions
        # the request head: method, target, scheme, authority, version, `cut_head`'s two
        kept, cut = cut_head(req.headers.fields)
        self.request = (req.method, req.target, req.scheme, req.authority, req.version, kept, cut)

    def summary(self) -> dict[str, Any]:
        if self.shown is None:
            method, target, scheme, authority = self.request[:4]
            self.shown = (format_addr(self.client) if self.client else "",
                          authority_host(authority) or self.sni or (self.server[0] if self.server else ""),
                          Request(method, target, _NO_HEADERS, scheme=scheme, authority=authority).url)
        client, host, url = self.shown
        record = {"id": self.id, "flow": self.flow_id, "time": self.time, "client": client,
                  "protocol": self.protocol, "host": host, "method": self.request[0], "url": url,
                  "status": self.status, "size": self.size, "duration": self.duration, "verdict": self.verdict,
                  "error": self.error, "done": self.done}
        if self.ws is not None:
            record["messages"] = self.ws_count
        return record

    def whole(self) -> dict[str, Any]:
        record = self.summary()
        feed = self.feed
        method, _, _, _, version, kept, cut = self.request
        request = head_json(version, kept, cut, method=method, url=record["url"])
        if self.request_end is not None or self.done:
            request["body"] = feed.body(self.req_body, self.req_size)
        response = None
        if self.response is not None:
            status, reason, version, kept, cut = self.response
            response = head_json(version, kept, cut, status=status, reason=reason)
            if self.done:
                response["body"] = feed.body(self.resp_body, self.resp_size)
        timings = {"start": self.time}
        for name in ("request_end", "response_start", "end"):
            value = getattr(self, name)
            if value is not None:
                timings[name] = value
        times, tls = _connection(self.connection if self.flow is None else _facts(self.flow))
        detail = {"type": "exchange", "flow": self.flow_id, "client": list(self.client) if self.client else None,
                  "server": list(self.server) if self.server else None, "protocol": self.protocol,
                  "request": request, "response": response, "timings": timings, "connection": times, "tls": tls}
        if self.ws is not None:
            detail["websocket"] = [feed.ws_record(self.flow_id, *message) for message in self.ws]
            if self.ws_count > len(self.ws):
                detail["websocket_dropped"] = self.ws_count - len(self.ws)
        if self.error and self.done and self.protocol != "websocket":  # a WebSocket's error is the connection's
            detail["error"] = self.error
        record["detail"] = detail
        return record


def _facts(flow: Flow) -> tuple:
    """The flow's connection facts as known now: its steps' times and its TLS (a tuple: no dict per exchange)."""
    t = flow.timings
    return (t.accepted, t.upstream_connected, t.client_tls_done, t.upstream_tls_done,
            flow.sni, flow.alpn, flow.tls_version, flow.upstream_cert)


def _connection(facts: tuple) -> tuple[dict, dict | None]:
    """`_facts` as the console shows them: the times, and the TLS details (``None`` without TLS)."""
    accepted, upstream_connected, client_tls_done, upstream_tls_done, sni, alpn, version, cert = facts
    times = {"accepted": accepted, "upstream_connected": upstream_connected,
             "client_tls_done": client_tls_done, "upstream_tls_done": upstream_tls_done}
    tls = None if version is None and sni is None else {"sni": sni, "alpn": alpn, "version": version,
                                                         "upstream_cert": cert}
    return times, tls


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
        self.between = True  # taps between head and tail may decide (`wrap` knows)
        self.head = _Head(self)
        self.tail = _Tail(self)

    def wrap(self, taps: Iterable[Tap]) -> list[Tap]:
        """``taps`` between the feed's head and tail.

        With none between them nothing can decide on an exchange on its way
        from head to tail, nor answer it: the tail then sees no requests and
        the head no responses (the head notes that a request goes upstream),
        two tap calls fewer per exchange."""
        taps = list(taps)
        self.between = bool(taps)
        return [self.head, *taps, self.tail]

    # -- records ---------------------------------------------------------------------

    @staticmethod
    def _state(flow: Flow) -> _FlowState:
        fs = flow.state.get(_KEY)
        if fs is None:
            fs = flow.state[_KEY] = _FlowState()
        return fs

    @staticmethod
    def _base(flow: Flow, key: str, now: float) -> dict[str, Any]:
        """A record for a flow that carries no HTTP exchange (made once per flow, so a plain dictionary)."""
        dst = flow.dst
        times, tls = _connection(_facts(flow))
        return {
            "id": key, "flow": flow.id, "time": now, "client": format_addr(flow.client) if flow.client else "",
            "protocol": flow.protocol, "host": flow.sni or (dst[0] if dst else ""), "method": None,
            "url": format_addr(dst) if dst else "", "status": None, "size": 0, "duration": None,
            "verdict": flow.verdict, "error": None, "done": False,
            "detail": {"type": "flow", "flow": flow.id, "client": list(flow.client) if flow.client else None,
                       "server": list(dst) if dst else None, "protocol": flow.protocol,
                       "connection": times, "tls": tls},
        }

    def request(self, req: Request, flow: Flow) -> Request:
        """The head saw a request: a new exchange, shown at once (with no taps between head and
        tail, it goes upstream as it is: what `reached` would note is noted here)."""
        fs = flow.state.get(_KEY)
        if fs is None:
            fs = flow.state[_KEY] = _FlowState()
        fs.count += 1
        now = self.clock()
        if fs.h1:
            self._tunnelled(fs, now)
        ex = _Exchange(self, flow, f"{flow.id}.{fs.count}", req, now)
        if req.stream_id is None:
            fs.h1.append(ex)
        else:
            fs.h2[req.stream_id] = ex
        body = req.body
        if body is None:
            fs.requests[id(req)] = ex
        else:
            if body:
                ex.req_size = len(body)
                ex.req_body = body if len(body) <= self.body_cap else body[: self.body_cap]
            ex.request_end = now
        if not self.between:
            ex.reached = True
            ex.tunnel = req.method == "CONNECT" and flow.mode == "explicit"
        self.hub.publish(ex)
        return req

    def request_part(self, unit: BodyChunk | MessageEnd, flow: Flow) -> BodyChunk | MessageEnd:
        """The head saw a body chunk or end: a request's is noted."""
        fs = flow.state.get(_KEY)
        if fs is None or not fs.requests:
            return unit
        ex = fs.requests.get(id(unit.message))
        if ex is None:
            return unit
        if type(unit) is BodyChunk:
            ex.req_size += len(unit.data)
            ex.req_body = self._keep(ex.req_body, unit.data)
        else:
            del fs.requests[id(unit.message)]
            ex.request_end = self.clock()
        return unit

    def reached(self, req: Request, flow: Flow) -> Request:
        """The tail saw a request: it goes upstream (a tap's decision on the way is this exchange's)."""
        fs = flow.state.get(_KEY)
        if fs is None:
            return req
        stream = req.stream_id
        if stream is None:
            for ex in fs.h1:  # the oldest that has not gone upstream
                if not ex.reached:
                    break
            else:
                return req
        else:
            ex = fs.h2.get(stream)
            if ex is None:
                return req
        ex.reached = True
        ex.tunnel = req.method == "CONNECT" and flow.mode == "explicit"
        if flow.decisions != ex.d_request:
            ex.verdict = flow.verdict
        return req

    def response_seen(self, resp: Response, flow: Flow) -> Response:
        """The head saw a final response: decisions from here on are about it."""
        fs = flow.state.get(_KEY)
        if fs is None or (resp.status < 200 and resp.interim):
            return resp
        request = resp.request
        stream = request.stream_id if request is not None else None
        if stream is None:
            for ex in fs.h1:  # the oldest whose response the head has not seen
                if not ex.seen_response:
                    break
            else:
                return resp
        else:
            ex = fs.h2.get(stream)
            if ex is None:
                return resp
        ex.seen_response = True
        ex.d_response = flow.decisions
        return resp

    def response(self, resp: Response, flow: Flow) -> Response:
        """The tail saw a final response: what the client gets."""
        fs = flow.state.get(_KEY)
        if fs is None or (resp.status < 200 and resp.interim):
            return resp
        ex = self._unanswered(fs, resp)
        if ex is None:
            return resp
        ex.answered = True
        now = self.clock()
        if not ex.reached:
            ex.verdict = flow.verdict if flow.decisions != ex.d_request else "local"
        elif flow.decisions != ex.d_response:
            ex.verdict = flow.verdict
        ex.status = resp.status
        if flow.dst:  # an explicit proxy's flow learns it from the request
            ex.server = flow.dst
        kept, cut = cut_head(resp.headers.fields)
        ex.response = (resp.status, resp.reason, resp.version, kept, cut)
        ex.response_start = now
        if resp.status == 101:
            ex.protocol = "websocket"
            fs.ws = ex
            self._finish(fs, ex, now)
        elif resp.body is not None:
            body = resp.body
            if resp.status >= 400:
                ex.error = _proxy_error(resp)
            ex.resp_size = len(body)
            ex.resp_body = body if len(body) <= self.body_cap else body[: self.body_cap]
            self._finish(fs, ex, now)
        else:
            self.hub.changed(ex)
        return resp

    def response_part(self, unit: BodyChunk | MessageEnd, flow: Flow) -> BodyChunk | MessageEnd:
        """The tail saw a body chunk or end: a response's is noted."""
        fs = flow.state.get(_KEY)
        message = unit.message
        if fs is None or type(message) is not Response:
            return unit
        ex = self._answered(fs, message)
        if ex is None:
            return unit
        if type(unit) is BodyChunk:
            ex.resp_size += len(unit.data)
            ex.resp_body = self._keep(ex.resp_body, unit.data)
        else:
            self._finish(fs, ex, self.clock())
        return unit

    def websocket(self, msg: WebSocketMessage, flow: Flow) -> WebSocketMessage:
        """The head saw a WebSocket message: kept (the latest few, cut), counted."""
        fs = flow.state.get(_KEY)
        ex = fs.ws if fs is not None else None
        if ex is None:
            return msg
        now = self.clock()
        if ex.ws is None:
            ex.ws = deque(maxlen=self.ws_messages)
        data = msg.data
        ex.ws.append((msg.direction, msg.binary, data[: self.ws_cap], len(data), now))
        ex.ws_count += 1
        ex.size += len(data)
        if now - fs.ws_published >= _WS_REPUBLISH:
            fs.ws_published = now
            self.hub.changed(ex)
        return msg

    def ws_record(self, flow_id: str, direction: Any, binary: bool, kept: bytes, size: int,
                  now: float) -> dict[str, Any]:
        """A kept WebSocket message as the console shows it."""
        record = {"type": "websocket", "flow": flow_id, "direction": str(direction), "binary": binary,
                  "size": size, "time": now}
        record.update(encode_body(kept, self.ws_cap, size))
        return record

    def payload(self, unit: Data | Datagram, flow: Flow) -> Data | Datagram:
        """The head saw raw bytes: counted; the flow's own record is shown at the first."""
        fs = self._state(flow)
        if fs.h1:
            self._tunnelled(fs, self.clock())
        if unit.direction is TO_SERVER:
            fs.up += len(unit.data)
        else:
            fs.down += len(unit.data)
        if fs.conn is None:
            fs.conn = self._base(flow, flow.id, flow.started)
            self.hub.publish(fs.conn)
        return unit

    def closed(self, flow: Flow) -> None:
        """The flow ended: its open exchanges end with its error; a flow without HTTP gets its record."""
        fs = flow.state.get(_KEY)
        now = self.clock()
        error = flow.error
        if fs is not None:
            if flow.timings.upstream_connected is not None:
                self._tunnelled(fs, now)
            for ex in [*fs.h1, *fs.h2.values()]:
                ex.error = error or "the connection ended before the response did"
                self._finish(fs, ex, now)
            if fs.ws is not None:
                ws = fs.ws
                ws.duration = now - ws.time
                ws.error = error
                self.hub.publish(ws)
            if fs.count and fs.conn is None:
                return
        record = fs.conn if fs is not None and fs.conn is not None else None
        if record is None:
            record = self._base(flow, flow.id, flow.started)
        record.update(protocol=flow.protocol, host=flow.sni or record["host"], verdict=flow.verdict, error=error,
                      duration=(flow.ended or now) - flow.started, done=True,
                      size=(fs.up + fs.down) if fs is not None else 0)
        detail = record["detail"]
        detail["connection"], detail["tls"] = _connection(_facts(flow))
        detail.update(protocol=flow.protocol, bytes_up=fs.up if fs else 0, bytes_down=fs.down if fs else 0,
                      ended=flow.ended, error=error)
        if flow.quic_version:
            detail["quic_version"] = flow.quic_version
        self.hub.publish(record)

    def _tunnelled(self, fs: _FlowState, now: float) -> None:
        """Something crossed (or ended) a tunnel the explicit proxy opened: its CONNECT was answered 200."""
        for ex in [e for e in fs.h1 if e.tunnel and not e.answered]:
            ex.answered = True
            ex.status = 200
            self._finish(fs, ex, now)

    def _finish(self, fs: _FlowState, ex: _Exchange, now: float) -> None:
        if ex.stream is None:
            h1 = fs.h1
            if h1 and h1[0] is ex:  # answered in order: the oldest
                del h1[0]
            elif ex in h1:
                h1.remove(ex)
        else:
            fs.h2.pop(ex.stream, None)
        if fs.requests:
            for key in [k for k, v in fs.requests.items() if v is ex]:
                del fs.requests[key]
        if ex.response is not None and ex.protocol != "websocket":
            ex.size = ex.resp_size
        ex.end = now
        ex.duration = now - ex.time
        ex.done = True
        if ex.flow is not None:  # take the flow's facts as they are now, and let the flow go
            ex.connection = _facts(ex.flow)
            ex.flow = None
        hub = self.hub
        if hub.subscribers:  # `changed` would do nothing else: no call for it
            hub.changed(ex)

    @staticmethod
    def _unanswered(fs: _FlowState, resp: Response) -> _Exchange | None:
        """The open exchange ``resp`` answers: its stream's, or the oldest unanswered HTTP/1.1 one."""
        request = resp.request
        stream = request.stream_id if request is not None else None
        if stream is not None:
            return fs.h2.get(stream)
        for ex in fs.h1:
            if not ex.answered:
                return ex
        return None

    @staticmethod
    def _answered(fs: _FlowState, resp: Response) -> _Exchange | None:
        """The open exchange whose response ``resp`` is, now streaming its body: its stream's, or
        the oldest answered HTTP/1.1 one."""
        request = resp.request
        stream = request.stream_id if request is not None else None
        if stream is not None:
            return fs.h2.get(stream)
        for ex in fs.h1:
            if ex.answered:
                return ex
        return None

    def _keep(self, kept: bytes | bytearray | None, data: bytes) -> bytes | bytearray | None:
        """``kept`` with as much of the next chunk ``data`` as the cap leaves room for."""
        if kept is None:  # the chunk itself when under the cap (no copy), else its first bytes
            return data if len(data) <= self.body_cap else data[: self.body_cap]
        room = self.body_cap - len(kept)
        if room <= 0:
            return kept
        if type(kept) is not bytearray:
            kept = bytearray(kept)
        kept += data[:room]
        return kept

    def body(self, kept: bytes | bytearray | None, size: int) -> dict:
        """A body as the console shows it: its size, and what was kept of it."""
        return encode_body(bytes(kept or b""), self.body_cap, size) if self.body_cap else {"size": size}


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


class _FeedTap(Tap):
    """One of the feed's two taps: the chain calls the feed's function for each unit class
    (`handler_for`); `handle` does the same for a caller that hands it any unit."""

    def __init__(self, feed: ConsoleFeed) -> None:
        self.feed = feed

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        handler = self.handler_for(type(unit))
        return unit if handler is None else handler(unit, flow)


class _Head(_FeedTap):
    """First in the chain: units as their sender sent them."""

    name = "console"
    kinds = (Request, Response, BodyChunk, MessageEnd, WebSocketMessage, Data, Datagram)

    def handler_for(self, kind: type[Unit]) -> Callable[[Unit, Flow], Unit] | None:
        """The feed's function for ``kind``: no test of each unit's type (`tinspect.chain`)."""
        feed = self.feed
        if kind is Request:
            return feed.request
        if kind is Response:  # with no tap between head and tail, no decision to tell apart
            return feed.response_seen if feed.between else None
        if kind is BodyChunk or kind is MessageEnd:
            return feed.request_part
        if kind is WebSocketMessage:
            return feed.websocket
        return feed.payload

    def flow_closed(self, flow: Flow) -> None:
        self.feed.closed(flow)


class _Tail(_FeedTap):
    """Last in the chain: what goes upstream and what the client gets."""

    name = "console-tail"
    kinds = (Request, Response, BodyChunk, MessageEnd)

    def handler_for(self, kind: type[Unit]) -> Callable[[Unit, Flow], Unit] | None:
        """The feed's function for ``kind`` (see `_Head.handler_for`)."""
        feed = self.feed
        if kind is Request:  # with no tap between head and tail, the head notes it went upstream
            return feed.reached if feed.between else None
        if kind is Response:
            return feed.response
        return feed.response_part
