"""The ``--metrics`` endpoint: `tinspect.ops.metrics.Metrics` over HTTP, at ``/metrics``.

A module of its own so that twisted.web (about 4 MiB of RSS) is loaded only
by a proxy that serves metrics.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["MetricsResource", "metrics_site"]


def metrics_site(ctx: Any) -> Site:
    """The site serving ``ctx``'s counters."""
    return _QuietSite(MetricsResource(ctx))


class _QuietSite(Site):
    """A Site that does not log every scrape."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsResource(Resource):
    """``GET /metrics``: the text of `Metrics.render`."""

    isLeaf = True

    def __init__(self, ctx: Any) -> None:
        super().__init__()
        self.ctx = ctx

    def render_GET(self, request: Any) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"see /metrics\n"
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.ctx.metrics.render(self.ctx).encode()
