"""The flow: one proxied connection (or UDP session) and what is known about it.

A `Flow` is what taps get beside every unit. It says who the client is, where
the connection was going, what protocol was found, and carries a `state` dict
in which taps keep their own per-flow data. It plays the role of transmitm's
``ip_tuple``. Taps may also act on the flow: inject a unit towards either side
(`Flow.inject`) or abort it (`Flow.abort`).

The layer that owns the connection attaches itself with `Flow.attach`; until
then (or after close) injecting raises `FlowClosed`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Protocol

from tinspect.net.addresses import format_addr
from tinspect.units import Direction, Unit

__all__ = ["Flow", "FlowArm", "FlowClosed", "Timings", "set_id_prefix"]

_ids = itertools.count(1)
_prefix = ""  # "w1-PID-" in worker 1 of --workers: ids unique across the workers (logs, the console)


def set_id_prefix(prefix: str) -> None:
    """Start every later flow id with ``prefix``: worker ``n`` of ``--workers`` uses ``w{n}-{pid}-``,
    so flow ids (and the console's record ids made from them) are unique across the processes, and
    a restarted worker's do not repeat those of its run before."""
    global _prefix
    _prefix = prefix


class FlowClosed(Exception):
    """Raised when a tap acts on a flow that has no live connection."""


class FlowArm(Protocol):
    """What a flow needs of the chain runner of each direction (`tinspect.chain.Arm`).

    Spelled out here so that this module, which `tinspect.chain` imports, does not
    import it back.
    """

    def submit(self, unit: Unit) -> None:
        """Run ``unit`` through every tap that wants it."""

    def inject(self, unit: Unit, after: Any) -> None:
        """Run a tap's own ``unit`` through the taps after ``after`` (a `tinspect.chain.Tap`)."""


class Timings:
    """When each step of a flow happened: ``time.time()`` stamps, ``None`` until (or unless) it did.

    The layers stamp these as plain attribute stores, so keeping them costs
    nothing measurable; the console and the metrics read them. A step that
    did not happen (no TLS, an upstream never reached) stays ``None``.

    Attributes:
        accepted: the client's connection was accepted (the flow's ``started``).
        upstream_connected: the TCP connection to the server (or the first one
            of an explicit proxy's flow) was made.
        client_tls_done: the TLS handshake with the client completed.
        upstream_tls_done: the TLS handshake with the server completed (the
            first one, when a flow opens several).
        ended: the flow ended (the flow's ``ended``).
        now: the clock the layers stamp with (the flow's).
    """

    __slots__ = ("accepted", "upstream_connected", "client_tls_done", "upstream_tls_done", "ended", "now")

    def __init__(self, accepted: float, now: Callable[[], float] = time.time) -> None:
        self.accepted = accepted
        self.upstream_connected: float | None = None
        self.client_tls_done: float | None = None
        self.upstream_tls_done: float | None = None
        self.ended: float | None = None
        self.now = now

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__[:-1])
        return f"Timings({fields})"


