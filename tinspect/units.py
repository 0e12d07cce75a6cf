"""Units: the decoded things that cross the proxy and pass through the taps.

A unit is one decoded piece of traffic travelling in one direction: a chunk of
a raw TCP stream (`Data`), a UDP datagram (`Datagram`), and, once the protocol
layers decode them, HTTP requests, responses, body chunks and WebSocket
messages. Every unit says which way it travels (`direction`); the flow it
belongs to is passed beside it to `Tap.handle(unit, flow)`.

Units are small mutable dataclasses with slots: a tap may edit one in place
(``unit.data = ...``) or build a replacement with `dataclasses.replace`; both
are cheap. This module parses nothing and touches no transport.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["Direction", "Unit", "Data", "Datagram", "TO_SERVER", "TO_CLIENT", "raw_payload"]


class Direction(enum.Enum):
    """Which way a unit travels."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"

    @property
    def reverse(self) -> "Direction":
        """The opposite direction."""
        return TO_CLIENT if self is TO_SERVER else TO_SERVER

    def __str__(self) -> str:
        return self.value


TO_SERVER = Direction.TO_SERVER
TO_CLIENT = Direction.TO_CLIENT


@dataclass(slots=True, eq=True)
class Unit:
    """Base class of every unit.

    Attributes:
        direction: `Direction.TO_SERVER` for what the client sends,
            `Direction.TO_CLIENT` for what comes back. Keyword-only, so
            subclasses list their payload first: ``Data(b"hi",
            direction=TO_CLIENT)``.
    """

    direction: Direction = field(kw_only=True)

    @property
    def kind(self) -> str:
        """A short lowercase name for logs (``"data"``, ``"request"``...)."""
        return type(self).__name__.lower()

    @property
    def size(self) -> int:
        """Payload size in bytes, for loggers and metrics."""
        return 0


@dataclass(slots=True, eq=True)
class Data(Unit):
    """A chunk of a raw byte stream (unknown protocol, TLS passthrough).

    Chunk boundaries are whatever the network delivered; a tap must not assume
    a message lines up with a chunk.

    Attributes:
        data: the bytes.
    """

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(slots=True, eq=True)
class Datagram(Unit):
    """One UDP datagram.

    Attributes:
        data: the payload.
    """

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def raw_payload(unit: Unit) -> bytes:
    """The bytes a raw carrier (TCP relay, UDP session) sends for ``unit``.

    Raises:
        TypeError: the unit has no byte payload (a tap sent, say, an HTTP
            response into a raw TCP flow); the flow then fails closed.
    """
    data = getattr(unit, "data", None)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a raw flow cannot carry a {unit.kind} unit")
    return data
