"""A sans-IO HTTP/1.1 parser: bytes in, events out.

This module parses what an HTTP/1.x client sends (role ``"request"``) or what
an HTTP/1.x server sends (role ``"response"``) into a small set of events.
Its other half, units in and bytes out, is ``tinspect/layers/http/http1/write.py``.  It
does no I/O and imports nothing from Twisted, so it can be tested with plain
bytes and reused by any transport glue (see ``tinspect/layers/http/http1/layer.py``).

It is deliberately strict where leniency enables request smuggling or
response splitting (RFC 9112 §11.2): bare CR or LF, obs-fold, whitespace
before the colon, conflicting ``Content-Length``, ``Content-Length`` together
with ``Transfer-Encoding`` and malformed chunk sizes are all rejected with a
:class:`ProtocolError` carrying the status code a server would answer.

Speed matters: every byte of proxied HTTP/1 traffic goes through here twice.
Parsing is built on ``bytes.find``/``split`` and slicing; no per-byte Python
loops and no regular expressions on the hot path.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

# HOP_BY_HOP is not used here: imported so that tinspect 0.1's
# ``tinspect.http1.HOP_BY_HOP`` still imports.
from tinspect.layers.http.grammar import (  # noqa: F401
    HOP_BY_HOP,
    KNOWN_METHODS,
    NAME_CACHE,
    TARGET_OK,
    VERSIONS,
    is_token,
    lower_name,
    tokens,
)

__all__ = [
    "BodyData",
    "ConnectionClosed",
    "EndOfMessage",
    "Event",
    "Http1Reader",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "header_value",
    "header_values",
    "keep_alive",
    "persists",
    "take_body",
]

Headers = list[tuple[bytes, bytes]]


# ---------------------------------------------------------------------------
# Theory of operation
# ---------------------------------------------------------------------------
#
# One Http1Reader parses one direction of one connection.  It is a state
# machine over these states:
#
#     HEAD ──head──▶ (no body) ───────────────────────────────┐
#       ▲    │                                                 │
#       │    ├─▶ LENGTH ── n bytes ───────────────────────────┤
#       │    ├─▶ CHUNK_SIZE ─▶ CHUNK_DATA ─▶ CHUNK_CRLF ─┐     │
#       │    │      ▲  │ size 0                          │     │
#       │    │      └──┼─────────────────────────────────┘     │
#       │    │         └─▶ TRAILERS ──────────────────────────┤
#       │    └─▶ UNTIL_CLOSE ── feed_eof(): EndOfMessage ─▶ CLOSED
#       │                                                      ▼
#       └──────────────────────── EndOfMessage ◀───────────────┘
#                                      │ CONNECT / Upgrade / 101
#                                      ▼
#                                    PAUSED ── switch() ─▶ SWITCHED
#                                      │
#                                      └──── resume() ──▶ HEAD
#
# plus CLOSED (after feed_eof) and ERROR (after a ProtocolError; the error is
# raised again on any later feed).  HEAD skips empty lines before a start line
# in both roles.  Which body state follows a head is decided once, from the
# framing headers (RFC 9112 §6.3), in _on_request_head / _on_response_head.
#
# Failure.  A ProtocolError ends the reader for good.  Events already parsed
# from the same feed() call are dropped with it: the caller is about to
# answer 400 (or 502) and close, and the peer cannot be trusted to have
# framed the earlier messages the way we think either.
#
# Buffering.  The body states consume whatever bytes are available and emit
# them at once as BodyData, so they never leave bytes behind.  Only the
# "line" states (HEAD, CHUNK_SIZE, CHUNK_CRLF, TRAILERS) and PAUSED can be
# left waiting for more input; they park the unparsed tail in self._buf (a
# bytearray, so appends are amortised O(1)).  While bytes are parked, feed()
# appends to the bytearray and only looks for the terminator the state needs
# (CRLFCRLF, LF, or two bytes), starting at self._scan, so a 64 KiB head fed
# one byte at a time costs O(n), not O(n²).  Once the terminator is there the
# bytearray is turned into one bytes object and parsed like a fresh feed.
# In the common case (a whole head in one read) nothing is copied into the
# bytearray at all: parsing works on the bytes passed to feed(), with an
# index walking through it, message after message.
#
# Validating a head.  The head is split on CRLF once.  Instead of looking at
# every line for stray CR, LF and NUL, we delete those three bytes from the
# head with bytes.translate() and compare lengths: exactly two bytes per
# separator may go.  Header names are validated and lower-cased through a
# small cache (grammar.NAME_CACHE, shared with the writer), so a name seen
# before costs one dict lookup.  Only when a fast
# check fails do we walk the head again to say precisely what was wrong.
#
# The response role must know which request each response answers: a
# response to HEAD has no body, a 2xx to CONNECT starts a tunnel.  The caller
# pushes the method of every request it sends with expect_response(); a final
# (non-1xx, or 101) response pops it.  Interim 1xx responses leave it there.

# ---------------------------------------------------------------------------
# Errors and events
# ---------------------------------------------------------------------------


class ProtocolError(Exception):
    """The peer sent bytes that are not acceptable HTTP/1.x.

    Attributes:
        status: The HTTP status a server would answer with (400, 413, 414,
            431, 501 or 505).  For the response role it only classifies the
            error; the proxy answers its own client with a 502 of its own.
    """

    def __init__(self, status: int, reason: str) -> None:
        """Create the error.

        Args:
            status: The HTTP status code that describes the failure.
            reason: A human-readable explanation; ``str(error)`` returns it.
        """
        super().__init__(reason)
        self.status = status


@dataclass(slots=True)
class RequestHead:
    """The request line and header fields of one request.

    Attributes:
        method: The method token, as sent (case-sensitive).
        target: The request target, as sent.
        version: ``b"HTTP/1.0"`` or ``b"HTTP/1.1"``.
        headers: ``(name, value)`` pairs in order; names keep their original
            case, values are stripped of surrounding spaces and tabs.
        switching: a CONNECT or an upgrade request (``Upgrade`` named in
            ``Connection``): the reader pauses after it. Not compared.
        connection: the values of its ``Connection`` fields, ``None`` when it
            has none (collected while parsing, for `persists`). Not compared.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: Headers
    switching: bool = field(default=False, compare=False)
    connection: list[bytes] | None = field(default=None, compare=False)


