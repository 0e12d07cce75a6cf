"""Micro-benchmark: microseconds per QUIC connection to read its ClientHello from its Initials.

Run from the repository root::

    python bench/micro_quic.py

A fresh :class:`QuicInitialReader` per connection (as the proxy makes one)
is fed a client's first flight until it returns the ClientHello: the whole
cost of a connection, key derivation from the DCID included.  The flights
are aioquic's (one datagram, and a hello big enough for three datagrams,
as post-quantum key shares make Chromium's), when aioquic is installed (it
is in the ``test`` extra); the RFC 9001 and RFC 9369 one-packet vectors
always.  Also timed: deriving the Initial keys alone, and ``peek_dcid``.
Each figure is the best of five runs.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.layers.quic import vectors  # noqa: E402
from tinspect.layers.quic.initial import (  # noqa: E402
    InitialResult,
    QuicHello,
    QuicInitialReader,
    client_initial_keys,
    peek_dcid,
)


def aioquic_flight(extra_alpn: int = 0, big_parameters: bool = False) -> list[bytes] | None:
    """The first datagrams of an aioquic client for ``server.test`` (``h3``), or None without aioquic.

    ``big_parameters`` adds aioquic's 1200-byte test transport parameter,
    which stands in for a post-quantum key share; ``extra_alpn`` more ALPN
    names grow the hello further.
    """
    try:
        from aioquic.quic.configuration import QuicConfiguration
        from aioquic.quic.connection import QuicConnection
    except ImportError:
        return None
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"] + [f"proto-{i:04d}" for i in range(extra_alpn)],
        server_name="server.test",
        quantum_readiness_test=big_parameters,
    )
    connection = QuicConnection(configuration=config)
    connection.connect(("192.0.2.1", 443), now=0.0)
    return [datagram for datagram, _ in connection.datagrams_to_send(now=0.0)]


def read_connection(datagrams: list[bytes]) -> InitialResult:
    """What the proxy does per connection: a new reader, fed until the hello is whole."""
    reader = QuicInitialReader()
    for datagram in datagrams:
        result = reader.feed(datagram)
    return result


def per_call_us(stmt, number: int = 5000) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    """Print microseconds per connection for one- and three-packet ClientHellos."""
    flights = [
        ("RFC 9001 v1 vector, 1 packet", [vectors.V1_CLIENT_INITIAL]),
        ("RFC 9369 v2 vector, 1 packet", [vectors.V2_CLIENT_INITIAL]),
    ]
    one, three = aioquic_flight(), aioquic_flight(extra_alpn=100, big_parameters=True)
    if one is not None:
        assert len(one) == 1 and len(three) == 3
        flights += [("aioquic hello, 1 packet", one), ("aioquic hello, 3 packets", three)]
    else:
        print("aioquic not installed: the RFC vectors only")
    print(f"python {sys.version.split()[0]}; microseconds per connection (a new reader, fed until the hello)")
    for label, datagrams in flights:
        result = read_connection(datagrams)
        assert isinstance(result, QuicHello), result
        label = f"{label} ({len(result.hello.raw)} B hello)"
        print(f"{label:48s} {per_call_us(lambda d=datagrams: read_connection(d)):7.2f} us")
    print(f"{'Initial keys from a DCID alone':48s} {per_call_us(lambda: client_initial_keys(vectors.DCID)):7.2f} us")
    packet = vectors.V1_CLIENT_INITIAL
    print(f"{'peek_dcid':48s} {per_call_us(lambda: peek_dcid(packet), number=200000):7.2f} us")


if __name__ == "__main__":
    main()
