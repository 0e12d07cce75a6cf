"""MessageAssembler: an HTTP message's body into the units the taps see.

Theory of operation
-------------------
An HTTP message reaches the taps in one of two shapes, the same for
HTTP/1.1 and HTTP/2, requests and responses:

* *whole*: one `Request` or `Response` unit whose ``body`` holds every byte
  and ``trailers`` the trailer fields;
* *streamed*: the head with ``body`` ``None``, then a `BodyChunk` per piece
  of the body as it is read, then a `MessageEnd` with the trailers.

A message is whole when it arrived whole: the read that brought its head
brought its end too (a GET, a small response), so the taps get one unit
instead of three (`MessageAssembler.whole`). Otherwise its head decides
(`MessageAssembler.head`): when a tap asks for whole bodies
(`Tap.wants_whole_body`) the body is buffered and the message goes to the
taps whole at its end; else the head goes now and the body streams. A
buffered body that outgrows ``limit`` (``--max-body``) streams after all:
the head goes with ``body_too_large`` set, what was buffered as its first
`BodyChunk`, the rest as it comes, and the log says so. Memory stays
bounded by ``limit`` per message a tap wants whole.

What is the protocol's stays in its layer: finding a message's end among
the events of one read (the HTTP/1.1 layer's queue of parser events,
`tinspect.layers.http.h2.conn.take_whole` for HTTP/2), HTTP/2 flow-control
credit, trailers that HTTP/2 sends before the end, and which message an
event belongs to. The layer passes that message to every call: after its
head has passed the taps it is the unit they passed on, which the body's
units then name.

One assembler carries one message at a time in one direction, and is
reused for the next: the HTTP/1.1 layer keeps one per direction for the
connection, the HTTP/2 layer one per direction for each stream. Nothing is
allocated per message beyond the units themselves and a buffer when a tap
wants the body whole.

The module imports nothing from Twisted: the assembler hands the units to
the `Arm` it was given, and logs through the logger it was given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tinspect.headers import Headers
from tinspect.units import BodyChunk, MessageEnd, Request, Response

if TYPE_CHECKING:
    from tinspect.chain import Arm

__all__ = ["MessageAssembler"]

Fields = list[tuple[bytes, bytes]]


class _Log(Protocol):
    """What the assembler needs of a logger (a `twisted.logger.Logger`)."""

    def info(self, format: str, **fields: Any) -> None: ...


def _trailers(fields: Fields | None) -> Headers | None:
    """Trailer fields as taps get them: ``None`` for none."""
    return Headers.wrap(fields) if fields else None


class MessageAssembler:
    """Hands one direction's HTTP messages to the taps, whole or streamed.

    Args:
        arm: the arm of the messages' direction; every unit is submitted
            to it, and it says whether a tap wants a body whole.
        limit: the most bytes of a body buffered for a tap that wants it
            whole (``--max-body``).
        log: where a body that outgrew ``limit`` is reported.
    """

    __slots__ = ("_arm", "_limit", "_log", "_buffer")

    def __init__(self, arm: Arm, limit: int, log: _Log) -> None:
        self._arm = arm
        self._limit = limit
        self._log = log
        self._buffer: bytearray | None = None  # the body, while a tap wants it whole

    @property
    def buffering(self) -> bool:
        """Whether the current message's body is being buffered for a tap
        (what `data` takes is then not passed on yet)."""
        return self._buffer is not None

    def whole(self, message: Request | Response, body: bytes, trailers: Fields | None) -> None:
        """Submit ``message``, which arrived whole, as one unit.

        Args:
            message: the head.
            body: every byte of its body (``b""`` for none).
            trailers: its trailer fields, if any.
        """
        message.body = body
        message.trailers = _trailers(trailers)
        self._arm.submit(message)

    def head(self, message: Request | Response) -> bool:
        """Start ``message``, whose body follows in later reads (`data`, `end`).

        A tap that wants the body whole has it buffered; otherwise the head
        is submitted now, with ``body`` ``None``.

        Returns:
            ``True`` when the body is buffered: nothing was submitted.
        """
        message.body = None
        arm = self._arm
        if arm.chain.wants_whole_body(message, arm.flow):
            self._buffer = bytearray()
            return True
        self._buffer = None
        arm.submit(message)
        return False

    def data(self, message: Request | Response, data: bytes) -> None:
        """A piece of ``message``'s body: buffered, or submitted as a `BodyChunk`."""
        buffer = self._buffer
        if buffer is None:
            arm = self._arm
            arm.submit(BodyChunk(data, direction=arm.direction, message=message))
            return
        buffer += data
        if len(buffer) > self._limit:
            self._buffer = None
            self._overflow(message, buffer)

    def end(self, message: Request | Response, trailers: Fields | None) -> None:
        """``message``'s body ended: submit it whole when buffered, else a `MessageEnd`.

        Args:
            message: the message that ends.
            trailers: its trailer fields, if any.
        """
        arm = self._arm
        buffer = self._buffer
        if buffer is None:
            arm.submit(MessageEnd(_trailers(trailers), direction=arm.direction, message=message))
            return
        self._buffer = None
        message.body = bytes(buffer)
        message.trailers = _trailers(trailers)
        arm.submit(message)

    def _overflow(self, message: Request | Response, buffer: bytearray) -> None:
        """The body a tap asked for whole outgrew the limit: stream it after
        all (``body_too_large`` set), what was buffered as its first chunk."""
        arm = self._arm
        self._log.info(
            "flow {flow_id}: {kind} body over {limit} bytes; streaming it instead of buffering",
            flow_id=arm.flow.id,
            kind=message.kind,
            limit=self._limit,
        )
        message.body = None
        message.body_too_large = True
        arm.submit(message)
        arm.submit(BodyChunk(bytes(buffer), direction=arm.direction, message=message))
