"""Sans-IO reader of a QUIC client's Initial packets: the ClientHello inside them.

A QUIC client's first flight is a TLS ClientHello, as over TCP, but carried
in Initial packets whose protection anyone can remove: the keys derive from
the Destination Connection ID the client put in the clear (RFC 9001 section
5.2), so that middleboxes and servers can read the hello before any
handshake.  This module removes that protection and hands the reassembled
ClientHello to the TLS layer's parser (:func:`parse_handshake`), so the
proxy learns the server name (SNI), the ALPN offers (``h3``) and the TLS
versions of a QUIC connection and can pass it or refuse it.

It only parses bytes; it imports nothing from Twisted::

    reader = QuicInitialReader()          # one per client connection
    result = reader.feed(datagram)        # NeedMore until the hello is whole
    if isinstance(result, QuicHello):
        print(result.hello.sni, result.hello.alpn)

Theory of operation
-------------------
The caller keys one reader per client connection (by address, or by
:func:`peek_dcid`) and feeds it the client's UDP datagrams in the order they
arrive.  Each datagram holds one or more *coalesced* packets (RFC 9000
section 12.2); each long-header packet says how long it is (its Length
field), so the reader walks them in turn:

1. The version-independent header (RFC 8999): the long-header bit, the
   version, both connection IDs.  Version 0 is a Version Negotiation packet
   and a version other than QUIC v1 (RFC 9000) or v2 (RFC 9369) cannot be
   read; when the first datagram says so, the result says so and the
   connection is left alone.  A first datagram without a long header is not
   a QUIC connection's start at all (:class:`NotInitial`).
2. The packet type (its bits differ between v1 and v2).  0-RTT and Handshake
   packets are skipped over, using their Length; a Retry (which a client
   never sends) and a short-header packet end the datagram.
3. An Initial packet: its keys come from its Destination Connection ID and
   the version's salt; header protection is removed with AES-ECB on a sample
   of the ciphertext (RFC 9001 section 5.4), which reveals the packet number
   (decoded as RFC 9000 appendix A.3 says); the payload is opened with
   AES-128-GCM.  The frames inside may be PADDING, PING, ACK, CRYPTO and
   CONNECTION_CLOSE only (RFC 9000 section 12.4).
4. CRYPTO frames are laid into one buffer at their offsets, in whatever
   order they come, across packets and datagrams: a ClientHello with
   post-quantum key shares (as Chromium sends) takes two or three
   datagrams, and Chromium shuffles its CRYPTO frames on purpose.  Bytes
   that arrive twice must agree, or two readers (ours and the server's)
   could see different hellos.  Once the bytes from offset 0 cover the
   handshake header's length, the hello is parsed.

The reader judges packets the way the server will, so that it sees the
hello the server sees: what a server silently discards (a datagram under
1200 bytes, a Length beyond the datagram, a packet that fails
authentication, a packet number seen before, another connection's packet)
is skipped and noted in :attr:`NeedMore.ignored`; what a server answers
with a connection error (a forbidden frame, malformed frames, reserved bits
set, disagreeing CRYPTO data, a broken ClientHello) ends the reader with
:class:`InitialError`.  Nothing raises out of :meth:`QuicInitialReader.feed`.

Bounds: CRYPTO data beyond ``max_crypto`` bytes, more than ``max_packets``
packets without a whole hello, or CRYPTO data in more than
:data:`MAX_CRYPTO_PIECES` separate pieces end the reader with an error, so a
hostile client cannot make it buffer or work without limit.  Keys are
derived once per connection and reused.
"""

from __future__ import annotations

import bisect
import re
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tinspect.layers.tls.clienthello import ClientHello, ClientHelloError, parse_handshake

__all__ = [
    "MAX_CRYPTO_PIECES",
    "VERSION_1",
    "VERSION_2",
    "InitialError",
    "InitialResult",
    "NeedMore",
    "NotInitial",
    "QuicHello",
    "QuicInitialReader",
    "UnknownVersion",
    "VersionNegotiation",
    "client_initial_keys",
    "decode_packet_number",
    "peek_dcid",
]

VERSION_1 = 0x00000001
"""QUIC version 1 (RFC 9000)."""
VERSION_2 = 0x6B3343CF
"""QUIC version 2 (RFC 9369)."""

