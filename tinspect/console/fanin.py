"""Worker 0's side of the console over ``--workers``: asking the other workers' consoles.

Theory of operation. Every worker runs the console's feed on its own flows
and keeps its own ring (`tinspect.console.hub.Hub`); workers 1..N-1 serve
the same console site (`tinspect.console.web.console_site`) without a
password on a Unix socket, mode 0600 in a directory only the proxy's user
can enter (the one their ``--metrics`` sockets are in), never on the
network. Worker 0 serves the page, behind ``--console-auth``, and:

- for ``/api/flows`` and ``/api/har`` asks every worker the same query
  (`WorkerConsoles.get_all`) and merges the answers
  (`tinspect.console.merge`); a worker that does not answer within
  `TIMEOUT` seconds is left out of that answer, not waited for;
- for ``/api/flows/ID`` asks the worker the id names (`WorkerConsoles.get`):
  details are fetched when a flow is opened, never pushed;
- for each open page's ``/events`` follows every worker's ``/events``
  (`WorkerConsoles.follow`) and writes their summaries' events, unparsed,
  to the page. A worker has a subscriber only while a page is open, so
  with no page open it does no per-exchange work for this (its Hub notes
  nothing without subscribers). A page that does not keep up is dropped as
  the Hub drops its own slow pages, so a worker's stream is never buffered
  in worker 0; a link that ends (a worker died, or dropped worker 0 as
  slow) is tried again every `RETRY` seconds while the page is open, so a
  restarted worker's flows reappear without restarting worker 0.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tinspect.console.merge import EventSplitter

__all__ = ["WorkerConsoles", "TIMEOUT", "RETRY"]

TIMEOUT = 2.0
"""Seconds worker 0 waits for a worker's answer to a list, HAR or detail request."""
RETRY = 1.0
"""Seconds between attempts to follow a worker's stream again, while a page is open."""


@implementer(IAgentEndpointFactory)
class _Sockets:
    """``http://workerN/...`` is worker N's console socket."""

    def __init__(self, reactor: Any, sockets: dict[int, str]) -> None:
        self.reactor = reactor
        self.sockets = sockets

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        n = int(uri.host.decode("ascii").removeprefix("worker"))
        return UNIXClientEndpoint(self.reactor, self.sockets[n], timeout=TIMEOUT)


class WorkerConsoles:
    """The consoles of workers 1..N-1, as worker 0 asks them.

    Args:
        reactor: the reactor.
        sockets: worker number -> the Unix socket its console serves on.
    """

    _log = Logger()

    def __init__(self, reactor: Any, sockets: dict[int, str]) -> None:
        self.reactor = reactor
        self.sockets = dict(sockets)
        self._agent = Agent.usingEndpointFactory(reactor, _Sockets(reactor, self.sockets))

    def __len__(self) -> int:
        return len(self.sockets)

    def get(self, n: int, path: bytes) -> defer.Deferred:
        """Worker ``n``'s answer to ``GET path`` (path and query) as ``(status, body)``; fails after `TIMEOUT`."""
        d = self._agent.request(b"GET", b"http://worker%d%s" % (n, path))
        d.addCallback(self._read)
        d.addTimeout(TIMEOUT, self.reactor)
        return d

    @staticmethod
    def _read(response: Any) -> defer.Deferred:
        """``(status, body)`` of ``response`` once read; cancelling it closes the connection."""
        reader = _Body(response.code)
        response.deliverBody(reader)
        return reader.done

    def get_all(self, path: bytes) -> defer.Deferred:
        """The bodies of every worker's 200 answer to ``GET path``, in worker order; a worker that fails or
        does not answer in time is left out (logged)."""

        def body(answer: tuple[int, bytes], n: int) -> bytes | None:
            status, data = answer
            if status == 200:
                return data
            self._log.warn("console: worker {n} answered {status} to {path}", n=n, status=status, path=path)
            return None

        def failed(failure: Any, n: int) -> None:
            self._log.warn("console: worker {n} did not answer {path}: {why}", n=n, path=path,
                           why=failure.getErrorMessage())

        asks = [self.get(n, path).addCallbacks(body, failed, callbackArgs=(n,), errbackArgs=(n,))
                for n in sorted(self.sockets)]
        return defer.gatherResults(asks).addCallback(lambda bodies: [b for b in bodies if b is not None])

    def follow(self, write: Callable[[bytes], None]) -> "_Links":
        """Follow every worker's live stream, giving ``write`` their ``data:`` events, until ``close``."""
        links = _Links([_Link(self, n, write) for n in sorted(self.sockets)])
        for link in links.links:
            link.start()
        return links


class _Body(Protocol):
    """A worker's answer read to its end."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.parts: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred(lambda _: self.transport.stopProducing())

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # the end, with or without a length
            self.done.callback((self.status, b"".join(self.parts)))
        else:
            self.done.errback(reason)


class _Links:
    """One page's links to the workers' streams."""

    def __init__(self, links: list["_Link"]) -> None:
        self.links = links

    def close(self) -> None:
        """End every link, and try none again."""
        for link in self.links:
            link.close()


class _Link:
    """Worker 0 following worker ``n``'s ``/events`` for one page, again after each end."""

    _log = Logger()

    def __init__(self, consoles: WorkerConsoles, n: int, write: Callable[[bytes], None]) -> None:
        self.consoles = consoles
        self.n = n
        self.write = write
        self.closed = False
        self._pending: Any = None  # the request in flight or the retry's DelayedCall
        self._reader: _Reader | None = None

    def start(self) -> None:
        self._pending = None
        if self.closed:
            return
        d = self.consoles._agent.request(b"GET", b"http://worker%d/events" % self.n)
        d.addTimeout(TIMEOUT, self.consoles.reactor)
        d.addCallbacks(self._answered, self._failed)
        self._pending = d

    def _answered(self, response: Any) -> None:
        self._pending = None
        if response.code != 200:
            self._log.warn("console: worker {n} answered {status} for its stream", n=self.n, status=response.code)
            response.deliverBody(Protocol())  # read and drop
            self.lost()
            return
        self._reader = _Reader(self)
        response.deliverBody(self._reader)

    def _failed(self, failure: Any) -> None:
        self._pending = None
        if not self.closed:  # a worker being restarted refuses: quietly, until it is back
            self._log.debug("console: worker {n}'s stream: {why}", n=self.n, why=failure.getErrorMessage())
            self.lost()

    def lost(self) -> None:
        """The stream ended: follow it again in `RETRY` seconds, unless the page closed."""
        self._reader = None
        if not self.closed and self._pending is None:
            self._pending = self.consoles.reactor.callLater(RETRY, self.start)

    def close(self) -> None:
        self.closed = True
        pending, self._pending = self._pending, None
        if isinstance(pending, defer.Deferred):
            pending.cancel()
        elif pending is not None and pending.active():
            pending.cancel()
        if self._reader is not None and self._reader.transport is not None:
            self._reader.transport.stopProducing()


class _Reader(Protocol):
    """A worker's stream body, cut into events for the page."""

    _log = Logger()

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.splitter = EventSplitter()

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.splitter.feed(data)
        except ValueError as e:
            self._log.warn("console: worker {n}'s stream: {error}; following it again", n=self.link.n, error=e)
            self.transport.stopProducing()
            return
        if events and not self.link.closed:
            self.link.write(events)

    def connectionLost(self, reason: Any = None) -> None:
        if self.link._reader is self:
            self.link.lost()
