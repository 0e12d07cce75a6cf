"""The Tap contract and the chain that runs units through taps.

Theory of operation
-------------------
A `TapChain` is the ordered list of taps a proxy was configured with. For each
unit type it precomputes, once, the taps that want that type (`Tap.kinds`) and
actually override `Tap.handle` (or `Tap.handler_for`, which may name another
function per type, or none); a tap that does not care about a kind costs
nothing for it.

Each flow has two `Arm` objects, one per direction. An arm receives units from
the decoding layer (`submit`) and from taps (`inject`), runs each through the
chain in order and hands the survivor to the layer's ``deliver`` callback,
which encodes it for the other side. Units of one arm never overtake each
other:

* Fast path: while every tap answers synchronously the unit goes straight
  through; no Deferred, no queue.
* A tap that returns a Deferred (or a coroutine, from ``async def handle``)
  makes the arm *wait*: it calls ``pause`` (the layer stops reading from the
  source, which is the backpressure) and queues anything that still arrives.
  When the Deferred fires, the rest of the chain runs, then the queue drains,
  and ``resume`` is called. Other flows are not affected.
* ``None`` drops the unit. A unit of the other direction (a `Response` for a
  `Request`: block page, cache hit) is handed to the other arm, whose taps all
  see it, and never reaches the server.
* A tap that raises (or whose Deferred fails) is logged with the flow id and
  the arm stops for good; ``on_error`` lets the layer fail the flow closed.

`Arm.finish` queues an end marker: the layer learns through ``on_end`` when
everything submitted before it has been delivered (to carry a half-close
across only after the data that preceded it).
"""

from __future__ import annotations

import inspect
from collections import deque
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tinspect.flow import Flow
from tinspect.units import Direction, Unit

__all__ = ["Tap", "TapChain", "Arm", "TapError"]


class TapError(Exception):
    """A tap broke the contract (returned something that is not a unit)."""


