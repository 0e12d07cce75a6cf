"""The HTTP grammar every version shares (sans-IO): tokens, field names, lists.

HTTP/1.1's parser and writer (``tinspect/layers/http/http1/``), the HTTP/2
header blocks (``tinspect/layers/http/h2/fields.py``), WebSocket's handshake
(``tinspect/layers/websocket.py``) and the first-bytes sniffer
(``tinspect/layers/sniff.py``) all need the same few rules of RFC 9110: what a
token is, which fields are hop-by-hop, how a comma-separated list splits.
They live here once, so a fix to one rule reaches every protocol.

The parser is hot: these are plain constants and small functions built on
``bytes.translate`` and dict lookups, and callers on the hot path bind them to
local names.
"""

from __future__ import annotations

__all__ = [
    "HOP_BY_HOP",
    "KNOWN_METHODS",
    "NAME_CACHE",
    "TARGET_OK",
    "TCHAR",
    "VERSIONS",
    "is_token",
    "list_items",
    "lower_name",
    "tokens",
]

#: RFC 9110 §5.6.2 ``tchar``: the bytes a token (a method, a field name, a
#: list element such as a transfer coding) is made of.
TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

#: Anything visible (and obs-text) may appear in a request target; controls,
#: SP and DEL may not (``target.translate(None, TARGET_OK)`` is what is left).
TARGET_OK = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))

#: The versions an HTTP/1.x start line may carry.
VERSIONS = frozenset((b"HTTP/1.1", b"HTTP/1.0"))

#: The registered methods in common use: one set lookup accepts them without
#: checking every byte; any other method must be a token.
KNOWN_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
)

#: Lower-case names of the hop-by-hop header fields (RFC 9110 §7.6.1 plus the
#: de-facto ``keep-alive``/``proxy-connection``).  They describe one
#: connection, not the message, so a proxy must not forward them verbatim; it
#: regenerates framing (``transfer-encoding``) and connection management
#: itself, and HTTP/2 forbids them (RFC 9113 §8.2.2).  Names listed in a
#: ``Connection`` header are hop-by-hop as well.  ``Proxy-Authorization`` is
#: not here: a transparent proxy relays it to the proxy the client meant; the
#: explicit proxy always removes it (it is ours).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    )
)

#: Header names already checked to be tokens, mapped to their lower-case
#: form.  One dict lookup both validates a name and lower-cases it; the
#: parser and the writer share it, so a name either has seen costs the other
#: nothing.  Filled by `lower_name` only, up to ``_NAME_CACHE_MAX`` entries,
#: so that a peer sending random names cannot grow it without limit.
NAME_CACHE: dict[bytes, bytes] = {}
_NAME_CACHE_MAX = 4096


def is_token(value: bytes) -> bool:
    """Whether ``value`` is a non-empty RFC 9110 token.

    Args:
        value: A method, field name or list element.

    Returns:
        True if every byte is a ``tchar`` and there is at least one.
    """
    return bool(value) and not value.translate(None, TCHAR)


def lower_name(name: bytes) -> bytes | None:
    """Return ``name.lower()`` if ``name`` is a token, else None.

    Valid names are remembered in `NAME_CACHE`; callers on the hot path look
    there first and call this only on a miss.
    """
    lname = NAME_CACHE.get(name)
    if lname is None:
        if not name or name.translate(None, TCHAR):
            return None
        lname = name.lower()
        if len(NAME_CACHE) < _NAME_CACHE_MAX:
            NAME_CACHE[name] = lname
    return lname


def tokens(values: list[bytes]) -> list[bytes]:
    """Split comma-separated list values into stripped, lower-case elements.

    For lists of case-insensitive tokens (``Connection``,
    ``Transfer-Encoding``, ``Upgrade``), RFC 9110 §5.6.1: elements are
    separated by commas with optional whitespace (SP, HTAB) around them, and
    empty elements are ignored.

    Args:
        values: The values of every field carrying the list, in order.

    Returns:
        The elements, lower-cased, in order.
    """
    out = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t").lower()
            if item:
                out.append(item)
    return out


def list_items(values: list[str]) -> list[str]:
    """Split comma-separated list values into stripped elements, case kept.

    The same list rule as `tokens`, for lists whose elements are
    case-sensitive (``Sec-WebSocket-Protocol``) or carry parameters
    (``Sec-WebSocket-Extensions``), as ``str`` the way `Headers.get_all`
    gives them.

    Args:
        values: The values of every field carrying the list, in order.

    Returns:
        The non-empty elements, stripped of optional whitespace, in order.
    """
    out = []
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if item:
                out.append(item)
    return out
