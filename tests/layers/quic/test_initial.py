"""Tests for the sans-IO QUIC Initial reader (tinspect.layers.quic.initial).

Inputs come from three places: the published vectors of RFC 9001 and RFC
9369 (``vectors.py``), a real QUIC stack (aioquic's client, at ClientHello
sizes that take one, two and three datagrams), and packets built here with
the frames a test needs (``initial``), protected the way a client does.
"""

from __future__ import annotations

import functools
import random

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinspect.layers.quic.initial as initial_module
from tests.layers.quic import vectors
from tinspect.layers.quic.initial import (
    MAX_CRYPTO_PIECES,
    VERSION_1,
    VERSION_2,
    InitialError,
    NeedMore,
    NotInitial,
    QuicHello,
    QuicInitialReader,
    UnknownVersion,
    VersionNegotiation,
    client_initial_keys,
    decode_packet_number,
    peek_dcid,
)

DCID = bytes.fromhex("0001020304050607")
SCID = bytes.fromhex("a1a2a3a4")
HELLO = vectors.CLIENT_HELLO  # a real ClientHello handshake message (example.com)

# --------------------------------------------------------------------------
# Helpers: packets as a client builds them
# --------------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Encode a QUIC variable-length integer in its shortest form."""
    for n, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * n - 2):
            return (value | prefix << (8 * n - 8)).to_bytes(n, "big")
    raise ValueError(value)


def crypto(offset: int, data: bytes) -> bytes:
    """A CRYPTO frame."""
    return b"\x06" + varint(offset) + varint(len(data)) + data


PING = b"\x01"
ACK = b"\x02" + varint(0) + varint(10) + varint(1) + varint(0) + varint(1) + varint(2)  # two ranges
ACK_ECN = b"\x03" + varint(5) + varint(0) + varint(0) + varint(5) + varint(1) + varint(2) + varint(3)

_TYPE_BITS = {
    VERSION_1: {"Initial": 0, "0-RTT": 1, "Handshake": 2, "Retry": 3},
    VERSION_2: {"Initial": 1, "0-RTT": 2, "Handshake": 3, "Retry": 0},
}


