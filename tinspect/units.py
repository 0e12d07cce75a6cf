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
from http import HTTPStatus
from urllib.parse import urlsplit

from tinspect.headers import Headers
from tinspect.net.addresses import authority_host

__all__ = [
    "Direction",
    "Unit",
    "Data",
    "Datagram",
    "Request",
    "Response",
    "BodyChunk",
    "MessageEnd",
    "WebSocketMessage",
    "WebSocketClose",
    "TO_SERVER",
    "TO_CLIENT",
    "raw_payload",
    "error_page",
    "reason_phrase",
]


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


@dataclass(slots=True, eq=False)
class Request(Unit):
    """An HTTP request head, with its whole body or with the body to follow.

    HTTP/1.1 and HTTP/2 both produce it (HTTP/2 pseudo-headers map onto
    `method`, `scheme`, `authority` and `target`).

    Attributes:
        method: ``"GET"``, ``"POST"``...
        target: the request target as sent: ``"/path?q"`` (origin form),
            ``"host:443"`` (CONNECT), ``"*"`` (OPTIONS). An explicit proxy's
            absolute-form target (``"http://host/path"``) is split into
            `scheme`, `authority` and an origin-form `target`.
        headers: the header fields (`Headers`), hop-by-hop ones included as
            the client sent them; the proxy removes those when forwarding.
        version: ``"HTTP/1.1"``, ``"HTTP/1.0"`` or ``"HTTP/2"``.
        scheme: ``"http"`` or ``"https"``.
        authority: ``host[:port]`` the request is for (``Host`` header, h2
            ``:authority``, or the absolute-form target).
        body: the whole body (``b""`` for none), or ``None`` when it streams
            as `BodyChunk` units ending with a `MessageEnd`. A tap may set a
            new ``bytes`` body; framing is recomputed.
        trailers: trailer fields of a whole body (``None`` for none).
        body_too_large: a tap asked for whole bodies but this one was larger
            than ``--max-body``, so it streams instead.
        stream_id: the HTTP/2 stream the request came on (the client's
            stream id); ``None`` for HTTP/1.x. A response, or a body chunk,
            goes to the stream of the request it names.
        destination: ``(host, port)`` to send this request to instead of
            the flow's destination: a tap routes it elsewhere (a cache, a
            mock server). It goes there over HTTP/1.1, over TLS when
            `scheme` is ``"https"`` (verified against ``host``).
    """

    method: str
    target: str
    headers: Headers = field(default_factory=Headers)
    version: str = "HTTP/1.1"
    scheme: str = "http"
    authority: str = ""
    body: bytes | None = b""
    trailers: Headers | None = None
    body_too_large: bool = False
    stream_id: int | None = None
    destination: tuple[str, int] | None = None
    direction: Direction = field(default=Direction.TO_SERVER, kw_only=True)

    @property
    def size(self) -> int:
        return len(self.body) if self.body else 0

    @property
    def host(self) -> str:
        """The host name of `authority`, without port or IPv6 brackets."""
        return authority_host(self.authority)

    @property
    def path(self) -> str:
        """The path and query (the target, when it is in origin form)."""
        target = self.target
        if target.startswith("/") or target == "*" or self.method == "CONNECT":
            return target
        parts = urlsplit(target)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    @property
    def url(self) -> str:
        """``scheme://authority/path?query``, for logs and filter rules."""
        if self.method == "CONNECT":
            return self.target
        return f"{self.scheme}://{self.authority}{self.path}"

    def respond(
        self,
        status: int,
        body: str | bytes = b"",
        headers: Headers | dict | list | None = None,
        reason: str | None = None,
    ) -> Response:
        """Build a local answer to this request (block page, cache hit).

        A tap returns it from `handle` instead of the request: the request
        never reaches the server. A ``str`` body is sent as UTF-8 text with
        a ``Content-Type`` of ``text/plain`` unless ``headers`` set one.

        Args:
            status: the status code.
            body: the whole body.
            headers: header fields (a `Headers`, dict or list of pairs).
            reason: the reason phrase; the standard one by default.
        """
        hdrs = headers if isinstance(headers, Headers) else Headers(headers)
        if isinstance(body, str):
            body = body.encode("utf-8")
            if "content-type" not in hdrs:
                hdrs["Content-Type"] = "text/plain; charset=utf-8"
        return Response(status, reason_phrase(status) if reason is None else reason, hdrs, body=body, request=self)


