"""Real QUIC peers for bench/run's lane q and the end-to-end tests, built on aioquic's asyncio API.

One copy for both: the benchmark does not depend on the test tree, and the tests
run it as ``python -m bench.h3peers`` (tests/e2e/test_e2e_quic.py).

``python -m bench.h3peers COMMAND ...`` in a lab namespace:

* ``serve PORT CHAIN KEY``: an HTTP/3 server on UDP ``PORT`` (IPv4 and
  IPv6), QUIC v1 and v2, answering ``/bytes/N`` with N zero bytes and every
  other request with ``hello h3 <path>``; prints ``ready`` once bound.
* ``get HOST PORT NAME PATH CA [--version 2] [--big]``: one HTTP/3 GET for
  ``https://NAME/PATH`` sent to ``HOST``, trusting only ``CA``; prints the
  status, the body, and the issuer of the certificate the server showed.
  ``--big`` makes the ClientHello span three datagrams (a 1200-byte
  transport parameter and 100 more ALPN names, as in tests/layers/quic).
* ``download HOST PORT NAME SIZE CA``: one HTTP/3 GET of ``/bytes/SIZE``
  (the server sends SIZE zero bytes), counted, not kept; prints a JSON line
  ``{"ok", "bytes", "seconds"}`` (bench/run's lane q).
* ``garbage HOST PORT``: datagrams no server can use: random bytes, a
  truncated Initial, a long header of an unknown version, a short header.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import time

from aioquic.asyncio import connect, serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ProtocolNegotiated
from aioquic.quic.packet import QuicProtocolVersion


class _Server(QuicConnectionProtocol):
    """One HTTP/3 connection of the server: ``hello h3 <path>`` for every request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._http: H3Connection | None = None

    def quic_event_received(self, event) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._http = H3Connection(self._quic)
        if self._http is None:
            return
        for ev in self._http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                path = dict(ev.headers).get(b":path", b"/")
                size = path.removeprefix(b"/bytes/")
                body = bytes(int(size)) if size.isdigit() else b"hello h3 " + path + b"\n"
                self._http.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain"),
                                                       (b"content-length", str(len(body)).encode())])
                self._http.send_data(ev.stream_id, body, end_stream=True)
        self.transmit()


class _Client(QuicConnectionProtocol):
    """An HTTP/3 client connection that makes one request."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._done: asyncio.Future | None = None
        self.status = b""
        self.body = b""
        self.keep = True  # False: count the body's bytes only
        self.received = 0

    def quic_event_received(self, event) -> None:
        for ev in self._http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.status = dict(ev.headers).get(b":status", b"")
            elif isinstance(ev, DataReceived):
                self.received += len(ev.data)
                if self.keep:
                    self.body += ev.data
            if getattr(ev, "stream_ended", False) and self._done is not None and not self._done.done():
                self._done.set_result(None)

    async def get(self, authority: str, path: str, timeout: float = 10) -> None:
        stream = self._quic.get_next_available_stream_id()
        self._http.send_headers(stream, [(b":method", b"GET"), (b":scheme", b"https"),
                                         (b":authority", authority.encode()), (b":path", path.encode())],
                                end_stream=True)
        self._done = asyncio.get_running_loop().create_future()
        self.transmit()
        await asyncio.wait_for(self._done, timeout)


async def _serve(port: int, chain: str, key: str) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN,
                               supported_versions=[QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
    config.load_cert_chain(chain, key)
    await serve("::", port, configuration=config, create_protocol=_Server)  # dual-stack socket
    print("ready", flush=True)
    await asyncio.Future()


def _client_config(args: argparse.Namespace) -> QuicConfiguration:
    version = QuicProtocolVersion.VERSION_2 if getattr(args, "version", 1) == 2 else QuicProtocolVersion.VERSION_1
    big = getattr(args, "big", False)
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"] + [f"proto-{i:04d}" for i in
                                                                        range(100 if big else 0)],
                               server_name=args.name, supported_versions=[version],
                               quantum_readiness_test=big, verify_mode=ssl.CERT_REQUIRED,
                               idle_timeout=5.0)  # a refused connection: give up after 5 s of silence
    config.load_verify_locations(args.ca)
    return config


async def _download(args: argparse.Namespace) -> None:
    started = time.monotonic()
    try:
        async with connect(args.host, args.port, configuration=_client_config(args), create_protocol=_Client,
                           wait_connected=True) as client:
            client.keep = False
            await client.get(args.name, f"/bytes/{args.size}", timeout=600)
            seconds = time.monotonic() - started
    except Exception as e:
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    ok = client.status == b"200" and client.received == args.size
    print(json.dumps({"ok": ok, "bytes": client.received, "seconds": seconds,
                      "error": f"status {client.status!r}, {client.received} of {args.size} bytes"}), flush=True)


async def _get(args: argparse.Namespace) -> None:
    config = _client_config(args)
    async with connect(args.host, args.port, configuration=config, create_protocol=_Client,
                       wait_connected=True) as client:
        await client.get(args.name, args.path)
        peer = client._quic.tls._peer_certificate  # test code: which certificate the server showed
        issuer = peer.issuer.rfc4514_string() if peer is not None else "none"
        print(client.status.decode(), client.body.decode().strip(), f"issuer={issuer}", flush=True)


def _garbage(host: str, port: int) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="garbage.test")
    connection = QuicConnection(configuration=config)
    connection.connect((host, port), now=0.0)
    initial = connection.datagrams_to_send(now=0.0)[0][0]
    unknown = bytes([0xC0]) + bytes.fromhex("1a2a3a4a") + initial[5:]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for payload in (os.urandom(1200), initial[:100], unknown, b"\x40" + os.urandom(60)):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:  # a new port: each is a connection's start
            sock.sendto(payload, (host, port))
    print("sent 4", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.h3peers")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("port", type=int)
    s.add_argument("chain")
    s.add_argument("key")
    g = sub.add_parser("get")
    for name in ("host", "port", "name", "path", "ca"):
        g.add_argument(name, type=int if name == "port" else str)
    g.add_argument("--version", type=int, default=1)
    g.add_argument("--big", action="store_true")
    d = sub.add_parser("download")
    for name in ("host", "port", "name", "size", "ca"):
        d.add_argument(name, type=int if name in ("port", "size") else str)
    b = sub.add_parser("garbage")
    b.add_argument("host")
    b.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.port, args.chain, args.key))
    elif args.command == "get":
        asyncio.run(_get(args))
    elif args.command == "download":
        asyncio.run(_download(args))
    else:
        _garbage(args.host, args.port)


if __name__ == "__main__":
    main(sys.argv[1:])