def initial(
    frames: bytes,
    *,
    pn: int = 0,
    pn_len: int = 4,
    dcid: bytes = DCID,
    scid: bytes = SCID,
    version: int = VERSION_1,
    token: bytes = b"",
    reserved: int = 0,
    pad_to: int | None = 1200,
) -> bytes:
    """Build and protect one client Initial packet (RFC 9001 section 5) carrying ``frames``.

    With ``pad_to``, PADDING frames grow the packet to that many bytes, as a
    client pads its Initial datagrams.
    """
    key, iv, hp = client_initial_keys(dcid, version)
    first = 0xC0 | _TYPE_BITS[version]["Initial"] << 4 | reserved << 2 | (pn_len - 1)
    head = (
        bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
        + bytes((len(scid),)) + scid + varint(len(token)) + token
    )
    # A two-byte Length keeps the size computable before the Length is known.
    size = len(head) + 2 + pn_len + len(frames) + 16
    if pad_to is not None and size < pad_to:
        frames += bytes(pad_to - size)
    header = head + (0x4000 | pn_len + len(frames) + 16).to_bytes(2, "big") + (pn % (1 << 8 * pn_len)).to_bytes(
        pn_len, "big"
    )
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    packet = bytearray(header + AESGCM(key).encrypt(nonce, frames, header))
    pn_offset = len(head) + 2
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(bytes(packet[pn_offset + 4 : pn_offset + 20]))
    packet[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        packet[pn_offset + i] ^= mask[1 + i]
    return bytes(packet)


def long_packet(kind: str, payload: bytes, *, version: int = VERSION_1, dcid: bytes = DCID) -> bytes:
    """A 0-RTT or Handshake packet (unprotected: the reader only skips over it)."""
    first = 0xC0 | _TYPE_BITS[version][kind] << 4 | 0x03
    return (
        bytes((first,)) + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid + bytes((len(SCID),)) + SCID
        + varint(len(payload)) + payload
    )


def with_version(datagram: bytes, version: int) -> bytes:
    """The datagram with its first packet's version field replaced."""
    return datagram[:1] + version.to_bytes(4, "big") + datagram[5:]


def feed_all(datagrams, reader: QuicInitialReader | None = None):
    """Feed datagrams in turn to one reader; return every result."""
    reader = reader or QuicInitialReader()
    return [reader.feed(d) for d in datagrams]


def split(data: bytes, pieces: int) -> list[tuple[int, bytes]]:
    """Cut ``data`` into ``pieces`` (offset, bytes) runs."""
    step = -(-len(data) // pieces)
    return [(i, data[i : i + step]) for i in range(0, len(data), step)]


@functools.cache
def aioquic_flight(extra_alpn: int = 0, big_parameters: bool = False, version: int = VERSION_1) -> tuple[bytes, ...]:
    """The datagrams a real QUIC client (aioquic) sends first, for ``server.test`` offering ``h3``.

    ``extra_alpn`` more ALPN names and ``big_parameters`` (aioquic's
    1200-byte ``quantum_readiness`` transport parameter, standing in for a
    post-quantum key share) make the ClientHello span more datagrams.
    """
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"] + [f"proto-{i:04d}" for i in range(extra_alpn)],
        server_name="server.test",
        quantum_readiness_test=big_parameters,
        supported_versions=[version],
    )
    connection = QuicConnection(configuration=config)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return tuple(datagram for datagram, _ in connection.datagrams_to_send(now=0.0))


FLIGHTS = {1: {}, 2: {"big_parameters": True}, 3: {"big_parameters": True, "extra_alpn": 100}}
"""aioquic settings whose ClientHello takes one, two and three datagrams."""


def flight(datagrams: int, version: int = VERSION_1) -> tuple[bytes, ...]:
    """A real client's first flight, ``datagrams`` long."""
    result = aioquic_flight(version=version, **FLIGHTS[datagrams])
    assert len(result) == datagrams
    return result


def hello_of(datagrams) -> QuicHello:
    """The hello a fresh reader reads from ``datagrams`` (it must read one)."""
    result = feed_all(datagrams)[-1]
    assert isinstance(result, QuicHello), result
    return result


def assert_no_bug(result) -> None:
    """The reader's catch-all for its own bugs did not fire."""
    assert not (isinstance(result, InitialError) and result.reason.startswith("malformed Initial")), result


# --------------------------------------------------------------------------
# RFC vectors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, expected", [(VERSION_1, vectors.V1_CLIENT_KEYS), (VERSION_2, vectors.V2_CLIENT_KEYS)], ids=["v1", "v2"]
)
def test_client_initial_keys_match_the_rfc_vectors(version, expected):
    """Key, IV and header protection key derive from the DCID as RFC 9001 A.1 and RFC 9369 A.1 say."""
    assert client_initial_keys(vectors.DCID, version) == expected


@pytest.mark.parametrize(
    "packet, version",
    [(vectors.V1_CLIENT_INITIAL, VERSION_1), (vectors.V2_CLIENT_INITIAL, VERSION_2)],
    ids=["v1", "v2"],
)
def test_rfc_client_initial_gives_its_client_hello(packet, version):
    """The published client Initial (RFC 9001 A.2, RFC 9369 A.2) reads as its ClientHello in one datagram."""
    result = QuicInitialReader().feed(packet)
    assert isinstance(result, QuicHello)
    assert (result.version, result.dcid, result.scid) == (version, vectors.DCID, b"")
    assert result.hello.raw == vectors.CLIENT_HELLO
    assert result.hello.sni == "example.com"
    assert result.hello.alpn == (b"alpn",)
    assert result.hello.supported_versions == (0x0304,)


def test_rfc_packet_under_the_other_version_fails_authentication():
    """The v1 packet relabelled v2 opens with v2 keys, which do not authenticate it."""
    packet = with_version(vectors.V1_CLIENT_INITIAL, VERSION_2)
    # The v1 Initial's type bits (00) are a Retry in v2; make them v2's Initial (01).
    packet = bytes((packet[0] | 0x10,)) + packet[1:]
    result = QuicInitialReader().feed(packet)
    assert isinstance(result, NeedMore)
    assert "failed authentication" in result.ignored[0]


