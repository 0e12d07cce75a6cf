"""Micro-benchmark: the floor the h2 library sets under an HTTP/2 proxy.

Run with ``python bench/micro_h2.py`` from the repository root.

Whatever the proxy's own code costs, each request it relays between two
HTTP/2 connections makes the h2 state machines do a fixed amount of work:
the client-facing connection parses the request's HEADERS and serialises
the response's HEADERS and DATA; the server-facing connection serialises
the request and parses the response. This script does exactly that work
and nothing else (no sockets, no TLS, no taps, no proxy code): two pairs of
h2 connections in memory, with the proxy's h2 settings (`new_connection`),
requests shaped like h2load's and responses like nginx's, 16 streams in
flight per connection as in lane c. Only the calls on the proxy's two
connections are timed; the peers' work is not counted.

It prints microseconds per relayed request (lane c's unit) and seconds per
GiB of a download relayed from DATA frames of 8 KiB (what nginx sends in
lane e: its ``http2_chunk_size``) and 16 KiB, each the best of several
repeats. Compared with the
proxy's CPU time per unit in bench/run's table, it says how much of that
is the h2 library's and what no change to tinspect's own code can remove.

Then the same download through the proxy itself: its HTTP/2 layer, both
legs, the tap chain with no taps, over a `tests.memnet` network (no
sockets, no TLS): lane e's shape, a server sending nginx's 8 KiB DATA
frames in reads of 64 KiB (one read of the socket, decrypted), as the
server's window allows,
to a client with curl's settings (32 MiB windows, 16 KiB frames). Only the
proxy's work is timed (CPU seconds per GiB, best of three) and counted
(Python calls per DATA frame from the server: cProfile's count, which no
load on the machine changes); ``--profile N`` prints cProfile's top N
entries of it, ``--size`` sets the download's size.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from h2.config import H2Configuration  # noqa: E402
from h2.connection import H2Connection  # noqa: E402
from h2.events import DataReceived, RequestReceived, ResponseReceived, StreamEnded  # noqa: E402
from h2.settings import SettingCodes, Settings  # noqa: E402

from tests.memnet import Net  # noqa: E402
from tinspect.layers.http.h2.conn import new_connection  # noqa: E402

IN_FLIGHT = 16
REQUEST = [(b":method", b"GET"), (b":path", b"/1k"), (b":scheme", b"https"), (b":authority", b"server.test"),
           (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"), (b"user-agent", b"h2load nghttp2/1.52.0")]
BODY = b"x" * 1024


def response_head(length: int = 1024) -> list[tuple[bytes, bytes]]:
    """nginx's answer (its date changes once a second, every few thousand requests: not within a run here)."""
    return [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Thu, 03 Dec 2026 12:00:00 GMT"),
            (b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % length),
            (b"last-modified", b"Thu, 03 Dec 2026 11:00:00 GMT"), (b"etag", b'"6575a0b0-400"'),
            (b"accept-ranges", b"bytes")]


