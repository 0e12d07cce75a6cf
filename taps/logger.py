"""The ``logger`` tap: one log line per flow open/close and per unit.

Lines go through twisted.logger with stable field names (``flow_id``,
``direction``, ``kind``, ``nbytes``; ``method``, ``url`` and ``status`` for
HTTP, ``code`` for a WebSocket close), so a JSON log observer gets them as data. Payloads are never
logged: sizes only. Header fields are logged only when asked for, and even
then the values of fields that carry credentials or sessions
(`PRIVATE_FIELDS`: Authorization, Cookie, Set-Cookie...) are replaced by
``[redacted N bytes]`` unless ``private`` is also on.

Options:
    level: ``info`` (default) or ``debug`` for the per-unit lines; flow
        open/close lines are always ``info``.
    headers: ``yes`` to add the header fields of requests and responses
        (default ``no``).
    private: ``yes`` to log the values of `PRIVATE_FIELDS` too (default
        ``no``; for a lab, never for a shared log).
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

from tinspect import Flow, Request, Response, Tap, Unit, WebSocketClose, WebSocketMessage, format_addr
from tinspect.taplib import flag

__all__ = ["LoggerTap", "PRIVATE_FIELDS"]

PRIVATE_FIELDS = frozenset({
    b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key", b"x-auth-token",
    b"x-csrf-token", b"x-amz-security-token",
})


class LoggerTap(Tap):
    """Logs every flow and every unit's direction, kind and size.

    Args:
        level: log level of the per-unit lines, ``"info"`` or ``"debug"``.
        headers: add requests' and responses' header fields to their lines.
        private: do not redact `PRIVATE_FIELDS` (only with ``headers``).
    """

    log = Logger(namespace="tinspect.tap.logger")

    def __init__(self, level: str = "info", headers: str | bool = False, private: str | bool = False) -> None:
        try:
            self._level = LogLevel.levelWithName(level.lower())
        except Exception:
            raise ValueError(f"level must be info or debug, not {level!r}") from None
        self._headers = flag("headers", headers)
        self._private = flag("private", private)

    def flow_opened(self, flow: Flow) -> None:
        # A QUIC flow opens once its name is read (it is never decrypted): say it here.
        quic = f" QUIC {flow.quic_version} {flow.sni or 'no name'} ALPN {flow.alpn or 'none'}" \
            if flow.protocol == "quic" else ""
        self.log.info(
            "flow {flow_id} open {transport} {client} -> {dst} via {listener}{quic}",
            flow_id=flow.id,
            transport=flow.transport,
            client=format_addr(flow.client),
            dst=format_addr(flow.dst),
            listener=flow.listener,
            quic=quic,
            sni=flow.sni,
        )

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        kind = type(unit)
        fields = {}
        if kind is Request:
            what = f"request {unit.method} {unit.url}"
            fields = {"method": unit.method, "url": unit.url}
        elif kind is Response:
            what = f"response {unit.status} {unit.reason}"
            fields = {"status": unit.status}
        elif kind is WebSocketMessage:
            what = f"websocket {'binary' if unit.binary else 'text'} message"
        elif kind is WebSocketClose:
            what = f"websocket close {unit.code}"
            fields = {"code": unit.code}
        else:
            what = unit.kind
        streams = kind in (Request, Response) and unit.body is None
        if self._headers and (kind is Request or kind is Response):
            what += "; " + self._fields(unit.headers.fields)
        self.log.emit(
            self._level,
            "flow {flow_id} {direction} {what} {size}",
            flow_id=flow.id,
            direction=str(unit.direction),
            what=what,
            kind=unit.kind,
            size="(body streams)" if streams else f"{unit.size} bytes",
            nbytes=unit.size,
            **fields,
        )
        return unit

    def _fields(self, fields: list[tuple[bytes, bytes]]) -> str:
        shown = []
        for name, value in fields:
            if not self._private and name.lower() in PRIVATE_FIELDS:
                value = f"[redacted {len(value)} bytes]".encode()
            shown.append(name + b": " + value)
        return "; ".join(f.decode("latin-1") for f in shown) or "no header fields"

    def flow_closed(self, flow: Flow) -> None:
        self.log.info(
            "flow {flow_id} closed {protocol}{name} after {duration:.3f}s{error}",
            flow_id=flow.id,
            protocol=flow.protocol,
            name=f" {flow.sni}" if flow.protocol == "quic" and flow.sni else "",
            duration=flow.duration,
            error=f" ({flow.error})" if flow.error else "",
        )