class Tap:
    """Base class of taps: sees decoded units in chain order.

    Override `handle`; return the unit (changed or not) to pass it on, another
    unit to replace it, ``None`` to drop it, or a Deferred / coroutine of one
    of those to make the flow wait. Set `kinds` to the unit classes you want;
    other units skip your tap at no cost.

    Attributes:
        kinds: unit classes this tap sees (subclasses included); ``None``
            means every unit.
        name: how logs name the tap; defaults to the class name.
        whole_bodies: ask for whole HTTP bodies: a `Request` or `Response`
            then reaches `handle` with its ``body`` as bytes instead of
            followed by `BodyChunk` units, buffered up to ``--max-body``
            (beyond it the body streams and ``body_too_large`` is set).
            Override `wants_whole_body` to decide per message.
        list_options: option names that may be given more than once
            (``--tap-option NAME.KEY=VALUE`` repeated, or a TOML list): the
            tap then gets a list; any other option given twice is an error.
    """

    kinds: tuple[type[Unit], ...] | None = None
    name: str | None = None
    whole_bodies: bool = False
    list_options: frozenset[str] = frozenset()

    def handle(self, unit: Unit, flow: Flow) -> Any:
        """Inspect or change one unit.

        Args:
            unit: the unit, with its ``direction``.
            flow: the connection it belongs to.

        Returns:
            A unit, ``None``, or a Deferred or coroutine resolving to one.
        """
        return unit

    def handler_for(self, kind: type[Unit]) -> Callable[[Unit, Flow], Any] | None:
        """What the chain calls for units of class ``kind`` instead of `handle`; ``None``: none of them.

        Asked once per unit class (of those `kinds` covers), when the chain
        first routes one. Override it to give each kind its own function (a
        tap that sees several kinds then does not test each unit's type) or to
        decline a kind `kinds` covers. The function has `handle`'s contract.
        Defaults to `handle`.
        """
        return self.handle

    def wants_whole_body(self, message: Unit, flow: Flow) -> bool:
        """Whether to buffer this message's body before `handle` sees it.

        Called with the head (its ``body`` still ``None``) of every HTTP
        message this tap's `kinds` cover. Defaults to `whole_bodies`.
        """
        return self.whole_bodies

    def tls_block(self, name: str, flow: Flow, can_intercept: bool) -> str | None:
        """Whether this TLS connection is blocked, decided from its ClientHello alone.

        Asked once per TLS connection, before `tls_passthrough`, before any
        certificate is made or anything is sent to the server: ``name`` is
        the SNI (or the destination IP without one). ``can_intercept`` is
        ``False`` when the proxy would not intercept the connection (a
        ``--passthrough`` host, or one whose clients rejected our
        certificate): a block page cannot reach its client.

        Returns:
            ``None``: not blocked here (each request is decided as it comes);
            ``"page"``: blocked, and the client sees a page: the connection is
            intercepted without contacting the server, and the tap answers its
            requests (a block page); ``"alert"``: blocked, the handshake is
            refused with a TLS ``access_denied`` alert.
        """
        return None

    def tls_passthrough(self, name: str, flow: Flow) -> bool:
        """Whether to relay this TLS connection untouched instead of intercepting it.

        Asked once per TLS connection, after the ClientHello, before any
        certificate is made: ``name`` is the SNI (or the destination IP
        without one). ``True`` from any tap passes the connection through.
        """
        return False

    def quic_decision(self, name: str, flow: Flow) -> bool | None:
        """Whether to relay (``True``) or refuse (``False``) this QUIC connection; ``None``: no opinion.

        Asked once per QUIC connection, after its Initial packets were read,
        before any datagram is forwarded: ``name`` is the SNI (or the
        destination IP when it could not be read). QUIC is never decrypted,
        so a refused connection makes the browser fall back to TCP, where it
        is inspected. The first tap with an opinion decides; without one,
        ``--passthrough`` and ``--quic`` do. Also asked, per host, whether
        intercepted responses may keep advertising h3 (``Alt-Svc``).
        """
        return None

    def flow_opened(self, flow: Flow) -> None:
        """Called once when a flow opens, before its first unit."""

    def flow_closed(self, flow: Flow) -> None:
        """Called once when a flow has closed (``flow.error`` says why)."""

    def metrics(self) -> Iterable[tuple]:
        """Counters this tap adds to ``--metrics``, read at each scrape.

        Returns:
            ``(name, type, help, value)`` samples, or ``(name, type, help,
            value, labels)`` with ``labels`` a dict of label names to values
            (keep their set small: actions, rule names, never URLs): a
            Prometheus name (``tinspect_<tap>_..._total`` for a counter),
            ``"counter"`` or ``"gauge"``, one line of help, the value. Samples
            of the same name and labels, from this tap or another, are
            summed, as workers are.
        """
        return ()

    def __str__(self) -> str:
        return self.name or type(self).__name__


class _Route:
    """One tap as seen by one unit type: its position and bound handle."""

    __slots__ = ("pos", "tap", "handle")

    def __init__(self, pos: int, tap: Tap, handle: Callable[[Unit, Flow], Any]) -> None:
        self.pos = pos
        self.tap = tap
        self.handle = handle


