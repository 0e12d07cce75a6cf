"""Load generators and servers that ``bench/run`` starts inside the lab namespaces.

Every client checks what it got and prints one JSON object on stdout::

    {"ok": true, "ops": N, "seconds": S, "bytes": B, "lat_us": [p50, p99, p99.9], ...}

or ``{"ok": false, "error": "..."}`` (exit status 1) at the first wrong answer,
so a wrong answer is never mistaken for a measurement.

Subcommands (``python3 bench/peers.py SUBCOMMAND --help``):

* ``wsserver PORT [--tls CHAIN KEY]``: a WebSocket echo server (the
  ``websockets`` library, asyncio, permessage-deflate off so the benchmark
  measures the proxy, not zlib).  Echoes every message as it came.
* ``tlsnew``: a new TLS connection per request.  ``--concurrency`` threads
  each loop: TCP connect, full TLS handshake (no session resumption,
  certificate verified against ``--ca`` for ``--name``), ``GET PATH`` with
  ``Connection: close``, read the response by its ``Content-Length``, check
  the status, the length, the body size and the ALPN protocol
  (``http/1.1``), then close (``--strict-close``: wait for the server's
  close first, and fail when it does not come within ``--close-timeout``;
  without it one extra connection after the timed window checks the close
  and reports ``close_problem``).
* ``ws``: WebSocket echo round trips: ``--connections`` connections each
  send a binary message of ``--size`` bytes, wait for the echo and compare
  it byte for byte (each message carries a sequence number, so a stale or
  reordered echo is caught), for ``--seconds`` counted from when every
  connection is open; then each closes (code 1000 expected back). A TCP
  close that does not follow the closing handshake within
  ``--close-timeout`` is reported as ``close_problem`` (a failure with
  ``--strict-close``).
* ``many SCHEME``: many connections at once, held idle (http, https, ws
  or wss). Opens ``--connections`` connections, at most ``--handshakes``
  being set up at a time, each making one exchange (``GET --path`` on a
  keep-alive HTTP/1.1 connection, its status and body size checked, ALPN
  http/1.1 over TLS; or one WebSocket message of ``--size`` bytes and its
  echo), and keeps them all open; WebSocket connections ping every
  ``--ping-interval`` seconds (a pong missing for ``--ping-timeout`` closes
  one, as the ``websockets`` library does). With every connection open,
  idle for ``--hold`` seconds and, with ``--wait``, once a line has come on
  standard input after the ``{"phase": "open", ...}`` line it prints, each
  connection makes a second exchange; then all close. Reports the time
  to open them all, the per-connection open latency (connect, handshakes,
  first exchange) and how many answered the second time (``ok`` only when
  all opened and all answered; the figures are there either way, with the
  commonest errors). Raises its own limit on open files to fit.
* ``bulkserver PORT FILE SIZE``: sends SIZE bytes of FILE (the sparse, zero
  filled download file) with sendfile to each client as soon as it
  connects, then closes: a server that speaks first, fast enough that the
  proxy, not the source, is what a tunnel measurement measures (socat with
  ``head -c N /dev/zero`` tops out near 170 MB/s here).
* ``tcpread``: connect, read to EOF, check the byte count and that every
  byte is zero.
* ``bare-relay PORT [--tls CHAIN KEY --upstream-ca CA --name NAME]``: the
  reference ``bench/run --proxy bare`` measures tinspect's costs against: a
  TPROXY listener that connects to each connection's original destination
  and copies bytes both ways with Twisted (TCP_NODELAY, a push producer each
  way for back-pressure), and nothing else: no parsing, no taps, no limits,
  no half-close (a close of either side closes both). With ``--tls``,
  connections to ``--tls-ports`` (default 443) are TLS on both legs, the
  way a MITM proxy terminates them and nothing more: the client gets CHAIN
  (a certificate for NAME), ALPN h2 if the client offers it, else
  http/1.1; once the client's first bytes arrive (so only for protocols
  where the client speaks first, as in every lane) the relay connects with
  TLS to the original destination, verifying NAME against CA and offering
  the protocol agreed with the client, and copies the decrypted bytes (no
  session resumption, so it is no reference for new-connection lanes).
  What Python, Twisted and pyOpenSSL cost on this machine for moving the
  bytes alone, before tinspect does any work. It raises its soft limit on
  open files to the hard one, as tinspect does (two per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import sys
import threading
import time


def checked_length(head: bytes, expect: int) -> int:
    """The Content-Length of a response head that must be a 200 with an ``expect``-byte body.

    Raises:
        ValueError: another status, or another length.
    """
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"200":
        raise ValueError(f"status line {lines[0][:80]!r}")
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length != expect:
        raise ValueError(f"Content-Length {length}, expected {expect}")
    return length


def _percentiles(samples: list[float]) -> list[float] | None:
    """p50, p99 and p99.9 of ``samples`` (nearest rank), or None when empty."""
    if not samples:
        return None
    s = sorted(samples)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

    return [rank(50), rank(99), rank(99.9)]


def _emit(result: dict) -> int:
    print(json.dumps(result), flush=True)
    return 0 if result.get("ok") else 1


def _client_context(ca: str | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


# --- WebSocket echo server -------------------------------------------------------------


async def _ws_server(port: int, tls: list[str] | None) -> None:
    from websockets.asyncio.server import serve

    async def echo(ws):
        try:
            async for message in ws:
                await ws.send(message)
        except Exception:  # noqa: BLE001 - a client going away mid-message is not our concern
            pass

    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
    async with serve(echo, None, port, ssl=context, compression=None, max_size=None, ping_interval=None):
        await asyncio.get_running_loop().create_future()


# --- new TLS connection per request ----------------------------------------------------


class CloseProblem(Exception):
    """The peer did not close the connection when it should have."""


def cmd_tlsnew(args: argparse.Namespace) -> int:
    ctx = _client_context(args.ca, ["http/1.1"])
    # A fresh connection never offers a session: every handshake is a full one.
    ctx.options |= ssl.OP_NO_TICKET
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.name}\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + args.seconds
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    counted = [0, 0]  # requests, bytes

    def one(wait_eof: bool = args.strict_close) -> tuple[float, int]:
        t0 = time.perf_counter()
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=args.name) as tls:
                alpn = tls.selected_alpn_protocol()
                if alpn != "http/1.1":
                    raise ValueError(f"ALPN {alpn!r}, expected 'http/1.1'")
                tls.sendall(request)
                response = b""
                while b"\r\n\r\n" not in response:
                    data = tls.recv(65536)
                    if not data:
                        raise ValueError(f"connection closed after {len(response)} bytes, before the response head")
                    response += data
                head, _, body = response.partition(b"\r\n\r\n")
                length = checked_length(head, args.expect)
                while len(body) < length:
                    data = tls.recv(65536)
                    if not data:
                        break
                    body += data
                if len(body) != args.expect:
                    raise ValueError(f"body of {len(body)} bytes, expected {args.expect}")
                elapsed = time.perf_counter() - t0
                if wait_eof:
                    # The server (or the proxy) should close after "Connection: close".
                    tls.settimeout(args.close_timeout)
                    try:
                        if tls.recv(65536):
                            raise ValueError("bytes after the response body")
                    except TimeoutError:
                        raise CloseProblem(f"the connection was not closed within {args.close_timeout:g} s "
                                           f"of a complete response to a request with 'Connection: close'") from None
        return elapsed, len(body)

    def worker() -> None:
        mine: list[float] = []
        n = nbytes = 0
        try:
            while time.monotonic() < deadline:
                elapsed, size = one()
                mine.append(elapsed * 1e6)
                n += 1
                nbytes += size
        except Exception as e:  # noqa: BLE001 - reported as the run's failure (CloseProblem too)
            with lock:
                errors.append(f"{type(e).__name__}: {e}")
        with lock:
            latencies.extend(mine)
            counted[0] += n
            counted[1] += nbytes

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    if errors:
        return _emit({"ok": False, "error": f"{len(errors)} of {args.concurrency} loops failed; first: {errors[0]}",
                      "ops": counted[0]})
    if counted[0] == 0:
        return _emit({"ok": False, "error": "no request completed"})
    result = {"ok": True, "ops": counted[0], "seconds": seconds, "bytes": counted[1],
              "lat_us": _percentiles(latencies), "alpn": "http/1.1"}
    if not args.strict_close:
        # One more connection, after the timed window, to see whether the server closes.
        try:
            one(wait_eof=True)
        except CloseProblem as e:
            result["close_problem"] = str(e)
        except Exception as e:  # noqa: BLE001
            return _emit({"ok": False, "error": f"close probe: {type(e).__name__}: {e}"})
    return _emit(result)


# --- WebSocket echo round trips --------------------------------------------------------


async def _ws_client(args: argparse.Namespace) -> dict:
    from websockets.asyncio.client import connect

    secure = args.url.startswith("wss:")
    ctx = _client_context(args.ca) if secure else None
    base = os.urandom(args.size)
    latencies: list[float] = []
    counts = [0]
    closes: list[float] = []
    opened = [0]
    go = asyncio.Event()
    window = {"deadline": 0.0}

    # Theory of operation: every connection is opened first and the clock
    # starts when the last one is up, so the figure is echo round trips only
    # (lane d measures connection setup); the closing handshake is timed
    # separately, after the window.
    async def loop(index: int) -> None:
        kwargs = {"host": args.host, "port": args.port, "compression": None, "max_size": None,
                  "ping_interval": None, "proxy": None, "open_timeout": args.timeout,
                  "close_timeout": args.close_timeout}
        if secure:
            kwargs["ssl"] = ctx
        try:
            ws = await connect(args.url, **kwargs)
        except BaseException:
            go.set()
            raise
        try:
            if ws.protocol.extensions:
                raise ValueError(f"extensions negotiated: {[e.name for e in ws.protocol.extensions]}")
            opened[0] += 1
            if opened[0] == args.connections:
                window["deadline"] = time.monotonic() + args.seconds
                window["start"] = time.monotonic()
                go.set()
            await go.wait()
            seq = 0
            while time.monotonic() < window["deadline"]:
                tag = f"{index}:{seq}:".encode()
                message = (tag + base)[: args.size] if args.size > len(tag) else base
                t0 = time.perf_counter()
                await ws.send(message)
                echo = await asyncio.wait_for(ws.recv(), args.timeout)
                latencies.append((time.perf_counter() - t0) * 1e6)
                if echo != message:
                    got = len(echo) if isinstance(echo, (bytes, str)) else type(echo).__name__
                    raise ValueError(f"echo differs from what was sent (sent {len(message)} bytes, got {got})")
                seq += 1
                counts[0] += 1
            window["end"] = max(window.get("end", 0.0), time.monotonic())
        finally:
            go.set()  # a failed connection must not leave the others waiting
            t0 = time.monotonic()
            await ws.close()
            closes.append(time.monotonic() - t0)
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
        if code != 1000:
            raise ValueError(f"closing handshake: the server's close code is {code}, expected 1000")

    results = await asyncio.gather(*(loop(i) for i in range(args.connections)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        first = failures[0]
        return {"ok": False, "error": f"{len(failures)} of {args.connections} connections failed; first: "
                                      f"{type(first).__name__}: {first}", "ops": counts[0]}
    if counts[0] == 0:
        return {"ok": False, "error": "no round trip completed"}
    slow = max(closes)
    result = {"ok": True, "ops": counts[0], "seconds": window["end"] - window["start"],
              "bytes": counts[0] * args.size, "lat_us": _percentiles(latencies), "close_s": slow}
    if slow >= args.close_timeout * 0.95:
        result["close_problem"] = (f"the TCP connection was not closed within {args.close_timeout:g} s "
                                   f"of the closing handshake (the client aborted it)")
        if args.strict_close:
            return {"ok": False, "error": result["close_problem"], "ops": counts[0]}
    return result


def cmd_ws(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_ws_client(args))
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return _emit(result)


# --- many idle connections at once -----------------------------------------------------


def raise_open_files(wanted: int) -> None:
    """Raise this process's limit on open files towards ``wanted`` (for the connections it holds, or that
    the processes it starts inherit): the hard limit too when it is lower and we may, as root with
    CAP_SYS_RESOURCE; without it (some containers), the soft limit goes as far as the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, PermissionError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection of `many`: one GET at a time, its response read whole."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes,
                 expect: int) -> None:
        self.reader, self.writer, self.request, self.expect = reader, writer, request, expect

    async def exchange(self) -> None:
        """Send the GET and check the response: status 200 and a body of ``expect`` bytes, by its
        Content-Length (the connection stays usable for the next one)."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        await self.reader.readexactly(checked_length(head, self.expect))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except Exception:  # noqa: BLE001 - closing is not measured; a peer gone first is fine
            pass


class _WsConnection:
    """One WebSocket connection of `many`: each exchange sends a message and checks its echo."""

    def __init__(self, ws, index: int, size: int) -> None:
        self.ws, self.index, self.size, self.seq = ws, index, size, 0

    async def exchange(self) -> None:
        message = f"{self.index}:{self.seq}:".encode().ljust(self.size, b".")
        self.seq += 1
        await self.ws.send(message)
        echo = await self.ws.recv()
        if echo != message:
            raise ValueError(f"echo differs from what was sent (sent {len(message)} bytes, got {len(echo)})")

    async def close(self) -> None:
        try:
            await self.ws.close()
        except Exception:  # noqa: BLE001 - closing is not measured
            pass


async def _many_client(args: argparse.Namespace) -> dict:
    # Theory of operation: open --connections connections with at most
    # --handshakes of them being set up at a time (TCP, TLS, the WebSocket
    # upgrade, then one exchange each: the proxy sees clients arriving, not
    # one burst of SYNs), hold them all, then ask every one for a second
    # exchange and count those that answer. With --wait the client stops
    # between the two, after printing a line of JSON (the phase "open"), and
    # goes on when a line arrives on standard input: bench/run reads the
    # proxy's memory in that pause, with every connection open and idle.
    raise_open_files(args.connections + 256)
    secure = args.scheme in ("https", "wss")
    ctx = _client_context(args.ca, ["http/1.1"] if args.scheme == "https" else None) if secure else None
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.name}\r\n\r\n".encode()
    gate = asyncio.Semaphore(args.handshakes)
    conns: list = []
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def failed(stage: str, e: BaseException) -> None:
        key = f"{stage}: {type(e).__name__}" + (f": {e}"[:200] if str(e) else "")
        errors[key] = errors.get(key, 0) + 1

    async def connect(index: int, stage: list[str]):
        """A connection, up to its first exchange; ``stage`` says how far it got, for the error."""
        if args.scheme in ("ws", "wss"):
            stage[0] = "WebSocket connection"
            from websockets.asyncio.client import connect as ws_connect

            ws = await ws_connect(f"{args.scheme}://{args.name}:{args.port}{args.path}", host=args.host,
                                  port=args.port, compression=None, max_size=None, proxy=None,
                                  ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
                                  open_timeout=None, close_timeout=args.close_timeout,
                                  **({"ssl": ctx} if secure else {}))
            if ws.protocol.extensions:
                raise ValueError(f"extensions negotiated: {[e.name for e in ws.protocol.extensions]}")
            return _WsConnection(ws, index, args.size)
        stage[0] = "TCP connect"
        reader, writer = await asyncio.open_connection(args.host, args.port)
        if secure:
            stage[0] = "TLS handshake"
            await writer.start_tls(ctx, server_hostname=args.name)
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if alpn != "http/1.1":
                writer.close()
                raise ValueError(f"ALPN {alpn!r}, expected 'http/1.1'")
        return _HttpConnection(reader, writer, request, args.expect)

    async def open_one(index: int) -> None:
        async with gate:
            t0 = time.perf_counter()
            stage = ["connection"]
            try:
                conn = await asyncio.wait_for(connect(index, stage), args.timeout)
            except Exception as e:  # noqa: BLE001 - counted, and the run reports it
                failed(stage[0], e)
                return
            try:
                await asyncio.wait_for(conn.exchange(), args.timeout)
            except Exception as e:  # noqa: BLE001
                failed("first exchange", e)
                await close_all([conn])
                return
            latencies.append((time.perf_counter() - t0) * 1e6)
            conns.append(conn)

    async def close_all(some: list) -> None:
        closing = [asyncio.ensure_future(conn.close()) for conn in some]
        if closing:
            await asyncio.wait(closing, timeout=args.close_timeout)

    async def again(conn) -> bool:
        async with gate:
            try:
                await asyncio.wait_for(conn.exchange(), args.timeout)
                return True
            except Exception as e:  # noqa: BLE001
                failed("second exchange", e)
                return False

    start = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(args.connections)))
    open_s = time.monotonic() - start
    opened = len(conns)
    result = {"connections": args.connections, "opened": opened, "open_s": open_s,
              "lat_us": _percentiles(latencies)}
    if args.hold:
        await asyncio.sleep(args.hold)
    if args.wait:
        print(json.dumps({"phase": "open", **result}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    answers = await asyncio.gather(*(again(conn) for conn in conns))
    result["answered"] = sum(answers)
    await close_all(conns)
    result["ok"] = opened == args.connections and result["answered"] == opened
    result["ops"] = opened
    result["seconds"] = open_s
    if errors:
        common = sorted(errors.items(), key=lambda item: -item[1])[:3]
        result["errors"] = "; ".join(f"{n} × {what}" for what, n in common)
    if not result["ok"]:
        result["error"] = (f"{opened} of {args.connections} connections opened, {result['answered']} answered "
                           f"the second {'message' if args.scheme in ('ws', 'wss') else 'request'}"
                           + (f"; {result['errors']}" if errors else ""))
    return result


def cmd_many(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_many_client(args))
    except Exception as e:  # noqa: BLE001
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return _emit(result)


# --- raw TCP bulk source and reader -----------------------------------------------------


def cmd_bulkserver(args: argparse.Namespace) -> int:
    """Send ``--size`` bytes of ``FILE`` (zeros: a sparse file) to every client as soon as it
    connects, with sendfile, then close: a server that speaks first, at memory speed."""
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with open(args.file, "rb") as f:
                try:
                    self.request.sendfile(f, 0, args.size)
                except OSError:
                    pass  # the client went away

    class Server(socketserver.ThreadingTCPServer):
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    with Server(("::", args.port), Handler) as server:
        server.serve_forever()
    return 0



def cmd_bare_relay(args: argparse.Namespace) -> int:
    from twisted.internet import protocol, reactor
    from twisted.internet import ssl as tssl
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS

    import resource

    raise_open_files(resource.getrlimit(resource.RLIMIT_NOFILE)[1])  # two per connection: all there are
    server_tls = upstream_ca = None
    if args.tls:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from OpenSSL import crypto

        chain_pem, key_pem = (open(path, "rb").read() for path in args.tls)
        certs = [crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(chain_pem)]
        key = crypto.PKey.from_cryptography_key(load_pem_private_key(key_pem, None))
        server_tls = tssl.CertificateOptions(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                                             acceptableProtocols=[b"h2", b"http/1.1"])
        upstream_ca = tssl.Certificate.loadPEM(open(args.upstream_ca, "rb").read())

    class Server(protocol.Protocol):
        def __init__(self, client: "Client") -> None:
            self.client = client

        def connectionMade(self) -> None:
            client = self.client
            client.server = self
            self.transport.setTcpNoDelay(True)
            self.transport.registerProducer(client.transport, True)
            client.transport.registerProducer(self.transport, True)
            if client.first:
                self.transport.write(client.first)
                client.first = None
            client.transport.resumeProducing()

        def dataReceived(self, data: bytes) -> None:
            self.client.transport.write(data)

        def connectionLost(self, reason) -> None:
            _close(self.client.transport)

    class Client(protocol.Protocol):
        server = None
        first = None  # with TLS: the client's first bytes, until the server is connected

        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)
            dst = self.transport.getHost()  # TPROXY: the original destination
            if server_tls is not None and dst.port in args.tls_ports:
                self.first = b""
                self.transport.startTLS(server_tls)  # connect once the client's ALPN choice is known
            else:
                self.connect(None)

        def connect(self, alpn: bytes | None) -> None:
            self.transport.pauseProducing()  # until the server is connected
            dst = self.transport.getHost()
            host = dst.host.removeprefix("::ffff:")
            endpoint = (TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint)(reactor, host, dst.port)
            if self.first is not None:
                options = tssl.optionsForClientTLS(args.name, trustRoot=upstream_ca,
                                                   acceptableProtocols=[alpn] if alpn else None)
                endpoint = wrapClientTLS(options, endpoint)
            connectProtocol(endpoint, Server(self)).addErrback(lambda _: self.transport.abortConnection())

        def dataReceived(self, data: bytes) -> None:
            if self.server is None:  # TLS: the handshake is done, the first bytes are here
                if not self.first:
                    self.connect(self.transport.getHandle().get_alpn_proto_negotiated() or None)
                self.first += data
                return
            self.server.transport.write(data)

        def connectionLost(self, reason) -> None:
            if self.server is not None:
                _close(self.server.transport)

    def _close(transport) -> None:
        transport.unregisterProducer()  # a paused producer would hold the close back for ever
        transport.loseConnection()

    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", args.port))
    sock.listen(1024)
    sock.setblocking(False)
    reactor.adoptStreamPort(sock.fileno(), socket.AF_INET6, protocol.Factory.forProtocol(Client))
    sock.close()
    reactor.run()
    return 0


def cmd_tcpread(args: argparse.Namespace) -> int:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    zeros = bytes(len(buf))
    total = 0
    try:
        t0 = time.perf_counter()
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
            while True:
                n = s.recv_into(view)
                if not n:
                    break
                # (bytearray comparison is a memcmp; memoryview's is per item, ~450 MB/s)
                if (buf != zeros) if n == len(buf) else (buf[:n] != zeros[:n]):
                    return _emit({"ok": False, "error": f"non-zero byte within bytes {total}..{total + n}"})
                total += n
        seconds = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001
        return _emit({"ok": False, "error": f"{type(e).__name__}: {e} after {total} bytes"})
    if total != args.expect:
        return _emit({"ok": False, "error": f"read {total} bytes, expected {args.expect}"})
    return _emit({"ok": True, "ops": 1, "seconds": seconds, "bytes": total})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("wsserver", help="WebSocket echo server")
    p.add_argument("port", type=int)
    p.add_argument("--tls", nargs=2, metavar=("CHAIN", "KEY"))

    p = sub.add_parser("tlsnew", help="a new TLS connection per request")
    p.add_argument("--host", required=True, help="address to connect to")
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--name", required=True, help="SNI, Host and the name the certificate must carry")
    p.add_argument("--ca", required=True, help="CA bundle to verify the server against")
    p.add_argument("--path", default="/1k")
    p.add_argument("--expect", type=int, default=1024, help="body size")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--close-timeout", type=float, default=2)
    p.add_argument("--strict-close", action="store_true",
                   help="after each body, also wait (--close-timeout) for the server to close the connection, "
                        "and fail if it does not; by default the client closes once it has the whole body, as "
                        "curl and browsers do, and one extra connection after the timed window checks the close")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)

    p = sub.add_parser("ws", help="WebSocket echo round trips")
    p.add_argument("url")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--close-timeout", type=float, default=2,
                   help="how long the closing handshake may take before the client aborts the connection")
    p.add_argument("--strict-close", action="store_true",
                   help="fail when the connection is not closed within --close-timeout of the closing handshake")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)

    p = sub.add_parser("many", help="hold many idle keep-alive connections, then ask each once more")
    p.add_argument("scheme", choices=["http", "https", "ws", "wss"])
    p.add_argument("--host", required=True, help="address to connect to")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True, help="Host, SNI and the name the certificate must carry")
    p.add_argument("--ca", help="CA bundle to verify the server against (https, wss)")
    p.add_argument("--path", default="/1k", help="the GET's target, or the WebSocket URL's path")
    p.add_argument("--expect", type=int, default=1024, help="HTTP: body size of each response")
    p.add_argument("--size", type=int, default=64, help="WebSocket: message size")
    p.add_argument("--connections", type=int, required=True)
    p.add_argument("--handshakes", type=int, default=200, help="connections being opened at once, at most")
    p.add_argument("--hold", type=float, default=0, help="seconds to hold every connection idle once all are open")
    p.add_argument("--wait", action="store_true",
                   help="once all are open (and held), print {\"phase\": \"open\", ...} and wait for a line on "
                        "standard input before the second exchange")
    p.add_argument("--ping-interval", type=float, default=30, help="WebSocket: seconds between the client's pings")
    p.add_argument("--ping-timeout", type=float, default=20,
                   help="WebSocket: a pong not back within this many seconds closes the connection (1011)")
    p.add_argument("--close-timeout", type=float, default=2, help="seconds to wait for the connections to close")
    p.add_argument("--timeout", type=float, default=60, help="seconds each open, and each exchange, may take")

    p = sub.add_parser("bulkserver", help="send SIZE bytes of FILE to each client at once, then close")
    p.add_argument("port", type=int)
    p.add_argument("file")
    p.add_argument("size", type=int)

    p = sub.add_parser("tcpread", help="read a raw TCP stream to EOF")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--expect", type=int, required=True)
    p.add_argument("--timeout", type=float, default=30)

    p = sub.add_parser("bare-relay", help="a bare Twisted TPROXY byte relay (the reference for bench/run --proxy bare)")
    p.add_argument("port", type=int)
    p.add_argument("--tls", nargs=2, metavar=("CHAIN", "KEY"), help="terminate TLS on --tls-ports with this certificate")
    p.add_argument("--tls-ports", type=lambda text: {int(x) for x in text.split(",")}, default={443},
                   help="with --tls: the original destination ports whose connections are TLS (default 443)")
    p.add_argument("--upstream-ca", help="with --tls: the CA the servers' certificates are verified against")
    p.add_argument("--name", default="server.test", help="with --tls: the servers' name (SNI, verification)")

    args = parser.parse_args(argv)
    if args.cmd == "bare-relay" and args.tls and not args.upstream_ca:
        parser.error("bare-relay --tls needs --upstream-ca (the servers are verified)")
    if args.cmd == "wsserver":
        asyncio.run(_ws_server(args.port, args.tls))
        return 0
    return {"tlsnew": cmd_tlsnew, "ws": cmd_ws, "many": cmd_many, "tcpread": cmd_tcpread,
            "bulkserver": cmd_bulkserver, "bare-relay": cmd_bare_relay}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