@pytest.mark.parametrize(
    "largest, truncated, nbits, expected",
    [
        (0xA82F30EA, 0x9B32, 16, 0xA82F9B32),  # the example of RFC 9000 appendix A.3
        (-1, 0, 8, 0),
        (-1, 2, 32, 2),
        (254, 0x00, 8, 256),  # wrapped forwards
        (256, 0xFF, 8, 255),  # a late packet just below
        (0x10000, 0xFFFF, 16, 0xFFFF),
    ],
)
def test_decode_packet_number(largest, truncated, nbits, expected):
    """Truncated packet numbers decode to the closest value after the largest seen (RFC 9000 A.3)."""
    assert decode_packet_number(largest, truncated, nbits) == expected


# --------------------------------------------------------------------------
# A real QUIC stack: aioquic's first flight
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2], ids=["v1", "v2"])
@pytest.mark.parametrize("datagrams", [1, 2, 3])
def test_aioquic_hello_in_one_two_and_three_datagrams(datagrams, version):
    """aioquic's ClientHello reads whole after its last datagram, whatever its size, in v1 and v2."""
    packets = flight(datagrams, version)
    results = feed_all(packets)
    *waiting, done = results
    assert all(isinstance(r, NeedMore) and r.ignored == () for r in waiting)
    assert isinstance(done, QuicHello)
    assert done.version == version
    assert done.dcid == peek_dcid(packets[0])
    assert done.hello.sni == "server.test"
    assert done.hello.alpn[0] == b"h3"
    assert 0x0304 in done.hello.supported_versions
    if waiting:
        assert waiting[0].expected == len(done.hello.raw)
        assert [r.received for r in waiting] == sorted(r.received for r in waiting)


def test_aioquic_flight_reversed():
    """The datagrams of a three-datagram hello read the same hello in reverse order."""
    packets = flight(3)
    assert hello_of(reversed(packets)).hello == hello_of(packets).hello


def test_duplicated_datagrams_are_ignored():
    """A datagram received twice (a replayed packet number) is noted and changes nothing."""
    packets = flight(3)
    reader = QuicInitialReader()
    first = reader.feed(packets[0])
    again = reader.feed(packets[0])
    assert isinstance(again, NeedMore)
    assert again.received == first.received
    assert again.ignored == ("Initial packet number 0 seen before: duplicate ignored",)
    assert isinstance(feed_all(packets[1:], reader)[-1], QuicHello)


def _garbage(draw_from: st.DataObject, packets: tuple[bytes, ...]) -> bytes:
    """A datagram that is not part of the flight: noise, a broken or foreign copy, a stray packet."""
    source = draw_from.draw(st.sampled_from(packets))
    kind = draw_from.draw(st.sampled_from(["random", "short", "truncated", "flipped", "foreign", "zero-rtt"]))
    if kind == "random":
        return draw_from.draw(st.binary(max_size=1300))
    if kind == "short":
        return b"\x40" + draw_from.draw(st.binary(max_size=1300))
    if kind == "truncated":
        return source[: draw_from.draw(st.integers(0, len(source) - 1))]
    if kind == "flipped":  # a corrupted copy: authentication fails, or the header breaks
        at = draw_from.draw(st.integers(0, len(source) - 1))
        return source[:at] + bytes((source[at] ^ draw_from.draw(st.integers(1, 255)),)) + source[at + 1 :]
    if kind == "foreign":  # another connection's Initial
        return initial(crypto(0, HELLO), dcid=b"\xee" * 8)
    return long_packet("0-RTT", draw_from.draw(st.binary(max_size=64)), dcid=peek_dcid(source))


