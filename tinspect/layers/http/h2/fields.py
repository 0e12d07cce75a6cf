"""HTTP/2 header blocks to units and back (sans-IO).

An HTTP/2 request's pseudo-header fields map onto the fields an HTTP/1.1
request has too, so taps see one `Request` shape whatever the version:

==============  =================================================
``:method``     `Request.method`
``:scheme``     `Request.scheme`
``:authority``  `Request.authority` (else the ``host`` field)
``:path``       `Request.target`
``:status``     `Response.status`
==============  =================================================

Regular fields become the unit's `Headers`, as received (lower-case names),
except that several ``cookie`` fields are joined into one as RFC 9113
§8.2.3 asks before a message goes on as HTTP/1.1, so a tap sees one
``Cookie`` either way.

Going out, `request_block` and `response_block` build the header block from
what the taps left: pseudo-fields first, names lower-cased, and the
connection-specific fields HTTP/2 forbids (``Connection`` and the fields it
lists, and the rest of `HOP_BY_HOP`: ``Keep-Alive``, ``Proxy-Connection``,
``Transfer-Encoding``, ``Upgrade``, and ``TE`` other than ``trailers``)
removed, which is also what turns an HTTP/1.1 response into an HTTP/2 one.
A whole body gets its ``content-length`` recomputed; a streamed one keeps
the declared length.
"""

from __future__ import annotations

from tinspect.headers import Headers
from tinspect.layers.http.grammar import HOP_BY_HOP, tokens
from tinspect.units import Request, Response

__all__ = ["H2FieldError", "list_size", "request_from_block", "response_from_block", "request_block", "response_block", "trailer_block"]

Block = list[tuple[bytes, bytes]]

_NO_BODY_STATUS = frozenset((204, 304))


class H2FieldError(ValueError):
    """A header block that cannot make a message (a missing pseudo-field)."""


def request_from_block(block: Block, *, stream_id: int, scheme: str) -> Request:
    """The `Request` (body still ``None``) of a received request header block.

    Args:
        block: the decoded fields, pseudo-fields first (the h2 library has
            checked their order, names and presence).
        stream_id: the client's stream id, kept on the unit.
        scheme: the scheme when ``:scheme`` is absent (a CONNECT).

    Raises:
        H2FieldError: no ``:method``.
    """
    method = path = authority = None
    fields: Block = []
    cookies: list[bytes] = []
    for name, value in block:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value.decode("latin-1")
        elif name == b"cookie":
            if not cookies:
                fields.append((b"cookie", b""))  # its place; filled below
            cookies.append(value)
        else:
            fields.append((name, value))
    if method is None:
        raise H2FieldError("a request without :method")
    if cookies:
        i = fields.index((b"cookie", b""))
        fields[i] = (b"cookie", b"; ".join(cookies))
    headers = Headers.wrap(fields)
    if authority is None:
        authority = headers.raw(b"host")
    smethod = method.decode("latin-1")
    if path is None:
        target = authority.decode("latin-1") if smethod == "CONNECT" and authority else "*"
    else:
        target = path.decode("latin-1")
    return Request(
        smethod,
        target,
        headers,
        "HTTP/2",
        scheme,
        authority.decode("latin-1") if authority else "",
        body=None,
        stream_id=stream_id,
    )


def response_from_block(block: Block, request: Request | None) -> Response:
    """The `Response` (body still ``None``) of a received response header block.

    Raises:
        H2FieldError: no valid ``:status``.
    """
    status = None
    fields: Block = []
    for name, value in block:
        if name == b":status":
            status = value
        elif name[:1] != b":":
            fields.append((name, value))
    if status is None or not status.isdigit() or len(status) != 3:
        raise H2FieldError(f"a response with :status {status!r}")
    return Response(int(status), "", Headers.wrap(fields), "HTTP/2", body=None, request=request)


def request_block(req: Request) -> Block:
    """The header block to send ``req`` to an HTTP/2 server.

    h2 does not validate what the proxy sends (`tinspect.layers.http.h2.conn.new_connection`):
    the block is right by construction, and the two things a tap could leave
    wrong that h2's outbound checks refused are refused here.

    Raises:
        H2FieldError: no authority to send (nor a ``host``, which HTTP/2 carries
            as ``:authority``), or an empty target (``:path``).
    """
    method = req.method.encode("latin-1")
    if req.method == "CONNECT":
        authority = req.authority or req.target
        if not authority:
            raise H2FieldError("a CONNECT request without an authority")
        block: Block = [(b":method", method), (b":authority", authority.encode("latin-1"))]
    else:
        if not req.authority:
            raise H2FieldError("a request without an authority (:authority or Host)")
        if not req.target:
            raise H2FieldError("a request with an empty :path")
        block = [
            (b":method", method),
            (b":scheme", req.scheme.encode("latin-1")),
            (b":authority", req.authority.encode("latin-1")),
            (b":path", req.target.encode("latin-1")),
        ]
    _regular(req.headers.fields, block, req.body, framed_length=True)
    return block


def response_block(resp: Response, method: str) -> Block:
    """The header block to send ``resp`` to an HTTP/2 client.

    Args:
        resp: the response as the taps left it.
        method: its request's method (a ``HEAD`` answer keeps the length of
            the body it does not carry).
    """
    block: Block = [(b":status", b"%d" % resp.status)]
    keep_length = method == "HEAD" or resp.status in _NO_BODY_STATUS or resp.status < 200
    _regular(resp.headers.fields, block, resp.body, framed_length=not keep_length)
    return block


def trailer_block(trailers: Headers | None) -> Block:
    """A trailer block: lower-case names, no pseudo or connection fields."""
    if not trailers:
        return []
    block: Block = []
    _regular(trailers.fields, block, None, framed_length=False)
    return block


def _regular(fields: Block, block: Block, body: bytes | None, *, framed_length: bool) -> None:
    """Append the fields HTTP/2 may carry to ``block``.

    With a whole ``body`` and ``framed_length``, ``content-length`` is
    recomputed from it; otherwise a declared one is kept as it is.
    """
    listed: list[bytes] | None = None
    for name, value in fields:
        if name == b"connection" or name.lower() == b"connection":
            listed = (listed or []) + tokens([value])
    recompute = framed_length and body is not None
    for name, value in fields:
        lname = name.lower()
        if lname[:1] == b":":
            continue
        if lname in HOP_BY_HOP:
            if lname == b"te" and value.strip().lower() == b"trailers":
                block.append((b"te", b"trailers"))
            continue
        if listed and lname in listed:
            continue
        if lname == b"content-length" and recompute:
            continue
        if lname == b"host":
            continue  # :authority says it
        block.append((lname, value))
    if recompute and body:
        block.append((b"content-length", b"%d" % len(body)))


def list_size(block: Block) -> int:
    """A header block's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it
    (RFC 9113 §6.5.2: names and values plus 32 octets per field)."""
    return sum(len(name) + len(value) + 32 for name, value in block)
