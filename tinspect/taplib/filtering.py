"""Filter rules: which requests, responses and TLS connections to allow, block or pass through.

Sans-IO: the ``filter`` tap (`taps.filter`) reads a rules file and asks
these objects, with the client's address and the time. One rule per line,
``#`` starts a comment, the first rule that matches decides::

    # definitions (anywhere in the file; `tinspect.taplib.conditions`)
    timezone Europe/London
    group    pupils  192.0.2.0/25,2001:db8:10::/64
    group    tablets 192.0.2.200/29 ca=no        # devices without our CA
    group    staff   192.0.2.128/26
    window   school  mon-fri 08:00-16:00

    # ACTION  CONDITIONS (all must hold)
    block       host=*.casino.example
    passthrough host=*.bank.example           # TLS relayed untouched, never decrypted
    allow       host=intranet.example.org
    block       url=^https?://[^/]+/ads/ method=GET,HEAD
    block       type=video/*                  # by the response's Content-Type
    block       host=*.example.net url=/login
    block       group=pupils,tablets time=school list=/var/lib/blacklists/games,/var/lib/blacklists/social
    block       group=staff list=/var/lib/blacklists/malware
    block       domains=ads.txt               # next to the rules file
    block       host=*.pinned.example tls=alert

Conditions:
    host=GLOB     the request's host (the SNI for TLS decisions), without
                  port, case-insensitive shell glob (``*.example.com`` is
                  the subdomains; add ``example.com`` for the name itself).
    url=REGEX     a regular expression searched in the full URL.
    method=LIST   comma-separated methods (``GET,HEAD``).
    type=GLOB     the response's media type (``video/*``, ``application/zip``);
                  a rule with ``type`` decides responses, the others requests.
    list=DIRS     comma-separated category directories in the blocklists'
                  layout (UT1, Shalla): the host or a parent domain is in
                  the directory's ``domains`` file, or the host and path
                  start with an entry of its ``urls`` file
                  (`tinspect.taplib.domains`). The decision names the
                  category (the directory's name) that matched.
    domains=FILES comma-separated plain lists of domains, one a line: the
                  host or a parent domain is listed (the category is the
                  file's stem: ``ads.txt`` is ``ads``).
    group=NAMES   the client is in one of these groups (a client is in the
                  first group, in the file's order, holding its address).
    time=NAMES    now is in one of these windows, in the ``timezone``.

Option: ``tls=alert`` on a block rule refuses a blocked TLS connection with
an alert even when the client's group has the CA (pinned apps); a group with
``ca=no`` gets an alert for every blocked TLS connection.

A relative path in ``list=`` or ``domains=`` is relative to the rules file's
directory. Each list is read once however many rules name it.

Actions: ``allow``, ``block``, ``passthrough`` (with ``host``, ``list``,
``domains``, ``group`` and ``time`` only: it is decided from the
ClientHello, before anything is decrypted, so ``urls`` entries do not make a
connection pass through; to HTTP requests it means allow). A value with
spaces goes in double quotes. Requests and responses no rule matches get the
default (allow, unless the tap is told otherwise). `Rules.hello` says what
the ClientHello alone decides: pass through, block (before any certificate
is made), or neither (each request is decided as it comes).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinspect.taplib.conditions import ConditionError, Group, Groups, Moment, Window, check_name, zone
from tinspect.taplib.domains import DomainList, ListError, Query, read_category, read_domains

__all__ = ["ALLOW", "BLOCK", "PASSTHROUGH", "Rule", "Rules", "Decision", "RulesError"]

ALLOW, BLOCK, PASSTHROUGH = "allow", "block", "passthrough"
_KEYS = ("host", "url", "method", "type", "list", "domains", "group", "time", "tls")
_READERS = {"list": read_category, "domains": read_domains}
_DEFINITIONS = ("group", "window", "timezone")


class RulesError(ValueError):
    """A rules file that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class Rule:
    action: str
    host: str | None = None
    url: re.Pattern | None = None
    methods: frozenset[str] | None = None
    media: str | None = None
    lists: tuple[DomainList, ...] = ()  # list= and domains=: the host or URL must be in one
    text: str = ""  # the line as written
    where: str = ""  # "file:line"
    groups: frozenset[str] | None = None  # group=: the client's group is one of them
    windows: tuple[Window, ...] = ()  # time=: now is in one of them
    alert: bool = False  # tls=alert: refuse blocked TLS with an alert, never a page

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"

    def _applies(self, who: _Who) -> bool:
        """Whether the client and the time are the rule's (``group=``, ``time=``)."""
        if self.groups is not None and (who.group is None or who.group.name not in self.groups):
            return False
        return not self.windows or any(w.contains(who.moment.minute) for w in self.windows)

    def _matches(self, host: str, url: str, method: str) -> bool:
        if self.host is not None and not fnmatch.fnmatchcase(host.rstrip(".").lower(), self.host):
            return False
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.url is None or self.url.search(url) is not None


