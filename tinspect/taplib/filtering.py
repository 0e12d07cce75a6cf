"""Filter rules: which requests, responses and TLS connections to allow, block or pass through.

Sans-IO: the ``filter`` tap (`taps.filter`) reads a rules file and asks
these objects. One rule per line, ``#`` starts a comment, the first rule
that matches decides::

    # ACTION  CONDITIONS (all must hold)
    block       host=*.casino.example
    passthrough host=*.bank.example           # TLS relayed untouched, never decrypted
    allow       host=intranet.example.org
    block       url=^https?://[^/]+/ads/ method=GET,HEAD
    block       type=video/*                  # by the response's Content-Type
    block       host=*.example.net url=/login
    block       list=/var/lib/blacklists/games,/var/lib/blacklists/gambling
    block       domains=ads.txt               # next to the rules file

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

A relative path in ``list=`` or ``domains=`` is relative to the rules file's
directory. Each list is read once however many rules name it.

Actions: ``allow``, ``block``, ``passthrough`` (with ``host``, ``list`` and
``domains`` only: it is decided from the ClientHello, before anything is
decrypted, so ``urls`` entries do not make a connection pass through; to
HTTP requests it means allow). A value with spaces goes in double quotes.
Requests and responses no rule matches get the default (allow, unless the
tap is told otherwise).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinspect.taplib.domains import DomainList, ListError, Query, read_category, read_domains

__all__ = ["ALLOW", "BLOCK", "PASSTHROUGH", "Rule", "Rules", "Decision", "RulesError"]

ALLOW, BLOCK, PASSTHROUGH = "allow", "block", "passthrough"
_KEYS = ("host", "url", "method", "type", "list", "domains")
_READERS = {"list": read_category, "domains": read_domains}


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

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"

    def _matches(self, host: str, url: str, method: str) -> bool:
        if self.host is not None and not fnmatch.fnmatchcase(host.rstrip(".").lower(), self.host):
            return False
        if self.methods is not None and method.upper() not in self.methods:
            return False
        return self.url is None or self.url.search(url) is not None


@dataclass(frozen=True)
class Decision:
    action: str  # allow or block
    rule: Rule | None  # None: the default
    category: str | None = None  # the list that matched, for a rule with list= or domains=

    @property
    def why(self) -> str:
        if self.rule is None:
            return "no rule matched: the default"
        return f"rule {self.rule}" + (f" (list {self.category})" if self.category is not None else "")


class Rules:
    """A parsed rules file.

    Args:
        rules: in order.
        default: the action when no rule matches (allow or block).
    """

    def __init__(self, rules: list[Rule], default: str = ALLOW) -> None:
        if default not in (ALLOW, BLOCK):
            raise RulesError(f"the default must be allow or block, not {default!r}")
        self.rules = rules
        self.default = default
        self._requests = [r for r in rules if r.media is None]
        self._responses = [r for r in rules if r.media is not None]

    @classmethod
    def parse(cls, text: str, source: str = "<rules>", default: str = ALLOW) -> Rules:
        """Parse a rules file's text.

        Raises:
            RulesError: naming ``source:line`` and what is wrong.
        """
        rules = []
        lists: dict[tuple[str, Path], DomainList] = {}
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{source}:{number}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise RulesError(f"{where}: {e}") from None
            if not words:
                continue
            rules.append(_rule(words, line.split("#", 1)[0].strip(), where, Path(source).parent, lists))
        return cls(rules, default)

    @property
    def wants_types(self) -> bool:
        """Whether any rule looks at responses' content types."""
        return bool(self._responses)

    @property
    def lists(self) -> list[DomainList]:
        """The lists the rules name, each once."""
        return list({id(lst): lst for rule in self.rules for lst in rule.lists}.values())

    def request(self, method: str, host: str, url: str) -> Decision:
        """The decision for a request (rules without ``type``)."""
        rule, category = _first(self._requests, method, host, url)
        if rule is None:
            return Decision(self.default, None)
        return Decision(BLOCK if rule.action == BLOCK else ALLOW, rule, category)

    def response(self, method: str, host: str, url: str, content_type: str | None) -> Decision | None:
        """The decision for a response by its media type (rules with ``type``);
        ``None`` when none matches (the request's decision stands)."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        typed = (rule for rule in self._responses if fnmatch.fnmatchcase(media, rule.media))
        rule, category = _first(typed, method, host, url)
        return Decision(rule.action, rule, category) if rule is not None else None

    def tls_passthrough(self, name: str) -> Rule | None:
        """The ``passthrough`` rule for a TLS connection to ``name``, if the first
        host-only rule that matches it is one.

        A rule with lists matches the name by their ``domains`` entries; one
        that is not ``passthrough`` also when the name has ``urls`` entries
        (whether it blocks depends on the path, so the connection must be
        decrypted to tell)."""
        query = None
        for rule in self._requests:
            if rule.url is not None or rule.methods is not None or (rule.host is None and not rule.lists):
                continue
            if rule.host is not None and not fnmatch.fnmatchcase(name.rstrip(".").lower(), rule.host):
                continue
            if rule.lists:
                query = query or Query(name)
                whole = rule.action == PASSTHROUGH
                if not any(lst.has_domain(query) if whole else lst.may_match(query) for lst in rule.lists):
                    continue
            return rule if rule.action == PASSTHROUGH else None
        return None


def _first(rules: Iterable[Rule], method: str, host: str, url: str) -> tuple[Rule | None, str | None]:
    """The first rule that matches a request, and the list that matched (if it has lists)."""
    query = None
    for rule in rules:
        if not rule._matches(host, url, method):
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


def _rule(words: list[str], text: str, where: str, base: Path, lists: dict[tuple[str, Path], DomainList]) -> Rule:
    action, *conditions = words
    action = action.lower()
    if action not in (ALLOW, BLOCK, PASSTHROUGH):
        raise RulesError(f"{where}: unknown action {words[0]!r} (allow, block or passthrough)")
    values: dict[str, str] = {}
    for condition in conditions:
        key, sep, value = condition.partition("=")
        key = key.lower()
        if not sep or key not in _KEYS:
            raise RulesError(f"{where}: {condition!r} is not a condition (host=, url=, method=, type=)")
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
    if action == PASSTHROUGH and not set(values) <= {"host", "list", "domains"}:
        raise RulesError(f"{where}: passthrough takes host=, list= and domains= only (it is decided before "
                         "anything is decrypted)")
    methods = frozenset(m.strip().upper() for m in values["method"].split(",") if m.strip()) if "method" in values \
        else None
    named = tuple(_list(key, base / p.strip(), where, lists) for key in ("list", "domains") if key in values
                  for p in values[key].split(",") if p.strip())
    return Rule(action, values.get("host", "").lower() or None, url, methods,
                values.get("type", "").lower() or None, named, text, where)


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
