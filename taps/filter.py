"""The ``filter`` tap: allow, block or pass through by host, URL, method and content type.

For schools and companies: rules (`tinspect.taplib.filtering`) from a file decide
each request (HTTP/1.1, HTTP/2 and WebSocket upgrades alike), each response
by its content type, and each TLS connection (``passthrough``: relayed
untouched, never decrypted). A blocked request never reaches the server; it
is answered with the block page; a blocked response is replaced by it (its
body is never sent; one too large to hold is cut off instead). Every
decision is logged with the flow id, the URL and the rule. ``kill -HUP``
reloads the rules file and the page: new decisions use them, open
connections stay; a file with a mistake is refused (logged) and the old
rules stay.

Options:
    rules: path of the rules file (required).
    page: path of an HTML block page; ``$url``, ``$host``, ``$rule`` and
        ``$status`` are replaced (HTML-escaped). A built-in page otherwise.
    status: the block page's status (default 403; 451 fits legal blocks).
    default: ``allow`` (default) or ``block`` when no rule matches.
"""

from __future__ import annotations

import html
import string
from pathlib import Path

from twisted.logger import Logger

from tinspect import Flow, Headers, Request, Response, Tap, Unit, reason_phrase
from tinspect.taplib import ALLOW, BLOCK, Rules, RulesError, on_sighup

__all__ = ["FilterTap", "DEFAULT_PAGE"]

DEFAULT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Blocked</title>
<style>body{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}code{word-break:break-all}</style>
</head><body><h1>This page is blocked</h1>
<p>The network you are on does not allow <code>$url</code>.</p>
<p>If you need it for your work, ask your administrator, quoting: <code>$rule</code>.</p>
</body></html>
"""


class FilterTap(Tap):
    """Decides by the rules; see the module docstring."""

    kinds = (Request, Response)
    log = Logger(namespace="tinspect.tap.filter")

    def __init__(self, rules: str, page: str | None = None, status: str | int = 403, default: str = ALLOW) -> None:
        self.path = Path(rules)
        self.page_path = Path(page) if page else None
        try:
            self.status = int(status)
        except ValueError:
            raise ValueError(f"status must be a number, not {status!r}") from None
        if not 400 <= self.status <= 599:
            raise ValueError(f"status must be an error status (400-599), not {status!r}")
        self.default = default
        self.rules, self.page = self._load()  # ValueError: the proxy does not start with bad rules
        on_sighup(self.reload)

    def _load(self) -> tuple[Rules, string.Template]:
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

    def reload(self) -> None:
        try:
            self.rules, self.page = self._load()
        except RulesError as e:
            self.log.error("filter: not reloaded, the old rules stay: {error}", error=str(e))
            return
        self.log.info("filter: reloaded {n} rules from {path}", n=len(self.rules.rules), path=str(self.path))

    def tls_passthrough(self, name: str, flow: Flow) -> bool:
        rule = self.rules.tls_passthrough(name)
        if rule is not None:
            self.log.info("flow {flow_id}: filter: passthrough TLS for {name} (rule {rule})", flow_id=flow.id,
                          name=name, rule=str(rule))
        return rule is not None

    def wants_whole_body(self, message: Unit, flow: Flow) -> bool:
        # A response that will be replaced must not start streaming first; an allowed one streams.
        if type(message) is not Response:
            return False
        decision = self._response_decision(message)
        return decision is not None and decision.action == BLOCK

    def handle(self, unit: Unit, flow: Flow) -> Unit | None:
        if type(unit) is Request:
            decision = self.rules.request(unit.method, unit.host, unit.url)
            self._log_decision(flow, decision.action, unit, decision.why)
            if decision.action == BLOCK:
                return self._page(unit, str(decision.rule or "the default"))
            return unit
        decision = self._response_decision(unit)
        if decision is None:
            return unit
        self._log_decision(flow, decision.action, unit.request, f"{decision.why} (Content-Type "
                           f"{unit.headers.get('content-type')})")
        if decision.action != BLOCK:
            return unit
        if unit.body is None:  # too large to hold: it cannot be replaced any more
            flow.abort("filter: blocked content type, too large to replace")
            return None
        return self._page(unit.request, str(decision.rule), unit)

    def _response_decision(self, resp: Response):
        req = resp.request
        if not self.rules.wants_types or req is None or resp.status < 200 or resp.status in (204, 304):
            return None
        return self.rules.response(req.method, req.host, req.url, resp.headers.get("content-type"))

    def _log_decision(self, flow: Flow, action: str, req: Request | None, why: str) -> None:
        what = f"{req.method} {req.url}" if req is not None else "a response"
        self.log.info("flow {flow_id}: filter: {action} {what} ({why})", flow_id=flow.id, action=action,
                      what=what, why=why)

    def _page(self, req: Request, rule: str, original: Response | None = None) -> Response:
        """The block page: the answer to ``req``, or what replaces ``original``."""
        body = self.page.safe_substitute(url=html.escape(req.url), host=html.escape(req.host),
                                         rule=html.escape(rule), status=self.status).encode("utf-8")
        headers = Headers([(b"Content-Type", b"text/html; charset=utf-8"), (b"Cache-Control", b"no-store")])
        if original is None:
            return req.respond(self.status, body, headers)
        return Response(self.status, reason_phrase(self.status), headers, version=original.version, body=body,
                        request=req)

