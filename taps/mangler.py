"""The ``mangler`` tap: search and replace in payloads.

Works on raw TCP chunks (`Data`), UDP datagrams (`Datagram`), HTTP bodies and
WebSocket messages (`WebSocketMessage`, whole; in a text message the
replacement must keep it valid UTF-8, or the receiver closes with 1007).
On a raw TCP stream a match split across two chunks is not seen: the tap never
holds bytes back waiting for more, since an interactive protocol might wait
forever for them. HTTP bodies are asked for whole (buffered up to
``--max-body``), so every match is found and the framing is recomputed; a
body larger than that streams, is mangled chunk by chunk, and loses its
``Content-Length`` if the replacement changes lengths (it goes chunked).

Options:
    search: what to look for (required). From the command line a string, in
        which ``\\r``, ``\\n``, ``\\t``, ``\\xNN`` and ``\\\\`` are escapes.
    replace: what to put instead (default empty: delete).
    direction: ``both`` (default), ``to_server`` or ``to_client``.
"""

from __future__ import annotations

import codecs

from tinspect import BodyChunk, Data, Datagram, Flow, Request, Response, Tap, Unit, WebSocketMessage
from tinspect.taplib import directions

__all__ = ["ManglerTap"]


def _as_bytes(value: str | bytes, option: str) -> bytes:
    if isinstance(value, bytes):
        return value
    try:
        return codecs.escape_decode(value.encode("utf-8"))[0]
    except ValueError as e:
        raise ValueError(f"{option}: bad escape in {value!r}: {e}") from None


class ManglerTap(Tap):
    """Replaces every occurrence of ``search`` with ``replace``.

    Args:
        search: bytes (or escaped string) to find; must not be empty.
        replace: bytes (or escaped string) to put instead.
        direction: ``"both"``, ``"to_server"`` or ``"to_client"``.
    """

    kinds = (Data, Datagram, Request, Response, BodyChunk, WebSocketMessage)
    whole_bodies = True

    def __init__(self, search: str | bytes, replace: str | bytes = b"", direction: str = "both") -> None:
        self.search = _as_bytes(search, "search")
        if not self.search:
            raise ValueError("search must not be empty")
        self.replace = _as_bytes(replace, "replace")
        self.directions = directions(direction)

    def handle(self, unit: Unit, flow: Flow) -> Unit:
        if unit.direction not in self.directions:
            return unit
        if isinstance(unit, (Request, Response)):
            if unit.body is None:
                if len(self.search) != len(self.replace):
                    unit.headers.remove("content-length")
            elif self.search in unit.body:
                unit.body = unit.body.replace(self.search, self.replace)
        elif self.search in unit.data:
            unit.data = unit.data.replace(self.search, self.replace)
        return unit