@dataclass(slots=True)
class ResponseHead:
    """The status line and header fields of one response (1xx included).

    Attributes:
        version: ``b"HTTP/1.0"`` or ``b"HTTP/1.1"``.
        status: The three-digit status code.
        reason: The reason phrase, possibly empty.
        headers: As for :class:`RequestHead`.
        connection: As for :class:`RequestHead`.
    """

    version: bytes
    status: int
    reason: bytes
    headers: Headers
    connection: list[bytes] | None = field(default=None, compare=False)


@dataclass(slots=True)
class BodyData:
    """A piece of message body, already stripped of chunked framing.

    Attributes:
        data: Never empty.
    """

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The current message is complete.

    Attributes:
        trailers: Trailer fields of a chunked message, else empty.
    """

    trailers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed the connection cleanly, between messages."""


Event = RequestHead | ResponseHead | BodyData | EndOfMessage | ConnectionClosed


# ---------------------------------------------------------------------------
# Character classes and small helpers
# ---------------------------------------------------------------------------

_HEXDIG = b"0123456789abcdefABCDEF"
_VERSION_SHAPE = re.compile(rb"HTTP/[0-9]\.[0-9]").fullmatch  # error path only
_EMPTY_LINES = re.compile(rb"(?:\r\n)+").match  # only when a CRLF leads
# Transfer codings we accept in front of the final "chunked" of a request.
_KNOWN_CODINGS = frozenset((b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"))
_MAX_CONTENT_LENGTH = 2**63
# b"100" .. b"999" to their int: one lookup both checks and converts.
_STATUS_CODES = {b"%d" % code: code for code in range(100, 1000)}
# The only fields the reader itself looks at.
_FRAMING_NAMES = frozenset((b"content-length", b"transfer-encoding", b"connection", b"upgrade"))


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """Return the value of the first header called ``name``.

    Args:
        headers: ``(name, value)`` pairs as found in a head event.
        name: The field name; compared case-insensitively.

    Returns:
        The value, or None if there is no such field.
    """
    name = name.lower()
    for n, v in headers:
        if n.lower() == name:
            return v
    return None


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Return the values of all headers called ``name``, in order.

    Args:
        headers: ``(name, value)`` pairs as found in a head event.
        name: The field name; compared case-insensitively.

    Returns:
        The values (possibly an empty list).  Comma-separated lists inside
        one value are not split.
    """
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def keep_alive(version: bytes, headers: Headers) -> bool:
    """Tell whether a connection stays open after this message.

    HTTP/1.1 connections persist unless ``Connection: close`` is given;
    HTTP/1.0 connections persist only with ``Connection: keep-alive``.

    Args:
        version: The message's HTTP version, e.g. ``b"HTTP/1.1"``.
        headers: The message's header fields.

    Returns:
        True if the connection may carry another message.
    """
    return _persists(version, header_values(headers, b"connection"))


def persists(head: RequestHead | ResponseHead) -> bool:
    """`keep_alive` of a head a reader parsed, from the ``Connection`` values
    it collected (no second look at every field)."""
    connection = head.connection
    if connection is None:
        return head.version == b"HTTP/1.1"
    return _persists(head.version, connection)


def _persists(version: bytes, connection: list[bytes]) -> bool:
    options = tokens(connection)
    if b"close" in options:
        return False
    if version == b"HTTP/1.1":
        return True
    return b"keep-alive" in options


_HEAD = 0
_LENGTH = 1
_CHUNK_SIZE = 2
_CHUNK_DATA = 3
_CHUNK_CRLF = 4
_TRAILERS = 5
_UNTIL_CLOSE = 6
# States from here on do not parse.
_PAUSED = 7
_SWITCHED = 8
_CLOSED = 9
_ERROR = 10

_NO_BODY = 0
_BODY_LENGTH = 1
_BODY_CHUNKED = 2
_BODY_UNTIL_CLOSE = 3


class Http1Reader:
    """Parse one direction of an HTTP/1.x connection into events.

    Feed it bytes as they arrive; it returns the events those bytes complete.
    Bodies stream: body bytes come out as :class:`BodyData` as soon as they
    arrive.  Several pipelined messages in one read give all their events.

    After a CONNECT request, an upgrade request (``Upgrade`` plus
    ``Connection: upgrade``), a 101 response or a 2xx response to CONNECT,
    the reader emits the message's :class:`EndOfMessage` and pauses: later
    bytes are kept, unparsed, until the caller either calls :meth:`switch`
    (the connection now speaks another protocol) or :meth:`resume` (the
    switch did not happen; go on with HTTP).
    """

    __slots__ = (
        "_role_is_request",
        "_max_start_line",
        "_max_header_bytes",
        "_max_headers",
        "_state",
        "_buf",
        "_scan",
        "_start_line_end",
        "_remaining",
        "_pause_after",
        "_expect",
        "_eof_pending",
        "_error",
    )

    def __init__(
        self,
        role: str,
        *,
        max_start_line: int = 8192,
        max_header_bytes: int = 65536,
        max_headers: int = 100,
    ) -> None:
        """Create a reader.

        Args:
            role: ``"request"`` to parse what a client sends, ``"response"``
                to parse what a server sends.
            max_start_line: Longest request or status line accepted, in
                bytes, without its CRLF (414 for requests, 400 for
                responses beyond it); also bounds chunk-size lines (400).
            max_header_bytes: Largest header (or trailer) section accepted,
                in bytes, CRLFs included (431 beyond it).
            max_headers: Most header (or trailer) fields accepted (431).

        Raises:
            ValueError: If ``role`` is neither of the above.
        """
        if role not in ("request", "response"):
            raise ValueError(f"role must be 'request' or 'response', not {role!r}")
        self._role_is_request = role == "request"
        self._max_start_line = max_start_line
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers
        self._state = _HEAD
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for a terminator in _buf
        self._start_line_end = -1  # index of the start line's CR in _buf
        self._remaining = 0  # body or chunk bytes still to come
        self._pause_after = False  # pause after the current message
        self._expect: deque[bytes] = deque()
        self._eof_pending = False
        self._error: ProtocolError | None = None

    # -- public API ---------------------------------------------------------

    @property
    def role(self) -> str:
        """``"request"`` or ``"response"``, as given to the constructor."""
        return "request" if self._role_is_request else "response"

    @property
    def paused(self) -> bool:
        """True after a protocol switch was requested or accepted.

        While paused, fed bytes are only buffered; call :meth:`switch` or
        :meth:`resume`.
        """
        return self._state == _PAUSED

    @property
    def mid_head(self) -> bool:
        """True while part of a message head has arrived and the rest has not."""
        return self._state == _HEAD and bool(self._buf)

    def expect_response(self, method: bytes) -> None:
        """Record that a request with ``method`` was sent to the server.

        Response role only.  Responses are matched to requests in order,
        which tells the reader that a response to HEAD has no body and that
        a 2xx to CONNECT opens a tunnel.  A response arriving with nothing
        recorded is taken to answer a GET.

        Args:
            method: The request method, e.g. ``b"HEAD"``.

        Raises:
            RuntimeError: If this reader parses requests.
        """
        if self._role_is_request:
            raise RuntimeError("expect_response() is for the response role")
        self._expect.append(method)

    def feed(self, data: bytes) -> list[Event]:
        """Parse more bytes from the peer.

        Args:
            data: The bytes just received (may be empty).

        Returns:
            The events these bytes complete, in order; possibly none.

        Raises:
            ProtocolError: If the peer broke the protocol.  The reader is
                then unusable and raises the same error on every later feed.
            RuntimeError: If the reader was switched or saw EOF already.
        """
        state = self._state
        if state >= _PAUSED:
            if state == _PAUSED:
                self._buf += data
                return []
            self._refuse()
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buf
        if buf:
            buf += data
            try:
                if not self._buffer_ready():
                    return []
            except ProtocolError as e:
                self._fail(e)
            data = bytes(buf)
            buf.clear()
            self._scan = 0
            self._start_line_end = -1
        elif not data:
            return []
        return self._run(data)

    def feed_eof(self) -> list[Event]:
        """Tell the reader the peer closed its side of the connection.

        Returns:
            ``[ConnectionClosed()]`` between messages;
            ``[EndOfMessage(), ConnectionClosed()]`` when a response body
            was delimited by the close; nothing while paused (the EOF is
            remembered and acted upon by :meth:`resume`) or if EOF was
            already seen.

        Raises:
            ProtocolError: ``400 "connection closed mid-message"`` if a
                message was cut short.
            RuntimeError: After :meth:`switch`.
        """
        state = self._state
        if state == _PAUSED:
            self._eof_pending = True
            return []
        if state == _CLOSED:
            return []
        if state >= _PAUSED:
            self._refuse()
        events: list[Event] = []
        if state == _UNTIL_CLOSE:
            events.append(EndOfMessage([]))
        elif state != _HEAD or self._buf:
            self._fail(ProtocolError(400, "connection closed mid-message"))
        self._state = _CLOSED
        events.append(ConnectionClosed())
        return events

    def switch(self) -> bytes:
        """Hand the connection over to another protocol.

        Only valid while :attr:`paused`.  The reader is finished afterwards;
        any further :meth:`feed` raises RuntimeError.

        Returns:
            Every byte received after the message that paused the reader,
            none of them parsed.

        Raises:
            RuntimeError: If the reader is not paused.
        """
        if self._state != _PAUSED:
            raise RuntimeError("switch() needs a paused reader")
        self._state = _SWITCHED
        data = bytes(self._buf)
        self._buf = bytearray()
        return data

    def resume(self) -> list[Event]:
        """Go on parsing HTTP after a pause (e.g. the upgrade was refused).

        Returns:
            The events completed by the bytes buffered while paused (and the
            EOF, if :meth:`feed_eof` was called while paused).

        Raises:
            ProtocolError: If the buffered bytes break the protocol.
            RuntimeError: If the reader is not paused.
        """
        if self._state != _PAUSED:
            raise RuntimeError("resume() needs a paused reader")
        self._state = _HEAD
        data = bytes(self._buf)
        self._buf.clear()
        events = self._run(data) if data else []
        if self._eof_pending and self._state != _PAUSED:
            self._eof_pending = False
            events += self.feed_eof()
        return events

    # -- machinery ----------------------------------------------------------

    def _refuse(self) -> None:
        error = self._error
        if self._state == _ERROR and error is not None:
            # A fresh exception, so tracebacks do not pile up on one object.
            raise ProtocolError(error.status, str(error))
        if self._state == _SWITCHED:
            raise RuntimeError("reader was switched to another protocol")
        raise RuntimeError("reader already saw EOF")

    def _fail(self, error: ProtocolError) -> None:
        self._state = _ERROR
        self._error = error
        self._buf = bytearray()
        raise error

    def _buffer_ready(self) -> bool:
        """Tell whether the parked bytes now hold what the state waits for.

        Also enforces the size limits on incomplete input, so a peer cannot
        make us buffer without bound.
        """
        buf = self._buf
        state = self._state
        if state == _HEAD or state == _TRAILERS:
            if buf.startswith(b"\r\n") or buf.find(b"\r\n\r\n", self._scan) >= 0:
                return True
            self._check_partial_block(buf, max(self._scan - 1, 0))
            self._scan = max(len(buf) - 3, 0)
            return False
        if state == _CHUNK_SIZE:
            if buf.find(b"\n", self._scan) >= 0:
                return True
            self._scan = len(buf)
            if len(buf) > self._max_start_line + 1:
                raise ProtocolError(400, "chunk size line too long")
            return False
        # _CHUNK_CRLF
        return len(buf) >= 2

    def _check_partial_block(self, buf: bytearray | bytes, scan: int) -> None:
        """Limits and early errors for an incomplete head or trailer block."""
        # A head with bare-LF line ends would otherwise wait for a CRLFCRLF
        # that never comes; say no now.  Every LF from ``scan`` on (scan is
        # at most the first new byte) must follow a CR.
        if buf.count(b"\n", scan + 1) != buf.count(b"\r\n", scan):
            raise ProtocolError(400, "bare LF in message head")
        size = len(buf)
        if self._state == _TRAILERS:
            if size - 3 > self._max_header_bytes:
                raise ProtocolError(431, "trailer section too large")
            return
        sl_end = self._start_line_end
        if sl_end < 0:
            sl_end = buf.find(b"\r\n", 0, self._max_start_line + 2)
            if sl_end < 0:
                if size > self._max_start_line + 1:
                    self._start_line_too_long()
                return
            self._start_line_end = sl_end
        if sl_end > self._max_start_line:
            self._start_line_too_long()
        if size - 3 - sl_end > self._max_header_bytes:
            raise ProtocolError(431, "header section too large")

    def _start_line_too_long(self) -> None:
        if self._role_is_request:
            raise ProtocolError(414, "request line too long")
        raise ProtocolError(400, "status line too long")

    def _stash(self, data: bytes, pos: int) -> None:
        """Park ``data[pos:]`` until more bytes arrive."""
        buf = self._buf
        buf += memoryview(data)[pos:]
        self._scan = 0
        self._start_line_end = -1
        state = self._state
        if state == _HEAD or state == _TRAILERS:
            self._check_partial_block(buf, 0)
            self._scan = max(len(buf) - 3, 0)
        elif state == _CHUNK_SIZE:
            self._scan = len(buf)
            if len(buf) > self._max_start_line + 1:
                raise ProtocolError(400, "chunk size line too long")

    def _run(self, data: bytes) -> list[Event]:
        """Parse ``data`` (nothing parked precedes it) until it runs out."""
        events: list[Event] = []
        pos = 0
        end = len(data)
        try:
            while pos < end:
                state = self._state
                if state == _HEAD:
                    pos = self._on_head(data, pos, events)
                elif state == _LENGTH:
                    remaining = self._remaining
                    if end - pos >= remaining:
                        stop = pos + remaining
                        events.append(BodyData(data[pos:stop]))
                        pos = stop
                        self._end_message(events, [])
                    else:
                        events.append(BodyData(data[pos:] if pos else data))
                        self._remaining = remaining - (end - pos)
                        pos = end
                elif state == _CHUNK_SIZE:
                    pos = self._on_chunk_size(data, pos, events)
                elif state == _CHUNK_DATA:
                    remaining = self._remaining
                    if end - pos >= remaining:
                        stop = pos + remaining
                        events.append(BodyData(data[pos:stop]))
                        pos = stop
                        self._state = _CHUNK_CRLF
                    else:
                        events.append(BodyData(data[pos:] if pos else data))
                        self._remaining = remaining - (end - pos)
                        pos = end
                elif state == _CHUNK_CRLF:
                    if end - pos < 2:
                        self._stash(data, pos)
                        pos = end
                    elif data[pos : pos + 2] == b"\r\n":
                        pos += 2
                        self._state = _CHUNK_SIZE
                    else:
                        raise ProtocolError(400, "chunk data not followed by CRLF")
                elif state == _TRAILERS:
                    pos = self._on_trailers(data, pos, events)
                elif state == _UNTIL_CLOSE:
                    events.append(BodyData(data[pos:] if pos else data))
                    pos = end
                else:  # _PAUSED: keep the rest for switch()/resume()
                    self._buf += memoryview(data)[pos:]
                    pos = end
        except ProtocolError as e:
            self._fail(e)
        return events

    def _end_message(self, events: list[Event], trailers: Headers) -> None:
        events.append(EndOfMessage(trailers))
        if self._pause_after:
            self._pause_after = False
            self._state = _PAUSED
        else:
            self._state = _HEAD

    def _on_head(self, data: bytes, pos: int, events: list[Event]) -> int:
        if data.startswith(b"\r\n", pos):
            # RFC 9112 §2.2: ignore empty lines before a start line.  A regex
            # skips a long run of them without a Python-level loop.
            pos = _EMPTY_LINES(data, pos).end()
        if pos >= len(data):
            return pos
        stop = data.find(b"\r\n\r\n", pos)
        if stop < 0:
            self._stash(data, pos)
            return len(data)
        head = data[pos:stop]
        lines = head.split(b"\r\n")
        if len(head) - len(head.translate(None, b"\r\n\x00")) != 2 * (len(lines) - 1):
            _diagnose_block(head)
        start_line = lines[0]
        if len(start_line) > self._max_start_line:
            self._start_line_too_long()
        if len(head) - len(start_line) > self._max_header_bytes:
            raise ProtocolError(431, "header section too large")
        if len(lines) - 1 > self._max_headers:
            raise ProtocolError(431, "too many header fields")
        if self._role_is_request:
            self._on_request_head(start_line, lines, events)
        else:
            self._on_response_head(start_line, lines, events)
        return stop + 4

    def _on_request_head(self, line: bytes, lines: list[bytes], events: list[Event]) -> None:
        parts = line.split(b" ")
        if len(parts) != 3:
            raise ProtocolError(400, "malformed request line")
        method, target, version = parts
        if method not in KNOWN_METHODS and not is_token(method):
            raise ProtocolError(400, "malformed request method")
        if not target or target.translate(None, TARGET_OK):
            raise ProtocolError(400, "malformed request target")
        if version not in VERSIONS:
            _bad_version(version)
        headers, cl, te, connection, upgrade = _parse_fields(lines)
        switching = method == b"CONNECT" or (
            bool(upgrade) and connection is not None and b"upgrade" in tokens(connection)
        )
        events.append(RequestHead(method, target, version, headers, switching, connection))
        self._pause_after = switching
        if te is not None:
            if cl is not None:
                raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
            if version == b"HTTP/1.0":
                raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 message")
            codings = tokens(te)
            if not codings or codings[-1] != b"chunked":
                raise ProtocolError(501, "unsupported Transfer-Encoding")
            for coding in codings[:-1]:
                if coding == b"chunked":
                    raise ProtocolError(400, "chunked applied more than once")
                if coding not in _KNOWN_CODINGS:
                    raise ProtocolError(501, "unsupported Transfer-Encoding")
            self._state = _CHUNK_SIZE
        elif cl is not None:
            self._start_length_body(cl, events)
        else:
            self._end_message(events, [])

    def _start_length_body(self, cl: list[bytes], events: list[Event]) -> None:
        """Frame a body by its Content-Length (an empty one ends the message now)."""
        length = _content_length(cl)
        if length:
            self._remaining = length
            self._state = _LENGTH
        else:
            self._end_message(events, [])

    def _on_response_head(self, line: bytes, lines: list[bytes], events: list[Event]) -> None:
        parts = line.split(b" ", 2)
        version = parts[0]
        if version not in VERSIONS:
            _bad_version(version)
        if len(parts) < 2:
            raise ProtocolError(400, "malformed status line")
        status = _STATUS_CODES.get(parts[1])
        if status is None:
            raise ProtocolError(400, "malformed status code")
        reason = parts[2] if len(parts) == 3 else b""
        headers, cl, te, connection, _upgrade = _parse_fields(lines)
        events.append(ResponseHead(version, status, reason, headers, connection))
        expect = self._expect
        if status < 200 and status != 101:
            return  # interim; the final response answers the same request
        method = expect.popleft() if expect else b"GET"
        if status == 101 or (method == b"CONNECT" and status < 300):
            # RFC 9110 §9.3.6: framing headers of a 2xx to CONNECT are ignored.
            self._pause_after = True
            self._end_message(events, [])
            return
        if method == b"HEAD" or status == 204 or status == 304:
            self._end_message(events, [])
            return
        if te is not None:
            if cl is not None:
                raise ProtocolError(400, "both Content-Length and Transfer-Encoding")
            if version == b"HTTP/1.0":
                raise ProtocolError(400, "Transfer-Encoding in an HTTP/1.0 message")
            codings = tokens(te)
            if codings and codings[-1] == b"chunked":
                if b"chunked" in codings[:-1]:
                    raise ProtocolError(400, "chunked applied more than once")
                self._state = _CHUNK_SIZE
            else:
                # RFC 9112 §6.3 (4): not chunked at the end: read until close.
                self._state = _UNTIL_CLOSE
        elif cl is not None:
            self._start_length_body(cl, events)
        else:
            self._state = _UNTIL_CLOSE

    def _on_chunk_size(self, data: bytes, pos: int, events: list[Event]) -> int:
        nl = data.find(b"\n", pos)
        if nl < 0:
            self._stash(data, pos)
            return len(data)
        if nl - pos > self._max_start_line + 1:
            raise ProtocolError(400, "chunk size line too long")
        if nl == pos or data[nl - 1] != 0x0D:
            raise ProtocolError(400, "chunk size line not terminated by CRLF")
        line = data[pos : nl - 1]
        semi = line.find(b";")
        if semi >= 0:
            if b"\r" in line:
                raise ProtocolError(400, "bare CR in chunk extension")
            size = line[:semi].rstrip(b" \t")
        else:
            size = line
        if not size or len(size) > 16 or size.translate(None, _HEXDIG):
            raise ProtocolError(400, "malformed chunk size")
        length = int(size, 16)
        if length:
            self._remaining = length
            self._state = _CHUNK_DATA
        else:
            self._state = _TRAILERS
        return nl + 1

    def _on_trailers(self, data: bytes, pos: int, events: list[Event]) -> int:
        if data.startswith(b"\r\n", pos):
            self._end_message(events, [])
            return pos + 2
        stop = data.find(b"\r\n\r\n", pos)
        if stop < 0:
            self._stash(data, pos)
            return len(data)
        block = data[pos:stop]
        lines = block.split(b"\r\n")
        if len(block) - len(block.translate(None, b"\r\n\x00")) != 2 * (len(lines) - 1):
            _diagnose_block(block)
        if len(block) + 2 > self._max_header_bytes:
            raise ProtocolError(431, "trailer section too large")
        if len(lines) > self._max_headers:
            raise ProtocolError(431, "too many trailer fields")
        trailers = _parse_fields(lines, 0)[0]
        self._end_message(events, trailers)
        return stop + 4


def _parse_fields(
    lines: list[bytes], first: int = 1
) -> tuple[Headers, list[bytes] | None, list[bytes] | None, list[bytes] | None, bool]:
    """Parse field lines ``lines[first:]`` (by default skip the start line).

    Returns:
        ``(headers, content_length_values, transfer_encoding_values,
        connection_values, has_upgrade)``; the value lists are None when the
        field is absent.
    """
    headers: Headers = []
    append = headers.append
    cl = te = connection = None
    upgrade = False
    get = NAME_CACHE.get
    framing = _FRAMING_NAMES
    for i in range(first, len(lines)):
        name, colon, value = lines[i].partition(b":")
        lname = get(name)
        if lname is None or not colon:
            lname = lower_name(name)
            if lname is None or not colon:
                _bad_field_line(lines[i])
        value = value.strip(b" \t")
        append((name, value))
        if lname in framing:
            if lname == b"content-length":
                if cl is None:
                    cl = [value]
                else:
                    cl.append(value)
            elif lname == b"transfer-encoding":
                if te is None:
                    te = [value]
                else:
                    te.append(value)
            elif lname == b"connection":
                if connection is None:
                    connection = [value]
                else:
                    connection.append(value)
            else:
                upgrade = True
    return headers, cl, te, connection, upgrade


def _content_length(values: list[bytes]) -> int:
    """The one length all Content-Length values agree on (RFC 9112 §6.3)."""
    if len(values) == 1:
        value = values[0]
        if value.isdigit() and len(value) < 19:  # the common case
            return int(value)
    if len(values) == 1 and b"," not in values[0]:
        items = values
    else:
        items = [item.strip(b" \t") for value in values for item in value.split(b",")]
    first = items[0]
    for item in items:
        if item != first:
            raise ProtocolError(400, "conflicting Content-Length values")
    if not first.isdigit():
        raise ProtocolError(400, "malformed Content-Length")
    if len(first) > 20:
        raise ProtocolError(413, "Content-Length too large")
    length = int(first)
    if length > _MAX_CONTENT_LENGTH:
        raise ProtocolError(413, "Content-Length too large")
    return length


def _bad_version(version: bytes) -> None:
    if _VERSION_SHAPE(version):
        raise ProtocolError(505, "unsupported HTTP version")
    raise ProtocolError(400, "malformed HTTP version")


def _bad_field_line(line: bytes) -> None:
    """Raise the most precise error for an unacceptable field line."""
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError(400, "obsolete line folding")
    colon = line.find(b":")
    if colon < 0:
        raise ProtocolError(400, "field line without a colon")
    if colon == 0:
        raise ProtocolError(400, "empty field name")
    if line[colon - 1 : colon] in (b" ", b"\t"):
        raise ProtocolError(400, "whitespace before the colon")
    raise ProtocolError(400, "field name is not a token")


def _diagnose_block(block: bytes) -> None:
    """Raise the precise error for a head with stray CR, LF or NUL."""
    if b"\x00" in block:
        raise ProtocolError(400, "NUL in message head")
    for line in block.split(b"\r\n"):
        if b"\n" in line:
            raise ProtocolError(400, "bare LF in message head")
    raise ProtocolError(400, "bare CR in message head")


def take_body(queue: deque) -> tuple[bytes, list] | None:
    """The whole body and trailers of a message whose end is already in
    ``queue`` (events after its head), taken off the queue; else ``None``."""
    if not queue:
        return None
    first = queue[0]
    if type(first) is EndOfMessage:
        queue.popleft()
        return b"", first.trailers
    parts = []
    for event in queue:
        kind = type(event)
        if kind is BodyData:
            parts.append(event.data)
        elif kind is EndOfMessage:
            for _ in range(len(parts) + 1):
                queue.popleft()
            return (parts[0] if len(parts) == 1 else b"".join(parts)), event.trailers
        else:
            return None
    return None
