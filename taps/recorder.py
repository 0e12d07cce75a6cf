"""The ``recorder`` tap: flows as JSON Lines, and a HAR 1.2 export.

One record per HTTP request/response exchange (HTTP/1.1 and HTTP/2 alike),
written when the response has ended (or the flow did without one, with its
error), and one per WebSocket message, as they pass::

    {"type": "exchange", "flow": "7", "client": [...], "server": [...], "protocol": "h2",
     "request": {"method", "url", "version", "headers": [[name, value]...], "body"?},
     "response": {"status", "reason", "version", "headers", "body"?} | null,
     "timings": {"start", "request_end", "response_start", "end"}, "error"?}
    {"type": "websocket", "flow": "7", "direction": "to_server", "binary": false, "size": 5,
     "time": ..., "text" | "base64"?}
    {"type": "quic", "flow": "9", "client": [...], "server": [...], "version": "v1",
     "sni": "example.org", "alpn": "h3", "start": ..., "end": ..., "error"?: "QUIC refused (--quic refuse)"}

Times are ``time.time()`` seconds. Bodies are recorded only with
``bodies=yes``, up to ``max_body`` bytes each (``truncated`` says when cut),
as UTF-8 ``text`` or ``base64``; the proxy never waits for them: they are
copied as they stream. Header values of credentials (Authorization,
Cookie...) are recorded as they are: a recording is as private as the
traffic. ``har=PATH`` also writes a HAR 1.2 file (Chromium's and Firefox's
developer tools open it) when the proxy stops and on ``kill -HUP``;
``python3 -m tinspect har RECORDING.jsonl OUT.har`` converts a recording
any time.

Options:
    path: the JSON Lines file (required; appended to).
    har: a HAR file to write at the end.
    bodies: ``yes`` to record bodies (default ``no``).
    max_body: bytes kept per body (default 65536).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.logger import Logger

from tinspect import BodyChunk, Flow, MessageEnd, Request, Response, Tap, Unit, WebSocketMessage
from tinspect.taplib import convert, encode_body, flag, on_sighup

__all__ = ["RecorderTap"]


class _Exchange:
    __slots__ = ("request", "response", "req_body", "req_size", "resp_body", "resp_size", "times")

    def __init__(self, request: Request, now: float) -> None:
        self.request = request
        self.response: Response | None = None
        self.req_body = bytearray()
        self.req_size = 0
        self.resp_body = bytearray()
        self.resp_size = 0
        self.times = {"start": now}


class RecorderTap(Tap):
    """Records exchanges and WebSocket messages; see the module docstring."""

    kinds = (Request, Response, BodyChunk, MessageEnd, WebSocketMessage)
    log = Logger(namespace="tinspect.tap.recorder")

    def __init__(self, path: str, har: str | None = None, bodies: str | bool = False,
                 max_body: str | int = 65536) -> None:
        try:
            self.cap = int(max_body)
        except ValueError:
            raise ValueError(f"max_body must be a number of bytes, not {max_body!r}") from None
        self.bodies = flag("bodies", bodies)
        self.path = path
        self.har = har
        try:
            self._out = open(path, "a", encoding="utf-8")
        except OSError as e:
            raise ValueError(f"{path}: cannot open the recording: {e.strerror}") from None
        self._open: dict[int, _Exchange] = {}  # id(request) -> exchange
        if har:
            from twisted.internet import reactor

            reactor.addSystemEventTrigger("before", "shutdown", self.write_har)
            on_sighup(self.write_har)

    # -- units -----------------------------------------------------------------------

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        kind = type(unit)
        now = time.time()
        if kind is Request:
            ex = self._open[id(unit)] = _Exchange(unit, now)
            flow.state.setdefault("recorder", set()).add(id(unit))
            if unit.body is not None:
                self._body(ex, unit.body, True)
                ex.times["request_end"] = now
        elif kind is Response:
            ex = self._open.get(id(unit.request)) if unit.request is not None else None
            if ex is None or unit.interim:
                return unit
            ex.response = unit
            ex.times["response_start"] = now
            if unit.body is not None:
                self._body(ex, unit.body, False)
                self._finish(ex, flow, now)
        elif kind is BodyChunk or kind is MessageEnd:
            message = unit.message
            if type(message) is Request:
                ex = self._open.get(id(message))
                if ex is not None:
                    if kind is BodyChunk:
                        self._body(ex, unit.data, True)
                    else:
                        ex.times["request_end"] = now
            elif message is not None and message.request is not None:
                ex = self._open.get(id(message.request))
                if ex is not None:
                    if kind is BodyChunk:
                        self._body(ex, unit.data, False)
                    else:
                        self._finish(ex, flow, now)
        else:  # WebSocketMessage
            record = {"type": "websocket", "flow": flow.id, "direction": str(unit.direction),
                      "binary": unit.binary, "size": len(unit.data), "time": now}
            if self.bodies:
                record.update(encode_body(unit.data, self.cap, len(unit.data)))
            self._write(record)
        return unit

    def flow_closed(self, flow: Flow) -> None:
        """Exchanges of this flow that never finished are written with the flow's error;
        a QUIC flow (never decrypted) is written as one record with its name."""
        now = time.time()
        if flow.protocol == "quic":
            record = {"type": "quic", "flow": flow.id, "client": list(flow.client), "server": list(flow.dst),
                      "version": flow.quic_version, "sni": flow.sni, "alpn": flow.alpn,
                      "start": flow.started, "end": flow.ended}
            if flow.error:
                record["error"] = flow.error
            self._write(record)
            return
        for key in flow.state.pop("recorder", ()):
            ex = self._open.get(key)
            if ex is not None:
                self._finish(ex, flow, now, error=flow.error or "the connection ended before the response did")

    # -- records ---------------------------------------------------------------------

    def _body(self, ex: _Exchange, data: bytes, request: bool) -> None:
        if request:
            ex.req_size += len(data)
            if self.bodies and len(ex.req_body) < self.cap:
                ex.req_body += data[: self.cap - len(ex.req_body)]
        else:
            ex.resp_size += len(data)
            if self.bodies and len(ex.resp_body) < self.cap:
                ex.resp_body += data[: self.cap - len(ex.resp_body)]

    def _finish(self, ex: _Exchange, flow: Flow, now: float, error: str | None = None) -> None:
        self._open.pop(id(ex.request), None)
        flow.state.get("recorder", set()).discard(id(ex.request))
        ex.times["end"] = now
        req, resp = ex.request, ex.response
        record: dict[str, Any] = {
            "type": "exchange", "flow": flow.id, "client": list(flow.client) if flow.client else None,
            "server": list(flow.dst) if flow.dst else None, "protocol": flow.protocol,
            "request": {"method": req.method, "url": req.url, "version": req.version,
                        "headers": req.headers.items(), "body": self._stored(ex.req_body, ex.req_size)},
            "response": None if resp is None else {
                "status": resp.status, "reason": resp.reason, "version": resp.version,
                "headers": resp.headers.items(), "body": self._stored(ex.resp_body, ex.resp_size)},
            "timings": ex.times,
        }
        if error:
            record["error"] = error
        self._write(record)

    def _stored(self, data: bytearray, size: int) -> dict:
        return encode_body(bytes(data), self.cap, size) if self.bodies else {"size": size}

    def _write(self, record: dict) -> None:
        try:
            self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._out.flush()
        except OSError as e:  # a full disk must not end the flows it records
            self.log.error("recorder: cannot write to {path}: {error}", path=self.path, error=e.strerror)

    def write_har(self) -> None:
        """Write the HAR file from the recording so far (atomically: a temporary file, then rename)."""
        self._out.flush()
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            tmp = f"{self.har}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(convert(text))
            os.replace(tmp, self.har)
        except (OSError, ValueError) as e:
            self.log.error("recorder: cannot write the HAR file {path}: {error}", path=self.har, error=str(e))
            return
        self.log.info("recorder: HAR written to {path}", path=self.har)