class TapChain:
    """An ordered, immutable list of taps with per-unit-type dispatch.

    Args:
        taps: the taps in chain order.
    """

    _log = Logger()

    def __init__(self, taps: Iterable[Tap] = ()) -> None:
        self.taps: tuple[Tap, ...] = tuple(taps)
        self._routes: dict[type, tuple[_Route, ...]] = {}
        self._askers: dict[type, tuple[Tap, ...]] = {}
        self._openers = [t for t in self.taps if _overrides(t, "flow_opened")]
        self._closers = [t for t in self.taps if _overrides(t, "flow_closed")]
        self._passers = [t for t in self.taps if _overrides(t, "tls_passthrough")]
        self._blockers = [t for t in self.taps if _overrides(t, "tls_block")]
        self._quic_deciders = [t for t in self.taps if _overrides(t, "quic_decision")]
        self.metrics: Any = None  # the tinspect.ops.metrics.Metrics that `measure` installed; None: not measured

    def measure(self, metrics: Any) -> None:
        """Count into ``metrics`` (a `tinspect.ops.metrics.Metrics`) from now on: each
        tap's time per unit (routes made from now on call ``metrics.timed``'s
        wrapper, not the tap) and payload bytes per direction (arms made from
        now on deliver through ``metrics.counted``'s). Without it (no
        ``--metrics``) the chain calls the taps' ``handle`` itself and tests
        nothing per unit; call it before any flow opens."""
        self.metrics = metrics
        self._routes.clear()

    def route(self, kind: type) -> tuple[_Route, ...]:
        """The taps that see units of class ``kind``, in order (cached)."""
        try:
            return self._routes[kind]
        except KeyError:
            metrics = self.metrics
            routes = []
            for pos, tap in enumerate(self.taps):
                if not (_overrides(tap, "handle") or _overrides(tap, "handler_for")):
                    continue
                if tap.kinds is not None and not issubclass(kind, tap.kinds):
                    continue
                try:
                    handle = tap.handler_for(kind)
                except Exception:
                    handle = _raising(Failure())  # each unit of the kind then fails its flow, naming the tap
                if handle is not None:
                    routes.append(_Route(pos, tap, handle if metrics is None else metrics.timed(str(tap), handle)))
            routes = self._routes[kind] = tuple(routes)
            return routes

    def wants_whole_body(self, message: Unit, flow: Flow) -> bool:
        """Whether any tap that sees ``message`` wants its body whole."""
        kind = type(message)
        askers = self._askers.get(kind)
        if askers is None:
            askers = self._askers[kind] = tuple(
                tap
                for tap in self.taps
                if (tap.whole_bodies or _overrides(tap, "wants_whole_body"))
                and (tap.kinds is None or issubclass(kind, tap.kinds))
            )
        for tap in askers:
            if tap.wants_whole_body(message, flow):
                return True
        return False

    def position(self, tap: Tap | None) -> int:
        """The chain index of ``tap``; -1 for ``None`` (before every tap)."""
        if tap is None:
            return -1
        for pos, t in enumerate(self.taps):
            if t is tap:
                return pos
        raise ValueError(f"{tap} is not in this chain")

    def tls_block(self, name: str, flow: Flow, can_intercept: bool) -> str | None:
        """The first tap's answer to `Tap.tls_block` that is not ``None``; a tap that raises says
        ``None`` (logged): its requests are still decided one by one."""
        for tap in self._blockers:
            try:
                verdict = tap.tls_block(name, flow, can_intercept)
            except Exception:
                self._log.failure("tap {tap} failed deciding a TLS block for flow {flow_id}",
                                  tap=str(tap), flow_id=flow.id)
                continue
            if verdict is not None:
                return verdict
        return None

    def tls_passthrough(self, name: str, flow: Flow) -> bool:
        """Whether any tap wants this TLS connection passed through; a tap that raises says no (logged)."""
        for tap in self._passers:
            try:
                if tap.tls_passthrough(name, flow):
                    return True
            except Exception:
                self._log.failure("tap {tap} failed deciding TLS passthrough for flow {flow_id}",
                                  tap=str(tap), flow_id=flow.id)
        return False

    def quic_decision(self, name: str, flow: Flow) -> tuple[str, bool] | None:
        """The first tap's opinion on a QUIC connection to ``name``: ``(tap, passes)``, or ``None``.

        A tap that raises refuses (logged): policy fails closed.
        """
        for tap in self._quic_deciders:
            try:
                answer = tap.quic_decision(name, flow)
            except Exception:
                self._log.failure("tap {tap} failed deciding QUIC for flow {flow_id}", tap=str(tap), flow_id=flow.id)
                return str(tap), False
            if answer is not None:
                return str(tap), bool(answer)
        return None

    def flow_opened(self, flow: Flow) -> Failure | None:
        """Tell the taps a flow opened.

        Returns:
            The failure of the first tap that raised (the flow should then
            fail closed), else ``None``.
        """
        for tap in self._openers:
            try:
                tap.flow_opened(flow)
            except Exception:
                failure = Failure()
                self._log.failure(
                    "tap {tap} failed opening flow {flow_id}", failure, tap=str(tap), flow_id=flow.id
                )
                return failure
        return None

    def flow_closed(self, flow: Flow) -> None:
        """Tell the taps a flow closed; a tap that raises is only logged."""
        for tap in self._closers:
            try:
                tap.flow_closed(flow)
            except Exception:
                self._log.failure(
                    "tap {tap} failed closing flow {flow_id}", tap=str(tap), flow_id=flow.id
                )


def _raising(failure: Failure) -> Callable[[Unit, Flow], Any]:
    """A handler for a kind whose `Tap.handler_for` raised: it raises that error again for every
    unit, so the arm fails the unit's flow closed and logs it with the tap's name, as when `handle`
    raises."""

    def handle(unit: Unit, flow: Flow) -> Any:
        failure.raiseException()

    return handle


