"""Micro-benchmark for the tap chain: microseconds per unit through an `Arm`.

Run with ``python bench/micro_chain.py`` from the repository root. Stdlib
only (``timeit``); each figure is the best of several repeats. It shows what
dispatch costs with no taps, with taps that want other unit kinds (skipped
at no cost), with pass-through taps, and with a WebSocket message (the unit
every message of a WebSocket flow becomes); and what ``--metrics`` adds: the
same arms with the chain measured (each tap timed into its histogram, the
payload counted), and the timing of one HTTP exchange (first byte and total).
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from tinspect.chain import Arm, Tap, TapChain  # noqa: E402
from tinspect.flow import Flow  # noqa: E402
from tinspect.ops.metrics import Metrics  # noqa: E402
from tinspect.units import TO_SERVER, Data, Request, WebSocketMessage  # noqa: E402


class Pass(Tap):
    """Returns every unit unchanged."""

    def handle(self, unit, flow):
        return unit


class RequestsOnly(Tap):
    """Wants requests only: other kinds never reach it."""

    kinds = (Request,)

    def handle(self, unit, flow):
        return unit


def arm(taps, measured: bool = False) -> Arm:
    flow = Flow(("192.0.2.2", 5555), ("198.51.100.2", 80))
    chain = TapChain(taps)
    if measured:
        Metrics().measure(chain)
    return Arm(chain, flow, TO_SERVER, lambda unit: None)


def exchange_timed(metrics: Metrics) -> None:
    """What an HTTP layer does per exchange with --metrics: read the clock, then time the response twice."""
    started = metrics.clock()
    metrics.response_started("http1", started)
    metrics.response_ended("http1", started)


def bench(fn, number: int = 50000, repeat: int = 7) -> float:
    """Return the best time per call of ``fn`` in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    """Print one line per measured case."""
    data = Data(b"x" * 1024, direction=TO_SERVER)
    message = WebSocketMessage(b"x" * 64, direction=TO_SERVER)
    cases = [
        ("Data, no taps", arm([]), data),
        ("Data, 3 taps wanting requests only", arm([RequestsOnly(), RequestsOnly(), RequestsOnly()]), data),
        ("Data, 1 pass-through tap", arm([Pass()]), data),
        ("Data, 3 pass-through taps", arm([Pass(), Pass(), Pass()]), data),
        ("WebSocketMessage, no taps", arm([]), message),
        ("WebSocketMessage, 3 pass-through taps", arm([Pass(), Pass(), Pass()]), message),
        ("Data, no taps, --metrics", arm([], True), data),
        ("Data, 1 pass-through tap, --metrics", arm([Pass()], True), data),
        ("Data, 3 pass-through taps, --metrics", arm([Pass(), Pass(), Pass()], True), data),
    ]
    for name, the_arm, unit in cases:
        print(f"{name:42s} {bench(lambda: the_arm.submit(unit)):7.2f} us")
    metrics = Metrics()
    metrics.measure()
    print(f"{'one HTTP exchange timed, --metrics':42s} {bench(lambda: exchange_timed(metrics)):7.2f} us")


if __name__ == "__main__":
    main()