MAX_CRYPTO_PIECES = 128
"""The most separate runs of CRYPTO data held while waiting for the gaps between them.

Chromium splits its hello into a handful of CRYPTO frames; the bound keeps
the bookkeeping small against a client that sends thousands of one-byte
pieces with holes between them.
"""

_MIN_INITIAL_DATAGRAM = 1200  # RFC 9000 section 14.1: smaller ones are discarded
_MAX_CID = 20  # RFC 9000 section 17.2: longer v1 (and v2) connection IDs are dropped
_SAMPLE = 16  # RFC 9001 section 5.4.2: the AES header-protection sample
_TAG = 16  # AES-128-GCM's tag
_HANDSHAKE_HEADER = 4
_CLIENT_HELLO = 1

# Frame types allowed in an Initial packet (RFC 9000 section 12.4, table 3).
_PADDING, _PING, _ACK, _ACK_ECN, _CRYPTO, _CONNECTION_CLOSE = 0x00, 0x01, 0x02, 0x03, 0x06, 0x1C

_INITIAL, _ZERO_RTT, _HANDSHAKE, _RETRY = "Initial", "0-RTT", "Handshake", "Retry"

_NOT_PADDING = re.compile(rb"[^\x00]")  # a PADDING run ends at the first non-zero byte


def _hkdf_label(label: bytes, length: int) -> bytes:
    """The ``info`` of HKDF-Expand-Label with an empty context (RFC 8446 section 7.1), plus counter 1.

    Every secret and key here is at most 32 bytes, one SHA-256 output, so
    HKDF-Expand is its first block alone: ``HMAC(secret, info || 0x01)``.
    """
    full = b"tls13 " + label
    return struct.pack("!HB", length, len(full)) + full + b"\x00" + b"\x01"


def _hmac(key: bytes) -> hmac.HMAC:
    return hmac.HMAC(key, hashes.SHA256())


def _expand(keyed: hmac.HMAC, info: bytes, length: int) -> bytes:
    """HKDF-Expand of one block with an HMAC already keyed by the secret (copying it is cheap)."""
    h = keyed.copy()
    h.update(info)
    return h.finalize()[:length]


@dataclass(frozen=True, slots=True)
class _Version:
    """What differs between the QUIC versions this reader can open."""

    extract: hmac.HMAC  # HKDF-Extract keyed by the version's initial salt
    key_info: bytes
    iv_info: bytes
    hp_info: bytes
    types: tuple[str, str, str, str]  # packet type names by the long header's type bits


def _version(salt: str, prefix: bytes, types: tuple[str, str, str, str]) -> _Version:
    return _Version(
        _hmac(bytes.fromhex(salt)),
        _hkdf_label(prefix + b" key", 16),
        _hkdf_label(prefix + b" iv", 12),
        _hkdf_label(prefix + b" hp", 16),
        types,
    )


_VERSIONS = {
    # RFC 9001 section 5.2.
    VERSION_1: _version(
        "38762cf7f55934b34d179ae6a4c80cadccbb7f0a", b"quic", (_INITIAL, _ZERO_RTT, _HANDSHAKE, _RETRY)
    ),
    # RFC 9369 sections 3.2 and 3.3: another salt, other labels, packet types rotated.
    VERSION_2: _version(
        "0dede3def700a6db819381be6e269dcbf9bd2ed9", b"quicv2", (_RETRY, _INITIAL, _ZERO_RTT, _HANDSHAKE)
    ),
}
_CLIENT_IN = _hkdf_label(b"client in", 32)  # the same label in both versions


