"""The ``filter`` tap: allow, block or pass through by host, URL, method, content type, who and when.

For schools and companies: rules (`tinspect.taplib.filtering`) from a file decide
each request (HTTP/1.1, HTTP/2 and WebSocket upgrades alike), each response
by its content type, and each TLS connection, from its ClientHello; rules may
name blocklists of millions of domains (`tinspect.taplib.domains`), groups of
clients by network and time windows (`tinspect.taplib.conditions`). A blocked
request never reaches the server; it is answered with the block page; a
blocked response is replaced by it (its body is never sent; one too large to
hold is cut off instead). A TLS connection to a host blocked for its client is
refused before any certificate is made or the server is contacted: with an
``access_denied`` alert when the client cannot see a page (its group has
``ca=no``, the rule says ``tls=alert``, or the proxy would not intercept the
host: ``--passthrough``), else intercepted without the server so that its
requests get the page. Every decision is logged with the flow id, the URL and
the rule (and the list that matched); every block also goes, as one JSON line,
to the ``log`` file, and is counted for ``--metrics``
(``tinspect_filter_decisions_total`` by action, rule and category). ``kill -HUP`` reloads the rules file, its lists and the
page: they are read in a thread while the old rules go on deciding (a big list
takes seconds), then swapped in, and the decision counters start again from
zero (their ``rule`` label, ``rules.txt:7``, may name another rule in the new
file); open connections stay; a file with a mistake is refused (logged) and the
old rules and their counts stay; the block log is reopened.

Options:
    rules: path of the rules file (required).
    page: path of an HTML block page; ``$url``, ``$host``, ``$rule``,
        ``$category``, ``$group`` and ``$status`` are replaced (HTML-escaped).
        A built-in page otherwise.
    status: the block page's status (default 403; 451 fits legal blocks).
    default: ``allow`` (default) or ``block`` when no rule matches.
    log: a file for the block log: one JSON line per block (time, flow,
        client, host, URL, rule, category, group, how).
    log_max_bytes: rotate the block log when it reaches this many bytes
        (default 0: never by size; on SIGHUP it is reopened, for logrotate).
    log_keep: rotated block logs kept (default 5).
"""

from __future__ import annotations

import html
import string
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from tinspect import Flow, Headers, Request, Response, Tap, Unit, reason_phrase
from tinspect.taplib import ALLOW, BLOCK, Decision, JsonLinesLog, Rules, RulesError, on_sighup

__all__ = ["FilterTap", "DEFAULT_PAGE"]