def _overrides(tap: Tap, method: str) -> bool:
    return getattr(type(tap), method) is not getattr(Tap, method)


_END = object()


class Arm:
    """Runs the units of one direction of one flow through the chain.

    Args:
        chain: the taps.
        flow: the flow the units belong to.
        direction: the direction of this arm's units.
        deliver: called with each unit that survives the chain, in order;
            it encodes the unit towards the other side.
        pause: called when a tap went asynchronous: stop reading the source.
        resume: called when the arm can take units at full speed again.
        on_error: called once with the failure when a tap (or ``deliver``)
            raised; the layer should fail the flow closed.
        on_end: called once the end marker queued by `finish` is reached.
        on_reply: called with a unit a tap turned the other way (a local
            answer) before the other arm takes it.
        on_drop: called with the unit a tap dropped (the original one, as
            submitted or injected).
        max_pending: units queued while waiting beyond this are dropped and
            logged (for datagrams, whose source cannot be paused); ``None``
            means unbounded, for sources that `pause` really stops.
    """

    _log = Logger()

    def __init__(
        self,
        chain: TapChain,
        flow: Flow,
        direction: Direction,
        deliver: Callable[[Unit], None],
        *,
        pause: Callable[[], None] = lambda: None,
        resume: Callable[[], None] = lambda: None,
        on_error: Callable[[Failure], None] = lambda failure: None,
        on_end: Callable[[], None] = lambda: None,
        on_reply: Callable[[Unit], None] | None = None,
        on_drop: Callable[[Unit], None] | None = None,
        max_pending: int | None = None,
    ) -> None:
        self.chain = chain
        self.flow = flow
        self.direction = direction
        self._deliver = deliver if chain.metrics is None else chain.metrics.counted(direction, deliver)
        self._pause = pause
        self._resume = resume
        self._on_error = on_error
        self._on_end = on_end
        self._on_reply = on_reply
        self._on_drop = on_drop
        self._max_pending = max_pending
        self._pending: deque[tuple[Any, int]] = deque()
        self._busy = False  # running a unit, or waiting for a tap's Deferred
        self._waiting = False
        self._dead = False
        self.dropped = 0

    @property
    def idle(self) -> bool:
        """True when nothing is running, waiting or queued."""
        return not self._busy and not self._pending

    def submit(self, unit: Unit) -> None:
        """Run a unit decoded from the source side through every tap."""
        if not self._busy and not self._dead:
            routes = self.chain._routes.get(type(unit))
            if routes is not None:
                # The kind has been routed before: what `_enter` does, without its call.
                self._busy = True
                if routes:
                    self._run(unit, -1)
                else:  # no tap sees this kind: `_run`'s delivery, without its call either
                    try:
                        self._deliver(unit)
                    except Exception:
                        self._fail(Failure(), None)
                if self._pending or self._waiting:
                    self._drain()  # what `deliver` submitted meanwhile, or a tap that went asynchronous
                else:
                    self._busy = False
                return
        self._enter(unit, -1)

    def inject(self, unit: Unit, after: Tap | None = None) -> None:
        """Run a unit made by a tap through the taps after ``after``."""
        if unit.direction is not self.direction:
            raise ValueError(f"{unit.kind} travels {unit.direction}, not {self.direction}")
        self._enter(unit, self.chain.position(after))

    def finish(self) -> None:
        """Queue the end marker; ``on_end`` runs once everything before it is delivered."""
        self._enter(_END, -1)

    def _enter(self, unit: Any, after: int) -> None:
        if self._dead:
            return
        if self._busy:
            if self._waiting and self._max_pending is not None and len(self._pending) >= self._max_pending:
                self.dropped += 1
                self._log.warn(
                    "flow {flow_id}: taps are slow, dropped a {kind} going {direction}",
                    flow_id=self.flow.id,
                    kind=getattr(unit, "kind", "end"),
                    direction=str(self.direction),
                )
                return
            self._pending.append((unit, after))
            return
        self._busy = True
        self._run(unit, after)
        self._drain()

    def _drain(self) -> None:
        # Called with _busy set. Stops early when a tap goes asynchronous; the
        # Deferred's callback calls _drain again when it fires.
        pending = self._pending
        while pending and not self._waiting and not self._dead:
            unit, after = pending.popleft()
            self._run(unit, after)
        if not self._waiting:
            self._busy = False

    def _run(self, unit: Any, after: int) -> None:
        """Take ``unit`` through the taps past position ``after``, then deliver it."""
        if unit is _END:
            self._on_end()
            return
        flow = self.flow
        kind = type(unit)
        routes = self.chain._routes.get(kind)
        if routes is None:
            routes = self.chain.route(kind)
        i = 0
        n = len(routes)
        while i < n:
            route = routes[i]
            i += 1
            if route.pos <= after:
                continue
            try:
                result = route.handle(unit, flow)
            except Exception:
                self._fail(Failure(), route.tap)
                return
            if result is unit:
                continue
            if not isinstance(result, Unit):
                if result is None:
                    self._dropped(unit)
                    return
                result = self._settle(result, route, unit)
                if result is _WAIT:
                    return
                if result is None:
                    self._dropped(unit)
                    return
            if result.direction is not self.direction:
                self._hand_over(result)
                return
            unit = result
            if type(unit) is not kind:
                kind = type(unit)
                routes = self.chain.route(kind)
                n = len(routes)
                i = 0
                after = route.pos
        try:
            self._deliver(unit)
        except Exception:
            self._fail(Failure(), None)

    def _settle(self, result: Any, route: _Route, unit: Unit) -> Any:
        """Turn an asynchronous tap result into a unit now, or wait for it.

        Returns:
            The unit or ``None`` when the Deferred had already fired, else
            ``_WAIT`` (the rest of the chain runs from the Deferred's callback).
        """
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        elif not isinstance(result, Deferred):
            self._fail(
                Failure(TapError(f"{route.tap} returned {type(result).__name__}, not a unit")),
                route.tap,
            )
            return _WAIT
        waiter = _Waiter(self, route, unit)
        result.addBoth(waiter.fired)
        if waiter.done:
            value = waiter.value
            if isinstance(value, Failure):
                self._fail(value, route.tap)
                return _WAIT
            return self._check(value, route)
        waiter.sync = False
        self._waiting = True
        self._pause()
        return _WAIT

    def _check(self, value: Any, route: _Route) -> Any:
        if value is None or isinstance(value, Unit):
            return value
        self._fail(
            Failure(TapError(f"{route.tap} resolved to {type(value).__name__}, not a unit")),
            route.tap,
        )
        return _WAIT

    def _resumed(self, value: Any, route: _Route, original: Unit) -> None:
        """A tap's Deferred fired after the arm started waiting."""
        self._waiting = False
        if self._dead:
            return
        if isinstance(value, Failure):
            self._fail(value, route.tap)
            return
        unit = self._check(value, route)
        if unit is None:
            self._dropped(original)
        elif unit is not _WAIT:
            if unit.direction is not self.direction:
                self._hand_over(unit)
            else:
                self._run(unit, route.pos)
        self._drain()
        if not self._waiting and not self._dead:
            self._resume()

    def _dropped(self, unit: Unit) -> None:
        if self._on_drop is not None:
            try:
                self._on_drop(unit)
            except Exception:
                self._fail(Failure(), None)

    def _hand_over(self, unit: Unit) -> None:
        try:
            other = self.flow.arm(unit.direction)
            if self._on_reply is not None:
                self._on_reply(unit)
        except Exception:
            self._fail(Failure(), None)
            return
        other.submit(unit)

    def _fail(self, failure: Failure, tap: Tap | None) -> None:
        if self._dead:
            return
        self._dead = True
        self._pending.clear()
        where = f"tap {tap}" if tap is not None else "delivery"
        self._log.failure(
            "flow {flow_id}: {where} failed on a unit going {direction}; closing the flow",
            failure,
            flow_id=self.flow.id,
            where=where,
            direction=str(self.direction),
        )
        self._on_error(failure)


_WAIT = object()


class _Waiter:
    """Catches a tap's Deferred result, whether it fires now or later."""

    __slots__ = ("arm", "route", "unit", "sync", "done", "value")

    def __init__(self, arm: Arm, route: _Route, unit: Unit) -> None:
        self.arm = arm
        self.route = route
        self.unit = unit
        self.sync = True
        self.done = False
        self.value: Any = None

    def fired(self, value: Any) -> None:
        if self.sync:
            self.done = True
            self.value = value
        else:
            self.arm._resumed(value, self.route, self.unit)
        return None