_props = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_props
@given(st.data())
def test_property_any_order_with_duplicates_and_garbage_reads_the_same_hello(data):
    """Reordered, duplicated datagrams with garbage between them read the in-order hello."""
    datagrams = data.draw(st.sampled_from([1, 2, 3]))
    packets = flight(datagrams, data.draw(st.sampled_from([VERSION_1, VERSION_2])))
    stream = list(data.draw(st.permutations(packets)))
    for _ in range(data.draw(st.integers(0, 3))):  # duplicates anywhere after their first copy
        at = data.draw(st.integers(0, len(stream) - 1))
        stream.insert(data.draw(st.integers(at + 1, len(stream))), stream[at])
    for _ in range(data.draw(st.integers(0, 4))):  # garbage after the first datagram
        stream.insert(data.draw(st.integers(1, len(stream))), _garbage(data, packets))
    reader = QuicInitialReader()
    results = [reader.feed(d) for d in stream]
    for result in results:
        assert_no_bug(result)
    assert isinstance(results[-1], QuicHello), results
    assert results[-1].hello == hello_of(packets).hello


@pytest.mark.parametrize("datagrams", [1, 2])
def test_every_truncation_of_the_first_datagram(datagrams):
    """A first datagram cut anywhere gives no hello and no error: not QUIC, or the packet is dropped."""
    packet = flight(datagrams)[0]
    header = 7 + packet[5] + packet[6 + packet[5]]  # up to the end of the Source Connection ID
    for length in range(len(packet)):
        result = QuicInitialReader().feed(packet[:length])
        assert isinstance(result, NotInitial if length < header else NeedMore), (length, result)


def test_every_truncation_of_a_later_datagram_leaves_the_reader_usable():
    """A later datagram cut anywhere is dropped; the whole one still completes the hello."""
    first, second = flight(2)
    for length in range(len(second)):
        reader = QuicInitialReader()
        reader.feed(first)
        result = reader.feed(second[:length])
        assert isinstance(result, NeedMore), (length, result)
        assert isinstance(reader.feed(second), QuicHello), length


# --------------------------------------------------------------------------
# Packets in a datagram: coalescing, skipping, dropping
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2], ids=["v1", "v2"])
def test_coalesced_packets_other_than_initial_are_skipped(version):
    """0-RTT and Handshake packets before and after the Initial are skipped by their Length."""
    datagram = (
        long_packet("0-RTT", b"\x00" * 40, version=version)
        + initial(crypto(0, HELLO), version=version, pad_to=1000)
        + long_packet("Handshake", b"\xff" * 100, version=version)
        + long_packet("0-RTT", b"early data" * 10, version=version)
    )
    result = QuicInitialReader().feed(datagram)
    assert isinstance(result, QuicHello)
    assert result.hello.raw == HELLO


def test_zero_rtt_datagram_before_the_initial_waits_for_it():
    """A 0-RTT datagram that overtook the Initial is skipped, and the Initial after it reads."""
    reader = QuicInitialReader()
    result = reader.feed(long_packet("0-RTT", bytes(1200)))
    assert result == NeedMore(0, None, ("0-RTT packet skipped",))
    assert isinstance(reader.feed(initial(crypto(0, HELLO))), QuicHello)


def test_two_initial_packets_in_one_datagram():
    """Two coalesced Initial packets each carrying part of the hello read as one hello."""
    (a, first), (b, second) = split(HELLO, 2)
    later = initial(crypto(b, second), pn=1, pad_to=None)
    datagram = later + initial(crypto(a, first), pn=0, pad_to=1200 - len(later))
    result = QuicInitialReader().feed(datagram)
    assert isinstance(result, QuicHello)
    assert result.hello.raw == HELLO


def test_padding_after_the_packet_is_ignored():
    """Zeros after the last packet of a datagram (padding outside the packet) are not a packet."""
    datagram = initial(crypto(0, HELLO), pad_to=None)
    result = QuicInitialReader().feed(datagram + bytes(1200 - len(datagram)))
    assert isinstance(result, QuicHello)


def test_short_header_packet_after_the_initial_ends_the_datagram():
    """A short-header packet coalesced last is not read."""
    result = QuicInitialReader().feed(initial(crypto(0, HELLO), pad_to=1000) + b"\x41" + bytes(300))
    assert isinstance(result, QuicHello)


