"""Which protocol a connection speaks, from its first bytes (sans-IO).

A transparent proxy sees every kind of TCP traffic on the ports its rules
catch. `classify` looks at what the client sent first and says which layer
should carry the connection:

* ``TLS``: a TLS handshake record (``0x16 0x03 ...``);
* ``H2``: the HTTP/2 connection preface (``PRI * HTTP/2.0``, prior knowledge);
* ``HTTP1``: a complete HTTP/1 request line, ``METHOD SP target SP HTTP/x.y``;
* ``RAW``: anything else, relayed as bytes.

It answers ``None`` while the bytes are a strict prefix of something it would
recognise, so a request line split over reads is still found. It never waits
for more than a request line's worth (``max_line``): a client that goes on
sending without a line break is not HTTP. A client that sends nothing at all
(server-speaks-first protocols such as SMTP) is the caller's business: it
relays raw after a short wait, or as soon as the server speaks.
"""

from __future__ import annotations

import re

from tinspect.layers.http.grammar import TCHAR
from tinspect.layers.tls.clienthello import looks_like_tls

__all__ = ["RAW", "HTTP1", "TLS", "H2", "H2_PREFACE", "classify", "server_settings"]

RAW = "raw"
HTTP1 = "http/1"
TLS = "tls"
H2 = "h2"

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_TCHAR = b"[" + re.escape(TCHAR) + b"]"  # one byte of a method token
# A whole request line (CRLF, or a bare LF the HTTP layer will then refuse
# with a clear 400 rather than have it relayed as opaque bytes).
_REQUEST_LINE = re.compile(_TCHAR + rb"{1,32} [^\x00-\x20\x7f]+ HTTP/[0-9]\.[0-9]\r?\n").match
# A strict prefix of one: what a request line looks like before its end.
_PARTIAL_LINE = re.compile(
    _TCHAR + rb"{1,32}(?: (?:[^\x00-\x20\x7f]+(?: (?:H(?:T(?:T(?:P(?:/(?:[0-9](?:\.(?:[0-9]\r?)?)?)?)?)?)?)?)?)?)?)?"
).fullmatch


def classify(data: bytes, max_line: int = 8192) -> str | None:
    """Say what protocol a connection starting with ``data`` speaks.

    Args:
        data: everything the client sent so far (not empty).
        max_line: the longest request line to wait for.

    Returns:
        `TLS`, `H2`, `HTTP1` or `RAW`; ``None`` when more bytes are needed.
    """
    if not data:
        return None
    tls = looks_like_tls(data)
    if tls:
        return TLS
    if tls is None:
        return None
    if data[:1] == b"P" and H2_PREFACE.startswith(data[:24]):
        return H2 if len(data) >= len(H2_PREFACE) else None
    if _REQUEST_LINE(data):
        return HTTP1
    if len(data) <= max_line and b"\n" not in data and _PARTIAL_LINE(data):
        return None
    return RAW


def server_settings(data: bytes) -> bool | None:
    """Whether a server's first bytes are an HTTP/2 SETTINGS frame.

    A cleartext HTTP/2 server may send its connection preface (a SETTINGS
    frame on stream 0) as soon as it accepts, before the client's preface
    has arrived: that is not a server-speaks-first protocol.

    Returns:
        ``True`` or ``False``; ``None`` when fewer than a frame header's nine
        bytes arrived and they could still be one.
    """
    head = data[:9]
    if len(head) >= 4 and head[3] != 4:
        return False
    if len(head) >= 5 and head[4]:  # flags: a preface is no ACK
        return False
    if len(head) >= 9 and head[5:9] != b"\0\0\0\0":
        return False
    if len(head) >= 3 and int.from_bytes(head[:3], "big") % 6:
        return False
    return True if len(head) == 9 else None
