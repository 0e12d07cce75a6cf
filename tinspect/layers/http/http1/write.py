"""Units in, bytes out: the writing half of the HTTP/1.1 codec.

`Http1Writer` turns the `Request`/`Response`/`BodyChunk`/`MessageEnd`
units that left the tap chain into bytes for one HTTP/1.1 peer, and decides
each message's framing there, from the head as the taps left it:

* A whole body (``body`` is bytes) gets a ``Content-Length`` that matches it,
  whatever the original framing was, so a tap may change a body freely. With
  trailers it goes chunked instead, when the peer speaks HTTP/1.1.
* A streamed body keeps its ``Content-Length`` when the head still has one,
  and the writer checks that the chunks add up to it (`FramingError`
  otherwise: the message cannot be fixed once its head is out). A tap that
  changes the length of streamed chunks removes ``Content-Length`` from the
  head, and the body goes chunked (or, to an HTTP/1.0 client, is delimited
  by closing the connection).
* Hop-by-hop fields (RFC 9110 §7.6.1) are removed; the writer adds its own
  ``Transfer-Encoding`` and ``Connection``. Upgrade requests and ``101``
  responses keep ``Upgrade`` and ``Connection: upgrade``.
* As RFC 9110 §6.2 asks of intermediaries, the writer sends its own version,
  HTTP/1.1, on every start line.

No I/O and no Twisted here, like the parser in ``tinspect/layers/http/http1/parse.py``;
the token and field-name rules both use are in ``tinspect/layers/http/grammar.py``.
"""

from __future__ import annotations

from tinspect.layers.http.grammar import (
    HOP_BY_HOP,
    KNOWN_METHODS,
    NAME_CACHE,
    TARGET_OK,
    VERSIONS,
    is_token,
    lower_name,
    tokens,
)
from tinspect.units import Request, Response

Fields = list[tuple[bytes, bytes]]

__all__ = [
    "FramingError",
    "Http1Writer",
    "frame_chunk",
    "last_chunk",
    "serialize_request_head",
    "serialize_response_head",
]


class FramingError(ValueError):
    """A streamed body does not fit the framing its head announced."""


_NONE = 0  # no body (or the message is done)
_LENGTH = 1
_CHUNKED = 2
_CLOSE = 3  # delimited by closing the connection (HTTP/1.0 client)

_CHUNKED_TE = (b"Transfer-Encoding", b"chunked")
_CLOSE_FIELD = (b"Connection", b"close")
_KEEP_ALIVE_FIELD = (b"Connection", b"keep-alive")
_UPGRADE_FIELD = (b"Connection", b"upgrade")


def _scan(fields: Fields, keep_upgrade: bool) -> tuple[Fields, bytes | None, bool, tuple[bytes, bytes]]:
    """Split a message's fields for forwarding.

    Returns:
        The end-to-end fields (hop-by-hop and framing ones removed; ``Upgrade``
        kept when ``keep_upgrade``), the declared ``Content-Length`` value
        (or ``None``), whether any framing field was present at all, and the
        ``Transfer-Encoding`` field to send if the body goes chunked: codings
        other than chunked (``gzip, chunked``) are not ours to drop, so a
        message that has them always goes chunked with them.
    """
    out: Fields = []
    length = None
    framed = False
    te = _CHUNKED_TE
    listed: list[bytes] | None = None
    for field in fields:
        name = field[0]
        lname = NAME_CACHE.get(name) or name.lower()
        if lname == b"content-length":
            length = field[1]
            framed = True
        elif lname in HOP_BY_HOP:
            if lname == b"transfer-encoding":
                framed = True
                codings = [c for c in tokens([field[1]]) if c != b"chunked"]
                if codings:
                    te = (b"Transfer-Encoding", b", ".join([*codings, b"chunked"]))
            elif lname == b"connection":
                listed = (listed or []) + tokens([field[1]])
            elif lname == b"upgrade" and keep_upgrade:
                out.append(field)
        else:
            out.append(field)
    if listed:
        drop = {t for t in listed if t not in (b"close", b"keep-alive", b"upgrade")}
        if drop:
            out = [f for f in out if f[0].lower() not in drop]
    return out, length, framed, te


def _length(value: bytes) -> int:
    # The parser only lets valid lengths in; a tap may have set anything.
    try:
        n = int(value.split(b",")[0].strip())
    except ValueError:
        raise FramingError(f"Content-Length {value!r} is not a number") from None
    if n < 0:
        raise FramingError(f"Content-Length {value!r} is negative")
    return n


