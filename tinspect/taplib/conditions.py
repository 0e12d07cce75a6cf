"""Who and when: the client groups and time windows filter rules are conditioned on.

Sans-IO, with the clock injected: the ``filter`` tap's rules file
(`tinspect.taplib.filtering`) defines them, and every decision is asked
with the client's address and the time as seconds since the epoch::

    timezone Europe/London
    group  pupils  192.0.2.0/25,2001:db8:10::/64
    group  tablets 192.0.2.200/29  ca=no
    group  staff   192.0.2.128/26
    window school  mon-fri 08:00-16:00
    window night   22:00-06:00            # every day, overnight

Theory of operation
-------------------
*Groups.* A client belongs to one group: the first one, in the file's order,
that lists a network holding its address (an IPv4 client seen as an
IPv4-mapped IPv6 address counts as IPv4). ``ca=no`` says the group's
devices do not trust the proxy's CA, so a block page cannot reach them over
TLS: the filter refuses their TLS with an alert instead. Lookups are cached
per address (bounded), since a school has a few thousand clients and each
asks many times.

*Windows.* A window is a set of spans of the week, kept as half-open
intervals of minutes since Monday 00:00 local time. ``DAYS HH:MM-HH:MM``
adds a span on each of those days; a range with no days before it is every
day; days with no range after them are whole days. A span whose end is not
after its start runs overnight: it starts on the day named and ends on the
next (``fri 22:00-06:00`` is Friday night into Saturday). Starts are
inclusive and ends exclusive, to the minute (16:00 is outside
``08:00-16:00``; 15:59:59 is inside).

Local time is wall-clock time in the configured IANA zone (`zoneinfo`), so
``08:00`` follows daylight saving time. On the night clocks go forward the
skipped hour never happens (a window inside it is empty that night, an
overnight window is an hour shorter); on the night they go back the
repeated hour happens twice and is in a window both times.
"""

from __future__ import annotations

import ipaddress
import re
import time
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

__all__ = ["ConditionError", "Group", "Groups", "Window", "Moment", "zone", "DAYS"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY, _WEEK = 1440, 7 * 1440
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_RANGE = re.compile(r"(\d\d):(\d\d)-(\d\d):(\d\d)\Z")
_CACHE = 4096  # client addresses whose group is remembered
_YES_NO = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConditionError(ValueError):
    """A group, window or time zone that cannot be used; the message says why."""


def check_name(name: str, what: str) -> str:
    """``name`` if it can name a group or window (letters, digits, ``_ . -``)."""
    if not _NAME.match(name):
        raise ConditionError(f"{name!r} cannot name a {what} (letters, digits, '_', '.', '-')")
    return name


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name`` (``Europe/Paris``, ``UTC``)."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory (Europe)
        raise ConditionError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris or UTC)") from None


@dataclass(frozen=True)
class Group:
    """A named set of client networks.

    Attributes:
        name: as rules name it (``group=pupils``).
        networks: IPv4 and IPv6 networks, in the order given.
        ca: whether its devices trust the proxy's CA (``ca=no``: a blocked
            TLS connection gets an alert, never a page it cannot see).
    """

    name: str
    networks: tuple[Network, ...]
    ca: bool = True

    @classmethod
    def parse(cls, name: str, words: list[str]) -> Group:
        """A ``group NAME NET[,NET...]... [ca=yes|no]`` definition's words after the name.

        Raises:
            ConditionError: no network, one that does not parse, or a bad option.
        """
        networks: list[Network] = []
        ca = True
        for word in words:
            key, sep, value = word.partition("=")
            if sep:
                if key.lower() != "ca" or value.lower() not in _YES_NO:
                    raise ConditionError(f"{word!r}: a group takes networks and ca=yes or ca=no")
                ca = _YES_NO[value.lower()]
                continue
            for text in filter(None, word.split(",")):
                try:
                    networks.append(ipaddress.ip_network(text.split("%", 1)[0], strict=False))
                except ValueError:
                    raise ConditionError(f"{text!r} is not a network (192.0.2.0/24, 2001:db8::/32, an address)") \
                        from None
        if not networks:
            raise ConditionError(f"group {name} lists no network")
        return cls(check_name(name, "group"), tuple(networks), ca)


