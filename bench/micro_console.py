"""Micro-benchmark for the live console's feed: microseconds per HTTP/1.1 exchange.

Run with ``python3 bench/micro_console.py`` from the repository root (``--profile``
adds the Python call counts per exchange). One kept-alive connection through the
in-memory network of the glue tests (`tests.memnet`: the real HTTP/1.1 layer,
no sockets) carries lane a's exchange, a GET answered with 1 KiB, over and
over: with no console, with the console's feed wrapped round the chain (as
``--console`` does, no page open), and with a page open (a subscriber, the
hub flushed every 50 exchanges as the site's timer would). The cases are
measured in turns, many rounds, on the thread's CPU clock, and each figure is
the best round: on a machine others load, that is the least disturbed one.
The difference between the first two is what the feed costs per exchange.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from tests.memnet import Net  # noqa: E402
from tinspect.console.feed import ConsoleFeed  # noqa: E402
from tinspect.console.hub import Hub, Subscriber  # noqa: E402

REQUEST = b"GET /1k HTTP/1.1\r\nHost: server.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n"
            + b"x" * 1024)


class Lane:
    """One kept-alive client/server pair through an in-memory proxy."""

    def __init__(self, console: bool, page: bool = False) -> None:
        self.hub = Hub(2000) if console else None
        taps = ConsoleFeed(self.hub).wrap([]) if console else []
        self.net = Net(taps)
        self.client = self.net.transparent()
        self.server = self.net.dials[0].accept()
        self.count = 0
        if page:
            self.hub.subscribe(Subscriber(write=lambda data: None, pending=lambda: 0, close=lambda: None))

    def exchange(self) -> None:
        """One request and its response, checked."""
        self.client.send(REQUEST)
        self.server.take()
        self.server.send(RESPONSE)
        if len(self.client.take()) != len(RESPONSE):
            raise AssertionError("the response did not come through whole")
        self.count += 1
        if self.hub is not None and self.count % 50 == 0:
            self.hub.flush()


def bench(fns: list, number: int = 500, rounds: int = 30) -> list[float]:
    """The best time per call of each of ``fns`` in microseconds, measured in turns."""
    timers = [timeit.Timer(fn, timer=time.thread_time) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number))
    return [b / number * 1e6 for b in best]


def calls(lane: Lane, number: int = 1000) -> float:
    """Python function calls per exchange, as cProfile counts them."""
    profile = cProfile.Profile()
    profile.runcall(lambda: [lane.exchange() for _ in range(number)])
    stats = pstats.Stats(profile)
    return stats.total_calls / number, stats


def main() -> None:
    """Print one line per case (and, with ``--profile``, the feed's most called functions)."""
    cases = [("no console", Lane(False)), ("--console, no page open", Lane(True)),
             ("--console, a page open", Lane(True, page=True))]
    figures = bench([lane.exchange for _, lane in cases])
    for (name, _), us in zip(cases, figures):
        print(f"{name:28s} {us:7.2f} us/exchange  (+{us - figures[0]:5.2f})")
    if "--profile" in sys.argv:
        for name, lane in cases:
            per, stats = calls(lane)
            print(f"{name:28s} {per:7.1f} calls/exchange")
            if lane.hub is not None:
                stats.sort_stats("tottime").print_stats("console|units|headers", 12)


if __name__ == "__main__":
    main()