@dataclass(frozen=True)
class Decision:
    action: str  # allow, block (or passthrough, from `Rules.hello`)
    rule: Rule | None  # None: the default
    category: str | None = None  # the list that matched, for a rule with list= or domains=
    group: str | None = None  # the client's group, if it is in one
    alert: bool = False  # a blocked TLS connection gets an alert: tls=alert, or a group with ca=no

    @property
    def why(self) -> str:
        if self.rule is None:
            return "no rule matched: the default"
        return f"rule {self.rule}" + (f" (list {self.category})" if self.category is not None else "")


class _Who:
    """The client and the time one decision is asked for."""

    __slots__ = ("group", "moment")

    def __init__(self, group: Group | None, moment: Moment) -> None:
        self.group = group
        self.moment = moment


class Rules:
    """A parsed rules file.

    Args:
        rules: in order.
        default: the action when no rule matches (allow or block).
        groups: the client groups rules name (``group=``).
        tz: the time zone of the windows rules name (``time=``).
    """

    def __init__(self, rules: list[Rule], default: str = ALLOW, groups: Groups | None = None,
                 tz: zoneinfo.ZoneInfo | None = None) -> None:
        if default not in (ALLOW, BLOCK):
            raise RulesError(f"the default must be allow or block, not {default!r}")
        self.rules = rules
        self.default = default
        self.groups = groups or Groups([])
        self.tz = tz
        self._requests = [r for r in rules if r.media is None]
        self._responses = [r for r in rules if r.media is not None]

    @classmethod
    def parse(cls, text: str, source: str = "<rules>", default: str = ALLOW) -> Rules:
        """Parse a rules file's text.

        Definitions (``group``, ``window``, ``timezone`` lines) may come
        anywhere in the file; rules name them by name.

        Raises:
            RulesError: naming ``source:line`` and what is wrong.
        """
        lines = []
        groups: dict[str, Group] = {}
        windows: dict[str, Window] = {}
        tz: tuple[zoneinfo.ZoneInfo, str] | None = None
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{source}:{number}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise RulesError(f"{where}: {e}") from None
            if not words:
                continue
            kind = words[0].lower()
            if kind not in _DEFINITIONS:
                lines.append((words, line.split("#", 1)[0].strip(), where))
                continue
            try:
                if kind == "timezone":
                    if len(words) != 2:
                        raise ConditionError("timezone takes one IANA name (timezone Europe/Paris)")
                    if tz is not None:
                        raise ConditionError(f"a second timezone (the first is on {tz[1]})")
                    tz = zone(words[1]), where
                    continue
                if len(words) < 3:
                    raise ConditionError(f"{kind} needs a name and what it holds")
                table, make = (groups, Group.parse) if kind == "group" else (windows, Window.parse)
                if words[1] in table:
                    raise ConditionError(f"{kind} {words[1]} is defined twice")
                table[words[1]] = make(words[1], words[2:])
            except ConditionError as e:
                raise RulesError(f"{where}: {e}") from None
        if windows and tz is None:
            raise RulesError(f"{source}: windows need a timezone line (timezone Europe/Paris, or UTC)")
        lists: dict[tuple[str, Path], DomainList] = {}
        rules = [_rule(words, written, where, Path(source).parent, lists, groups, windows)
                 for words, written, where in lines]
        return cls(rules, default, Groups(list(groups.values())), tz[0] if tz else None)

    @property
    def wants_types(self) -> bool:
        """Whether any rule looks at responses' content types."""
        return bool(self._responses)

    @property
    def lists(self) -> list[DomainList]:
        """The lists the rules name, each once."""
        return list({id(lst): lst for rule in self.rules for lst in rule.lists}.values())

    def _who(self, client: str | None, now: float | None) -> _Who:
        return _Who(self.groups.of(client), Moment(now, self.tz))

    def request(self, method: str, host: str, url: str, client: str | None = None,
                now: float | None = None) -> Decision:
        """The decision for a request (rules without ``type``).

        Args:
            client: the client's address (an IP literal), for ``group=``.
            now: seconds since the epoch, for ``time=`` (default: the clock's).
        """
        who = self._who(client, now)
        rule, category = _first(self._requests, method, host, url, who)
        group = who.group.name if who.group is not None else None
        if rule is None:
            return Decision(self.default, None, group=group)
        return Decision(BLOCK if rule.action == BLOCK else ALLOW, rule, category, group)

    def response(self, method: str, host: str, url: str, content_type: str | None, client: str | None = None,
                 now: float | None = None) -> Decision | None:
        """The decision for a response by its media type (rules with ``type``);
        ``None`` when none matches (the request's decision stands)."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        typed = (rule for rule in self._responses if fnmatch.fnmatchcase(media, rule.media))
        who = self._who(client, now)
        rule, category = _first(typed, method, host, url, who)
        if rule is None:
            return None
        return Decision(rule.action, rule, category, who.group.name if who.group is not None else None)

    def hello(self, name: str, client: str | None = None, now: float | None = None) -> Decision | None:
        """What the ClientHello decides for a TLS connection to ``name``, before anything is decrypted.

        The rules are walked in order, as for a request whose URL is not
        known yet. A rule that depends on the request (``url=``,
        ``method=``) is passed over, but an ``allow`` one among them means
        a later block cannot be decided here (one of the requests might be
        allowed). A rule with lists matches by their ``domains`` entries;
        one that is not ``passthrough`` whose lists have only ``urls``
        entries for the name stops the walk (the paths must be seen).

        Returns:
            A `Decision` to ``passthrough`` or to ``block`` (its ``alert``
            says whether the client gets an alert rather than a page), or
            ``None``: intercept, and decide each request as it comes.
        """
        who = self._who(client, now)
        group = who.group
        query = None
        maybe_allowed = False
        bare = name.rstrip(".").lower()
        for rule in self._requests:
            if not rule._applies(who):
                continue
            if rule.host is not None and not fnmatch.fnmatchcase(bare, rule.host):
                continue
            if rule.url is not None or rule.methods is not None:
                maybe_allowed = maybe_allowed or rule.action != BLOCK
                continue
            category = None
            if rule.lists:
                query = query or Query(name)
                category = next((lst.name for lst in rule.lists if lst.has_domain(query)), None)
                if category is None:
                    if rule.action != PASSTHROUGH and any(lst.may_match(query) for lst in rule.lists):
                        return None
                    continue
            if rule.action == ALLOW:
                return None
            if rule.action == PASSTHROUGH:
                return Decision(PASSTHROUGH, rule, category, group.name if group else None)
            return None if maybe_allowed else self._blocked(rule, category, group)
        if self.default == BLOCK and not maybe_allowed:
            return self._blocked(None, None, group)
        return None

    @staticmethod
    def _blocked(rule: Rule | None, category: str | None, group: Group | None) -> Decision:
        alert = (rule is not None and rule.alert) or (group is not None and not group.ca)
        return Decision(BLOCK, rule, category, group.name if group else None, alert)

    def tls_passthrough(self, name: str, client: str | None = None, now: float | None = None) -> Rule | None:
        """The ``passthrough`` rule for a TLS connection to ``name``, if `hello` decides to pass it through."""
        decision = self.hello(name, client, now)
        return decision.rule if decision is not None and decision.action == PASSTHROUGH else None


def _first(rules: Iterable[Rule], method: str, host: str, url: str, who: _Who) -> tuple[Rule | None, str | None]:
    """The first rule that matches a request, and the list that matched (if it has lists)."""
    query = None
    for rule in rules:
        if not rule._matches(host, url, method) or not rule._applies(who):
            continue
        if not rule.lists:
            return rule, None
        query = query or Query(host, _path(url))
        for lst in rule.lists:
            if lst.match(query):
                return rule, lst.name
    return None, None


def _path(url: str) -> str | None:
    """The path and query of a full URL (``None`` for a CONNECT's ``host:port``)."""
    _, scheme, rest = url.partition("://")
    if not scheme:
        return None
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def _rule(words: list[str], text: str, where: str, base: Path, lists: dict[tuple[str, Path], DomainList],
          groups: dict[str, Group], windows: dict[str, Window]) -> Rule:
    action, *conditions = words
    action = action.lower()
    if action not in (ALLOW, BLOCK, PASSTHROUGH):
        raise RulesError(f"{where}: unknown action {words[0]!r} (allow, block, passthrough; or a definition: "
                         "group, window, timezone)")
    values: dict[str, str] = {}
    for condition in conditions:
        key, sep, value = condition.partition("=")
        key = key.lower()
        if not sep or key not in _KEYS:
            raise RulesError(f"{where}: {condition!r} is not a condition (host=, url=, method=, type=, list=, "
                             "domains=, group=, time=; or tls=alert)")
        if key in values:
            raise RulesError(f"{where}: {key}= given twice")
        if not value:
            raise RulesError(f"{where}: {key}= needs a value")
        values[key] = value
    url = None
    if "url" in values:
        try:
            url = re.compile(values["url"])
        except re.error as e:
            raise RulesError(f"{where}: url={values['url']!r} is not a regular expression: {e}") from None
    if action == PASSTHROUGH and not set(values) <= {"host", "list", "domains", "group", "time"}:
        raise RulesError(f"{where}: passthrough takes host=, list=, domains=, group= and time= only (it is decided "
                         "before anything is decrypted)")
    tls = values.get("tls", "page").lower()
    if tls not in ("page", "alert") or (tls == "alert" and action != BLOCK):
        raise RulesError(f"{where}: tls= is for block rules: tls=alert (refuse TLS with an alert) or tls=page")
    methods = frozenset(m.strip().upper() for m in values["method"].split(",") if m.strip()) if "method" in values \
        else None
    named = tuple(_list(key, base / p.strip(), where, lists) for key in ("list", "domains") if key in values
                  for p in values[key].split(",") if p.strip())
    in_groups = frozenset(_defined(n, groups, "group", where) for n in values["group"].split(",") if n) \
        if "group" in values else None
    in_windows = tuple(windows[_defined(n, windows, "window", where)] for n in values.get("time", "").split(",") if n)
    return Rule(action, values.get("host", "").lower() or None, url, methods,
                values.get("type", "").lower() or None, named, text, where, in_groups, in_windows, tls == "alert")


def _defined(name: str, table: dict, kind: str, where: str) -> str:
    """``name`` if a ``kind`` line defines it."""
    if name not in table:
        known = ", ".join(table) or "none"
        raise RulesError(f"{where}: no {kind} {name!r} is defined (a '{kind} {name} ...' line; defined: {known})")
    return name


def _list(key: str, path: Path, where: str, lists: dict[tuple[str, Path], DomainList]) -> DomainList:
    """The list ``key=path`` names, read on first mention (``lists`` holds those read)."""
    if (key, path) not in lists:
        try:
            lists[key, path] = _READERS[key](path)
        except ListError as e:
            raise RulesError(f"{where}: {key}={path}: {e}") from None
        except OSError as e:
            raise RulesError(f"{where}: {key}={path}: cannot read it: {e.strerror}") from None
    return lists[key, path]