class Relay:
    """A client, the proxy's two connections, a server; ``timed`` accumulates the proxy's share."""

    def __init__(self) -> None:
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        # h2load's and curl's windows are large (1 GiB, 32 MiB): their WINDOW_UPDATEs are rare
        self.client.local_settings = Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: (1 << 30) - 1})
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.down = new_connection(client_side=False, max_header_list_size=65536)  # faces the client
        self.up = new_connection(client_side=True, max_header_list_size=65536)  # faces the server
        self.timed = 0.0
        for conn in (self.client, self.server):
            conn.initiate_connection()
        self.client.increment_flow_control_window((1 << 30) - 65535)
        self.down.receive_data(self.client.data_to_send())
        self.client.receive_data(self.down.data_to_send())
        self.server.receive_data(self.up.data_to_send())
        self.up.receive_data(self.server.data_to_send())
        self.client.receive_data(self.down.data_to_send())
        self.server.receive_data(self.up.data_to_send())

    def requests(self, count: int) -> None:
        """Relay ``count`` requests, IN_FLIGHT at a time."""
        clock = time.perf_counter
        for _ in range(count // IN_FLIGHT):
            for _ in range(IN_FLIGHT):
                self.client.send_headers(self.client.get_next_available_stream_id(), REQUEST, end_stream=True)
            wire = self.client.data_to_send()
            t = clock()
            routes = {}
            for event in self.down.receive_data(wire):
                if type(event) is RequestReceived:
                    sid = self.up.get_next_available_stream_id()
                    self.up.send_headers(sid, event.headers, end_stream=True)
                    routes[sid] = event.stream_id
            wire = self.up.data_to_send()
            self.timed += clock() - t
            for event in self.server.receive_data(wire):
                if type(event) is RequestReceived:
                    self.server.send_headers(event.stream_id, response_head())
                    self.server.send_data(event.stream_id, BODY, end_stream=True)
            wire = self.server.data_to_send()
            t = clock()
            for event in self.up.receive_data(wire):
                kind = type(event)
                if kind is ResponseReceived:
                    self.down.send_headers(routes[event.stream_id], event.headers)
                elif kind is DataReceived:
                    self.down.send_data(routes[event.stream_id], event.data, end_stream=True)
                    self.up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            out = self.down.data_to_send()
            back = self.up.data_to_send()  # the window updates
            self.timed += clock() - t
            for event in self.client.receive_data(out):
                if type(event) is DataReceived:
                    self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.server.receive_data(back)


def per_request(count: int = 2048, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        relay = Relay()
        relay.requests(count)
        best = min(best, relay.timed / count * 1e6)
    return best


def per_gib(size: int, reads: int = 1024, repeat: int = 3) -> float:
    """Seconds per GiB of one long download the server sends in DATA frames of ``size``.

    Favourable to the proxy: each read hands h2 a whole TLS record's worth
    of frames (16 KiB), and what they carried goes to the client as one DATA
    frame (the client's largest), one write per read.
    """
    per_read = max(1, 16384 // size)
    best = float("inf")
    clock = time.perf_counter
    for _ in range(repeat):
        relay = Relay()
        client, server, down, up = relay.client, relay.server, relay.down, relay.up
        client.send_headers(1, REQUEST, end_stream=True)
        (request,) = [e for e in down.receive_data(client.data_to_send()) if type(e) is RequestReceived]
        up.send_headers(1, request.headers, end_stream=True)
        server.receive_data(up.data_to_send())
        head = response_head(1 << 40)
        server.send_headers(1, head)
        up.receive_data(server.data_to_send())
        down.send_headers(1, head)
        client.receive_data(down.data_to_send())
        chunk = b"z" * size
        timed = 0.0
        for _ in range(reads):
            for _ in range(per_read):
                server.send_data(1, chunk)
            wire = server.data_to_send()
            t = clock()
            parts = []
            for event in up.receive_data(wire):
                if type(event) is DataReceived:
                    parts.append(event.data)
                    up.acknowledge_received_data(event.flow_controlled_length, 1)
            down.send_data(1, b"".join(parts))
            out = down.data_to_send()
            back = up.data_to_send()
            timed += clock() - t
            for event in client.receive_data(out):
                if type(event) is DataReceived:
                    client.acknowledge_received_data(event.flow_controlled_length, 1)
            acks = client.data_to_send()
            t = clock()
            down.receive_data(acks)  # the client's WINDOW_UPDATEs, if any: the proxy's work too
            timed += clock() - t
            server.receive_data(back)
        best = min(best, timed / (reads * per_read * size) * (1 << 30))
    return best


NGINX_FRAME = 8192  # nginx's http2_chunk_size
READ = 65536  # what one read of a TLS connection hands the proxy (Twisted reads 64 KiB from the socket)
CURL_WINDOW = 32 << 20  # curl's stream and connection windows (HTTP2_HUGE_WINDOW_SIZE)


class Download:
    """One download through the proxy's HTTP/2 layer in memory; `run` times the proxy's share."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.net = Net()
        self.client = self.net.intercepted("h2")
        (dial,) = self.net.dials
        self.server = dial.accept()
        self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.c.local_settings = Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: CURL_WINDOW})
        self.c.initiate_connection()
        self.c.increment_flow_control_window(CURL_WINDOW - 65535)
        self.s = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.s.initiate_connection()
        self.spent = 0.0
        self.profile: cProfile.Profile | None = None

    def _send(self, peer, data: bytes) -> None:
        """``peer`` sends ``data`` to the proxy, at most READ bytes per read; the proxy's work is timed."""
        clock = time.process_time
        profile = self.profile
        for i in range(0, len(data), READ):
            piece = data[i:i + READ]
            t = clock()
            if profile is not None:
                profile.enable()
                peer.send(piece)
                profile.disable()
            else:
                peer.send(piece)
            self.spent += clock() - t

    def run(self) -> None:
        """Download ``size`` bytes: the server sends what its window allows, the client acknowledges."""
        c, s = self.c, self.s
        c.send_headers(1, REQUEST, end_stream=True)
        left = self.size
        got = 0
        ended = False
        chunk = b"z" * NGINX_FRAME
        sid = None
        while not ended:
            self._send(self.client, c.data_to_send())
            for event in s.receive_data(self.server.take()):
                if type(event) is RequestReceived:
                    sid = event.stream_id
                    s.send_headers(sid, response_head(self.size))
            if sid is not None and left:
                room = min(s.local_flow_control_window(sid), left)
                while room >= NGINX_FRAME or room == left:
                    n = min(NGINX_FRAME, room)
                    left -= n
                    room -= n
                    s.send_data(sid, chunk[:n], end_stream=not left)
                    if not left:
                        break
            self._send(self.server, s.data_to_send())
            for event in c.receive_data(self.client.take()):
                kind = type(event)
                if kind is DataReceived:
                    got += len(event.data)
                    c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif kind is StreamEnded:
                    ended = True
        if got != self.size:
            raise SystemExit(f"the client got {got} bytes of {self.size}")


def through_layer(size: int, repeat: int = 3) -> float:
    """CPU seconds per GiB the proxy spends on a ``size``-byte download, best of ``repeat``."""
    best = float("inf")
    for _ in range(repeat):
        bench = Download(size)
        bench.run()
        best = min(best, bench.spent / size * (1 << 30))
    return best


def calls_per_frame(size: int, top: int = 0) -> float:
    """Python function calls (cProfile's count, the same under any load) the proxy makes per 8 KiB DATA
    frame of one download; prints cProfile's ``top`` entries by own time."""
    bench = Download(size)
    bench.profile = cProfile.Profile()
    bench.run()
    stats = pstats.Stats(bench.profile)
    if top:
        stats.sort_stats("tottime").print_stats(top)
    return stats.total_calls / (size / NGINX_FRAME)


def main() -> None:
    """Print one line per measured case."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64 << 20, help="bytes of the download through the layer")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print cProfile's top N entries of the download through the layer, and only that")
    parser.add_argument("--layer-only", action="store_true", help="only the download through the layer")
    args = parser.parse_args()
    if args.profile:
        print(f"{calls_per_frame(args.size, args.profile):.1f} calls per 8 KiB DATA frame from the server")
        return
    if not args.layer_only:
        print(f"{'relayed request (1 KiB answer, 16 in flight)':48s} {per_request():7.2f} us")
        for size in (8192, 16384):
            print(f"{f'download relayed in DATA frames of {size // 1024} KiB':48s} {per_gib(size):7.2f} s/GiB")
    what = "download through the HTTP/2 layer (8 KiB frames)"
    print(f"{what:48s} {calls_per_frame(min(args.size, 16 << 20)):7.1f} calls")
    print(f"{what:48s} {through_layer(args.size):7.2f} s/GiB")


if __name__ == "__main__":
    main()
