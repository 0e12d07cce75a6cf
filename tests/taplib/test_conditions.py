"""Who and when (tinspect.taplib.conditions): client groups by network, time windows in a zone, with
an injected clock: boundaries, overnight windows, daylight saving time."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.taplib.conditions import DAYS, ConditionError, Group, Groups, Moment, Window, zone

UTC = zone("UTC")
LONDON = zone("Europe/London")
ZONES = [UTC, LONDON, zone("America/New_York"), zone("Australia/Lord_Howe"), zone("Asia/Kathmandu")]


def at(text: str, tz=UTC) -> float:
    """Seconds since the epoch of a local wall time ``YYYY-MM-DD HH:MM[:SS]`` in ``tz``."""
    return datetime.fromisoformat(text).replace(tzinfo=tz).timestamp()


def inside(window: Window, now: float, tz=UTC) -> bool:
    return window.contains(Moment(now, tz).minute)


def test_a_window_starts_inclusive_and_ends_exclusive_to_the_minute():
    """mon-fri 08:00-16:00: 08:00:00 and 15:59:59 are in; 07:59:59, 16:00 and Saturday are out (2026-12-07 is a Monday)."""
    school = Window.parse("school", ["mon-fri", "08:00-16:00"])
    assert [inside(school, at(t)) for t in ("2026-12-07 07:59:59", "2026-12-07 08:00", "2026-12-11 15:59:59",
                                            "2026-12-11 16:00", "2026-12-12 10:00")] == [False, True, True, False,
                                                                                          False]


def test_an_overnight_window_runs_from_the_day_named_into_the_next():
    """fri 22:00-06:00 is Friday night into Saturday morning; a Sunday night one wraps into Monday."""
    friday = Window.parse("night", ["fri", "22:00-06:00"])
    assert [inside(friday, at(t)) for t in ("2026-12-11 21:59", "2026-12-11 22:00", "2026-12-12 05:59",
                                            "2026-12-12 06:00", "2026-12-10 23:00")] == [False, True, True, False,
                                                                                          False]
    sunday = Window.parse("night", ["sun", "22:00-06:00"])
    assert inside(sunday, at("2026-12-07 03:00")) and not inside(sunday, at("2026-12-08 03:00"))


def test_days_alone_are_whole_days_and_hours_alone_are_every_day():
    """sat,sun: the weekend, all day; 12:00-13:00 with no days: every day; several spans in one window."""
    weekend = Window.parse("weekend", ["sat,sun"])
    assert inside(weekend, at("2026-12-12 00:00")) and inside(weekend, at("2026-12-13 23:59"))
    assert not inside(weekend, at("2026-12-14 00:00"))
    lunch = Window.parse("lunch", ["12:00-13:00"])
    assert all(inside(lunch, at(f"2026-12-{d:02} 12:30")) for d in range(7, 14))
    mixed = Window.parse("mixed", ["mon", "08:00-09:00,10:00-11:00", "sat", "fri-mon", "23:00-24:00"])
    assert [inside(mixed, at(t)) for t in ("2026-12-07 08:30", "2026-12-07 09:30", "2026-12-07 10:30",
                                           "2026-12-12 03:00", "2026-12-13 23:30", "2026-12-09 23:30")] == \
        [True, False, True, True, True, False]


def test_daylight_saving_time_moves_a_window_in_utc():
    """08:00-16:00 in Europe/London is 07:00-15:00 UTC in summer, 08:00-16:00 UTC in winter."""
    school = Window.parse("school", ["mon-fri", "08:00-16:00"])
    assert inside(school, at("2026-03-30 07:30", timezone.utc), LONDON)  # 08:30 BST
    assert not inside(school, at("2026-03-27 07:30", timezone.utc), LONDON)  # 07:30 GMT
    assert not inside(school, at("2026-03-30 15:30", timezone.utc), LONDON)  # 16:30 BST


@pytest.mark.parametrize("night, hours", [("2026-03-28", 7), ("2026-10-24", 9)])
def test_an_overnight_window_across_a_clock_change_lasts_the_wall_clock_hours(night, hours):
    """sat 22:00-06:00 in London: 7 real hours the night clocks go forward, 9 the night they go back."""
    window = Window.parse("night", ["sat", "22:00-06:00"])
    start = datetime.fromisoformat(f"{night} 12:00").replace(tzinfo=timezone.utc).timestamp()
    minutes = sum(inside(window, start + 60 * i, LONDON) for i in range(24 * 60))
    assert minutes == hours * 60


def test_a_window_inside_the_skipped_hour_is_empty_that_night():
    """01:00-02:00 in London does not happen on 29 March 2026 (01:00 GMT is 02:00 BST)."""
    window = Window.parse("gap", ["01:00-02:00"])
    start = at("2026-03-29 00:00", timezone.utc)
    assert not any(inside(window, start + 60 * i, LONDON) for i in range(3 * 60))


@st.composite
def spans(draw):
    days = draw(st.sets(st.integers(0, 6), min_size=1))
    start = draw(st.integers(0, 1439))
    end = draw(st.integers(0, 1440).filter(lambda e: e % 1440 != start))
    return days, start, end


def hhmm(minute: int) -> str:
    return f"{minute // 60:02}:{minute % 60:02}"


def window_of(days, start, end) -> Window:
    return Window.parse("w", [",".join(DAYS[d] for d in sorted(days)), f"{hhmm(start)}-{hhmm(end)}"])


INSTANTS = st.floats(min_value=946684800, max_value=2208988800, allow_nan=False)  # 2000 to 2040


@given(spans(), INSTANTS, st.sampled_from(ZONES))
def test_a_window_holds_the_local_times_its_definition_says(span, now, tz):
    """Model check: on a listed day from the start (to the end, or midnight when overnight), or, overnight,
    the next day before the end."""
    days, start, end = span
    local = datetime.fromtimestamp(now, tz)
    day, minute = local.weekday(), local.hour * 60 + local.minute
    if start < end:
        expected = day in days and start <= minute < end
    else:
        expected = (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)
    assert inside(window_of(days, start, end), now, tz) == expected


@given(st.integers(0, 1439), st.integers(0, 1439), INSTANTS, st.sampled_from(ZONES))
def test_a_window_and_its_complement_split_every_day(a, b, now, tz):
    """a-b and b-a every day: any instant is in exactly one of them."""
    if a == b:
        return
    first = Window.parse("a", [f"{hhmm(a)}-{hhmm(b)}"])
    second = Window.parse("b", [f"{hhmm(b)}-{hhmm(a)}"])
    assert inside(first, now, tz) != inside(second, now, tz)


@given(st.integers(0, 6), st.integers(1, 1439), st.integers(0, 1438), INSTANTS, st.sampled_from(ZONES))
def test_an_overnight_window_is_the_evening_and_the_next_morning(day, start, end, now, tz):
    """DAY S-E with E < S is DAY S-24:00 plus DAY+1 00:00-E."""
    if end >= start:
        return
    night = Window.parse("n", [DAYS[day], f"{hhmm(start)}-{hhmm(end)}"])
    evening = Window.parse("e", [DAYS[day], f"{hhmm(start)}-24:00"])
    morning = Window.parse("m", [DAYS[(day + 1) % 7], f"00:00-{hhmm(end)}"]) if end else None
    assert inside(night, now, tz) == (inside(evening, now, tz) or (morning is not None and inside(morning, now, tz)))


@pytest.mark.parametrize("words, message", [
    (["mon-fri"], None),
    ([], "gives no days or hours"),
    (["funday", "08:00-16:00"], "'funday' is neither days"),
    (["08:00-08:00"], "is empty (the whole day is 00:00-24:00)"),
    (["00:00-00:00"], "is empty"),
    (["25:00-26:00"], "hours are 00:00 to 23:59"),
    (["08:00-24:30"], "hours are 00:00 to 23:59"),
    (["8:00-16:00"], "is neither days"),
])
def test_window_mistakes_say_what_is_wrong(words, message):
    if message is None:
        assert Window.parse("ok", words).spans
        return
    with pytest.raises(ConditionError, match=re.escape(message)):
        Window.parse("w", words)


def test_a_client_is_in_the_first_group_holding_its_address():
    """First group wins; IPv6; an IPv4-mapped IPv6 address counts as IPv4; scope ids and strangers."""
    groups = Groups([Group.parse("tablets", ["192.0.2.200/29", "ca=no"]),
                     Group.parse("pupils", ["192.0.2.0/24,2001:db8:10::/64"]),
                     Group.parse("staff", ["198.51.100.7", "2001:db8:20::/64"])])
    assert groups.of("192.0.2.201").name == "tablets" and not groups.of("192.0.2.201").ca
    assert groups.of("192.0.2.10").name == "pupils" and groups.of("192.0.2.10").ca
    assert groups.of("::ffff:192.0.2.10").name == "pupils"
    assert groups.of("2001:db8:10::99").name == "pupils"
    assert groups.of("2001:db8:20::1%eth0").name == "staff"
    assert groups.of("198.51.100.7").name == "staff" and groups.of("198.51.100.8") is None
    assert groups.of("not an address") is None and groups.of(None) is None


def test_the_group_cache_stays_bounded_and_right():
    """Ten thousand distinct clients: answers stay right, the cache never holds more than its bound."""
    groups = Groups([Group.parse("odd", ["10.0.0.0/8"])])
    for i in range(10000):
        assert groups.of(f"10.0.{i // 256}.{i % 256}").name == "odd"
        assert groups.of(f"11.0.{i // 256}.{i % 256}") is None
    assert len(groups._cache) <= 4096


@pytest.mark.parametrize("words, message", [
    ([], "lists no network"),
    (["192.0.2.0/33"], "is not a network"),
    (["staff.example"], "is not a network"),
    (["192.0.2.0/24", "ca=maybe"], "ca=yes or ca=no"),
    (["192.0.2.0/24", "colour=red"], "ca=yes or ca=no"),
])
def test_group_mistakes_say_what_is_wrong(words, message):
    with pytest.raises(ConditionError, match=message):
        Group.parse("g", words)


def test_an_unknown_zone_or_name_is_refused():
    with pytest.raises(ConditionError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
    with pytest.raises(ConditionError, match="unknown time zone 'Europe'"):
        zone("Europe")
    with pytest.raises(ConditionError, match="cannot name a group"):
        Group.parse("pupils!", ["192.0.2.0/24"])


def test_a_moment_without_a_clock_is_now():
    """Moment(None, ...) reads the clock: its minute is the current minute of the week in UTC."""
    before = datetime.now(timezone.utc)
    minute = Moment(None, UTC).minute
    after = datetime.now(timezone.utc)
    assert minute in {d.weekday() * 1440 + d.hour * 60 + d.minute for d in (before, after)}