class Http1Writer:
    """Serializes the messages of one direction of one HTTP/1.1 connection.

    Call `request` or `response` with a head unit; when its ``body`` is
    ``None`` follow with `body` for each chunk and `end`. Each call returns the
    bytes to write.

    Attributes:
        close_after: the connection must close once the current response is
            written (the client asked for it, or the body is close-delimited).
    """

    __slots__ = ("_mode", "_remaining", "close_after")

    def __init__(self) -> None:
        self._mode = _NONE
        self._remaining = 0
        self.close_after = False

    @property
    def streaming(self) -> bool:
        """A message's body is being written (its `end` has not been)."""
        return self._mode != _NONE

    def request(self, req: Request, *, target: str | None = None, upgrade: bool = False,
                extra: Fields = ()) -> list[bytes]:
        """The head (and whole body) of a request to an HTTP/1.1 server.

        Args:
            req: the request as the taps left it.
            target: the target to send, when not ``req.target`` (an explicit
                proxy sends the origin form of an absolute-form target).
            upgrade: keep ``Upgrade`` and, when there is one, send
                ``Connection: upgrade`` (a CONNECT has none).
            extra: fields to add for the next hop (a parent proxy's ``Proxy-Authorization``).

        Raises:
            FramingError: a declared ``Content-Length`` is not a number.
            ValueError: a field or the start line would break the framing.
        """
        fields, length, framed, te = _scan(req.headers.fields, upgrade)
        if extra:
            fields.extend(extra)
        if req.version == "HTTP/2" and req.authority and not any(n.lower() == b"host" for n, _ in fields):
            # Translated from HTTP/2, whose :authority HTTP/1.1 says in Host.
            fields.insert(0, (b"Host", req.authority.encode("latin-1")))
        coded = te is not _CHUNKED_TE
        if upgrade and any(name.lower() == b"upgrade" for name, _ in fields):
            fields.append(_UPGRADE_FIELD)
        body = req.body
        head_target = (target if target is not None else req.target).encode("latin-1")
        method = req.method.encode("latin-1")
        if body is None:
            if length is not None and not coded:
                self._mode = _LENGTH
                self._remaining = _length(length)
                fields.append((b"Content-Length", b"%d" % self._remaining))
            else:
                self._mode = _CHUNKED
                fields.append(te)
            return [serialize_request_head(method, head_target, b"HTTP/1.1", fields)]
        if req.trailers or coded:
            fields.append(te)
            return [
                serialize_request_head(method, head_target, b"HTTP/1.1", fields),
                frame_chunk(body),
                last_chunk(req.trailers.fields if req.trailers else ()),
            ]
        if body or framed:
            fields.append((b"Content-Length", b"%d" % len(body)))
        head = serialize_request_head(method, head_target, b"HTTP/1.1", fields)
        return [head, body] if body else [head]

    def response(
        self, resp: Response, *, method: str, client_version: str, keep_alive: bool
    ) -> list[bytes]:
        """The head (and whole body) of a response to an HTTP/1.x client.

        Args:
            resp: the response as the taps left it.
            method: the method of the request it answers (``HEAD`` responses
                carry no body).
            client_version: the client's version; HTTP/1.0 clients get no
                chunked framing.
            keep_alive: whether the client connection stays open after it.

        Raises:
            FramingError, ValueError: as for `request`.
        """
        status = resp.status
        fields, length, _, te = _scan(resp.headers.fields, status == 101)
        coded = te is not _CHUNKED_TE
        old_client = client_version == "HTTP/1.0"
        body = resp.body
        parts: list[bytes] = []
        mode = _NONE
        if status == 101:
            fields.append(_UPGRADE_FIELD)
            keep_alive = True
        elif status < 200:
            keep_alive = True  # interim: says nothing about the connection
        elif method == "HEAD" or status == 304:
            if length is not None:
                fields.append((b"Content-Length", length))
        elif status == 204 or (method == "CONNECT" and status < 300):
            pass  # RFC 9110 §9.3.6: a 2xx to CONNECT has no framing, a tunnel follows
        elif body is not None:
            if (resp.trailers or coded) and not old_client:
                fields.append(te)
                parts = [frame_chunk(body), last_chunk(resp.trailers.fields if resp.trailers else ())]
            else:
                fields.append((b"Content-Length", b"%d" % len(body)))
                if body:
                    parts = [body]
        elif length is not None and not coded:
            mode = _LENGTH
            self._remaining = _length(length)
            fields.append((b"Content-Length", b"%d" % self._remaining))
        elif not old_client:
            mode = _CHUNKED
            fields.append(te)
        else:
            mode = _CLOSE
            keep_alive = False
        if status >= 200 and status != 101:
            if not keep_alive:
                fields.append(_CLOSE_FIELD)
            elif old_client:
                fields.append(_KEEP_ALIVE_FIELD)
            self.close_after = not keep_alive
        if body is None:
            self._mode = mode
        reason = resp.reason.encode("latin-1")
        head = serialize_response_head(b"HTTP/1.1", status, reason, fields)
        return [head, *parts]

    def body(self, data: bytes) -> bytes:
        """The bytes for one chunk of the current streamed body.

        Raises:
            FramingError: the chunk goes past the declared length, or the
                message has no body.
        """
        mode = self._mode
        if mode == _CHUNKED:
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if mode == _LENGTH:
            remaining = self._remaining - len(data)
            if remaining < 0:
                raise FramingError("a streamed body grew past its Content-Length")
            self._remaining = remaining
            return data
        if mode == _CLOSE:
            return data
        if data:
            raise FramingError("body data for a message that has no streamed body")
        return b""

    def end(self, trailers: Fields | None = None) -> bytes:
        """The bytes that end the current message (trailers when chunked).

        Raises:
            FramingError: the body came out shorter than its declared length.
        """
        mode = self._mode
        self._mode = _NONE
        if mode == _CHUNKED:
            return last_chunk(trailers or ())
        if mode == _LENGTH and self._remaining:
            raise FramingError(f"a streamed body ended {self._remaining} bytes short of its Content-Length")
        return b""