def test_other_connection_id_later_in_a_datagram_is_ignored():
    """A coalesced packet with another DCID than the first packet's is ignored (RFC 9000 §12.2)."""
    (a, first), (b, second) = split(HELLO, 2)
    datagram = initial(crypto(a, first), pn=0, pad_to=None) + initial(crypto(b, second), pn=1, dcid=b"\x99" * 8)
    result = QuicInitialReader().feed(datagram)
    assert isinstance(result, NeedMore)
    assert result.received == len(first)
    assert "another connection ID" in result.ignored[0]


def test_small_datagram_is_dropped_as_a_server_would():
    """An Initial in a datagram under 1200 bytes is dropped (RFC 9000 §14.1), then a padded one reads."""
    reader = QuicInitialReader()
    result = reader.feed(initial(crypto(0, HELLO), pad_to=None))
    assert isinstance(result, NeedMore)
    assert "RFC 9000 §14.1" in result.ignored[0]
    assert isinstance(reader.feed(initial(crypto(0, HELLO))), QuicHello)


def test_corrupted_packet_fails_authentication_and_is_dropped():
    """A flipped ciphertext byte drops the packet; its retransmission reads."""
    good = initial(crypto(0, HELLO))
    bad = good[:100] + bytes((good[100] ^ 1,)) + good[101:]
    reader = QuicInitialReader()
    result = reader.feed(bad)
    assert isinstance(result, NeedMore)
    assert result.ignored == ("Initial packet 0 failed authentication: dropped",)
    assert isinstance(reader.feed(good), QuicHello)


def test_length_beyond_the_datagram_drops_the_packet():
    """A Length field that runs past the datagram drops the packet."""
    packet = initial(crypto(0, HELLO), pad_to=1300)
    result = QuicInitialReader().feed(packet[:1250])
    assert result.ignored == ("Initial packet's Length 1278 overruns the datagram: dropped",)


def test_packet_too_short_to_sample_is_dropped():
    """An Initial whose ciphertext is shorter than the header-protection sample is dropped."""
    header = bytes((0xC3,)) + (1).to_bytes(4, "big") + b"\x08" + DCID + b"\x00" + b"\x00" + varint(10)
    datagram = header + bytes(10)
    result = QuicInitialReader().feed(datagram + bytes(1200 - len(datagram)))
    assert result.ignored[0] == "Initial packet too short to sample for header protection: dropped"


def test_initial_of_another_connection_after_the_first_is_ignored():
    """Once a DCID has authenticated, Initials with another DCID or version are ignored."""
    (a, first), (b, second) = split(HELLO, 2)
    reader = QuicInitialReader()
    reader.feed(initial(crypto(a, first)))
    result = reader.feed(initial(crypto(b, second), pn=1, dcid=b"\x77" * 8))
    assert result.ignored == ("Initial packet of another connection ignored",)
    result = reader.feed(initial(crypto(b, second), pn=1, version=VERSION_2))
    assert result.ignored == ("Initial packet of another connection ignored",)
    assert isinstance(reader.feed(initial(crypto(b, second), pn=1)), QuicHello)


def test_packet_number_decoded_against_the_largest_seen():
    """A one-byte packet number after packet 299 decodes to 300, so the packet authenticates."""
    (a, first), (b, second) = split(HELLO, 2)
    reader = QuicInitialReader()
    reader.feed(initial(crypto(a, first), pn=299))
    result = reader.feed(initial(crypto(b, second), pn=300, pn_len=1))
    assert isinstance(result, QuicHello), result


def test_initial_with_a_token():
    """An Initial carrying a token (after Retry or NEW_TOKEN) reads past it."""
    assert isinstance(QuicInitialReader().feed(initial(crypto(0, HELLO), token=b"t" * 77)), QuicHello)


# --------------------------------------------------------------------------
# Frames and CRYPTO reassembly
# --------------------------------------------------------------------------


