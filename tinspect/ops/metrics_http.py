"""The ``--metrics`` endpoint: `tinspect.ops.metrics.Metrics` over HTTP, at ``/metrics``.

A module of its own so that twisted.web (about 4 MiB of RSS) is loaded only
by a proxy that serves metrics.

With ``--workers N``, workers 1..N-1 each serve their own exposition on a
Unix socket (`worker_metrics_factory`: the text, then close) in a directory
only the proxy's user can enter, and worker 0's ``/metrics`` asks them all
and serves the sum (`tinspect.ops.exposition.merge`), with
``tinspect_workers_reporting`` saying how many processes it holds. A
worker that does not answer within `WORKER_TIMEOUT` seconds is left out of
that scrape, not waited for.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tinspect.ops.exposition import merge

__all__ = ["MetricsResource", "metrics_site", "worker_metrics_factory", "WORKER_TIMEOUT"]

WORKER_TIMEOUT = 2.0


def metrics_site(ctx: Any, workers: Sequence[str] = ()) -> Site:
    """The site serving ``ctx``'s counters, summed with those of the workers
    listening on the Unix sockets ``workers``."""
    return _QuietSite(MetricsResource(ctx, workers))


def worker_metrics_factory(ctx: Any) -> Factory:
    """What a worker serves on its metrics socket: its exposition, then close."""
    return Factory.forProtocol(lambda: _Tell(ctx))


class _Tell(Protocol):
    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    def connectionMade(self) -> None:
        self.transport.write(self.ctx.metrics.render(self.ctx).encode())
        self.transport.loseConnection()


class _Listen(Protocol):
    """Reads a worker's exposition to the end."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.parts).decode())


class _QuietSite(Site):
    """A Site that does not log every scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsResource(Resource):
    """``GET /metrics``: the text of `Metrics.render`, summed over the workers.

    Args:
        ctx: the proxy context.
        workers: the other workers' metrics sockets.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, ctx: Any, workers: Sequence[str] = ()) -> None:
        super().__init__()
        self.ctx = ctx
        self.workers = tuple(workers)

    def render_GET(self, request: Any) -> bytes | int:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"see /metrics\n"
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        own = self.ctx.metrics.render(self.ctx)
        if not self.workers:
            return (own + _reporting(1)).encode()
        d = defer.gatherResults([self._ask(path) for path in self.workers])
        gone: list[bool] = []  # the scraper hung up meanwhile
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def write(texts: list[str | None]) -> None:
            got = [text for text in texts if text]
            try:
                body = merge([own, *got]) + _reporting(1 + len(got))
            except ValueError as e:  # a worker's text we cannot read: serve ours, say so
                self._log.warn("metrics: a worker's exposition is malformed: {error}", error=e)
                body = own + _reporting(1)
            if not gone:
                request.write(body.encode())
                request.finish()

        d.addCallback(write)
        d.addErrback(lambda failure: self._log.failure("metrics scrape failed", failure))
        return NOT_DONE_YET

    def _ask(self, path: str) -> defer.Deferred:
        """One worker's exposition, or ``None`` when it does not answer in time."""
        reactor = self.ctx.reactor
        endpoint = UNIXClientEndpoint(reactor, path, timeout=WORKER_TIMEOUT)
        listener = _Listen()
        d = connectProtocol(endpoint, listener)
        d.addCallback(lambda _: listener.done)
        d.addTimeout(WORKER_TIMEOUT, reactor)
        d.addErrback(lambda failure: self._log.debug("metrics: worker at {path} did not answer: {why}", path=path,
                                                     why=failure.getErrorMessage()))
        return d


def _reporting(n: int) -> str:
    return ("# HELP tinspect_workers_reporting Proxy processes whose counters this scrape sums.\n"
            "# TYPE tinspect_workers_reporting gauge\n"
            f"tinspect_workers_reporting {n}\n")
