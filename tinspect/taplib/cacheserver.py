"""The Twisted side of a disk cache tap: its own HTTP server on loopback, and waiting by polling.

The cache tap (``taps/cache.py``) decides what is kept and what is a hit; what
it needs of Twisted beyond Deferreds and its logger lives here, so that a tap
imports only `tinspect` and `tinspect.taplib`:

* `CacheServer`: an HTTP server of the tap's own on ``127.0.0.1`` (an
  ephemeral port, opened on first use) that the tap routes hits to
  (`tinspect.Request.destination`), so that they pass every other tap as
  usual and the response streams back through the proxy. A request names its
  entry in `KEY_HEADER`; the body is streamed from disk with back-pressure by
  `twisted.web.static.File`, which answers ``Range`` requests with 206 as a
  server would. A request for an entry not stored yet waits for it when the
  tap says there is a fetch to wait for (`Entries.wait_stored`: HTTP/2
  requests, which must not wait in the tap, where they would hold every
  stream of their connection), then is served, or gets a 502 if the fetch
  was not kept.
* `poll`: look at something every few seconds until it answers or a limit is
  reached (another worker's fetch into a directory they share: a worker
  cannot hear from another).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import File

from tinspect.taplib.cachekeys import CACHE_KEY

__all__ = ["CacheServer", "Entries", "KEY_HEADER", "poll"]

KEY_HEADER = b"X-Tinspect-Cache-Key"  # how a routed hit names its entry to the cache's server
_T = TypeVar("_T")


class Entries(Protocol):
    """What a `CacheServer` serves: a cache tap's directory, and its fetches in progress."""

    objects: Path  # ``<key>`` holds an entry's body, ``<key>.json`` its URL and response headers

    def wait_stored(self, key: str) -> Deferred | None:
        """A Deferred firing with whether ``key`` was stored by a fetch in progress and may be
        served, or ``None`` when no fetch is in progress (the entry is there or it is not)."""

    def served(self, sent: int) -> None:
        """``sent`` body bytes of an entry reached the proxy (a cut transfer's part included)."""


class CacheServer:
    """A cache tap's own HTTP server on loopback, serving the entries its routed requests name.

    Args:
        entries: the tap's directory and fetches.
        reactor: the reactor to listen with (the global one by default).
    """

    def __init__(self, entries: Entries, reactor: Any = None) -> None:
        self.resource = _Objects(entries)
        self._reactor = reactor
        self._port: Any = None

    def address(self) -> tuple[str, int]:
        """Where to route a request to this server: it starts listening on the first call."""
        if self._port is None:
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            site = Site(self.resource)
            site.noisy = False
            site.log = lambda request: None  # the proxy's own log says hit
            self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        return ("127.0.0.1", self._port.getHost().port)


class _Objects(Resource):
    """The server's one resource: the entry the routed request names, streamed from disk."""

    isLeaf = True

    def __init__(self, entries: Entries) -> None:
        super().__init__()
        self.entries = entries

    def render(self, request: Any) -> Any:
        key = (request.getHeader(KEY_HEADER) or b"").decode("ascii", "replace").strip()
        if CACHE_KEY.fullmatch(key) and not (self.entries.objects / key).exists():
            waiting = self.entries.wait_stored(key)
            if waiting is not None:
                gone = request.notifyFinish()  # fires (as an error) if the client goes away meanwhile
                gone.addErrback(lambda _: None)
                waiting.addCallback(self._stored, request, key, gone)
                return NOT_DONE_YET
        return self._serve(request, key)

    def _stored(self, stored: bool, request: Any, key: str, gone: Deferred) -> None:
        """The fetch a request waited for has ended."""
        if request.finished or gone.called:
            return
        if stored:
            result = self._serve(request, key)
        else:
            request.setResponseCode(502)
            result = b"the fetch this request waited for was not kept; ask again\n"
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()

    def _served(self, _: Any, request: Any) -> None:
        self.entries.served(request.sentLength)

    def _serve(self, request: Any, key: str) -> Any:
        path = self.entries.objects / key
        if not CACHE_KEY.fullmatch(key) or not path.exists():
            request.setResponseCode(404)
            return b"not in the cache\n"
        try:
            meta = json.loads((self.entries.objects / f"{key}.json").read_text())
        except (OSError, ValueError):
            meta = {}
        for name in ("content-encoding", "etag", "last-modified"):
            if meta.get(name):
                request.setHeader(name, meta[name])
        request.setHeader(b"x-tinspect-cache", b"hit")
        request.notifyFinish().addBoth(self._served, request)
        resource = File(str(path), defaultType=meta.get("content-type") or "application/octet-stream")
        resource.type = meta.get("content-type") or "application/octet-stream"
        resource.encoding = None
        return resource.render(request)


def poll(look: Callable[[], _T | None], every: float, limit: float, reactor: Any = None) -> Deferred:
    """Call ``look`` every ``every`` seconds until it answers, for up to ``limit`` seconds.

    Args:
        look: returns ``None`` to be asked again, anything else to end the wait.
        every: seconds between looks (the first is one interval from now).
        limit: seconds after which the wait ends without an answer.
        reactor: for the timer (the global one by default).

    Returns:
        A Deferred firing with ``look``'s answer, or with ``None`` once the
        limit is reached; cancelling it stops the looks.
    """
    if reactor is None:
        from twisted.internet import reactor
    deadline = time.monotonic() + limit
    call: Any = None
    done: Deferred = Deferred(lambda _: call.cancel() if call is not None and call.active() else None)

    def again() -> None:
        nonlocal call
        answer = look()
        if answer is not None:
            done.callback(answer)
        elif time.monotonic() >= deadline:
            done.callback(None)
        else:
            call = reactor.callLater(every, again)

    call = reactor.callLater(every, again)
    return done
