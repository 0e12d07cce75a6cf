"""Sans-IO reader for the TLS ClientHello: SNI, ALPN offers and versions.

The TLS layer peeks at the first bytes a client sends before it decides
anything: whether the connection is TLS at all, which host it is for (SNI)
and which application protocols it offers (ALPN).  With those it can open
the upstream connection first, mint a leaf certificate for the right name,
and only then start its own TLS server and replay the bytes it peeked at
(the way mitmproxy's ``ClientTLSLayer.receive_handshake_data`` does).

This module only parses bytes.  It imports nothing from Twisted and keeps no
reference to a transport, so it can be tested and fuzzed with plain bytes::

    reader = ClientHelloReader()
    hello = reader.feed(first_bytes)      # None: send more bytes
    if hello is not None:
        print(hello.sni, hello.alpn)
        replay(hello.raw + reader.leftover)

Theory of operation
-------------------
A ClientHello travels in one or more TLS *records* (RFC 8446 section 5.1):
a 5-byte header (content type 22 = handshake, a legacy version 3.x, a
16-bit length) followed by that many bytes of handshake data.  A handshake
message may be fragmented over several records, and records may be split
over arbitrary TCP reads, so the reader works in two layers:

1. the record layer buffers fed bytes, takes complete records off the front
   and appends their payloads to the handshake buffer;
2. once the handshake buffer holds the 4-byte handshake header (type 1 =
   ClientHello, 24-bit length) and that many bytes of body, the body is
   parsed in one pass.

Every length field is checked against the bytes actually available before
it is used, so malformed input ends in :class:`ClientHelloError` rather than
an ``IndexError``; the parse is additionally wrapped so that a bug of ours
still surfaces as :class:`ClientHelloError` and never as something the
caller does not expect.  Sizes are capped (``max_size``) so that a peer
cannot make us buffer without bound while we wait for a hello.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

__all__ = [
    "ClientHello",
    "ClientHelloError",
    "ClientHelloReader",
    "NotTLS",
    "alert_record",
    "ACCESS_DENIED",
    "UNRECOGNIZED_NAME",
    "looks_like_tls",
    "parse_handshake",
]

# Record layer constants (RFC 8446 section 5.1).
_CONTENT_ALERT = 0x15
_CONTENT_HANDSHAKE = 0x16
_RECORD_HEADER = 5
# TLSPlaintext.length must not exceed 2**14; TLS 1.2 ciphertext allows up to
# 2**14 + 2048.  A ClientHello is plaintext, but we accept the larger bound
# as the brief asks, since some stacks are lax about the smaller one.
_MAX_RECORD = 2**14 + 2048
_HANDSHAKE_HEADER = 4
_CLIENT_HELLO = 1

# Extension code points we read (IANA TLS ExtensionType registry).
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43
_INTERESTING = frozenset((_EXT_SERVER_NAME, _EXT_ALPN, _EXT_SUPPORTED_VERSIONS))
# Extension header: type and length, two big-endian uint16.  One
# struct.unpack_from call is about twice as fast as four byte indexings.
_EXT_HEADER = struct.Struct("!HH")

# Fixed part of a ClientHello body: legacy_version (2) + random (32).
_FIXED_BODY = 2 + 32

# A host name as SNI carries it (RFC 6066 section 3, RFC 1123 labels): ASCII
# letters, digits, hyphen, plus underscore because real names use it
# (``_dmarc``-style service labels, some internal hosts).  Labels are 1..63
# bytes; one trailing dot is tolerated and stripped by the caller.
_HOSTNAME_RE = re.compile(rb"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*\.?")


class NotTLS(Exception):
    """The first bytes are not a TLS handshake record.

    The caller usually treats the connection as plain TCP (or HTTP) instead.
    """


class ClientHelloError(Exception):
    """The bytes look like TLS but the ClientHello is malformed or too large.

    The caller should not try to terminate TLS with such a peer; it may close
    the connection or relay it untouched, as its policy says.
    """


@dataclass(slots=True, frozen=True)
class ClientHello:
    """What the TLS layer needs to know from a client's first flight.

    Attributes:
        sni: The ``host_name`` from the server_name extension, ASCII,
            lowercased and without a trailing dot; ``None`` when the client
            sent no server name (an IP literal URL, or an old client).
        alpn: ALPN protocol names offered, in the client's order of
            preference; ``()`` when the extension is absent.
        legacy_version: ``ClientHello.legacy_version``, e.g. ``0x0303``.
        supported_versions: Versions from the supported_versions extension
            in the client's order, GREASE values included (RFC 8701);
            ``()`` when absent (a client that only speaks TLS 1.2 or older).
        raw: Every byte of the records that carried the ClientHello, from the
            first record header to the end of the last record, to be replayed
            into the real TLS server.
    """

    sni: str | None
    alpn: tuple[bytes, ...]
    legacy_version: int
    supported_versions: tuple[int, ...]
    raw: bytes


def looks_like_tls(prefix: bytes) -> bool | None:
    """Tell from the first bytes of a stream whether it starts a TLS handshake.

    A TLS client's first record header starts with content type 22
    (handshake) and a record version 3.0 to 3.4.  Three bytes settle the
    question; fewer may already rule TLS out (``b"G"`` of ``GET`` is not
    0x16), in which case the answer is ``False`` without waiting.

    Args:
        prefix: The first bytes received, any length.

    Returns:
        ``True`` if the stream starts like a TLS handshake record, ``False``
        if it cannot be one, ``None`` if more bytes are needed to say.
    """
    n = len(prefix)
    if n >= 1 and prefix[0] != _CONTENT_HANDSHAKE:
        return False
    if n >= 2 and prefix[1] != 0x03:
        return False
    if n >= 3:
        return prefix[2] <= 0x04
    return None


class ClientHelloReader:
    """Incremental, sans-IO reader of one TLS ClientHello.

    Feed it the bytes a client sends, in whatever pieces they arrive, until
    :meth:`feed` returns a :class:`ClientHello`.  The reader handles a
    ClientHello fragmented over several TLS records and records split across
    feeds.

    Errors are sticky: once :meth:`feed` has raised, every later call raises
    the same exception again.  Once a hello has been returned, later calls
    return the same hello and add their bytes to :attr:`leftover`.

    The reader keeps what it was fed (see :attr:`received`) so that a caller
    that gives up on TLS interception (``NotTLS``, ``ClientHelloError``, or a
    passthrough policy) can still relay the stream from its first byte.

    Attributes:
        leftover: Bytes fed after the last record of the ClientHello (for
            example TLS 1.3 early data sent in the same segment).  The caller
            replays them after ``hello.raw``.
    """

    __slots__ = ("_max_size", "_buf", "_pos", "_hs", "_hs_len", "_hello", "_error", "leftover")

    def __init__(self, max_size: int = 65536) -> None:
        """Create a reader.

        Args:
            max_size: The most bytes of TLS records (headers included) the
                ClientHello may occupy.  Real hellos are well under 2 KiB,
                post-quantum key shares bring them to about 2-3 KiB; the
                default leaves ample room while bounding what a peer can make
                us buffer before we decide anything.
        """
        self._max_size = max_size
        self._buf = bytearray()  # every byte fed so far, until the hello is done
        self._pos = 0  # offset in _buf of the first record not yet consumed
        self._hs = bytearray()  # handshake bytes gathered from complete records
        self._hs_len = -1  # total handshake message length once known, else -1
        self._hello: ClientHello | None = None
        self._error: Exception | None = None
        self.leftover = b""

    def feed(self, data: bytes) -> ClientHello | None:
        """Add received bytes and try to complete the ClientHello.

        Args:
            data: The next bytes from the client (may be empty).

        Returns:
            The parsed :class:`ClientHello` once its last record has arrived,
            otherwise ``None`` (more bytes are needed).

        Raises:
            NotTLS: The stream does not start with a TLS handshake record.
            ClientHelloError: It does, but what follows is not a well-formed
                ClientHello within the size limits.
        """
        if self._hello is not None:
            self.leftover += bytes(data)
            return self._hello
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except (NotTLS, ClientHelloError) as e:
            self._error = e
            raise
        except Exception as e:  # a parser bug, never input
            # Length checks above should make this unreachable; if one is
            # missing, the caller still gets the documented exception type.
            err = _unexpected(e)
            self._error = err
            raise err from e

    @property
    def received(self) -> bytes:
        """Every byte fed so far, in order.

        Before completion (or after an error) that is the buffered input,
        bounded by about ``max_size`` plus one record; after completion it is
        ``hello.raw + leftover``.
        """
        if self._hello is not None:
            return self._hello.raw + self.leftover
        return bytes(self._buf)

    def _feed(self, data: bytes) -> ClientHello | None:
        buf = self._buf
        if not buf and len(data) > 9:
            # Fast path for the usual case: the whole ClientHello arrives in
            # the first read, as exactly one record.  It skips the buffer
            # copies of the general path; anything unusual (fragmented,
            # short, malformed headers) falls through to the general path,
            # which also produces the right error.
            data = bytes(data)
            length = data[3] << 8 | data[4]
            end = _RECORD_HEADER + length
            if (
                data[0] == _CONTENT_HANDSHAKE
                and data[1] == 0x03
                and data[2] <= 0x04
                and data[5] == _CLIENT_HELLO
                and length <= _MAX_RECORD
                and end <= len(data)
                and end <= self._max_size
                and (data[6] << 16 | data[7] << 8 | data[8]) + _HANDSHAKE_HEADER == length
            ):
                try:
                    hello = _parse_body(data[_RECORD_HEADER + _HANDSHAKE_HEADER : end], data[:end])
                except Exception:
                    buf += data  # keep `received` complete for a passthrough
                    raise
                self._hello = hello
                self.leftover = data[end:]
                return hello
        checked = len(buf) >= 3
        buf += data
        if not checked and looks_like_tls(buf[:3]) is False:
            # Decide TLS-or-not as early as possible so that a plain-text
            # client (which may wait for a banner) is not left hanging.
            raise NotTLS("stream does not start with a TLS handshake record")
        end = len(buf)
        pos = self._pos
        while end - pos >= _RECORD_HEADER:
            ctype = buf[pos]
            if ctype != _CONTENT_HANDSHAKE:
                if pos == 0:  # pragma: no cover - caught by looks_like_tls
                    raise NotTLS("stream does not start with a TLS handshake record")
                raise ClientHelloError(f"record of content type {ctype} inside the ClientHello")
            if buf[pos + 1] != 0x03 or buf[pos + 2] > 0x04:
                raise ClientHelloError(
                    f"bad record version 0x{buf[pos + 1]:02x}{buf[pos + 2]:02x}"
                )
            length = buf[pos + 3] << 8 | buf[pos + 4]
            if length == 0:
                # RFC 8446 5.1: zero-length handshake fragments are forbidden.
                raise ClientHelloError("empty handshake record")
            if length > _MAX_RECORD:
                raise ClientHelloError(f"record length {length} exceeds {_MAX_RECORD}")
            rec_end = pos + _RECORD_HEADER + length
            if rec_end > self._max_size:
                raise ClientHelloError(f"ClientHello records exceed {self._max_size} bytes")
            if rec_end > end:
                break  # wait for the rest of this record
            self._hs += buf[pos + _RECORD_HEADER : rec_end]
            pos = rec_end
            self._pos = pos
            if self._hs_len < 0 and len(self._hs) >= _HANDSHAKE_HEADER:
                hs = self._hs
                if hs[0] != _CLIENT_HELLO:
                    raise ClientHelloError(f"first handshake message has type {hs[0]}, not ClientHello")
                self._hs_len = _HANDSHAKE_HEADER + (hs[1] << 16 | hs[2] << 8 | hs[3])
                # Each record adds at least a 5-byte header, so the records
                # cannot fit in max_size if the message alone does not.
                if self._hs_len + _RECORD_HEADER > self._max_size:
                    raise ClientHelloError(
                        f"ClientHello of {self._hs_len} bytes exceeds {self._max_size}"
                    )
            if self._hs_len >= 0 and len(self._hs) >= self._hs_len:
                if len(self._hs) != self._hs_len:
                    # A client may send nothing but the ClientHello until the
                    # server answers, so handshake bytes after it are bogus.
                    raise ClientHelloError("trailing handshake data after the ClientHello")
                hello = _parse_body(bytes(self._hs[_HANDSHAKE_HEADER:]), bytes(buf[:pos]))
                self._hello = hello
                self.leftover = bytes(buf[pos:])
                self._buf = bytearray()
                self._hs = bytearray()
                return hello
        return None


def parse_handshake(message: bytes) -> ClientHello:
    """Parse one whole ClientHello handshake message that came without TLS records.

    QUIC carries the TLS handshake in CRYPTO frames instead of records
    (RFC 9001 section 4), so its Initial reader reassembles the message
    itself and hands it over here: the 4-byte handshake header and the body,
    nothing before or after.

    Args:
        message: The handshake message, type 1 (ClientHello) and its 24-bit
            length first.

    Returns:
        The parsed :class:`ClientHello`; its ``raw`` is ``message``.

    Raises:
        ClientHelloError: ``message`` is not exactly one well-formed ClientHello.
    """
    message = bytes(message)
    if len(message) < _HANDSHAKE_HEADER:
        raise ClientHelloError("handshake message shorter than its header")
    if message[0] != _CLIENT_HELLO:
        raise ClientHelloError(f"handshake message has type {message[0]}, not ClientHello")
    if _HANDSHAKE_HEADER + (message[1] << 16 | message[2] << 8 | message[3]) != len(message):
        raise ClientHelloError("handshake length does not match the message")
    try:
        return _parse_body(message[_HANDSHAKE_HEADER:], message)
    except ClientHelloError:
        raise
    except Exception as e:  # a parser bug, never input: as in ClientHelloReader.feed
        raise _unexpected(e) from e


def _unexpected(e: Exception) -> ClientHelloError:
    """The documented error for an exception that only a bug of ours can raise."""
    return ClientHelloError(f"malformed ClientHello ({type(e).__name__}: {e})")


def _parse_body(body: bytes, raw: bytes) -> ClientHello:
    """Parse a ClientHello body (after the 4-byte handshake header).

    Every read is preceded by a bounds check against ``n``; the structure
    follows RFC 8446 section 4.1.2 (and RFC 5246 7.4.1.2, which differs only
    in allowing the extensions block to be absent).
    """
    n = len(body)
    if n < _FIXED_BODY + 1:
        raise ClientHelloError("ClientHello too short")
    legacy_version = body[0] << 8 | body[1]
    if body[0] != 0x03:
        raise ClientHelloError(f"bad legacy_version 0x{legacy_version:04x}")
    p = _FIXED_BODY

    # legacy_session_id <0..32>
    sid_len = body[p]
    p += 1
    if sid_len > 32 or p + sid_len > n:
        raise ClientHelloError("bad session id length")
    p += sid_len

    # cipher_suites <2..2^16-2>, two bytes each
    if p + 2 > n:
        raise ClientHelloError("truncated cipher suites")
    cs_len = body[p] << 8 | body[p + 1]
    p += 2
    if cs_len < 2 or cs_len & 1 or p + cs_len > n:
        raise ClientHelloError("bad cipher suites length")
    p += cs_len

    # legacy_compression_methods <1..2^8-1>
    if p + 1 > n:
        raise ClientHelloError("truncated compression methods")
    cm_len = body[p]
    p += 1
    if cm_len < 1 or p + cm_len > n:
        raise ClientHelloError("bad compression methods length")
    p += cm_len

    sni: str | None = None
    alpn: tuple[bytes, ...] = ()
    versions: tuple[int, ...] = ()
    if p == n:
        # Pre-TLS 1.3 clients may omit the extensions block entirely.
        return ClientHello(sni, alpn, legacy_version, versions, raw)

    if p + 2 > n:
        raise ClientHelloError("truncated extensions length")
    ext_total = body[p] << 8 | body[p + 1]
    p += 2
    if p + ext_total != n:
        raise ClientHelloError("extensions length does not match the ClientHello length")

    seen: set[int] = set()
    unpack = _EXT_HEADER.unpack_from
    while p < n:
        if p + 4 > n:
            raise ClientHelloError("truncated extension header")
        etype, elen = unpack(body, p)
        p += 4
        if p + elen > n:
            raise ClientHelloError(f"extension {etype} overruns the ClientHello")
        if etype in seen:
            # RFC 8446 4.2: no more than one extension of each type.
            raise ClientHelloError(f"duplicate extension {etype}")
        seen.add(etype)
        if etype in _INTERESTING:
            if etype == _EXT_SERVER_NAME:
                sni = _parse_server_name(body, p, p + elen)
            elif etype == _EXT_ALPN:
                alpn = _parse_alpn(body, p, p + elen)
            else:
                versions = _parse_supported_versions(body, p, p + elen)
        p += elen
    return ClientHello(sni, alpn, legacy_version, versions, raw)


def _parse_server_name(body: bytes, p: int, end: int) -> str | None:
    """Parse a ServerNameList (RFC 6066 section 3) in ``body[p:end]``."""
    if end - p < 2:
        raise ClientHelloError("truncated server_name extension")
    list_len = body[p] << 8 | body[p + 1]
    p += 2
    if list_len == 0 or p + list_len != end:
        raise ClientHelloError("server_name list length mismatch")
    host: str | None = None
    while p < end:
        if p + 3 > end:
            raise ClientHelloError("truncated server_name entry")
        name_type = body[p]
        name_len = body[p + 1] << 8 | body[p + 2]
        p += 3
        if name_len == 0 or p + name_len > end:
            raise ClientHelloError("bad server_name entry length")
        if name_type == 0:  # host_name; other types are unassigned, skipped
            if host is not None:
                raise ClientHelloError("more than one host_name in server_name")
            name = body[p : p + name_len]
            if len(name) > 254 or _HOSTNAME_RE.fullmatch(name) is None:
                raise ClientHelloError(f"server_name is not a valid host name: {name[:64]!r}")
            if name.endswith(b"."):
                name = name[:-1]
            if len(name) > 253:
                raise ClientHelloError("server_name longer than 253 bytes")
            host = name.decode("ascii").lower()
        p += name_len
    return host


def _parse_alpn(body: bytes, p: int, end: int) -> tuple[bytes, ...]:
    """Parse a ProtocolNameList (RFC 7301 section 3.1) in ``body[p:end]``."""
    if end - p < 2:
        raise ClientHelloError("truncated ALPN extension")
    list_len = body[p] << 8 | body[p + 1]
    p += 2
    if list_len < 2 or p + list_len != end:
        raise ClientHelloError("ALPN list length mismatch")
    names = []
    while p < end:
        name_len = body[p]
        p += 1
        if name_len == 0 or p + name_len > end:
            raise ClientHelloError("bad ALPN protocol name length")
        names.append(body[p : p + name_len])
        p += name_len
    return tuple(names)


def _parse_supported_versions(body: bytes, p: int, end: int) -> tuple[int, ...]:
    """Parse ClientHello supported_versions (RFC 8446 section 4.2.1)."""
    if end - p < 1:
        raise ClientHelloError("truncated supported_versions extension")
    list_len = body[p]
    p += 1
    if list_len < 2 or list_len & 1 or p + list_len != end:
        raise ClientHelloError("supported_versions length mismatch")
    return tuple(body[i] << 8 | body[i + 1] for i in range(p, end, 2))


# Alert descriptions a refusal at the ClientHello may send (RFC 8446 section 6.2).
ACCESS_DENIED = 49
UNRECOGNIZED_NAME = 112
_FATAL = 2


def alert_record(description: int) -> bytes:
    """A fatal TLS alert, as a plaintext record: the answer to a ClientHello we refuse.

    Before the ServerHello no keys exist, so every TLS version (1.0 to 1.3)
    reads an alert in a plaintext record; the record version is the
    TLS 1.2 one that RFC 8446 section 5.1 has every record but the first
    ClientHello carry. OpenSSL reports ``tlsv1 alert access denied``.
    """
    return struct.pack("!BHHBB", _CONTENT_ALERT, 0x0303, 2, _FATAL, description)
