"""Small network peers for end-to-end tests, run inside lab namespaces.

    python -m tests.peers udp-echo PORT            echo datagrams (IPv4 and IPv6)
    python -m tests.peers udp-who PORT             answer each datagram with its sender's address
    python -m tests.peers udp-ask HOST PORT MSG... send each MSG, print each reply
    python -m tests.peers slow-read HOST PORT RATE read at RATE bytes/s, print "<sha256> <count>"
    python -m tests.peers reset-server PORT        send "partial", then reset (RST) each connection
    python -m tests.peers drip-server PORT         answer HTTP requests with a chunked body in two
                                                   parts, 2 s apart (is the proxy streaming?)
    python -m tests.peers banner-server PORT       say "220 banner" first, then echo (SMTP-like)
    python -m tests.peers send HOST PORT HEX       send the bytes, half-close, print all replies
    python -m tests.peers hold HOST PORT HEX SECS  send the bytes, keep the connection open, print
                                                   "<seconds until EOF, or 'open'> <reply>"
    python -m tests.peers leave URL COUNT [CAFILE] GET URL over HTTP/1.1 (https with CAFILE), read COUNT
                                                   bytes of the answer, then leave; print the count
    python -m tests.peers mute-server PORT         accept and read, never answer
    python -m tests.peers mute-tls-server PORT CHAIN KEY
                                                   the same after a TLS handshake (ALPN h2)
    python -m tests.peers cut-server PORT          answer HTTP with a 1 MB Content-Length, send
                                                   100 kB of it, then reset the connection
    python -m tests.peers garbage-server PORT      answer anything with bytes that are not HTTP
    python -m tests.peers ws-echo PORT             WebSocket echo server (websockets library)
    python -m tests.peers ws-ask URL MSG...        send each MSG over a WebSocket, print each reply
    python -m tests.peers ws-status URL            "open", or the status and body of a refused handshake

The UDP asker uses a connected socket, so the kernel drops any reply that does
not come from HOST:PORT: a printed reply proves the source address was right.
"""

import hashlib
import socket
import sys
import time


