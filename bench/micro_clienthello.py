"""Micro-benchmark: microseconds per ClientHello parse.

Run from the repository root::

    python bench/micro_clienthello.py

It parses real ClientHellos produced by Python's ``ssl`` module (TLS 1.3 and
TLS 1.2-only) fed in one piece, and the TLS 1.3 one fed in two pieces and
fragmented over two records, and prints the best-of-5 time per parse.  The
reader is created inside the timed statement because the proxy creates one
per connection.
"""

from __future__ import annotations

import ssl
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinspect.layers.tls.clienthello import ClientHelloReader  # noqa: E402


def make_hello(maximum_version: ssl.TLSVersion | None = None) -> bytes:
    """Return a real ClientHello (SNI example.test, ALPN h2 + http/1.1).

    Args:
        maximum_version: Cap the client's TLS version, e.g. to get a TLS
            1.2-only hello without the supported_versions extension.

    Returns:
        The client's first flight, one TLS record.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if maximum_version is not None:
        ctx.maximum_version = maximum_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="example.test")
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def two_records(hello: bytes, first: int = 100) -> bytes:
    """Re-record a single-record hello as two handshake records."""
    hs = hello[5:]
    head, tail = hs[:first], hs[first:]
    return (
        b"\x16\x03\x01" + len(head).to_bytes(2, "big") + head
        + b"\x16\x03\x01" + len(tail).to_bytes(2, "big") + tail
    )


def per_parse_us(stmt, number: int = 20000) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main() -> None:
    """Print microseconds per parse for a few hello shapes."""
    tls13 = make_hello()
    tls12 = make_hello(ssl.TLSVersion.TLSv1_2)
    split = two_records(tls13)
    half = len(tls13) // 2
    assert ClientHelloReader().feed(tls13).sni == "example.test"

    def two_feeds():
        reader = ClientHelloReader()
        reader.feed(tls13[:half])
        return reader.feed(tls13[half:])

    cases = [
        (f"TLS 1.3 hello ({len(tls13)} B), one feed", lambda: ClientHelloReader().feed(tls13)),
        (f"TLS 1.2 hello ({len(tls12)} B), one feed", lambda: ClientHelloReader().feed(tls12)),
        ("TLS 1.3 hello, two feeds", two_feeds),
        ("TLS 1.3 hello, two records", lambda: ClientHelloReader().feed(split)),
    ]
    print(f"python {sys.version.split()[0]}")
    for label, fn in cases:
        print(f"{label:40s} {per_parse_us(fn):6.2f} us/parse")


if __name__ == "__main__":
    main()
