"""The ``faults`` tap: added latency, dropped units and resets, for lab experiments.

Each unit of the chosen kinds and direction is hit with probability
``rate``; a hit picks one of the enabled faults:

* ``latency``: the unit waits that many seconds (the flow waits behind it,
  in order; reading from its source pauses meanwhile);
* ``drop``: the unit is dropped (a dropped HTTP head closes the connection,
  a dropped body chunk leaves a hole: that is the experiment);
* ``reset``: the flow is aborted, both sides reset.

Decisions come from one random generator seeded with ``seed``: the same
traffic in the same order meets the same faults. Without a seed one is
drawn and logged, so a run can be repeated. Every fault is logged with the
flow id.

Options:
    rate: probability per unit, 0 to 1 (default 0.1).
    latency: seconds of delay for the latency fault (default 0: off).
    drop: ``yes`` to enable dropping (default ``no``).
    reset: ``yes`` to enable resets (default ``no``).
    seed: an integer.
    units: ``heads`` (requests, responses, WebSocket messages, raw chunks and
        datagrams: default) or ``all`` (body chunks and message ends too).
    direction: ``both`` (default), ``to_server`` or ``to_client``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from tinspect import Data, Datagram, Flow, Request, Response, Tap, Unit, WebSocketMessage
from tinspect.taplib import directions, flag

__all__ = ["FaultsTap"]

HEADS = (Request, Response, WebSocketMessage, Data, Datagram)
class FaultsTap(Tap):
    """Injects faults; see the module docstring."""

    log = Logger(namespace="tinspect.tap.faults")

    def __init__(self, rate: str | float = 0.1, latency: str | float = 0, drop: str | bool = False,
                 reset: str | bool = False, seed: str | int | None = None, units: str = "heads",
                 direction: str = "both") -> None:
        try:
            self.rate = float(rate)
            self.latency = float(latency)
        except ValueError:
            raise ValueError(f"rate and latency must be numbers, not {rate!r}, {latency!r}") from None
        if not 0 <= self.rate <= 1:
            raise ValueError(f"rate must be between 0 and 1, not {rate!r}")
        if self.latency < 0:
            raise ValueError(f"latency must not be negative, not {latency!r}")
        self.faults = [name for name, on in (("latency", self.latency > 0), ("drop", flag("drop", drop)),
                                             ("reset", flag("reset", reset))) if on]
        if not self.faults:
            raise ValueError("no fault enabled: give latency, drop=yes or reset=yes")
        if units not in ("heads", "all"):
            raise ValueError(f"units must be heads or all, not {units!r}")
        self.kinds = HEADS if units == "heads" else None
        self.directions = directions(direction)
        try:
            self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**32)
        except ValueError:
            raise ValueError(f"seed must be an integer, not {seed!r}") from None
        self._random = random.Random(self.seed)
        from twisted.internet import reactor

        self._reactor = reactor
        self.log.info("faults tap: {faults} at rate {rate:g}, seed {seed}", faults=",".join(self.faults),
                      rate=self.rate, seed=self.seed)

    def handle(self, unit: Unit, flow: Flow) -> Any:
        if unit.direction not in self.directions or self._random.random() >= self.rate:
            return unit
        fault = self._random.choice(self.faults)
        self.log.info("flow {flow_id}: faults tap: {fault} on a {kind} going {direction}", flow_id=flow.id,
                      fault=fault, kind=unit.kind, direction=str(unit.direction))
        if fault == "latency":
            return deferLater(self._reactor, self.latency, lambda: unit)
        if fault == "reset":
            flow.abort("faults tap: reset")
        return None