def test_shuffled_crypto_frames_with_ping_ack_and_padding():
    """CRYPTO frames out of order among PING, ACK and PADDING frames (as Chromium sends) reassemble."""
    pieces = [crypto(offset, data) for offset, data in split(HELLO, 7)]
    random.Random(7).shuffle(pieces)
    frames = PING + pieces[0] + b"\x00" * 5 + ACK + b"".join(pieces[1:4]) + PING + ACK_ECN + b"".join(pieces[4:])
    result = QuicInitialReader().feed(initial(frames))
    assert isinstance(result, QuicHello)
    assert result.hello.raw == HELLO


def test_crypto_across_packets_reports_progress():
    """NeedMore counts the CRYPTO bytes held and, once the header is in, the hello's length."""
    runs = split(HELLO, 3)
    reader = QuicInitialReader()
    assert reader.feed(initial(crypto(*runs[2]), pn=0)) == NeedMore(len(runs[2][1]), None)
    assert reader.feed(initial(crypto(*runs[0]), pn=1)) == NeedMore(
        len(runs[0][1]) + len(runs[2][1]), len(HELLO)
    )
    assert isinstance(reader.feed(initial(crypto(*runs[1]), pn=2)), QuicHello)


def test_retransmitted_and_overlapping_crypto_data_that_agrees():
    """CRYPTO data sent again, whole or overlapping, in new packets is accepted."""
    reader = QuicInitialReader()
    reader.feed(initial(crypto(0, HELLO[:100]), pn=0))
    reader.feed(initial(crypto(0, HELLO[:100]), pn=1))
    assert reader.feed(initial(crypto(50, HELLO[50:150]), pn=2)).received == 150
    assert isinstance(reader.feed(initial(crypto(0, HELLO), pn=3)), QuicHello)


def test_empty_crypto_frame_is_harmless():
    """A CRYPTO frame of no bytes adds nothing."""
    result = QuicInitialReader().feed(initial(crypto(500, b"") + crypto(0, HELLO)))
    assert isinstance(result, QuicHello)


def test_crypto_data_that_disagrees_is_an_error():
    """Two CRYPTO frames that say different things about the same bytes end the reader."""
    changed = HELLO[:60] + b"X" + HELLO[61:100]
    reader = QuicInitialReader()
    reader.feed(initial(crypto(0, HELLO[:100]), pn=0))
    result = reader.feed(initial(crypto(40, changed[40:]), pn=1))
    assert result == InitialError("CRYPTO frames disagree about bytes 40 to 100")


@pytest.mark.parametrize(
    "frames, reason",
    [
        (crypto(0, HELLO[:10]) + b"\x08\x00\x00", "frame type 0x08 is not allowed in an Initial packet"),
        (b"\x1c" + varint(0x0A) + varint(0) + varint(4) + b"bye!", "the client closed the connection: error 0xa"),
        (crypto(0, HELLO)[:-1] + b"", "CRYPTO frame overruns its packet"),
        (b"\x06\x80", "truncated frame"),
        (b"\x02" + varint(1) + varint(0) + varint(5) + varint(0) + varint(1), "truncated frame"),
        (crypto(0, b"\x02\x00\x00\x01\x00"), "the first handshake message has type 2, not ClientHello"),
        (crypto(0, b"\x01\x00\x00\x03abc"), "bad ClientHello: ClientHello too short"),
        (crypto(65530, b"x" * 10), "CRYPTO data up to offset 65540 exceeds the 65536 bytes allowed"),
        (crypto(0, b"\x01\x01\x00\x00"), "ClientHello of 65540 bytes exceeds the 65536 bytes allowed"),
    ],
)
def test_bad_frames_end_the_reader_with_a_reason(frames, reason):
    """Frames a server would answer with a connection error give InitialError with the reason."""
    # Truncation needs the packet to end right after its frames, not in PADDING.
    pad_to = None if "overruns" in reason or "truncated" in reason else 1200
    packet = initial(frames, pad_to=pad_to)
    result = QuicInitialReader().feed(packet + bytes(max(0, 1200 - len(packet))))
    assert isinstance(result, InitialError)
    assert reason in result.reason


def test_packet_without_frames_is_an_error():
    """An Initial whose payload is empty is a protocol violation (RFC 9000 §12.4)."""
    packet = initial(b"", pad_to=None)
    result = QuicInitialReader().feed(packet + bytes(1200 - len(packet)))
    assert result == InitialError("Initial packet without frames (RFC 9000 §12.4)")