def _dual_stack_udp(port: int) -> socket.socket:
    """A UDP socket on ``port`` of every IPv6 and IPv4 address."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    return sock


def udp_echo(port: int) -> None:
    sock = _dual_stack_udp(port)
    while True:
        data, addr = sock.recvfrom(65535)
        sock.sendto(b"echo:" + data, addr)


def udp_who(port: int) -> None:
    sock = _dual_stack_udp(port)
    while True:
        _, addr = sock.recvfrom(65535)
        host = addr[0].removeprefix("::ffff:")
        sock.sendto(host.encode(), addr)


def udp_ask(host: str, port: int, messages: list[str]) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((host, port))
    for message in messages:
        sock.send(message.encode())
        print(sock.recv(65535).decode(), flush=True)


def slow_read(host: str, port: int, rate: int) -> None:
    sock = socket.create_connection((host, port), timeout=30)
    digest = hashlib.sha256()
    count = 0
    started = time.monotonic()
    while True:
        data = sock.recv(65536)
        if not data:
            break
        digest.update(data)
        count += len(data)
        ahead = count / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    print(digest.hexdigest(), count)


def reset_server(port: int) -> None:
    import struct

    sock = _listen(port)
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"partial")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("::", port))
    sock.listen()
    return sock


def _serve_threads(port: int, handle) -> None:
    import threading

    sock = _listen(port)
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def drip_server(port: int) -> None:
    def handle(conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n6\r\nfirst\n\r\n")
            time.sleep(2)
            conn.sendall(b"7\r\nsecond\n\r\n0\r\n\r\n")

    _serve_threads(port, handle)


def banner_server(port: int) -> None:
    def handle(conn):
        with conn:
            conn.sendall(b"220 banner\r\n")
            while data := conn.recv(65536):
                conn.sendall(data)

    _serve_threads(port, handle)


def send(host: str, port: int, payload: bytes) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    out = b""
    while data := sock.recv(65536):
        out += data
    sys.stdout.buffer.write(out)


def ws_echo(port: int) -> None:
    from websockets.sync.server import serve

    def echo(ws):
        for message in ws:
            ws.send(message)

    with serve(echo, sock=_listen(port)) as server:
        server.serve_forever()


def ws_ask(url: str, messages: list[str]) -> None:
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, close_timeout=5) as ws:
        for message in messages:
            ws.send(message)
            print(ws.recv(timeout=10), flush=True)


def ws_status(url: str) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    try:
        with connect(url, open_timeout=10):
            print("open")
    except InvalidStatus as e:
        print(e.response.status_code, e.response.body.decode("utf-8", "replace").replace("\n", " "))


def hold(host: str, port: int, payload: bytes, seconds: float) -> None:
    sock = socket.create_connection((host, port), timeout=10)
    started = time.monotonic()
    sock.sendall(payload)
    sock.settimeout(seconds)
    out = b""
    ended = "open"
    try:
        while data := sock.recv(65536):
            out += data
        ended = f"{time.monotonic() - started:.1f}"
    except TimeoutError:
        pass
    except ConnectionResetError:
        ended = f"{time.monotonic() - started:.1f}"
    sys.stdout.write(f"{ended} {out.decode('latin-1')}")


def leave(url: str, count: int, cafile: str | None) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port or (443 if cafile else 80)), timeout=10)
    if cafile is not None:
        import ssl

        sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=parts.hostname)
    sock.sendall(f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}\r\n\r\n".encode())
    got = 0
    while got < count and (data := sock.recv(65536)):
        got += len(data)
    sock.close()
    print(got)


def mute_server(port: int, tls: tuple[str, str] | None = None) -> None:
    ctx = None
    if tls is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        ctx.set_alpn_protocols(["h2"])

    def handle(conn):
        try:
            if ctx is not None:
                conn = ctx.wrap_socket(conn, server_side=True)
            with conn:
                while conn.recv(65536):
                    pass
        except OSError:
            pass

    _serve_threads(port, handle)


def _read_head(conn) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return False
        data += more
    return True


def cut_server(port: int) -> None:
    import struct

    def handle(conn):
        with conn:
            if not _read_head(conn):
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
            time.sleep(0.2)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    _serve_threads(port, handle)


def garbage_server(port: int) -> None:
    def handle(conn):
        with conn:
            if _read_head(conn):
                conn.sendall(b"\x00\xffSSH-2.0-not-http\r\n\r\n" + bytes(range(256)))
                time.sleep(0.5)

    _serve_threads(port, handle)


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "udp-echo":
        udp_echo(int(args[0]))
    elif cmd == "udp-who":
        udp_who(int(args[0]))
    elif cmd == "udp-ask":
        udp_ask(args[0], int(args[1]), args[2:])
    elif cmd == "slow-read":
        slow_read(args[0], int(args[1]), int(args[2]))
    elif cmd == "reset-server":
        reset_server(int(args[0]))
    elif cmd == "drip-server":
        drip_server(int(args[0]))
    elif cmd == "banner-server":
        banner_server(int(args[0]))
    elif cmd == "send":
        send(args[0], int(args[1]), bytes.fromhex(args[2]))
    elif cmd == "hold":
        hold(args[0], int(args[1]), bytes.fromhex(args[2]), float(args[3]))
    elif cmd == "cut-server":
        cut_server(int(args[0]))
    elif cmd == "garbage-server":
        garbage_server(int(args[0]))
    elif cmd == "leave":
        leave(args[0], int(args[1]), args[2] if len(args) > 2 else None)
    elif cmd == "mute-server":
        mute_server(int(args[0]))
    elif cmd == "mute-tls-server":
        mute_server(int(args[0]), (args[1], args[2]))
    elif cmd == "ws-echo":
        ws_echo(int(args[0]))
    elif cmd == "ws-status":
        ws_status(args[0])
    elif cmd == "ws-ask":
        ws_ask(args[0], args[1:])
    else:
        sys.exit(f"unknown peer {cmd}")
