"""Micro-benchmark: the proxy's CPU per new intercepted TLS connection (lane d, on loopback).

Run with ``python bench/micro_handshake.py`` from the repository root.

Lane d of `bench/run` makes a new TLS connection per request: a full
handshake with the client, TLS to the server (resumed, as the proxy keeps the
server's session), one 1 KiB GET with ``Connection: close``, the close. This
script does the same through the real proxy (`tinspect.proxy.Proxy`, a
``forward=`` listener on 127.0.0.1, no taps, its log written to a file as
twistd writes it) on real loopback sockets: TLS needs a real transport
(``startTLS``), which the in-memory network of the other micro-benchmarks
does not have. The client and the server are a child process (Python's
``ssl``: the client verifies the proxy's leaf and asks for no session ticket,
as ``bench/peers.py tlsnew`` does; the server sends tickets and closes with a
close_notify, as nginx does), so their work is not counted: the figure is the
CPU time of the proxy's reactor thread (``RUSAGE_THREAD``, user and kernel) over a batch of
connections made one at a time, the best of several batches.

It prints microseconds of CPU per connection (and the part of it spent in
the kernel, in socket calls, which Python code changes do not touch) and the Python function calls
per connection (cProfile's count over one more batch: the same on every
machine and under any load); ``--top N`` prints the profile's N costliest
functions by their own time, ``--save FILE`` writes the profile for pstats.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NAME = "server.test"
BODY = b"x" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: 1024\r\nConnection: close\r\n\r\n" + BODY)
REQUEST = f"GET /1k HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()


# -- the child: server and client ------------------------------------------------------------


def _serve(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    """The origin: one connection at a time, 1 KiB answer, close_notify, close."""
    while True:
        raw, _ = listener.accept()
        try:
            with ctx.wrap_socket(raw, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                tls.sendall(RESPONSE)
                tls.settimeout(5)
                try:
                    tls.unwrap()
                except (OSError, ssl.SSLError):
                    pass
        except (OSError, ssl.SSLError) as e:
            print(f"server: {e}", file=sys.stderr, flush=True)


def _one(port: int, ctx: ssl.SSLContext) -> None:
    """One client connection: full handshake, GET, the whole answer, the proxy's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=NAME) as tls:
            if tls.selected_alpn_protocol() != "http/1.1":
                raise SystemExit(f"ALPN {tls.selected_alpn_protocol()!r}")
            tls.sendall(REQUEST)
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            if not data.startswith(b"HTTP/1.1 200") or not data.endswith(BODY):
                raise SystemExit(f"bad answer through the proxy: {data[:200]!r}")


def peer(args: argparse.Namespace) -> None:
    """The child: serve on fd 3, and on each ``go N`` line make N connections, then say ``done``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(args.cert, args.key)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    listener = socket.socket(fileno=3)
    threading.Thread(target=_serve, args=(listener, server_ctx), daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=args.ca)
    client_ctx.options |= ssl.OP_NO_TICKET  # every client handshake a full one
    client_ctx.set_alpn_protocols(["http/1.1"])
    for line in sys.stdin:
        count = int(line.split()[1])
        for _ in range(count):
            _one(args.port, client_ctx)
        time.sleep(0.2)  # the proxy finishes the last close before the batch is over
        print("done", flush=True)


# -- the parent: the proxy ---------------------------------------------------------------------


def proxy(args: argparse.Namespace) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import ProcessProtocol
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from tinspect.context import Settings
    from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates
    from tinspect.proxy import Proxy

    tmp = Path(tempfile.mkdtemp(prefix="micro_handshake."))
    ours = CertificateAuthority.generate(tmp / "proxy")
    theirs = CertificateAuthority.generate(tmp / "server")
    leaves = LeafCertificates(theirs)
    leaf, key = leaves.get_cryptography(NAME)
    from cryptography.hazmat.primitives import serialization

    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + theirs.cert_pem)
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    origin = socket.socket()
    origin.bind(("127.0.0.1", 0))
    origin.listen(64)
    settings = Settings(ca_cert=str(ours.cert_path), ca_key=str(ours.key_path), upstream_ca=str(theirs.cert_path))
    proxy = Proxy(settings=settings, reactor=reactor)
    proxy.listen(f"forward=127.0.0.1:{origin.getsockname()[1]}@tcp:0:interface=127.0.0.1")
    log = open(tmp / "proxy.log", "w")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(log)], redirectStandardIO=False)
    proxy.privilegedStartService()
    proxy.startService()
    port = proxy.ports[0].getHost().port

    batches = [args.warmup] + [args.connections] * (args.repeat + 1)  # the last one profiled
    spent: list[float] = []
    profile = cProfile.Profile()

    class Child(ProcessProtocol):
        started = (0.0, 0.0)

        def connectionMade(self) -> None:
            self.next()

        def next(self) -> None:
            if len(spent) == len(batches):
                self.transport.closeStdin()
                return
            if len(spent) == len(batches) - 1:
                profile.enable()
            self.started = _cpu()
            self.transport.write(f"go {batches[len(spent)]}\n".encode())

        def outReceived(self, data: bytes) -> None:
            for _ in data.split():
                now = _cpu()
                spent.append((now[0] - self.started[0], now[1] - self.started[1]))
                if len(spent) == len(batches):
                    profile.disable()
                self.next()

        def errReceived(self, data: bytes) -> None:
            sys.stderr.write(data.decode(errors="replace"))

        def processEnded(self, reason) -> None:
            self.code = reason.value.exitCode
            reactor.stop()

    child = Child()
    argv = [sys.executable, __file__, "--peer", "--port", str(port), "--ca", str(ours.cert_path),
            "--cert", str(tmp / "leaf.pem"), "--key", str(tmp / "key.pem")]
    reactor.spawnProcess(child, sys.executable, argv, env=os.environ,
                         childFDs={0: "w", 1: "r", 2: "r", 3: origin.fileno()})
    reactor.run()
    log.close()
    origin.close()
    if child.code != 0 or len(spent) != len(batches):
        raise SystemExit(f"the client/server process failed (exit {child.code}); log in {tmp / 'proxy.log'}")
    n = args.connections
    stats = pstats.Stats(profile)
    print(f"{n} new intercepted TLS connections per batch (TLS 1.3 with the client, resumed upstream), "
          f"best of {args.repeat}")
    user, system = min(spent[1:-1], key=sum)
    print(f"  proxy CPU per connection: {(user + system) / n * 1e6:.1f} us")
    print(f"  of which in the kernel (socket calls): {system / n * 1e6:.1f} us")
    print(f"  Python calls per connection: {stats.total_calls / n:.1f} calls")
    if args.save:
        profile.dump_stats(args.save)
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)
    shutil.rmtree(tmp)


def _cpu() -> tuple[float, float]:
    """User and system CPU seconds of the calling thread (the reactor's)."""
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=300, help="connections per batch")
    parser.add_argument("--repeat", type=int, default=3, help="timed batches (the best counts)")
    parser.add_argument("--warmup", type=int, default=30, help="connections before the timed batches")
    parser.add_argument("--top", type=int, default=0, help="print the profile's N costliest functions")
    parser.add_argument("--save", metavar="FILE", help="write the profile there (pstats' format)")
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (peer if args.peer else proxy)(args)


if __name__ == "__main__":
    main()
