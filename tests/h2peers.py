"""HTTP/2 clients of our own for the end-to-end tests, for what curl and nghttp cannot do.

    python -m tests.h2peers reset URL BIG PATH... [--cafile PEM] [--after BYTES]
        One connection (TLS with ALPN h2 for https://, prior knowledge for http://):
        GET BIG and every PATH as concurrent streams; once BYTES (default 1 MiB) of
        BIG arrived, reset its stream with RST_STREAM(CANCEL). The other streams
        run to their end; then one more GET of the first PATH on the same
        connection shows it is still usable. Prints, one line per stream:
        ``<path> reset after <n>`` for BIG, ``<path> <status> <count> <sha256>``
        for the others (``again <path> ...`` for the last one).

    python -m tests.h2peers malformed URL KIND [--cafile PEM]
        Send the connection preface and an empty SETTINGS frame, then one
        malformed frame: KIND ``data-on-stream-0`` (a DATA frame on stream 0,
        RFC 9113 §6.1: PROTOCOL_ERROR) or ``bad-hpack`` (a HEADERS frame whose
        field block indexes past the end of the tables: COMPRESSION_ERROR).
        Reads frames back until the peer closes and prints
        ``goaway last_stream=<n> error=<code>`` for the first GOAWAY, or ``no goaway``.

Frames are parsed from raw bytes in ``malformed``, so the GOAWAY checked is the
one on the wire, not a library's reading of it.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import ssl
import struct
import sys
from urllib.parse import urlsplit

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4


def connect(url: str, cafile: str | None) -> tuple[socket.socket, str, str]:
    """Open the connection for ``url``: ``(socket, scheme, authority)``."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    sock = socket.create_connection((parts.hostname, port), timeout=20)
    if tls:
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        sock = ctx.wrap_socket(sock, server_hostname=parts.hostname)
        if sock.selected_alpn_protocol() != "h2":
            sys.exit(f"ALPN: server chose {sock.selected_alpn_protocol()!r}, not h2")
    return sock, parts.scheme, parts.netloc


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def reset(url: str, big: str, paths: list[str], cafile: str | None, after: int) -> None:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    sock, scheme, authority = connect(url, cafile)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    # A large connection window: data of the cancelled stream still in flight
    # after the reset must not starve the others.
    conn.increment_flow_control_window(1 << 30)
    sock.sendall(conn.data_to_send())

    def get(path: str) -> int:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, [(":method", "GET"), (":scheme", scheme), (":authority", authority),
                                   (":path", path)], end_stream=True)
        return stream

    streams = {get(big): big}
    for path in paths:
        streams[get(path)] = path
    big_stream = min(streams)
    state = {s: {"status": None, "count": 0, "sha": hashlib.sha256(), "done": False} for s in streams}
    sock.sendall(conn.data_to_send())
    reset_at = None
    results = []

    def pump(until) -> None:
        nonlocal reset_at
        while not until():
            data = sock.recv(65536)
            if not data:
                sys.exit(f"connection closed early; so far: {results}")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    state[event.stream_id]["status"] = dict(event.headers)[":status"]
                elif isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    st = state.get(event.stream_id)
                    if st is None or st["done"]:
                        continue
                    st["count"] += len(event.data)
                    st["sha"].update(event.data)
                    if event.stream_id == big_stream and reset_at is None and st["count"] >= after:
                        reset_at = st["count"]
                        st["done"] = True
                        conn.reset_stream(big_stream, h2.errors.ErrorCodes.CANCEL)
                        results.append(f"{streams[big_stream]} reset after {reset_at}")
                elif isinstance(event, h2.events.StreamEnded):
                    st = state[event.stream_id]
                    if not st["done"]:
                        st["done"] = True
                        results.append(f"{streams[event.stream_id]} {st['status']} {st['count']} "
                                       f"{st['sha'].hexdigest()}")
                elif isinstance(event, h2.events.StreamReset):
                    st = state.get(event.stream_id)
                    if st is not None and not st["done"]:
                        st["done"] = True
                        results.append(f"{streams[event.stream_id]} reset by peer "
                                       f"({event.error_code!r}) after {st['count']}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    sys.exit(f"GOAWAY {event.error_code!r}; so far: {results}")
            out = conn.data_to_send()
            if out:
                sock.sendall(out)

    pump(lambda: all(st["done"] for st in state.values()))
    again = get(paths[0])
    streams[again] = f"again {paths[0]}"
    state[again] = {"status": None, "count": 0, "sha": hashlib.sha256(), "done": False}
    sock.sendall(conn.data_to_send())
    pump(lambda: state[again]["done"])
    conn.close_connection()
    sock.sendall(conn.data_to_send())
    sock.close()
    print("\n".join(results))


MALFORMED = {
    "data-on-stream-0": frame(DATA, 0, 0, b"x" * 8),
    # 0xff 0x80 0x7f: an indexed field with index 127 + 128 * 127 = 16383, which no
    # table holds (a fresh dynamic table is empty): HPACK decoding error.
    "bad-hpack": frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\xff\xfe\x7f"),
}


def malformed(url: str, kind: str, cafile: str | None) -> None:
    sock, _, _ = connect(url, cafile)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    sock.sendall(MALFORMED[kind])
    buf = b""
    sock.settimeout(10)
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            ftype, payload = buf[3], buf[9:9 + length]
            buf = buf[9 + length:]
            if ftype == GOAWAY:
                last, code = struct.unpack(">II", payload[:8])
                print(f"goaway last_stream={last & 0x7fffffff} error={code}")
                return
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, socket.timeout, ssl.SSLError) as e:
            print(f"no goaway ({type(e).__name__})")
            return
        if not data:
            print("no goaway")
            return
        buf += data


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reset")
    r.add_argument("url")
    r.add_argument("big")
    r.add_argument("paths", nargs="+")
    r.add_argument("--cafile")
    r.add_argument("--after", type=int, default=1 << 20)
    m = sub.add_parser("malformed")
    m.add_argument("url")
    m.add_argument("kind", choices=sorted(MALFORMED))
    m.add_argument("--cafile")
    args = parser.parse_args()
    if args.cmd == "reset":
        reset(args.url, args.big, args.paths, args.cafile, args.after)
    else:
        malformed(args.url, args.kind, args.cafile)


if __name__ == "__main__":
    main()