# ---------------------------------------------------------------------------
# Heads and chunks
# ---------------------------------------------------------------------------


def _join_head(start: list[bytes], headers: Fields) -> bytes:
    """Join a start line and fields, refusing anything that could inject."""
    parts = start
    cache = NAME_CACHE
    for name, value in headers:
        if name not in cache and lower_name(name) is None:
            raise ValueError(f"header name {name!r} is not a token")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    out = b"".join(parts)
    # Exactly one CR and one LF per line, and no NUL, or someone smuggled
    # line breaks into a value, the target or the reason phrase.
    if len(out) - len(out.translate(None, b"\r\n\x00")) != 2 * (len(headers) + 2):
        for name, value in headers:
            if b"\r" in value or b"\n" in value or b"\x00" in value:
                raise ValueError(f"header {name!r} has CR, LF or NUL in its value")
        raise ValueError("CR, LF or NUL in the start line")
    return out


def serialize_request_head(method: bytes, target: bytes, version: bytes, headers: Fields) -> bytes:
    """Serialize a request line and header fields, ending with the empty line.

    Args:
        method: A token, e.g. ``b"GET"``.
        target: The request target; must not contain spaces or controls.
        version: ``b"HTTP/1.1"`` or ``b"HTTP/1.0"``.
        headers: ``(name, value)`` pairs, written in order and as given;
            framing headers are the caller's business.

    Returns:
        The head as one bytes object.

    Raises:
        ValueError: If a part would break the framing (header injection).
    """
    if method not in KNOWN_METHODS and not is_token(method):
        raise ValueError(f"method {method!r} is not a token")
    if not target or target.translate(None, TARGET_OK):
        raise ValueError(f"bad request target {target!r}")
    if version not in VERSIONS:
        raise ValueError(f"bad HTTP version {version!r}")
    return _join_head([method, b" ", target, b" ", version, b"\r\n"], headers)


def serialize_response_head(version: bytes, status: int, reason: bytes, headers: Fields) -> bytes:
    """Serialize a status line and header fields, ending with the empty line.

    Args:
        version: ``b"HTTP/1.1"`` or ``b"HTTP/1.0"``.
        status: A three-digit status code.
        reason: The reason phrase (may be empty).
        headers: ``(name, value)`` pairs, written in order and as given.

    Returns:
        The head as one bytes object.

    Raises:
        ValueError: If a part would break the framing (header injection).
    """
    if version not in VERSIONS:
        raise ValueError(f"bad HTTP version {version!r}")
    if not 100 <= status <= 999:
        raise ValueError(f"bad status code {status!r}")
    return _join_head([b"%s %d %s\r\n" % (version, status, reason)], headers)


def frame_chunk(data: bytes) -> bytes:
    """Frame ``data`` as one chunk of a chunked body.

    Args:
        data: The chunk payload.

    Returns:
        ``hex-size CRLF data CRLF``, or ``b""`` for empty data (an empty
        chunk would end the body).
    """
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Fields | tuple = ()) -> bytes:
    """Serialize the end of a chunked body: the zero chunk and trailers.

    Args:
        trailers: Trailer fields, ``(name, value)`` pairs.

    Returns:
        ``0 CRLF`` then the trailer fields then the final CRLF.

    Raises:
        ValueError: If a trailer would break the framing.
    """
    if not trailers:
        return b"0\r\n\r\n"
    return _join_head([b"0\r\n"], list(trailers))
