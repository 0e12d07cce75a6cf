"""The ``--console`` site (twisted.web, loaded only with it): the page, the records, the live stream.

Routes: ``/`` the page and its files (package data in ``static/``),
``/api/flows`` the kept records' summaries as JSON, ``/api/flows/<id>`` one
record whole (its ``detail``, and a ``curl`` command line for a request),
``/api/har`` a HAR 1.2 file of the records the filters select (the same
``host``, ``client``, ``status`` and ``text`` query parameters as the page's
filters, `tinspect.console.ring.matches`; or ``ids=ID,ID``), and ``/events``
the server-sent event stream fed by the `tinspect.console.hub.Hub`.

With ``auth`` every route asks for HTTP Basic authentication; with
``clients`` a connection from outside those networks is closed at once
(logged), as the explicit proxy does with its clients.

With ``workers`` (worker 0 of ``--workers``) every route covers the other
workers' records too: lists and HAR files are merged from their answers,
a record's detail is fetched from the worker its id names, and each page's
stream follows theirs (`tinspect.console.fanin`).
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tinspect._compat import pending_bytes
from tinspect.console.hub import Hub, Subscriber
from tinspect.console.merge import merge_har, merge_summaries, worker_of
from tinspect.console.ring import curl_command, matches, summary
from tinspect.layers.http.explicit import ClientNetworks, ProxyAuth
from tinspect.net.addresses import format_addr, normalize_host
from tinspect.taplib.har import to_har

__all__ = ["console_site", "FLUSH_INTERVAL"]

_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8", "svg": b"image/svg+xml"}
_FILTERS = ("host", "client", "status", "text")


FLUSH_INTERVAL = 0.1
"""Seconds between sends of the changed records to the open pages (`Hub.flush`)."""


def console_site(hub: Hub, auth: ProxyAuth | None = None, clients: ClientNetworks | None = None,
                 reactor: Any = None, workers: Any = None) -> Site:
    """The site serving ``hub``; while it listens, changed records go to the open pages every
    `FLUSH_INTERVAL` seconds.

    Args:
        hub: the records.
        auth: the credentials every request must carry (Basic), or ``None``.
        clients: the networks served, or ``None`` for every client.
        reactor: schedules the sends (the global reactor when ``None``).
        workers: the other workers' consoles (`tinspect.console.fanin.WorkerConsoles`) whose
            records the routes cover too, or ``None``.
    """
    site = _ConsoleSite(_Root(hub, auth, workers), clients, LoopingCall(hub.flush))
    if reactor is not None:
        site.flusher.clock = reactor
    site.displayTracebacks = False
    return site


class _ConsoleSite(Site):
    """A Site that serves only its client networks and logs no access lines
    (a page's stream is one long request)."""

    noisy = False
    _log = Logger()

    def __init__(self, root: Resource, clients: ClientNetworks | None, flusher: LoopingCall) -> None:
        super().__init__(root)
        self.clients = clients
        self.flusher = flusher

    def startFactory(self) -> None:
        super().startFactory()
        self.flusher.start(FLUSH_INTERVAL, now=False)

    def stopFactory(self) -> None:
        if self.flusher.running:
            self.flusher.stop()
        super().stopFactory()

    def buildProtocol(self, addr: Any) -> Any:
        host = normalize_host(getattr(addr, "host", ""))
        if self.clients is not None and host not in self.clients:
            self._log.warn("refusing {client} on --console: not in the client networks it serves ({networks})",
                           client=format_addr((host, addr.port)), networks=str(self.clients))
            return None  # Twisted closes the connection
        return super().buildProtocol(addr)

    def log(self, request: Any) -> None:
        pass


class _Root(Resource):
    isLeaf = True

    _log = Logger()

    def __init__(self, hub: Hub, auth: ProxyAuth | None, workers: Any = None) -> None:
        super().__init__()
        self.hub = hub
        self._auth = auth
        self.workers = workers if workers else None

    def render_GET(self, request: Request) -> Any:
        if self._auth is not None and not self._auth.check(request.getHeader(b"authorization")):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="tinspect console", charset="UTF-8"')
            return b"authentication required\n"
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        path = request.path.decode("latin-1")
        if path == "/events":
            return self._stream(request)
        if path == "/api/flows":
            own = [summary(r) for r in self._selected(request)]
            return self._gathered(request, own, merge_summaries)
        if path == "/api/har":
            request.setHeader(b"content-disposition", b'attachment; filename="tinspect.har"')
            return self._gathered(request, self._har(self._selected(request)), merge_har)
        if path.startswith("/api/flows/"):
            key = path.rsplit("/", 1)[1]
            if self.workers is not None and worker_of(key):
                return self._fetched(request, worker_of(key))
            record = self.hub.ring.get(key)
            if record is None:
                request.setResponseCode(404)
                return b"no such flow (evicted from the console's ring?)\n"
            return self._json(request, {**record, "curl": _curl(record)})
        return self._static(request, path)

    def _selected(self, request: Request) -> list[dict]:
        """The records the query's filters (or ``ids``) select, oldest first."""
        args = {key: _arg(request, key) for key in (*_FILTERS, "ids")}
        ids = {i for i in args.pop("ids").split(",") if i}
        return [r for r in self.hub.ring.records() if (not ids or r["id"] in ids) and matches(r, **args)]

    def _gathered(self, request: Request, own: Any, merge: Any) -> Any:
        """``own`` as JSON, merged (``merge`` of the values) with every other worker's answer to this request."""
        if self.workers is None:
            return self._json(request, own)
        gone: list[bool] = []  # the page hung up meanwhile
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(bodies: list[bytes]) -> None:
            values = [own]
            for body in bodies:
                try:
                    values.append(json.loads(body))
                except ValueError as e:
                    self._log.warn("console: a worker's answer is not JSON: {error}", error=e)
            if not gone:
                data = self._json(request, merge(values))
                request.setHeader(b"content-length", b"%d" % len(data))
                request.write(data)
                request.finish()

        d = self.workers.get_all(request.uri)
        d.addCallback(answer)
        d.addErrback(lambda failure: self._log.failure("console: merging the workers' answers failed", failure))
        return NOT_DONE_YET

    def _fetched(self, request: Request, n: int) -> Any:
        """Worker ``n``'s answer to this request (a record it holds), passed on."""
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def answer(result: tuple[int, bytes]) -> None:
            status, body = result
            request.setResponseCode(status)
            if status == 200:
                request.setHeader(b"content-type", b"application/json")
            finish(body)

        def failed(failure: Any) -> None:
            request.setResponseCode(502)
            finish(f"worker {n} did not answer: {failure.getErrorMessage()}\n".encode())

        def finish(body: bytes) -> None:
            if not gone:
                request.setHeader(b"content-length", b"%d" % len(body))
                request.write(body)
                request.finish()

        if n not in self.workers.sockets:
            request.setResponseCode(404)
            return b"no such flow (no such worker)\n"
        self.workers.get(n, request.uri).addCallbacks(answer, failed)
        return NOT_DONE_YET

    @staticmethod
    def _har(records: list[dict]) -> dict:
        """HAR of ``records``' exchanges (the recorder's format, which they share) and WebSocket messages."""
        entries: list[dict] = []
        for record in records:
            detail = record.get("detail") or {}
            if detail.get("type") == "exchange" and detail.get("timings"):
                entries += [detail, *detail.get("websocket", ())]
        return to_har(entries)

    @staticmethod
    def _static(request: Request, path: str) -> bytes:
        name = "index.html" if path == "/" else path.lstrip("/")
        if "/" in name or name.rsplit(".", 1)[-1] not in _TYPES:
            request.setResponseCode(404)
            return b"not found\n"
        try:
            body = resources.files("tinspect.console").joinpath("static", name).read_bytes()
        except FileNotFoundError:
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", _TYPES[name.rsplit(".", 1)[1]])
        request.setHeader(b"content-security-policy", b"default-src 'self'; img-src 'self' data:")
        return body

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, default=str).encode()

    def _stream(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        transport = request.channel.transport
        sub = Subscriber(request.write, lambda: pending_bytes(transport), request.finish)
        processes = 1 + (len(self.workers) if self.workers is not None else 0)  # each keeps its own ring
        request.write(b": tinspect console\n\nevent: config\ndata: "
                      + json.dumps({"capacity": self.hub.ring.capacity * processes}).encode() + b"\n\n")
        self.hub.subscribe(sub)
        ended: list[bool] = []
        links = None
        if self.workers is not None:
            def write(events: bytes) -> None:
                if ended:
                    return
                if pending_bytes(transport) > self.hub.max_pending:
                    # A slow page: dropped as the Hub drops it, and what it left unread freed with the connection
                    ended.append(True)
                    transport.abortConnection()
                    return
                request.write(events)

            links = self.workers.follow(write)

        def end(_: Any) -> None:
            ended.append(True)
            self.hub.unsubscribe(sub)
            if links is not None:
                links.close()

        request.notifyFinish().addBoth(end)
        return NOT_DONE_YET


def _arg(request: Request, name: str) -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else ""


def _curl(record: dict) -> str | None:
    """The curl command repeating a record's request; its body only when kept whole."""
    req = (record.get("detail") or {}).get("request")
    if not req:
        return None
    body = req.get("body") or {}
    data = None
    if "text" in body and not body.get("truncated"):
        data = body["text"].encode("utf-8")
    elif "base64" in body and not body.get("truncated"):
        data = base64.b64decode(body["base64"])
    return curl_command(req["method"], req["url"], req["headers"], data)