DEFAULT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Blocked</title>
<style>body{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}code{word-break:break-all}</style>
</head><body><h1>This page is blocked</h1>
<p>The network you are on does not allow <code>$url</code>.</p>
<p>Category: <code>$category</code></p>
<p>If you need it for your work, ask your administrator, quoting: <code>$rule</code>.</p>
</body></html>
"""


class FilterTap(Tap):
    """Decides by the rules; see the module docstring."""

    kinds = (Request, Response)
    log = Logger(namespace="tinspect.tap.filter")

    def __init__(self, rules: str, page: str | None = None, status: str | int = 403, default: str = ALLOW,
                 log: str | None = None, log_max_bytes: str | int = 0, log_keep: str | int = 5) -> None:
        self.path = Path(rules)
        self.clock = time.time  # what "now" is for time= rules (a test may set its own)
        self.page_path = Path(page) if page else None
        try:
            self.status = int(status)
        except ValueError:
            raise ValueError(f"status must be a number, not {status!r}") from None
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an error status (400-599), not {status!r}")
        self.default = default
        self.rules, self.page = self._load()  # ValueError: the proxy does not start with bad rules
        self.block_log = _block_log(log, log_max_bytes, log_keep) if log else None
        self._log_failing = False  # said once until a write works again
        self._loading: Deferred | None = None  # a reload in its thread
        self._waiting: list[Deferred] = []  # reloads asked for meanwhile: one more load serves them all
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (action, rule, category) -> how many
        on_sighup(self.reload)

    def _load(self) -> tuple[Rules, string.Template]:
        """Read the rules, their lists and the page (blocking: in a thread for a reload)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as e:
            raise RulesError(f"{self.path}: cannot read the rules: {e.strerror}") from None
        rules = Rules.parse(text, str(self.path), self.default)
        page = DEFAULT_PAGE
        if self.page_path is not None:
            try:
                page = self.page_path.read_text(encoding="utf-8")
            except OSError as e:
                raise RulesError(f"{self.page_path}: cannot read the block page: {e.strerror}") from None
        return rules, string.Template(page)

    def reload(self) -> Deferred:
        """Reopen the block log; read the files again in a thread, the old rules deciding meanwhile, and swap.

        Returns:
            A Deferred that fires (with None) once the files as they are now
            decide, or were refused: a reload asked for during another one
            waits for the next load, which starts when that one ends.
        """
        if self.block_log is not None:
            self._reopen_log()
        done: Deferred = Deferred()
        self._waiting.append(done)
        if self._loading is None:
            self._start_loading()
        return done

    def _start_loading(self) -> None:
        waiting, self._waiting = self._waiting, []
        started = time.monotonic()
        self._loading = deferToThread(self._load)  # Rules.parse and the lists touch nothing shared
        self._loading.addCallbacks(self._swap, self._refused, callbackArgs=(started,))
        self._loading.addCallback(self._loaded, waiting)

    def _swap(self, loaded: tuple[Rules, string.Template], started: float) -> None:
        self.rules, self.page = loaded  # in the reactor thread: every decision sees old or new, whole
        # The counters name rules by file and line, which the new file may give to another
        # rule: they start afresh (a counter reset, which Prometheus's rate() allows for).
        self.decisions.clear()
        self.log.info("filter: reloaded {n} rules from {path} ({entries} list entries, {seconds:.1f} s)",
                      n=len(self.rules.rules), path=str(self.path),
                      entries=sum(len(lst) for lst in self.rules.lists), seconds=time.monotonic() - started)

    def _refused(self, failure) -> None:
        if failure.check(RulesError):
            self.log.error("filter: not reloaded, the old rules stay: {error}", error=str(failure.value))
        else:
            self.log.failure("filter: not reloaded, the old rules stay", failure)

    def _loaded(self, _: None, waiting: list[Deferred]) -> None:
        self._loading = None
        for done in waiting:
            done.callback(None)
        if self._waiting:
            self._start_loading()

    def tls_block(self, name: str, flow: Flow, can_intercept: bool) -> str | None:
        decision = self.rules.hello(name, flow.client[0], self.clock())
        if decision is None or decision.action != BLOCK:
            return None
        if decision.alert or not can_intercept:
            self._count("tls_refused", decision.rule, decision.category)
            self._blocked(flow, name, None, decision, "tls-alert")
            return "alert"
        self.log.info("flow {flow_id}: filter: block TLS for {name} at the ClientHello, its requests get the page "
                      "({why})", flow_id=flow.id, name=name, why=decision.why)
        return "page"

    def tls_passthrough(self, name: str, flow: Flow) -> bool:
        rule = self.rules.tls_passthrough(name, flow.client[0], self.clock())
        if rule is not None:
            self._count("passthrough", rule, None)
            self.log.info("flow {flow_id}: filter: passthrough TLS for {name} (rule {rule})", flow_id=flow.id,
                          name=name, rule=str(rule))
        return rule is not None

    def quic_decision(self, name: str, flow: Flow) -> bool | None:
        # QUIC is never decrypted: a host the rules pass through may use it, one they block
        # outright is refused (so neither QUIC nor TCP reaches it); others are left to --quic.
        # Rules by URL or method cannot apply to QUIC: with --quic pass they are not enforced there.
        if self.rules.tls_passthrough(name) is not None:
            return True
        return False if self.rules.request("GET", name, f"https://{name}/").action == BLOCK else None

    def wants_whole_body(self, message: Unit, flow: Flow) -> bool:
        # A response that will be replaced must not start streaming first; an allowed one streams.
        if type(message) is not Response:
            return False
        decision = self._response_decision(message, flow)
        return decision is not None and decision.action == BLOCK

    def handle(self, unit: Unit, flow: Flow) -> Unit | None:
        if type(unit) is Request:
            decision = self.rules.request(unit.method, unit.host, unit.url, flow.client[0], self.clock())
            self._log_decision(flow, decision.action, unit, decision.why)
            self._count("blocked" if decision.action == BLOCK else "allowed", decision.rule, decision.category)
            if decision.action == BLOCK:
                self._blocked(flow, unit.host, unit.url, decision, "page")
                return self._page(unit, decision)
            return unit
        decision = self._response_decision(unit, flow)
        if decision is None:
            return unit
        self._log_decision(flow, decision.action, unit.request, f"{decision.why} (Content-Type "
                           f"{unit.headers.get('content-type')})")
        self._count("blocked" if decision.action == BLOCK else "allowed", decision.rule, decision.category)
        if decision.action != BLOCK:
            return unit
        req = unit.request
        if unit.body is None:  # too large to hold: it cannot be replaced any more
            self._blocked(flow, req.host, req.url, decision, "cut")
            flow.abort("filter: blocked content type, too large to replace")
            return None
        self._blocked(flow, req.host, req.url, decision, "page")
        return self._page(req, decision, unit)

    def _response_decision(self, resp: Response, flow: Flow) -> Decision | None:
        req = resp.request
        if not self.rules.wants_types or req is None or resp.status < 200 or resp.status in (204, 304):
            return None
        return self.rules.response(req.method, req.host, req.url, resp.headers.get("content-type"),
                                   flow.client[0], self.clock())

    def _count(self, action: str, rule: object, category: str | None) -> None:
        """Count a decision for `metrics`: the rule (a `Rule`, ``None`` for the default) by its
        file's name and line, a small and stable set; ``default`` when none matched."""
        self.decisions[action, Path(rule.where).name if rule is not None else "default", category or "none"] += 1

    def metrics(self) -> list[tuple]:
        """The decisions: ``allowed`` and ``blocked`` (requests, and responses a ``type=`` rule
        decides), ``passthrough`` and ``tls_refused`` (TLS connections, at the ClientHello)."""
        return [("tinspect_filter_decisions_total", "counter", "Filter tap decisions, by action, rule and category.",
                 n, {"action": action, "rule": rule, "category": category})
                for (action, rule, category), n in sorted(self.decisions.items())]

    def _log_decision(self, flow: Flow, action: str, req: Request | None, why: str) -> None:
        what = f"{req.method} {req.url}" if req is not None else "a response"
        self.log.info("flow {flow_id}: filter: {action} {what} ({why})", flow_id=flow.id, action=action,
                      what=what, why=why)

    def _blocked(self, flow: Flow, host: str, url: str | None, decision: Decision, how: str) -> None:
        """Write the block to the block log: who was blocked from what, when, by which rule.

        ``how`` is what the client got: ``page``, ``tls-alert``, or ``cut``
        (a response too large to replace). A log line is logged for a TLS
        alert here (a request's decision is logged by `_log_decision`)."""
        flow.verdict = "blocked"
        if how == "tls-alert":
            self.log.info("flow {flow_id}: filter: block TLS for {name} from {client} with an alert ({why})",
                          flow_id=flow.id, name=host, client=flow.client[0], why=decision.why)
        if self.block_log is None:
            return
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "flow": flow.id,
            "client": flow.client[0],
            "host": host,
            "url": url,
            "rule": str(decision.rule) if decision.rule is not None else "the default",
            "category": decision.category,
            "group": decision.group,
            "how": how,
        }
        try:
            self.block_log.write(record)
        except OSError as e:
            if not self._log_failing:
                self.log.error("filter: cannot write the block log {path}: {error} (blocks go on; said once until "
                               "a write works)", path=str(self.block_log.path), error=e.strerror)
            self._log_failing = True
        else:
            self._log_failing = False

    def _reopen_log(self) -> None:
        try:
            self.block_log.reopen()
        except OSError as e:
            self.log.error("filter: cannot reopen the block log {path}: {error}; writing to the old file",
                           path=str(self.block_log.path), error=e.strerror)

    def _page(self, req: Request, decision: Decision, original: Response | None = None) -> Response:
        """The block page: the answer to ``req``, or what replaces ``original``."""
        body = self.page.safe_substitute(
            url=html.escape(req.url), host=html.escape(req.host), rule=html.escape(str(decision.rule or "the default")),
            category=html.escape(decision.category or "-"), group=html.escape(decision.group or "-"),
            status=self.status,
        ).encode("utf-8")
        headers = Headers([(b"Content-Type", b"text/html; charset=utf-8"), (b"Cache-Control", b"no-store")])
        if original is None:
            return req.respond(self.status, body, headers)
        return Response(self.status, reason_phrase(self.status), headers, version=original.version, body=body,
                        request=req)


def _block_log(path: str, max_bytes: str | int, keep: str | int) -> JsonLinesLog:
    """The ``log=`` file, checked at start (a proxy that cannot keep its block log does not start)."""
    try:
        max_bytes, keep = int(max_bytes), int(keep)
    except ValueError:
        raise ValueError(f"log_max_bytes and log_keep must be numbers, not {max_bytes!r} and {keep!r}") from None
    try:
        return JsonLinesLog(path, max_bytes, keep)
    except OSError as e:
        raise ValueError(f"log={path}: cannot open the block log: {e.strerror}") from None
