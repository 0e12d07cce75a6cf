"""Micro-benchmark: the proxy's CPU per whole exchange, in memory (lanes a and c without sockets).

Run with ``python bench/micro_exchange.py`` from the repository root.

`bench/run` measures the proxy's CPU per request with real clients, servers
and sockets, and on a machine shared with other work its figures drift.
This script drives the proxy's own layers the same way, without the kernel,
TLS or the clients' work: a `tests.memnet.Net` (the in-memory network the
glue tests use) carries

- **h1**: lane a's load, keep-alive HTTP/1.1 GETs as ``h2load --h1`` sends
  them, each answered by nginx's 1 KiB response, one exchange at a time
  through the transparent listener (sniffer, `Http1Layer`, the tap chain with
  no taps, parser and writer both ways);
- **h2**: lane c's load, 16 streams at a time on one HTTP/2 connection as
  TLS interception leaves it (ALPN h2 on both legs), h2load's requests and
  nginx's answers; the client and the server are h2 state machines whose
  own work is not timed, only the proxy's (`Peer.send` into the proxy).

It prints microseconds of CPU per exchange (best of several repeats) and
the Python function calls per exchange (cProfile's count, the same on every
machine and under any load: what a change to the hot path saves shows there
first). ``--count N`` instead runs N exchanges of the case given by
``--case`` and nothing else, for an instruction counter:
``valgrind --tool=callgrind python3 bench/micro_exchange.py --case h1 --count 2000``
minus the same with ``--count 0`` is the instructions of 2000 exchanges.
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
from h2.events import DataReceived, RequestReceived, StreamEnded  # noqa: E402
from h2.settings import SettingCodes, Settings  # noqa: E402

from tests.memnet import Net  # noqa: E402

REQUEST = b"GET /1k HTTP/1.1\r\nHost: server.test\r\nUser-Agent: h2load nghttp2/1.52.0\r\nAccept: */*\r\n\r\n"
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Thu, 03 Dec 2026 11:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6575a0b0-400"\r\nAccept-Ranges: bytes\r\n\r\n' + BODY
)
H2_REQUEST = [(b":method", b"GET"), (b":path", b"/1k"), (b":scheme", b"https"), (b":authority", b"server.test"),
              (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
              (b"user-agent", b"h2load nghttp2/1.52.0")]
H2_RESPONSE = [(b":status", b"200"), (b"server", b"nginx/1.22.1"), (b"date", b"Thu, 03 Dec 2026 12:00:00 GMT"),
               (b"content-type", b"application/octet-stream"), (b"content-length", b"1024"),
               (b"last-modified", b"Thu, 03 Dec 2026 11:00:00 GMT"), (b"etag", b'"6575a0b0-400"'),
               (b"accept-ranges", b"bytes")]
IN_FLIGHT = 16


class Meter:
    """Runs the proxy's part of an exchange, adding up its CPU time (and profiling it when asked)."""

    def __init__(self, profile: cProfile.Profile | None = None) -> None:
        self.spent = 0.0
        self.profile = profile

    def send(self, peer, data: bytes) -> None:
        """``peer`` sends ``data`` to the proxy; what the proxy does with it is measured."""
        profile = self.profile
        clock = time.process_time
        t = clock()
        if profile is not None:
            profile.enable()
            peer.send(data)
            profile.disable()
        else:
            peer.send(data)
        self.spent += clock() - t


class H1:
    """One keep-alive HTTP/1.1 connection through the proxy; `run` makes exchanges."""

    def __init__(self) -> None:
        self.net = Net()
        self.client = self.net.transparent()
        (dial,) = self.net.dials
        self.server = dial.accept()

    def run(self, count: int, meter: Meter) -> None:
        """Make ``count`` exchanges, the proxy's work measured by ``meter``."""
        client, server = self.client, self.server
        for _ in range(count):
            meter.send(client, REQUEST)
            if not server.take():
                raise SystemExit("the request did not reach the server")
            meter.send(server, RESPONSE)
            if len(client.take()) < len(BODY):
                raise SystemExit("the response did not reach the client")


