"""Semantics of the tap chain: order, both arms, async taps, drop, inject, errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import globalLogPublisher

from tinspect.chain import Arm, Tap, TapChain
from tinspect.flow import Flow, FlowClosed
from tinspect.units import TO_CLIENT, TO_SERVER, Data, Datagram


class Logged(Tap):
    """Appends (name, direction, payload) to a shared log and passes the unit on."""

    def __init__(self, name, log, kinds=None):
        self.name = name
        self.log = log
        if kinds is not None:
            self.kinds = kinds

    def handle(self, unit, flow):
        self.log.append((self.name, unit.direction, unit.data))
        return unit


class Suffix(Tap):
    def __init__(self, suffix):
        self.suffix = suffix

    def handle(self, unit, flow):
        return replace(unit, data=unit.data + self.suffix)


class Harness:
    """Two arms on one flow, recording deliveries and pause/resume calls."""

    def __init__(self, taps):
        self.chain = TapChain(taps)
        self.flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
        self.delivered = []
        self.events = []
        self.errors = []
        arms = {}
        for d in (TO_SERVER, TO_CLIENT):
            arms[d] = Arm(
                self.chain,
                self.flow,
                d,
                self.delivered.append,
                pause=lambda d=d: self.events.append(("pause", d)),
                resume=lambda d=d: self.events.append(("resume", d)),
                on_error=self.errors.append,
                on_end=lambda d=d: self.events.append(("end", d)),
            )
        self.arms = arms
        self.flow.attach(arms, abort=lambda reason: self.events.append(("abort", reason)))

    def submit(self, data, direction=TO_SERVER):
        self.arms[direction].submit(Data(data, direction=direction))


@pytest.fixture
def logged_failures():
    """Collects logged failures so tests can assert a tap error was logged."""
    seen = []

    def observer(event):
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def test_without_taps_units_delivered_during_delivery_keep_their_order():
    """With no tap for a kind, a unit submitted while the previous one is being delivered
    is delivered after it, not inside it."""
    chain = TapChain([])
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    delivered = []

    def deliver(unit):
        delivered.append(("start", unit.data))
        if unit.data == b"1":
            arm.submit(Data(b"2", direction=TO_SERVER))
        delivered.append(("end", unit.data))

    arm = Arm(chain, flow, TO_SERVER, deliver)
    for data in (b"0", b"1", b"3"):  # the first fills the route cache, the rest take the fast path
        arm.submit(Data(data, direction=TO_SERVER))
    assert delivered == [("start", b"0"), ("end", b"0"), ("start", b"1"), ("end", b"1"),
                         ("start", b"2"), ("end", b"2"), ("start", b"3"), ("end", b"3")]
    assert arm.idle


def test_without_taps_a_failing_delivery_fails_the_arm():
    """With no tap for a kind, an exception from the delivery still goes to ``on_error``."""
    chain = TapChain([])
    flow = Flow(("192.0.2.2", 40000), ("198.51.100.2", 80))
    errors = []

    def deliver(unit):
        if unit.data == b"bad":
            raise ValueError("broken")

    arm = Arm(chain, flow, TO_SERVER, deliver, on_error=errors.append)
    arm.submit(Data(b"ok", direction=TO_SERVER))
    arm.submit(Data(b"bad", direction=TO_SERVER))
    assert [f.getErrorMessage() for f in errors] == ["broken"]


def test_taps_run_in_order_on_both_arms():
    """Each arm calls the taps in chain order and delivers the last result."""
    log = []
    h = Harness([Logged("a", log), Suffix(b"!"), Logged("b", log)])
    h.submit(b"up")
    h.submit(b"down", TO_CLIENT)
    assert log == [
        ("a", TO_SERVER, b"up"),
        ("b", TO_SERVER, b"up!"),
        ("a", TO_CLIENT, b"down"),
        ("b", TO_CLIENT, b"down!"),
    ]
    assert h.delivered == [Data(b"up!", direction=TO_SERVER), Data(b"down!", direction=TO_CLIENT)]


def test_none_drops_the_unit_and_later_taps_never_see_it():
    """A tap returning None drops the unit."""
    log = []

    class DropSecret(Tap):
        def handle(self, unit, flow):
            return None if b"secret" in unit.data else unit

    h = Harness([DropSecret(), Logged("after", log)])
    h.submit(b"a secret")
    h.submit(b"public")
    assert log == [("after", TO_SERVER, b"public")]
    assert [u.data for u in h.delivered] == [b"public"]


def test_kinds_filter_skips_taps_for_other_units():
    """A tap whose kinds exclude a unit type is never called for it."""
    log = []
    h = Harness([Logged("dgram-only", log, kinds=(Datagram,)), Logged("all", log)])
    h.submit(b"x")
    assert log == [("all", TO_SERVER, b"x")]
    assert [r.tap.name for r in h.chain.route(Data)] == ["all"]


def test_taps_not_overriding_handle_cost_nothing():
    """The base Tap (no handle override) is left out of dispatch."""
    chain = TapChain([Tap(), Tap()])
    assert chain.route(Data) == ()


def test_deferred_tap_pauses_the_flow_and_keeps_order():
    """Units arriving while a tap's Deferred is pending queue behind it; the source is paused."""
    pending = []

    class Slow(Tap):
        def handle(self, unit, flow):
            if unit.data == b"slow":
                d = Deferred()
                pending.append((d, unit))
                return d
            return unit

    h = Harness([Slow(), Suffix(b".")])
    h.submit(b"slow")
    h.submit(b"fast")
    h.arms[TO_SERVER].finish()
    assert h.delivered == []
    assert h.events == [("pause", TO_SERVER)]
    d, unit = pending[0]
    d.callback(unit)
    assert [u.data for u in h.delivered] == [b"slow.", b"fast."]
    assert h.events == [("pause", TO_SERVER), ("end", TO_SERVER), ("resume", TO_SERVER)]