def client_initial_keys(dcid: bytes, version: int = VERSION_1) -> tuple[bytes, bytes, bytes]:
    """Derive the keys protecting a client's Initial packets (RFC 9001 section 5.2).

    Args:
        dcid: The Destination Connection ID of the client's first Initial.
        version: :data:`VERSION_1` or :data:`VERSION_2`.

    Returns:
        ``(key, iv, hp)``: the AES-128-GCM key, its 12-byte IV, and the
        header-protection key.

    Raises:
        KeyError: ``version`` is not one this module knows.
    """
    spec = _VERSIONS[version]
    h = spec.extract.copy()
    h.update(bytes(dcid))
    initial_secret = h.finalize()
    client_secret = _hmac(_expand(_hmac(initial_secret), _CLIENT_IN, 32))
    return (
        _expand(client_secret, spec.key_info, 16),
        _expand(client_secret, spec.iv_info, 12),
        _expand(client_secret, spec.hp_info, 16),
    )


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """Recover a full packet number from its truncated encoding (RFC 9000 appendix A.3).

    Args:
        largest: The largest packet number received so far in this packet
            number space, ``-1`` before any.
        truncated: The packet number bits as sent.
        nbits: How many bits were sent (8, 16, 24 or 32).

    Returns:
        The packet number closest to ``largest + 1`` that ends in ``truncated``.
    """
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def peek_dcid(datagram: bytes) -> bytes | None:
    """Return the Destination Connection ID of a datagram's first packet, if it has a long header.

    Cheap (no decryption): for a caller that keys readers by connection ID.
    A short header does not say how long its connection ID is (RFC 8999
    section 5.2), so it gives ``None``, as does anything truncated.
    """
    if len(datagram) < 6 or not datagram[0] & 0x80:
        return None
    end = 6 + datagram[5]
    return bytes(datagram[6:end]) if end <= len(datagram) else None


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The ClientHello is not whole yet: feed the connection's next datagram.

    Attributes:
        received: Bytes of CRYPTO data held so far (each byte counted once).
        expected: The ClientHello's length, handshake header included, once
            its first four bytes have arrived; else ``None``.
        ignored: Why packets of this datagram were skipped or discarded
            (a duplicate, a 0-RTT packet, one failing authentication...), in
            order; ``()`` when every packet was read.
    """

    received: int
    expected: int | None
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QuicHello:
    """The client's ClientHello, read from its Initial packets.

    Attributes:
        version: The QUIC version of the connection.
        dcid: The Destination Connection ID the client chose (the Initial keys' input).
        scid: The client's Source Connection ID.
        hello: SNI, ALPN offers and TLS versions, as the TLS layer's parser
            gives them; ``hello.raw`` is the bare handshake message.
    """

    version: int
    dcid: bytes
    scid: bytes
    hello: ClientHello


@dataclass(frozen=True, slots=True)
class NotInitial:
    """The connection's first datagram does not start with a QUIC long header: not a QUIC start.

    Attributes:
        reason: What the first bytes were instead.
    """

    reason: str


@dataclass(frozen=True, slots=True)
class VersionNegotiation:
    """A Version Negotiation packet (version 0, RFC 9000 section 17.2.1), which servers send.

    Attributes:
        dcid: Its Destination Connection ID.
        scid: Its Source Connection ID.
        versions: The versions it lists.
    """

    dcid: bytes
    scid: bytes
    versions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnknownVersion:
    """A long header of a QUIC version this reader cannot open; the connection is left alone.

    Attributes:
        version: The version the client asked for (a draft, a GREASE value
            meant to provoke version negotiation, or a version newer than v2).
        dcid: Its Destination Connection ID.
        scid: Its Source Connection ID.
    """

    version: int
    dcid: bytes
    scid: bytes


@dataclass(frozen=True, slots=True)
class InitialError:
    """The Initial packets carry no usable ClientHello: a server would close the connection.

    Attributes:
        reason: What was wrong, in words for a log line.
    """

    reason: str


InitialResult = NeedMore | QuicHello | NotInitial | VersionNegotiation | UnknownVersion | InitialError
"""What :meth:`QuicInitialReader.feed` answers; every kind but :class:`NeedMore` is final."""


class _Fatal(Exception):
    """A connection error: the reader ends with :class:`InitialError`."""


class _Truncated(Exception):
    """A variable-length integer runs past its buffer."""


def _varint(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """Read a variable-length integer (RFC 9000 section 16) at ``p``; return it and the next offset."""
    if p >= end:
        raise _Truncated
    first = buf[p]
    n = 1 << (first >> 6)
    if p + n > end:
        raise _Truncated
    value = first & 0x3F
    for i in range(p + 1, p + n):
        value = value << 8 | buf[i]
    return value, p + n


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------


class QuicInitialReader:
    """Incremental, sans-IO reader of one QUIC client connection's ClientHello.

    Feed it the client's datagrams with :meth:`feed` until the result is not
    :class:`NeedMore`.  Final results are sticky: later calls return the
    same object and read nothing.  Datagrams may come reordered, duplicated,
    or mixed with packets the reader skips (see the module docstring).

    The first Initial packet that authenticates fixes the connection's
    version and connection IDs; later packets of another version or
    Destination Connection ID belong to another connection and are ignored.
    (A client that got a Retry starts again under a new Destination
    Connection ID: a caller keying by :func:`peek_dcid` gives it a new reader.)
    """

    __slots__ = (
        "_max_crypto",
        "_max_packets",
        "_packets",
        "_quic_seen",
        "_version",
        "_dcid",
        "_scid",
        "_keys",
        "_largest_pn",
        "_seen_pns",
        "_crypto",
        "_starts",
        "_ends",
        "_expected",
        "_result",
    )

    def __init__(self, max_crypto: int = 65536, max_packets: int = 64) -> None:
        """Create a reader for one connection.

        Args:
            max_crypto: The most bytes of CRYPTO data (up to the end of the
                ClientHello) to hold.  A hello with post-quantum key shares
                is under 2 KiB; the default leaves ample room.
            max_packets: The most packets (of any kind, dropped ones too) to
                examine before the hello is whole.  Three datagrams carry
                the biggest real hellos; the default allows for many
                duplicates and strays.
        """
        self._max_crypto = max_crypto
        self._max_packets = max_packets
        self._packets = 0
        self._quic_seen = False  # a v1 or v2 long header has been seen
        self._version: int | None = None  # fixed by the first authenticated Initial
        self._dcid = b""
        self._scid = b""
        # (version, dcid, AEAD, iv as int, header-protection encryptor) of the last keys derived
        self._keys: tuple | None = None
        self._largest_pn = -1
        self._seen_pns: set[int] = set()
        self._crypto = bytearray()  # CRYPTO data at its offsets; gaps are zeros
        self._starts: list[int] = []  # the runs of _crypto received: sorted, disjoint, not touching
        self._ends: list[int] = []
        self._expected: int | None = None
        self._result: InitialResult | None = None

    def feed(self, datagram: bytes) -> InitialResult:
        """Read one datagram from the client.

        Args:
            datagram: One UDP payload, whole, as received.

        Returns:
            :class:`QuicHello` once the ClientHello is whole; :class:`NeedMore`
            while it is not; :class:`NotInitial`, :class:`VersionNegotiation`
            or :class:`UnknownVersion` when the connection's first datagram is
            not something to read; :class:`InitialError` with the reason when
            the packets are broken.  Never raises.
        """
        if self._result is not None:
            return self._result
        try:
            result = self._feed(bytes(datagram))
        except _Fatal as e:
            result = InitialError(str(e))
        except Exception as e:  # a bug of ours, never input
            # Every length is checked before use, so this should be
            # unreachable; if a check is missing, the caller still gets a
            # result rather than an exception in its datagram handler.
            result = InitialError(f"malformed Initial ({type(e).__name__}: {e})")
        if not isinstance(result, NeedMore):
            self._result = result
            self._crypto = bytearray()
            self._starts, self._ends, self._seen_pns, self._keys = [], [], set(), None
        return result

    def _feed(self, data: bytes) -> InitialResult:
        """Walk the packets of one datagram, as the module docstring's steps 1 to 3 say."""
        n = len(data)
        if n == 0 and not self._quic_seen:
            return NotInitial("an empty datagram")
        ignored: list[str] = []
        first_dcid: bytes | None = None
        p = 0
        while p < n:
            if self._packets >= self._max_packets:
                raise _Fatal(f"no whole ClientHello in {self._max_packets} packets")
            self._packets += 1
            first = data[p]
            header = self._long_header(data, p) if first & 0x80 else None
            if header is None:
                what = (
                    "a truncated long header" if first & 0x80
                    else f"first byte 0x{first:02x}: a short header or not QUIC"
                )
                if p == 0 and not self._quic_seen:
                    return NotInitial(what)
                if p == 0:  # after the packets of a datagram, the rest may be padding
                    ignored.append(f"datagram ignored: {what}")
                break
            version, dcid, scid, q = header
            if first_dcid is None:
                first_dcid = dcid
            elif dcid != first_dcid:
                ignored.append("packets for another connection ID after the first ignored (RFC 9000 §12.2)")
                break
            spec = _VERSIONS.get(version)
            if spec is None:
                if p == 0 and not self._quic_seen:
                    if version == 0:
                        end = n - (n - q) % 4
                        versions = struct.unpack(f"!{(end - q) // 4}I", data[q:end])
                        return VersionNegotiation(dcid, scid, versions)
                    return UnknownVersion(version, dcid, scid)
                ignored.append(f"packet of version 0x{version:08x} ignored")
                break
            if len(dcid) > _MAX_CID or len(scid) > _MAX_CID:
                ignored.append(f"connection ID longer than {_MAX_CID} bytes: packet dropped")
                break
            self._quic_seen = True
            kind = spec.types[first >> 4 & 0x03]
            if kind == _RETRY:  # no Length field: it runs to the end of the datagram
                ignored.append("Retry packet ignored")
                break
            try:
                if kind == _INITIAL:
                    token_len, q = _varint(data, q, n)
                    q += token_len
                length, q = _varint(data, q, n)
            except _Truncated:
                ignored.append(f"{kind} packet with a truncated header dropped")
                break
            end = q + length
            if end > n:
                ignored.append(f"{kind} packet's Length {length} overruns the datagram: dropped")
                break
            if kind != _INITIAL:
                ignored.append(f"{kind} packet skipped")
            elif self._version is not None and (version != self._version or dcid != self._dcid):
                ignored.append("Initial packet of another connection ignored")
            elif n < _MIN_INITIAL_DATAGRAM:
                ignored.append(
                    f"Initial packet in a datagram of {n} bytes dropped: clients pad to"
                    f" {_MIN_INITIAL_DATAGRAM} (RFC 9000 §14.1)"
                )
            else:
                dropped = self._open(data, p, q, end, version, dcid, scid)
                if dropped is not None:
                    ignored.append(dropped)
                else:
                    hello = self._hello()
                    if hello is not None:
                        return hello
            p = end
        return NeedMore(sum(self._ends) - sum(self._starts), self._expected, tuple(ignored))

    @staticmethod
    def _long_header(data: bytes, p: int) -> tuple[int, bytes, bytes, int] | None:
        """The version-independent long header at ``p`` (RFC 8999 section 5.1), or ``None`` if truncated.

        Returns ``(version, dcid, scid, offset after the SCID)``.
        """
        n = len(data)
        if p + 6 > n:
            return None
        version = int.from_bytes(data[p + 1 : p + 5], "big")
        q = p + 6 + data[p + 5]
        if q + 1 > n:
            return None
        dcid = data[p + 6 : q]
        r = q + 1 + data[q]
        if r > n:
            return None
        return version, dcid, data[q + 1 : r], r

    def _open(
        self, data: bytes, p: int, pn_offset: int, end: int, version: int, dcid: bytes, scid: bytes
    ) -> str | None:
        """Remove the protection of the Initial packet ``data[p:end]`` and read its frames.

        Returns why the packet was dropped, or ``None`` when it was read.
        Raises :class:`_Fatal` for what a server treats as a connection error.
        """
        keys = self._keys
        if keys is None or keys[0] != version or keys[1] != dcid:
            key, iv, hp = client_initial_keys(dcid, version)
            keys = self._keys = (
                version,
                dcid,
                AESGCM(key),
                int.from_bytes(iv, "big"),
                Cipher(algorithms.AES(hp), modes.ECB()).encryptor(),
            )
        _, _, aead, iv, hp = keys
        sample_at = pn_offset + 4  # the sample assumes a 4-byte packet number (RFC 9001 §5.4.2)
        if sample_at + _SAMPLE > end:
            return "Initial packet too short to sample for header protection: dropped"
        mask = hp.update(data[sample_at : sample_at + _SAMPLE])
        first = data[p] ^ (mask[0] & 0x0F)
        pn_len = (first & 0x03) + 1
        truncated = int.from_bytes(data[pn_offset : pn_offset + pn_len], "big") ^ int.from_bytes(
            mask[1 : 1 + pn_len], "big"
        )
        pn = decode_packet_number(self._largest_pn, truncated, pn_len * 8)
        if pn in self._seen_pns:
            return f"Initial packet number {pn} seen before: duplicate ignored"
        header = bytes((first,)) + data[p + 1 : pn_offset] + truncated.to_bytes(pn_len, "big")
        try:
            payload = aead.decrypt(
                (iv ^ pn).to_bytes(12, "big"), data[pn_offset + pn_len : end], header
            )
        except InvalidTag:
            return f"Initial packet {pn} failed authentication: dropped"
        if first & 0x0C:
            raise _Fatal("reserved bits set in an Initial packet's header (RFC 9000 §17.2)")
        self._seen_pns.add(pn)
        self._largest_pn = max(self._largest_pn, pn)
        if self._version is None:
            self._version, self._dcid, self._scid = version, dcid, scid
        self._frames(payload)
        return None

    def _frames(self, payload: bytes) -> None:
        """Read the frames of one decrypted Initial payload, keeping CRYPTO data."""
        n = len(payload)
        if n == 0:
            raise _Fatal("Initial packet without frames (RFC 9000 §12.4)")
        p = 0
        try:
            while p < n:
                ftype = payload[p]
                if ftype == _PADDING:
                    m = _NOT_PADDING.search(payload, p)
                    p = m.start() if m else n
                    continue
                p += 1
                if ftype == _CRYPTO:
                    offset, p = _varint(payload, p, n)
                    length, p = _varint(payload, p, n)
                    if p + length > n:
                        raise _Fatal("CRYPTO frame overruns its packet")
                    self._add_crypto(offset, payload[p : p + length])
                    p += length
                elif ftype == _PING:
                    pass
                elif ftype in (_ACK, _ACK_ECN):
                    # Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range.
                    _, p = _varint(payload, p, n)
                    _, p = _varint(payload, p, n)
                    ranges, p = _varint(payload, p, n)
                    _, p = _varint(payload, p, n)
                    # Each further range is two varints, so the loop ends with the payload.
                    for _ in range(2 * ranges + (3 if ftype == _ACK_ECN else 0)):
                        _, p = _varint(payload, p, n)
                elif ftype == _CONNECTION_CLOSE:
                    code, p = _varint(payload, p, n)
                    _, p = _varint(payload, p, n)  # the frame type that caused it
                    reason_len, p = _varint(payload, p, n)
                    reason = payload[p : p + min(reason_len, 64)]
                    raise _Fatal(f"the client closed the connection: error 0x{code:x} {reason!r}")
                else:
                    raise _Fatal(f"frame type 0x{ftype:02x} is not allowed in an Initial packet (RFC 9000 §12.4)")
        except _Truncated:
            raise _Fatal("truncated frame in an Initial packet") from None

    def _add_crypto(self, offset: int, data: bytes) -> None:
        """Lay CRYPTO data at its offset; bytes received before must be the same bytes."""
        end = offset + len(data)
        if end > self._max_crypto:
            raise _Fatal(f"CRYPTO data up to offset {end} exceeds the {self._max_crypto} bytes allowed")
        if not data:
            return
        buf, starts, ends = self._crypto, self._starts, self._ends
        # Runs i..j-1 overlap or touch [offset, end]; they merge into one.
        i = bisect.bisect_left(ends, offset)
        j = bisect.bisect_right(starts, end)
        for k in range(i, j):
            a, b = max(offset, starts[k]), min(end, ends[k])
            if a < b and buf[a:b] != data[a - offset : b - offset]:
                raise _Fatal(f"CRYPTO frames disagree about bytes {a} to {b}")
        if len(buf) < end:
            buf.extend(bytes(end - len(buf)))
        buf[offset:end] = data
        if i < j:
            offset, end = min(offset, starts[i]), max(end, ends[j - 1])
        starts[i:j] = [offset]
        ends[i:j] = [end]
        if len(starts) > MAX_CRYPTO_PIECES:
            raise _Fatal(f"CRYPTO data in more than {MAX_CRYPTO_PIECES} pieces")

    def _hello(self) -> QuicHello | None:
        """The ClientHello once the CRYPTO data from offset 0 holds all of it, else ``None``."""
        if not self._starts or self._starts[0] != 0:
            return None
        have = self._ends[0]
        buf = self._crypto
        if buf[0] != _CLIENT_HELLO:
            raise _Fatal(f"the first handshake message has type {buf[0]}, not ClientHello")
        if have < _HANDSHAKE_HEADER:
            return None
        total = _HANDSHAKE_HEADER + (buf[1] << 16 | buf[2] << 8 | buf[3])
        if total > self._max_crypto:
            raise _Fatal(f"ClientHello of {total} bytes exceeds the {self._max_crypto} bytes allowed")
        self._expected = total
        if have < total:
            return None
        # Bytes after the hello would be a second ClientHello, after a
        # HelloRetryRequest this reader never sees: they are not read.
        try:
            hello = parse_handshake(bytes(buf[:total]))
        except ClientHelloError as e:
            raise _Fatal(f"bad ClientHello: {e}") from None
        return QuicHello(self._version, self._dcid, self._scid, hello)
