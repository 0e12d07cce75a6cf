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

Conditions:
    host=GLOB     the request's host (the SNI for TLS decisions), without
                  port, case-insensitive shell glob (``*.example.com`` is
                  the subdomains; add ``example.com`` for the name itself).
    url=REGEX     a regular expression searched in the full URL.
    method=LIST   comma-separated methods (``GET,HEAD``).
    type=GLOB     the response's media type (``video/*``, ``application/zip``);
                  a rule with ``type`` decides responses, the others requests.

Actions: ``allow``, ``block``, ``passthrough`` (with ``host`` only: it is
decided from the ClientHello, before anything is decrypted; to HTTP
requests it means allow). A value with spaces goes in double quotes.
Requests and responses no rule matches get the default (allow, unless the
tap is told otherwise).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass

__all__ = ["ALLOW", "BLOCK", "PASSTHROUGH", "Rule", "Rules", "Decision", "RulesError"]

ALLOW, BLOCK, PASSTHROUGH = "allow", "block", "passthrough"
_KEYS = ("host", "url", "method", "type")


class RulesError(ValueError):
    """A rules file that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class Rule:
    action: str
    host: str | None = None
    url: re.Pattern | None = None
    methods: frozenset[str] | None = None
    media: str | None = None
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

    @property
    def why(self) -> str:
        return f"rule {self.rule}" if self.rule is not None else "no rule matched: the default"


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
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{source}:{number}"
            try:
                words = shlex.split(line, comments=True)
            except ValueError as e:
                raise RulesError(f"{where}: {e}") from None
            if not words:
                continue
            rules.append(_rule(words, line.split("#", 1)[0].strip(), where))
        return cls(rules, default)

    @property
    def wants_types(self) -> bool:
        """Whether any rule looks at responses' content types."""
        return bool(self._responses)

    def request(self, method: str, host: str, url: str) -> Decision:
        """The decision for a request (rules without ``type``)."""
        for rule in self._requests:
            if rule._matches(host, url, method):
                return Decision(BLOCK if rule.action == BLOCK else ALLOW, rule)
        return Decision(self.default, None)

    def response(self, method: str, host: str, url: str, content_type: str | None) -> Decision | None:
        """The decision for a response by its media type (rules with ``type``);
        ``None`` when none matches (the request's decision stands)."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        for rule in self._responses:
            if fnmatch.fnmatchcase(media, rule.media) and rule._matches(host, url, method):
                return Decision(rule.action, rule)
        return None

    def tls_passthrough(self, name: str) -> Rule | None:
        """The ``passthrough`` rule for a TLS connection to ``name``, if the first
        host-only rule that matches it is one."""
        for rule in self._requests:
            if rule.url is None and rule.methods is None and rule.host is not None:
                if fnmatch.fnmatchcase(name.rstrip(".").lower(), rule.host):
                    return rule if rule.action == PASSTHROUGH else None
        return None


def _rule(words: list[str], text: str, where: str) -> Rule:
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
    if action == PASSTHROUGH and set(values) != {"host"}:
        raise RulesError(f"{where}: passthrough takes host= only (it is decided before anything is decrypted)")
    methods = frozenset(m.strip().upper() for m in values["method"].split(",") if m.strip()) if "method" in values \
        else None
    return Rule(action, values.get("host", "").lower() or None, url, methods,
                values.get("type", "").lower() or None, text, where)
