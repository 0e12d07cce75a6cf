"""Taps used by the end-to-end tests, loaded by ``--taps module:Class``."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.logger import Logger

from tinspect import Tap
from tinspect.units import TO_CLIENT, TO_SERVER, Data, Datagram, Request, WebSocketClose, WebSocketMessage


class Shout(Tap):
    """Upper-cases payloads going one way; ``direction`` is an option."""

    kinds = (Data, Datagram)

    def __init__(self, direction: str = "to_server") -> None:
        self.direction = direction

    def handle(self, unit, flow):
        if str(unit.direction) == self.direction:
            unit.data = unit.data.upper()
        return unit


class Dawdle(Tap):
    """Holds every unit for ``delay`` seconds through a Deferred (an async tap)."""

    def __init__(self, delay: str = "0.05") -> None:
        self.delay = float(delay)

    def handle(self, unit, flow):
        return task.deferLater(reactor, self.delay, lambda: unit)


class Tripwire(Tap):
    """Raises on any payload containing ``BOOM``: a tap with a bug."""

    def handle(self, unit, flow):
        if b"BOOM" in getattr(unit, "data", b""):
            raise RuntimeError("tripwire")
        return unit


class Block(Tap):
    """Answers 403 with a block page, locally, for request paths containing ``word``."""

    kinds = (Request,)

    def __init__(self, word: str = "blocked") -> None:
        self.word = word

    def handle(self, unit, flow):
        if self.word in unit.path:
            return unit.respond(403, f"blocked by tinspect: {unit.url}\n")
        return unit


class Route(Tap):
    """Sends requests whose path starts with ``prefix`` to ``host:port`` over plain HTTP/1.1."""

    kinds = (Request,)

    def __init__(self, prefix: str = "/routed", host: str = "198.51.100.2", port: str = "8081") -> None:
        self.prefix = prefix
        self.to = (host, int(port))

    def handle(self, unit, flow):
        if unit.path.startswith(self.prefix):
            unit.destination = self.to
            unit.scheme = "http"
        return unit


class Whole(Tap):
    """Asks for whole bodies and stamps each message with its body length."""

    whole_bodies = True

    def handle(self, unit, flow):
        if hasattr(unit, "headers"):
            unit.headers["X-Body-Seen"] = "streamed" if unit.body is None else str(len(unit.body))
        return unit


class TlsFacts(Tap):
    """Logs what the flow knows about TLS when a request passes."""

    kinds = (Request,)
    log = Logger(namespace="tests.tlsfacts")

    def handle(self, unit, flow):
        cert = flow.upstream_cert or {}
        self.log.info(
            "tls facts: sni={sni} alpn={alpn} version={version} upstream={upstream} issuer={issuer}",
            sni=flow.sni, alpn=flow.alpn, version=flow.tls_version,
            upstream=",".join(cert.get("dns_names", [])), issuer=cert.get("issuer_cn"),
        )
        return unit


class TimingFacts(Tap):
    """Logs, as each flow closes, the steps of its `Timings` that happened, in time order."""

    kinds = ()
    log = Logger(namespace="tests.timingfacts")

    def flow_closed(self, flow):
        t = flow.timings
        steps = ("accepted", "upstream_connected", "upstream_tls_done", "client_tls_done", "ended")
        stamped = sorted((getattr(t, name), i, name) for i, name in enumerate(steps) if getattr(t, name) is not None)
        self.log.info("timings: {order}", order=",".join(name for _, _, name in stamped))


class WsInject(Tap):
    """On the text message ``inject?`` going to the server, sends ``injected`` to the client first."""

    kinds = (WebSocketMessage,)

    def handle(self, unit, flow):
        if unit.direction is TO_SERVER and not unit.binary and unit.text == "inject?":
            flow.inject(WebSocketMessage(b"injected", direction=TO_CLIENT), after=self)
        return unit


class WsFacts(Tap):
    """Logs every WebSocket unit with its direction, type and close code."""

    kinds = (WebSocketMessage, WebSocketClose)
    log = Logger(namespace="tests.wsfacts")

    def handle(self, unit, flow):
        if type(unit) is WebSocketClose:
            what = f"close {unit.code} {unit.reason!r}"
        else:
            what = f"{'binary' if unit.binary else 'text'} {unit.size}"
        self.log.info("ws facts: flow {flow_id} {direction} {what} protocol={protocol}",
                      flow_id=flow.id, direction=str(unit.direction), what=what, protocol=flow.protocol)
        return unit