class Flow:
    """Context of one proxied connection or UDP session.

    Attributes:
        id: short identifier, unique in this process, used in every log line.
        client: ``(host, port)`` of the client.
        dst: ``(host, port)`` of the original (or configured) destination,
            ``None`` until known (explicit proxy before the request).
        listener: the listen spec that accepted the flow, e.g. ``"tproxy:8080"``.
        mode: ``"transparent"``, ``"forward"`` or ``"explicit"``.
        transport: ``"tcp"`` or ``"udp"``.
        protocol: what the layers found: ``"tcp"`` (raw relay), ``"udp"``,
            and ``"http/1.1"``, ``"h2"``, ``"websocket"`` once those layers
            decode it; ``"quic"`` for UDP read as QUIC (never decrypted).
        sni, alpn, tls_version, upstream_cert: TLS facts, ``None`` for
            plain connections. For QUIC, ``sni`` and ``alpn`` come from the
            ClientHello in its Initial packets, and ``alpn`` is what the
            client offered (comma-separated, e.g. ``"h3"``), since the
            server's choice is encrypted.
        quic_version: ``"v1"``, ``"v2"`` (``"other"`` for a version that
            could not be read) for QUIC flows, else ``None``.
        started, ended: ``time.time()`` stamps; ``ended`` is ``None`` while open.
        timings: the `Timings` of the flow's steps (accept, upstream connect,
            each TLS handshake, end).
        error: why the flow ended abnormally, or ``None``.
        verdict: what the taps or the proxy decided, for the console and logs:
            ``"blocked"``, ``"local"`` (answered by a tap), ``"passthrough"``
            (TLS relayed untouched), ``"cached"``, or ``None`` (proxied as is).
            A tap that decides sets it; the last decision on the flow wins.
        decisions: how many times `verdict` was set, so that a reader (the
            console) tells a decision made on this exchange from an earlier
            one's, even when both say the same.
        state: free per-flow storage for taps; key it by your tap's name.
    """

    def __init__(
        self,
        client: tuple[str, int],
        dst: tuple[str, int] | None,
        *,
        listener: str = "",
        mode: str = "transparent",
        transport: str = "tcp",
        protocol: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.id = f"{_prefix}{next(_ids)}"
        self.client = client
        self.dst = dst
        self.listener = listener
        self.mode = mode
        self.transport = transport
        self.protocol = protocol or transport
        self.sni: str | None = None
        self.alpn: str | None = None
        self.tls_version: str | None = None
        self.upstream_cert: dict[str, Any] | None = None
        self.quic_version: str | None = None
        self.started = clock()
        self.ended: float | None = None
        self.timings = Timings(self.started, clock)
        self.error: str | None = None
        self._verdict: str | None = None
        self.decisions = 0
        self.state: dict[str, Any] = {}
        self._clock = clock
        self._arms: dict[Direction, FlowArm] | None = None
        self._abort: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<Flow {self.id} {self.protocol} {format_addr(self.client)} -> {format_addr(self.dst)}>"
        )

    @property
    def verdict(self) -> str | None:
        """What the taps or the proxy decided (see the class docstring)."""
        return self._verdict

    @verdict.setter
    def verdict(self, value: str | None) -> None:
        self._verdict = value
        self.decisions += 1

    @property
    def closed(self) -> bool:
        """Whether the flow has ended."""
        return self.ended is not None

    # -- used by taps -------------------------------------------------------

    def inject(self, unit: Unit, after: Any = None) -> None:
        """Send a unit of the tap's own making towards ``unit.direction``.

        The unit queues behind units already travelling that way, so order is
        kept, and then passes through the taps of the chain that come after
        ``after`` (all taps when ``after`` is ``None``). A tap that injects in
        reaction to what it sees should pass ``after=self`` so it does not see
        its own unit again.

        Args:
            unit: the unit to send, for example a `Data` with
                ``direction=TO_CLIENT``.
            after: the tap (a `tinspect.chain.Tap`) the unit starts after.

        Raises:
            FlowClosed: the flow has ended or is not yet connected.
        """
        if self._arms is None or self.closed:
            raise FlowClosed(f"flow {self.id} is not open")
        self._arms[unit.direction].inject(unit, after)

    def abort(self, reason: str = "aborted by a tap") -> None:
        """Close both sides of the flow at once (a reset, for fault injection).

        Args:
            reason: recorded in `error` and in the log.
        """
        if self._abort is not None and not self.closed:
            self._abort(reason)

    # -- used by the layers -------------------------------------------------

    def attach(self, arms: dict[Direction, FlowArm], abort: Callable[[str], None]) -> None:
        """Connect the flow to the layer carrying it (called by the layers)."""
        self._arms = arms
        self._abort = abort

    def arm(self, direction: Direction) -> FlowArm:
        """The chain runner for ``direction`` (called by the layers and arms)."""
        if self._arms is None:
            raise FlowClosed(f"flow {self.id} is not open")
        return self._arms[direction]

    def mark_ended(self, error: str | None = None) -> None:
        """Stamp the end time, keeping the first error given."""
        if self.ended is None:
            self.ended = self.timings.ended = self._clock()
        if error and self.error is None:
            self.error = error

    @property
    def duration(self) -> float:
        """Seconds the flow has been (or was) open."""
        return (self.ended if self.ended is not None else self._clock()) - self.started