class Groups:
    """The groups of a rules file, in order: which one a client is in.

    Args:
        groups: in the file's order (the first that holds an address wins).
    """

    def __init__(self, groups: list[Group]) -> None:
        self.groups = groups
        self.by_name = {g.name: g for g in groups}
        self._cache: dict[str, Group | None] = {}

    def of(self, address: str | None) -> Group | None:
        """The group of the client at ``address`` (an IP literal), or ``None``."""
        if not self.groups or not address:
            return None
        try:
            return self._cache[address]
        except KeyError:
            pass
        group = self._find(address)
        if len(self._cache) >= _CACHE:
            self._cache.clear()  # a scan of the address space must not grow memory; real clients refill it
        self._cache[address] = group
        return group

    def _find(self, address: str) -> Group | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for group in self.groups:
            for net in group.networks:
                if ip.version == net.version and ip in net:
                    return group
        return None


@dataclass(frozen=True)
class Window:
    """Named spans of the week, in local time (see the module docstring).

    Attributes:
        name: as rules name it (``time=school``).
        spans: half-open ``(start, end)`` minutes since Monday 00:00, each
            within one week (an overnight span from Sunday is split in two).
    """

    name: str
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, name: str, words: list[str]) -> Window:
        """A ``window NAME [DAYS] [HH:MM-HH:MM[,...]]...`` definition's words after the name.

        Raises:
            ConditionError: nothing given, or a word that is neither days nor ranges.
        """
        spans: list[tuple[int, int]] = []
        days: list[int] | None = None  # the days the ranges after them are on
        used = True  # whether `days` had a range after them
        for word in words:
            word = word.lower()
            if word[:1].isdigit():
                for text in filter(None, word.split(",")):
                    start, end = _range(text)
                    for day in days if days is not None else range(7):
                        spans += _span(day * _DAY + start, day * _DAY + end if end > start else
                                       (day + 1) * _DAY + end)
                used = True
                continue
            if not used:
                spans += [s for day in days for s in _span(day * _DAY, (day + 1) * _DAY)]
            days, used = _days(word), False
        if not used:
            spans += [s for day in days for s in _span(day * _DAY, (day + 1) * _DAY)]
        if not spans:
            raise ConditionError(f"window {name} gives no days or hours (mon-fri 08:00-16:00, sat,sun, 22:00-06:00)")
        return cls(check_name(name, "window"), tuple(sorted(spans)))

    def contains(self, minute: int) -> bool:
        """Whether the minute of the week (0 is Monday 00:00) is in a span."""
        for start, end in self.spans:
            if start <= minute < end:
                return True
        return False


def _range(text: str) -> tuple[int, int]:
    """``HH:MM-HH:MM`` as minutes of the day (the end may be 24:00)."""
    match = _RANGE.match(text)
    if not match:
        raise ConditionError(f"{text!r} is neither days (mon-fri, sat,sun) nor hours (08:00-16:00)")
    sh, sm, eh, em = map(int, match.groups())
    if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em):
        raise ConditionError(f"{text!r}: hours are 00:00 to 23:59 (an end may be 24:00)")
    start, end = sh * 60 + sm, eh * 60 + em
    if start == end % _DAY:
        raise ConditionError(f"{text!r} is empty (the whole day is 00:00-24:00)")
    return start, end


def _span(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` in minutes of the week; one past Sunday night wraps to Monday."""
    if end <= _WEEK:
        return [(start, end)]
    return [(start, _WEEK), (0, end - _WEEK)]


def _days(word: str) -> list[int]:
    """``mon-fri``, ``sat,sun``, ``fri-mon`` (wrapping) as day numbers, Monday 0."""
    days: list[int] = []
    for part in filter(None, word.split(",")):
        first, sep, last = part.partition("-")
        try:
            a = _DAY_NUMBERS[first]
            b = _DAY_NUMBERS[last] if sep else a
        except KeyError:
            raise ConditionError(f"{word!r} is neither days (mon-fri, sat,sun) nor hours (08:00-16:00)") from None
        days += [(a + i) % 7 for i in range((b - a) % 7 + 1)]
    return days


_DAY_NUMBERS = {name: i for i, day in enumerate(DAYS)
                for name in (day, ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")[i])}


class Moment:
    """One decision's time: seconds since the epoch, as the minute of the week in a zone.

    The local time is worked out on first use only, so decisions that reach
    no rule with a window cost nothing for it.

    Args:
        now: seconds since the epoch (``time.time()``, or a test's clock).
        tz: the rules' time zone.
    """

    __slots__ = ("now", "_tz", "_minute")

    def __init__(self, now: float | None, tz: zoneinfo.ZoneInfo | None) -> None:
        self.now = time.time() if now is None else now
        self._tz = tz
        self._minute: int | None = None

    @property
    def minute(self) -> int:
        """Minutes since Monday 00:00, local wall-clock time."""
        if self._minute is None:
            local = datetime.fromtimestamp(self.now, self._tz)
            self._minute = local.weekday() * _DAY + local.hour * 60 + local.minute
        return self._minute