def test_other_arm_carries_on_while_one_arm_waits():
    """An async tap on one direction does not hold up the other direction."""

    class HoldUp(Tap):
        def handle(self, unit, flow):
            return Deferred() if unit.direction is TO_SERVER else unit

    h = Harness([HoldUp()])
    h.submit(b"stuck")
    h.submit(b"reply", TO_CLIENT)
    assert [u.data for u in h.delivered] == [b"reply"]


def test_already_fired_deferred_takes_the_fast_path():
    """A Deferred that has already fired does not pause the flow."""

    class Instant(Tap):
        def handle(self, unit, flow):
            return succeed(unit)

    h = Harness([Instant(), Suffix(b"?")])
    h.submit(b"q")
    assert [u.data for u in h.delivered] == [b"q?"]
    assert h.events == []


def test_coroutine_tap_is_awaited():
    """An async def handle is run and its result passed on."""
    gate = Deferred()

    class Awaiting(Tap):
        async def handle(self, unit, flow):
            extra = await gate
            return replace(unit, data=unit.data + extra)

    h = Harness([Awaiting()])
    h.submit(b"co")
    assert h.delivered == []
    gate.callback(b"routine")
    assert [u.data for u in h.delivered] == [b"coroutine"]


def test_raising_tap_fails_the_flow_and_is_logged(logged_failures):
    """A tap that raises stops its arm, reports the error and logs the flow id."""

    class Broken(Tap):
        def handle(self, unit, flow):
            raise RuntimeError("tap bug")

    h = Harness([Broken()])
    h.submit(b"x")
    h.submit(b"y")
    assert h.delivered == []
    assert len(h.errors) == 1 and h.errors[0].check(RuntimeError)
    assert logged_failures and logged_failures[0]["flow_id"] == h.flow.id


def test_failed_deferred_fails_the_flow(logged_failures):
    """A tap whose Deferred fails is handled like a tap that raised."""

    class Refuses(Tap):
        def handle(self, unit, flow):
            return fail(ValueError("no"))

    h = Harness([Refuses()])
    h.submit(b"x")
    assert h.delivered == [] and h.errors[0].check(ValueError)


