"""Micro-benchmark: the memory OpenSSL keeps for one intercepted HTTPS connection.

Run from the repository root::

    python bench/micro_tls_memory.py                 # 2,000 connections
    python bench/micro_tls_memory.py --connections 500 --tls12

An intercepted HTTPS connection holds two OpenSSL connections in the proxy: the
client-facing one (our minted leaf, `ClientFacingTLS`) and the upstream one
(`UpstreamTLS`, verifying). This builds both with the proxy's own contexts, on
memory BIOs, for N connections: a client stands in for the browser, a second
`ClientFacingTLS` with another CA for the server. Each pair completes its
handshake (TLS 1.3, or 1.2 with ``--tls12``) and carries a 1 KiB request and a
1 KiB answer, as one keep-alive exchange does; then the stand-ins are freed and
only the proxy's two connections per intercepted connection are kept. It
reports the heap those hold per intercepted connection (glibc's ``mallinfo2``:
bytes in use, OpenSSL's and the Python wrappers' (CPython's arenas are mmapped
blocks), so fragmentation does not count) and the RSS it added; then the heap
two connections take before any handshake (the bare ``SSL_new``). No Python
proxy code runs here: this is the floor under `bench/run`'s lane h-https.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from OpenSSL import SSL  # noqa: E402

from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates  # noqa: E402
from tinspect.layers.tls.handshake import ClientFacingTLS, UpstreamTLS  # noqa: E402

NAME = "server.test"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(field, ctypes.c_size_t) for field in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2


def heap_in_use() -> int:
    """Bytes of C heap in use (small blocks and mmapped ones)."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pump(a: SSL.Connection, b: SSL.Connection) -> None:
    """Move records both ways until neither side has anything to say."""
    for _ in range(20):
        moved = False
        for src, dst in ((a, b), (b, a)):
            try:
                src.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                data = src.bio_read(1 << 20)
            except SSL.WantReadError:
                continue
            dst.bio_write(data)
            moved = True
        if not moved:
            return


def exchange(client: SSL.Connection, server: SSL.Connection) -> None:
    """A 1 KiB request and a 1 KiB answer (and whatever tickets come with it)."""
    for sender, receiver, size in ((client, server, 1024), (server, client, 1024)):
        sender.send(b"x" * size)
        pump(sender, receiver)
        assert len(receiver.recv(1 << 16)) == size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--tls12", action="store_true", help="TLS 1.2 on both legs (default: 1.3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proxy_ca = CertificateAuthority.generate(Path(tmp) / "proxy")
        server_ca = CertificateAuthority.generate(Path(tmp) / "server")
        facing = ClientFacingTLS(LeafCertificates(proxy_ca))
        server = ClientFacingTLS(LeafCertificates(server_ca))
        upstream = UpstreamTLS(server_ca.cert_path, session_cache_size=0)  # every handshake a full one
        browser = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if args.tls12:
            for ctx in (browser, upstream.context):
                ctx.set_max_proto_version(SSL.TLS1_2_VERSION)

        def intercepted() -> tuple[SSL.Connection, SSL.Connection]:
            client = SSL.Connection(browser, None)
            client.set_tlsext_host_name(NAME.encode())
            client.set_connect_state()
            ours_facing = facing.creator(NAME).new_connection()
            ours_up = upstream.creator(NAME, ip="198.51.100.2", port=443).new_connection()
            origin = server.creator(NAME).new_connection()
            pump(ours_up, origin)
            pump(client, ours_facing)
            exchange(client, ours_facing)
            exchange(ours_up, origin)
            if ours_up.get_peer_certificate() is None:
                raise RuntimeError("upstream handshake did not complete")
            return ours_facing, ours_up

        kept = [intercepted() for _ in range(50)]  # leaves minted, contexts cached
        gc.collect()
        n = args.connections
        base_heap, base_rss = heap_in_use(), rss_kib()
        kept += [intercepted() for _ in range(n)]
        gc.collect()
        heap = (heap_in_use() - base_heap) / n / 1024
        rss = (rss_kib() - base_rss) / n
        base_heap = heap_in_use()
        fresh = [(facing.creator(NAME).new_connection(), upstream.creator(NAME).new_connection()) for _ in range(n)]
        fresh_heap = (heap_in_use() - base_heap) / n / 1024
        del fresh
    version = "TLS 1.2" if args.tls12 else "TLS 1.3"
    print(f"{n:,} intercepted connections ({version}), the proxy's two OpenSSL connections each")
    print(f"  before the handshakes (two SSL_new): {fresh_heap:.1f} KiB")
    print(f"  after one exchange, heap in use: {heap:.1f} KiB")
    print(f"  after one exchange, RSS added: {rss:.1f} KiB")


if __name__ == "__main__":
    main()
