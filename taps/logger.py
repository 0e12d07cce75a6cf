"""The ``logger`` tap: one log line per flow open/close and per unit.

Lines go through twisted.logger with stable field names (``flow_id``,
``direction``, ``kind``, ``nbytes``; ``method``, ``url`` and ``status`` for
HTTP, ``code`` for a WebSocket close), so a JSON log observer gets them as data. Payloads and header values
are never logged: sizes only.

Options:
    level: ``info`` (default) or ``debug`` for the per-unit lines; flow
        open/close lines are always ``info``.
"""

from __future__ import annotations

from twisted.logger import Logger, LogLevel

from tinspect.chain import Tap
from tinspect.flow import Flow, format_addr
from tinspect.units import Request, Response, Unit, WebSocketClose, WebSocketMessage

__all__ = ["LoggerTap"]


class LoggerTap(Tap):
    """Logs every flow and every unit's direction, kind and size.

    Args:
        level: log level of the per-unit lines, ``"info"`` or ``"debug"``.
    """

    log = Logger(namespace="tinspect.tap.logger")

    def __init__(self, level: str = "info") -> None:
        try:
            self._level = LogLevel.levelWithName(level.lower())
        except Exception:
            raise ValueError(f"level must be info or debug, not {level!r}") from None

    def flow_opened(self, flow: Flow) -> None:
        self.log.info(
            "flow {flow_id} open {transport} {client} -> {dst} via {listener}",
            flow_id=flow.id,
            transport=flow.transport,
            client=format_addr(flow.client),
            dst=format_addr(flow.dst),
            listener=flow.listener,
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

    def flow_closed(self, flow: Flow) -> None:
        self.log.info(
            "flow {flow_id} closed {protocol} after {duration:.3f}s{error}",
            flow_id=flow.id,
            protocol=flow.protocol,
            duration=flow.duration,
            error=f" ({flow.error})" if flow.error else "",
        )