def test_tap_returning_garbage_fails_the_flow(logged_failures):
    """A tap returning something that is not a unit breaks the contract and fails the flow."""

    class Wrong(Tap):
        def handle(self, unit, flow):
            return b"bytes, not a unit"

    h = Harness([Wrong()])
    h.submit(b"x")
    assert h.delivered == [] and len(h.errors) == 1


def test_unit_of_other_direction_answers_locally():
    """Returning a unit travelling the other way sends it back through the other arm's taps."""
    log = []

    class Answer(Tap):
        def handle(self, unit, flow):
            if unit.direction is TO_SERVER:
                return Data(b"blocked", direction=TO_CLIENT)
            return unit

    h = Harness([Answer(), Logged("seen", log)])
    h.submit(b"request")
    assert h.delivered == [Data(b"blocked", direction=TO_CLIENT)]
    assert log == [("seen", TO_CLIENT, b"blocked")]


def test_inject_after_tap_skips_earlier_taps_and_keeps_order():
    """flow.inject sends a unit the other way, seen only by the taps after the given one."""
    log = []

    class Greeter(Tap):
        def handle(self, unit, flow):
            if unit.direction is TO_SERVER and unit.data == b"hello":
                flow.inject(Data(b"welcome", direction=TO_CLIENT), after=self)
            return unit

    first = Logged("first", log)
    h = Harness([first, Greeter(), Logged("last", log)])
    h.submit(b"hello")
    assert sorted(u.data for u in h.delivered) == [b"hello", b"welcome"]
    assert ("first", TO_CLIENT, b"welcome") not in log
    assert ("last", TO_CLIENT, b"welcome") in log


def test_inject_while_running_queues_behind_current_unit():
    """A tap injecting into its own direction sees its unit delivered after the current one."""

    class Doubler(Tap):
        def handle(self, unit, flow):
            if unit.data == b"one":
                flow.inject(Data(b"two", direction=TO_SERVER), after=self)
            return unit

    h = Harness([Doubler()])
    h.submit(b"one")
    assert [u.data for u in h.delivered] == [b"one", b"two"]


def test_inject_on_unattached_flow_raises():
    """Injecting into a flow with no connection raises FlowClosed."""
    flow = Flow(("192.0.2.2", 1), ("198.51.100.2", 2))
    with pytest.raises(FlowClosed):
        flow.inject(Data(b"x", direction=TO_CLIENT))


def test_type_change_reroutes_through_remaining_taps():
    """A tap replacing a Data by a Datagram hands it to later taps that want Datagrams."""
    log = []

    class Convert(Tap):
        def handle(self, unit, flow):
            return Datagram(unit.data, direction=unit.direction)

    h = Harness([Logged("early-dgram", log, kinds=(Datagram,)), Convert(), Logged("late-dgram", log, kinds=(Datagram,))])
    h.submit(b"d")
    assert log == [("late-dgram", TO_SERVER, b"d")]
    assert h.delivered == [Datagram(b"d", direction=TO_SERVER)]


def test_finish_runs_after_queued_units():
    """The end marker is reported only after every unit before it was delivered."""
    h = Harness([])
    h.submit(b"a")
    h.arms[TO_SERVER].finish()
    assert h.events == [("end", TO_SERVER)] and [u.data for u in h.delivered] == [b"a"]


def test_max_pending_drops_datagrams_while_waiting():
    """An arm with max_pending drops what does not fit while a tap is slow."""

    class Hold(Tap):
        def handle(self, unit, flow):
            return Deferred() if unit.data == b"0" else unit

    chain = TapChain([Hold()])
    flow = Flow(("192.0.2.2", 1), ("198.51.100.2", 2), transport="udp")
    out = []
    arm = Arm(chain, flow, TO_SERVER, out.append, max_pending=2)
    for i in range(5):
        arm.submit(Datagram(str(i).encode(), direction=TO_SERVER))
    assert arm.dropped == 2