def reason_phrase(status: int) -> str:
    """The standard reason phrase of ``status`` (``""`` when unknown)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


@dataclass(slots=True, eq=False)
class Response(Unit):
    """An HTTP response head, with its whole body or with the body to follow.

    Interim responses (``100 Continue``, ``103 Early Hints``) are units too;
    `interim` tells them apart.

    Attributes:
        status: the status code.
        reason: the reason phrase (HTTP/1.1 only; ``""`` for HTTP/2).
        headers: the header fields (`Headers`).
        version: as for `Request`.
        body, trailers, body_too_large: as for `Request`.
        request: the request this answers, when known.
    """

    status: int
    reason: str = ""
    headers: Headers = field(default_factory=Headers)
    version: str = "HTTP/1.1"
    body: bytes | None = b""
    trailers: Headers | None = None
    body_too_large: bool = False
    request: Request | None = None
    direction: Direction = field(default=Direction.TO_CLIENT, kw_only=True)

    @property
    def size(self) -> int:
        return len(self.body) if self.body else 0

    @property
    def interim(self) -> bool:
        """A 1xx response other than 101: the final one is still to come."""
        return self.status < 200 and self.status != 101


def error_page(status: int, detail: str, request: Request | None = None, headers: list | None = None) -> Response:
    """A small ``text/plain`` response the proxy answers with itself."""
    phrase = reason_phrase(status)
    body = f"{status} {phrase}\n\ntinspect: {detail}\n".encode()
    fields = [(b"Content-Type", b"text/plain; charset=utf-8"), *(headers or [])]
    return Response(status, phrase, Headers(fields), body=body, request=request)


@dataclass(slots=True, eq=False)
class BodyChunk(Unit):
    """A piece of a streamed HTTP body (chunked framing already removed).

    Attributes:
        data: the bytes; a tap may change them, or drop the unit.
        message: the `Request` or `Response` the body belongs to.
    """

    data: bytes
    message: Request | Response | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(slots=True, eq=False)
class MessageEnd(Unit):
    """The end of a streamed HTTP body.

    Attributes:
        trailers: trailer fields (``None`` for none); a tap may change them.
        message: the `Request` or `Response` that ends.
    """

    trailers: Headers | None = None
    message: Request | Response | None = None


@dataclass(slots=True, eq=True)
class WebSocketMessage(Unit):
    """One whole WebSocket message (fragments already joined, compression
    already undone).

    Attributes:
        data: the payload; for a text message, its UTF-8 bytes.
        binary: a binary message (``False``: text).
    """

    data: bytes
    binary: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def text(self) -> str:
        """The payload of a text message, decoded; set it to replace it."""
        return self.data.decode("utf-8")

    @text.setter
    def text(self, value: str) -> None:
        self.data = value.encode("utf-8")


@dataclass(slots=True, eq=True)
class WebSocketClose(Unit):
    """A WebSocket close frame crossing the proxy (one side closed), or the
    close the proxy sends one side because the other went away (``1001``)
    or failed (``1011``).

    A tap may change the code and reason. It cannot stop a close: a close a
    tap drops is sent as it came. A tap may also inject one to close a side.

    Attributes:
        code: the status code (``1000`` normal), or ``None`` for none.
        reason: the reason text (at most 123 bytes of it are sent).
    """

    code: int | None = 1000
    reason: str = ""


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