def test_reserved_bits_set_is_an_error():
    """Reserved header bits that are set under header protection end the reader (RFC 9000 §17.2)."""
    result = QuicInitialReader().feed(initial(crypto(0, HELLO), reserved=0b10))
    assert isinstance(result, InitialError)
    assert "reserved bits" in result.reason


def test_crypto_in_too_many_pieces_is_an_error():
    """CRYPTO data in more separate runs than MAX_CRYPTO_PIECES ends the reader."""
    frames = b"".join(crypto(10 + 2 * i, b"x") for i in range(MAX_CRYPTO_PIECES + 1))
    result = QuicInitialReader().feed(initial(frames))
    assert result == InitialError(f"CRYPTO data in more than {MAX_CRYPTO_PIECES} pieces")


def test_max_crypto_is_configurable():
    """A smaller max_crypto refuses a hello that does not fit it."""
    result = QuicInitialReader(max_crypto=200).feed(initial(crypto(0, HELLO)))
    assert result == InitialError(f"CRYPTO data up to offset {len(HELLO)} exceeds the 200 bytes allowed")


def test_too_many_packets_without_a_hello_is_an_error():
    """A client that keeps sending packets without finishing its hello is cut off after max_packets."""
    reader = QuicInitialReader(max_packets=5)
    results = [reader.feed(initial(crypto(0, HELLO[:10]), pn=i)) for i in range(6)]
    assert all(isinstance(r, NeedMore) for r in results[:5])
    assert results[5] == InitialError("no whole ClientHello in 5 packets")


# --------------------------------------------------------------------------
# What the reader leaves alone
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0xFF00001D, 0x1A2A3A4A, 0x00000002], ids=["draft-29", "grease", "other"])
def test_unknown_version_is_left_alone(version):
    """A long header of a version other than v1 or v2 says which, without reading further."""
    packet = with_version(flight(1)[0], version)
    result = QuicInitialReader().feed(packet)
    assert result == UnknownVersion(version, peek_dcid(packet), packet[15 : 15 + packet[14]])


def test_version_negotiation_packet_is_recognised():
    """Version 0 is a Version Negotiation packet: its versions are listed, nothing more is read."""
    packet = b"\x80" + bytes(4) + b"\x04" + b"dcid" + b"\x02" + b"sc" + (1).to_bytes(4, "big")
    packet += VERSION_2.to_bytes(4, "big") + b"\x0a"  # a stray byte, not a whole version
    result = QuicInitialReader().feed(packet)
    assert result == VersionNegotiation(b"dcid", b"sc", (VERSION_1, VERSION_2))


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "an empty datagram"),
        (b"\x41" + bytes(40), "first byte 0x41: a short header or not QUIC"),
        (b"GET / HTTP/1.1\r\n", "first byte 0x47: a short header or not QUIC"),
        (b"\xc0\x00\x00\x00\x01\x08abc", "a truncated long header"),
    ],
)
def test_first_datagram_without_a_long_header_is_not_initial(datagram, reason):
    """A first datagram that cannot start a QUIC connection is NotInitial, with what it was."""
    assert QuicInitialReader().feed(datagram) == NotInitial(reason)


def test_later_datagrams_without_a_long_header_are_ignored():
    """After the first Initial, stray short-header or foreign datagrams are ignored, not final."""
    (a, first), (b, second) = split(HELLO, 2)
    reader = QuicInitialReader()
    reader.feed(initial(crypto(a, first)))
    assert reader.feed(b"\x41" + bytes(30)).ignored == (
        "datagram ignored: first byte 0x41: a short header or not QUIC",
    )
    assert reader.feed(with_version(initial(crypto(b, second), pn=1), 0x1A2A3A4A)).ignored == (
        "packet of version 0x1a2a3a4a ignored",
    )
    assert reader.feed(b"").ignored == ()
    assert isinstance(reader.feed(initial(crypto(b, second), pn=1)), QuicHello)