def test_flow_hooks_called_and_opening_error_reported(logged_failures):
    """flow_opened/flow_closed reach overriding taps; an opening error is returned."""
    seen = []

    class Hooks(Tap):
        def flow_opened(self, flow):
            seen.append(("open", flow.id))

        def flow_closed(self, flow):
            seen.append(("close", flow.id))

    class BadOpen(Tap):
        def flow_opened(self, flow):
            raise KeyError("policy")

    flow = Flow(("192.0.2.2", 1), ("198.51.100.2", 2))
    assert TapChain([Hooks()]).flow_opened(flow) is None
    TapChain([Hooks()]).flow_closed(flow)
    assert seen == [("open", flow.id), ("close", flow.id)]
    assert TapChain([BadOpen()]).flow_opened(flow).check(KeyError)


def test_entry_point_taps_are_found_by_name(tmp_path, monkeypatch):
    """A tap an installed package registers in the tinspect.taps group resolves by its name."""
    from tests.lab_taps import Shout
    from tinspect.taplib.loader import build_taps, parse_tap_names

    dist = tmp_path / "thirdparty_taps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-taps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tinspect.taps]\nloud = tests.lab_taps:Shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tap,) = build_taps(parse_tap_names("loud"), {"loud": {"direction": "to_client"}})
    assert isinstance(tap, Shout) and tap.direction == "to_client" and tap.name == "loud"


def test_tls_block_takes_the_first_answer_and_skips_a_tap_that_raises(logged_failures):
    """TapChain.tls_block: taps asked in order, the first non-None answer wins; a raising tap is logged
    and counts as None; can_intercept reaches every tap."""
    asked = []

    class Verdict(Tap):
        def __init__(self, verdict):
            self.verdict = verdict

        def tls_block(self, name, flow, can_intercept):
            asked.append((self.verdict, name, can_intercept))
            if self.verdict == "raise":
                raise RuntimeError("bug")
            return self.verdict

    flow = Flow(("192.0.2.1", 1), ("198.51.100.1", 443))
    chain = TapChain([Logged("plain", []), Verdict(None), Verdict("raise"), Verdict("alert"), Verdict("page")])
    assert chain.tls_block("blocked.example", flow, False) == "alert"
    assert asked == [(None, "blocked.example", False), ("raise", "blocked.example", False),
                     ("alert", "blocked.example", False)]
    assert len(logged_failures) == 1
    assert TapChain([Logged("plain", [])]).tls_block("a.example", flow, True) is None


def test_handler_for_gives_each_kind_its_own_function_or_declines_it():
    """A tap's `handler_for` is asked once per unit class: its function runs instead of `handle`,
    and a kind it declines (``None``) skips the tap although `kinds` covers it."""
    asked, seen = [], []

    class PerKind(Tap):
        kinds = (Data, Datagram)

        def handler_for(self, kind):
            asked.append(kind)
            return self.data if kind is Data else None

        def data(self, unit, flow):
            seen.append(unit.data)
            return replace(unit, data=unit.data.upper())

    h = Harness([PerKind()])
    h.submit(b"one")
    h.submit(b"two")
    h.arms[TO_SERVER].submit(Datagram(b"dgram", direction=TO_SERVER))
    assert seen == [b"one", b"two"]
    assert [u.data for u in h.delivered] == [b"ONE", b"TWO", b"dgram"]
    assert asked == [Data, Datagram]  # once per class, however many units


def test_a_tap_whose_handler_for_raises_fails_the_flows_that_send_it_that_kind(logged_failures):
    """`handler_for` raising is a broken tap: each flow with a unit of that kind fails closed and
    the log names the tap, as when `handle` raises; kinds it answered for still pass."""

    class Broken(Tap):
        name = "broken"
        kinds = (Data, Datagram)

        def handler_for(self, kind):
            if kind is Data:
                raise RuntimeError("no handler")
            return self.handle

    h = Harness([Broken()])
    h.arms[TO_SERVER].submit(Datagram(b"fine", direction=TO_SERVER))
    h.submit(b"boom")
    assert [u.data for u in h.delivered] == [b"fine"]
    assert len(h.errors) == 1
    assert any("broken" in str(e.get("tap", "")) or "broken" in str(e.get("where", "")) for e in logged_failures)
