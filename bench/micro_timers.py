"""Micro-benchmark: a connection's deadline moved sooner while many others are pending.

Run from the repository root::

    python bench/micro_timers.py                   # 1,000, 6,000 and 20,000 timers
    python bench/micro_timers.py --timers 10000

A keep-alive connection moves its `tinspect.net.timeouts.Deadline` sooner when
it goes from idle (a long timeout) to reading a request head (a short one).
This starts N deadlines with idle timeouts in random order on a real
(select) reactor, lets the reactor take them into its timer heap, then moves
each sooner once, in another random order, and reports the CPU microseconds
per move (CPU time, so that other work on the machine counts less), best of
three. With `DelayedCall.reset` the cost grew with N (Twisted's heap search
is linear); it should stay flat.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.selectreactor import SelectReactor  # noqa: E402

from tinspect.net.timeouts import Deadline  # noqa: E402


def per_move(timers: int, seed: int) -> float:
    """CPU microseconds per deadline moved sooner, with ``timers`` pending."""
    reactor = SelectReactor()
    rng = random.Random(seed)
    deadlines = [Deadline(reactor, lambda what: None) for _ in range(timers)]
    for d in deadlines:
        d.start(rng.uniform(30, 90), "idle")
    reactor.runUntilCurrent()  # new calls join the heap here
    rng.shuffle(deadlines)
    started = time.process_time()
    for d in deadlines:
        d.start(rng.uniform(1, 29), "request head")
    return (time.process_time() - started) / timers * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, action="append", help="pending timers (repeatable)")
    args = parser.parse_args()
    for n in args.timers or [1000, 6000, 20000]:
        best = min(per_move(n, seed) for seed in range(3))
        print(f"{n:>7,} timers pending, one deadline moved sooner: {best:.2f} us")


if __name__ == "__main__":
    main()