def test_final_results_are_sticky():
    """After a final result, later datagrams are not read and the same result returns."""
    reader = QuicInitialReader()
    done = reader.feed(vectors.V1_CLIENT_INITIAL)
    assert reader.feed(b"anything") is done
    reader = QuicInitialReader()
    refused = reader.feed(b"\x41")
    assert reader.feed(vectors.V1_CLIENT_INITIAL) is refused


def test_retry_packet_ends_the_datagram():
    """A Retry packet (no Length field) is ignored with the rest of its datagram."""
    reader = QuicInitialReader()
    reader.feed(initial(crypto(0, HELLO[:10])))
    retry = bytes((0xF0,)) + (1).to_bytes(4, "big") + b"\x08" + DCID + b"\x00" + b"token" + bytes(16)
    assert reader.feed(retry).ignored == ("Retry packet ignored",)


def test_connection_id_longer_than_twenty_bytes_is_dropped():
    """A v1 long header with a 21-byte connection ID is dropped (RFC 9000 §17.2)."""
    result = QuicInitialReader().feed(initial(crypto(0, HELLO), dcid=b"\x01" * 21))
    assert result.ignored == ("connection ID longer than 20 bytes: packet dropped",)


@pytest.mark.parametrize(
    "datagram, dcid",
    [
        (vectors.V1_CLIENT_INITIAL, vectors.DCID),
        (b"\xc0\x00\x00\x00\x01\x00", b""),
        (b"\xc0\x00\x00\x00\x01\x08abc", None),
        (b"\x41" + bytes(20), None),
        (b"", None),
    ],
)
def test_peek_dcid(datagram, dcid):
    """peek_dcid reads a long header's DCID without decrypting; a short or cut header gives None."""
    assert peek_dcid(datagram) == dcid


def test_internal_bug_still_gives_initial_error(monkeypatch):
    """Should a parse step ever raise something unexpected, the caller gets InitialError, not the exception."""

    def broken(self, payload):
        return payload[len(payload) + 1]  # IndexError

    monkeypatch.setattr(initial_module.QuicInitialReader, "_frames", broken)
    result = QuicInitialReader().feed(vectors.V1_CLIENT_INITIAL)
    assert isinstance(result, InitialError)
    assert result.reason.startswith("malformed Initial (IndexError")


# --------------------------------------------------------------------------
# Property tests: never an exception, whatever the input
# --------------------------------------------------------------------------

_fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_fuzz
@given(
    st.lists(st.binary(max_size=1400), min_size=1, max_size=4),
    st.sampled_from([b"", b"\xc0", b"\xc0\x00\x00\x00\x01"]),
)
def test_fuzz_random_datagrams(datagrams, prefix):
    """Random datagrams, QUIC-looking or not, give results and never raise, to a fresh or a started reader."""
    started = QuicInitialReader()
    started.feed(flight(2)[0])
    for reader in (QuicInitialReader(), started):
        for datagram in datagrams:
            assert_no_bug(reader.feed(prefix + datagram))


@_fuzz
@given(
    st.sampled_from([vectors.V1_CLIENT_INITIAL, vectors.V2_CLIENT_INITIAL]),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_mutated_rfc_packets(packet, mutations):
    """Overwriting bytes of a real Initial never raises; a changed protected byte is never read as valid."""
    data = bytearray(packet)
    for at, value in mutations:
        data[at % len(data)] = value
    result = QuicInitialReader().feed(bytes(data))
    assert_no_bug(result)
    if isinstance(result, QuicHello):
        # Only the unprotected header bytes that the AEAD does not cover may change unnoticed:
        # none do here, as the header is the AEAD's associated data.
        assert bytes(data) == packet


@_fuzz
@given(st.data())
def test_fuzz_random_frames_under_valid_protection(data):
    """Arbitrary frame bytes inside a correctly protected Initial give a result, never an exception."""
    frames = data.draw(st.binary(min_size=1, max_size=300))
    if data.draw(st.booleans()):
        frames = crypto(0, HELLO[: data.draw(st.integers(0, len(HELLO)))]) + frames
    assert_no_bug(QuicInitialReader().feed(initial(frames)))
