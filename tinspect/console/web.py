"""The ``--console`` site (twisted.web, loaded only with it): the page, the records, the live stream.

Routes: ``/`` the page (package data in ``static/``), ``/api/flows`` every kept
record as JSON, ``/api/flows/<id>`` one record, ``/events`` the server-sent
event stream fed by the `tinspect.console.hub.Hub`. With ``auth`` set every
route asks for HTTP Basic authentication.
"""

from __future__ import annotations

import base64
import hmac
import json
from importlib import resources
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from tinspect._compat import pending_bytes
from tinspect.console.hub import Hub, Subscriber

__all__ = ["console_site"]

_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8"}


def console_site(hub: Hub, auth: str | None = None) -> Site:
    """The site serving ``hub``; ``auth`` is ``"user:password"`` for Basic authentication."""
    site = Site(_Root(hub, auth))
    site.displayTracebacks = False
    return site


class _Root(Resource):
    isLeaf = True

    def __init__(self, hub: Hub, auth: str | None) -> None:
        super().__init__()
        self.hub = hub
        self._auth = b"Basic " + base64.b64encode(auth.encode()) if auth else None

    def render_GET(self, request: Request) -> Any:
        if self._auth and not hmac.compare_digest(request.getHeader(b"authorization") or b"", self._auth):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="tinspect console"')
            return b"authentication required\n"
        request.setHeader(b"cache-control", b"no-store")
        path = request.path.decode("latin-1")
        if path == "/events":
            return self._stream(request)
        if path == "/api/flows":
            return self._json(request, self.hub.ring.records())
        if path.startswith("/api/flows/"):
            record = self.hub.ring.get(path.rsplit("/", 1)[1])
            if record is None:
                request.setResponseCode(404)
                return b"no such flow (evicted from the console's ring?)\n"
            return self._json(request, record)
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
        return body

    @staticmethod
    def _json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, default=str).encode()

    def _stream(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        transport = request.channel.transport
        sub = Subscriber(request.write, lambda: pending_bytes(transport), request.finish)
        request.write(b": tinspect console\n\n")
        self.hub.subscribe(sub)
        request.notifyFinish().addBoth(lambda _: self.hub.unsubscribe(sub))
        return NOT_DONE_YET