class H2:
    """One HTTP/2 connection through the proxy (intercepted, ALPN h2); `run` relays requests 16 at a time."""

    def __init__(self) -> None:
        self.net = Net()
        self.client = self.net.intercepted("h2")
        (dial,) = self.net.dials
        self.server = dial.accept()
        self.c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        # h2load's window is large (1 GiB): its WINDOW_UPDATEs are rare
        self.c.local_settings = Settings(client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: (1 << 30) - 1})
        self.s = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.c.initiate_connection()
        self.c.increment_flow_control_window((1 << 30) - 65535)
        self.s.initiate_connection()
        self._shuttle(Meter())

    def _shuttle(self, meter: Meter) -> None:
        """Move bytes both ways until both peers are quiet, the server answering each request."""
        moved = True
        while moved:
            moved = False
            out = self.c.data_to_send()
            if out:
                meter.send(self.client, out)
                moved = True
            out = self.s.data_to_send()
            if out:
                meter.send(self.server, out)
                moved = True
            wire = self.server.take()
            if wire:
                moved = True
                for event in self.s.receive_data(wire):
                    if type(event) is RequestReceived:
                        self.s.send_headers(event.stream_id, H2_RESPONSE)
                        self.s.send_data(event.stream_id, BODY, end_stream=True)
                    elif type(event) is DataReceived:
                        self.s.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            wire = self.client.take()
            if wire:
                moved = True
                for event in self.c.receive_data(wire):
                    if type(event) is DataReceived:
                        self.c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif type(event) is StreamEnded:
                        self.ended += 1

    ended = 0

    def run(self, count: int, meter: Meter) -> None:
        """Relay ``count`` requests, IN_FLIGHT at a time, the proxy's work measured by ``meter``."""
        for _ in range(count // IN_FLIGHT):
            before = self.ended
            for _ in range(IN_FLIGHT):
                self.c.send_headers(self.c.get_next_available_stream_id(), H2_REQUEST, end_stream=True)
            self._shuttle(meter)
            if self.ended - before != IN_FLIGHT:
                raise SystemExit("not every response reached the client")


CASES = {"h1": (H1, 20000), "h2": (H2, 4096)}


def per_exchange(case: str, repeat: int = 5, count: int | None = None) -> float:
    """Best CPU microseconds per exchange over ``repeat`` runs of ``count`` exchanges (the case's default)."""
    cls, default = CASES[case]
    count = count or default
    best = float("inf")
    for _ in range(repeat):
        bench = cls()
        bench.run(IN_FLIGHT * 4, Meter())  # warm: first-use caches
        meter = Meter()
        bench.run(count, meter)
        best = min(best, meter.spent / count * 1e6)
    return best


def calls_per_exchange(case: str, count: int = 1024, top: int = 0) -> float:
    """Python function calls per exchange (cProfile's count); prints the ``top`` entries by own time."""
    bench = CASES[case][0]()
    bench.run(IN_FLIGHT * 4, Meter())
    profile = cProfile.Profile()
    bench.run(count, Meter(profile))
    stats = pstats.Stats(profile)
    if top:
        stats.sort_stats("tottime").print_stats(top)
    return stats.total_calls / count


def main() -> None:
    """Print one line per measured case (or run ``--count`` exchanges for an instruction counter)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), help="only this case")
    parser.add_argument("--count", type=int, help="run this many exchanges of --case and print nothing else")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N entries")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per case (the best is printed)")
    parser.add_argument("--exchanges", type=int, help="exchanges per timed run (default: 20000 h1, 4096 h2)")
    args = parser.parse_args()
    if args.count is not None:
        CASES[args.case or "h1"][0]().run(args.count, Meter())
        return
    for case in [args.case] if args.case else sorted(CASES):
        what = {"h1": "HTTP/1.1 keep-alive exchange, 1 KiB (lane a)",
                "h2": "HTTP/2 stream relayed, 1 KiB, 16 in flight (lane c)"}[case]
        calls = calls_per_exchange(case, min(1024, args.exchanges or 1024), top=args.profile)
        print(f"{what:52s} {calls:7.1f} calls")
        print(f"{what:52s} {per_exchange(case, args.repeat, args.exchanges):7.2f} us")


if __name__ == "__main__":
    main()
