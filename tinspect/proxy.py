"""`Proxy`: a service holding the taps and every listener of one process.

It is what ``twistd tinspect`` runs and what a script builds, in the spirit of
transmitm's ``Dispatcher``::

    from tinspect import Proxy
    from taps.logger import LoggerTap

    proxy = Proxy(taps=[LoggerTap()])
    proxy.listen("tproxy:8080")
    proxy.listen("forward=192.0.2.10:80@tcp:8081")
    proxy.listen_udp("forward=192.0.2.53:53@5353")
    proxy.run()

Listeners bind in ``privilegedStartService``, synchronously: a port that is
taken or a missing privilege raises `ListenError` with one clear line before
anything else starts.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from typing import Any, Callable, Iterable

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger

from tinspect.chain import Tap, TapChain
from tinspect.context import ProxyContext, Settings
from tinspect.layers.dispatch import compose
from tinspect.layers.tls.ca import CAError
from tinspect.layers.udp import ForwardUDP, TransparentUDP
from tinspect.listen.accept import Destination, ExplicitProxyFactory, TCPProxyFactory
from tinspect.listen.endpoints import server_endpoint
from tinspect.listen.spec import DEFAULT_LISTEN, ListenSpec, UDPSpec, parse_listen, parse_udp
from tinspect.net.addresses import format_addr
from tinspect.net.sockets import SocketError, raise_fd_limit
from tinspect.ops.signals import handle_sighup

__all__ = ["Proxy", "TwistdProxy", "ListenError"]


class ListenError(Exception):
    """A listener could not start; the message says which and why."""


class _PortService(Service):
    """A service holding one of the proxy's listening ports: bound (and known to
    loop detection) when it starts, closed when it stops."""

    port: Any = None
    ctx: ProxyContext

    def _bind(self, where: str, endpoint_text: str, factory: Any, prepare: Any = None) -> tuple[str, int]:
        """Listen on ``endpoint_text``; the bound address. ``where`` names the option in errors;
        ``prepare``, if given, is called with the endpoint before it listens."""
        try:
            endpoint = server_endpoint(self.ctx.reactor, endpoint_text)
            if prepare is not None:
                prepare(endpoint)
        except Exception as e:
            raise ListenError(f"{where}: bad endpoint: {e}") from None
        self.port = _now(endpoint.listen(factory), where)
        host = self.port.getHost()
        self.ctx.ports.add(host.port)
        return host.host, host.port

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return defer.maybeDeferred(port.stopListening)


class _TCPListener(_PortService):
    """One ``--listen`` endpoint."""

    _log = Logger()

    def __init__(self, ctx: ProxyContext, spec: ListenSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        if spec.mode == "explicit":
            self.factory = ExplicitProxyFactory(ctx, spec.text, tls=spec.tls)
        else:
            destination = Destination(spec.mode, spec.dst)
            self.factory = TCPProxyFactory(ctx, spec.text, destination)
        self.setName(f"listen {spec.text}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        prepare = self.factory.prepare if isinstance(self.factory, ExplicitProxyFactory) else None
        address = self._bind(f"--listen {self.spec.text}", self.spec.endpoint, self.factory, prepare)
        self._log.info("listening on {address} ({mode}) for {spec}", address=format_addr(address),
                       mode=self.spec.mode, spec=self.spec.text)


class _MetricsListener(_PortService):
    """``--metrics ENDPOINT``: the counters over HTTP, at ``/metrics``, summed
    with those of the workers listening on the Unix sockets ``workers``."""

    _log = Logger()

    def __init__(self, ctx: ProxyContext, endpoint: str, workers: tuple[str, ...] = ()) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.workers = workers
        self.setName(f"metrics {endpoint}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from tinspect.ops.metrics_http import metrics_site  # twisted.web only when asked for

        address = self._bind(f"--metrics {self.endpoint}", self.endpoint, metrics_site(self.ctx, self.workers))
        self._log.info("metrics on http://{address}/metrics", address=format_addr(address))


class _ConsoleListener(_PortService):
    """``--console ENDPOINT``: the live web console (`tinspect.console`). It
    refuses to serve a non-loopback address without authentication: the
    console shows every flow's heads, credentials included."""

    _log = Logger()

    def __init__(self, ctx: ProxyContext, endpoint: str, site_args: tuple) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.site_args = site_args
        self.setName(f"console {endpoint}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from tinspect.console.web import console_site  # twisted.web only when asked for
        from tinspect.layers.http.explicit import ClientNetworks

        where = f"--console {self.endpoint}"
        hub, auth, clients, workers = self.site_args
        consoles = None
        if workers:
            from tinspect.console.fanin import WorkerConsoles

            consoles = WorkerConsoles(self.ctx.reactor, workers)
        address = self._bind(where, self.endpoint, console_site(hub, auth, clients, workers=consoles))
        if auth is None and address[0] not in ClientNetworks(("127.0.0.0/8", "::1/128")):
            self.port.stopListening()
            self.port = None
            raise ListenError(f"{where}: {address[0]} is not a loopback address, and the console shows every "
                              f"flow's headers: require a password (--console-auth) or bind 127.0.0.1")
        self._log.info("console on http://{address}/ ({auth})", address=format_addr(address),
                       auth="password required" if auth is not None else "no password: loopback only")


class _WorkerSocket(Service):
    """What a worker serves worker 0 (its counters, its console records) on a Unix socket of mode 0600,
    in the directory worker 0 made for them (0700). A socket file left by a run of this worker that
    was killed is removed first: the restarted worker must be reachable again."""

    port: Any = None
    _log = Logger()

    def __init__(self, ctx: ProxyContext, path: str, factory: Callable[[], Any], what: str) -> None:
        self.ctx = ctx
        self.path = path
        self.factory = factory
        self.setName(f"worker {what} {path}")

    def startService(self) -> None:
        super().startService()
        from twisted.internet.endpoints import UNIXServerEndpoint

        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        endpoint = UNIXServerEndpoint(self.ctx.reactor, self.path, mode=0o600, wantPID=False)
        d = endpoint.listen(self.factory())
        d.addCallback(lambda port: setattr(self, "port", port))
        d.addErrback(lambda failure: self._log.failure("{name}: cannot listen", failure, name=self.name))

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


class _UDPListener(Service):
    """One ``--udp`` listener."""

    _log = Logger()

    def __init__(self, ctx: ProxyContext, spec: UDPSpec) -> None:
        self.ctx = ctx
        self.spec = spec
        self._port: Any = None
        self._transparent: TransparentUDP | None = None
        self.setName(f"udp {spec.text}")

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        spec = self.spec
        where = f"--udp {spec.text}"
        if spec.mode == "tproxy":
            self._transparent = TransparentUDP(self.ctx, spec.text, spec.port, spec.interface)
            try:
                self._transparent.start()
            except SocketError as e:
                raise ListenError(f"{where}: {e}") from None
        else:
            protocol = ForwardUDP(self.ctx, spec.text, spec.dst)
            try:
                self._port = self.ctx.reactor.listenUDP(spec.port, protocol, interface=spec.interface)
            except Exception as e:
                raise ListenError(f"{where}: cannot bind: {_reason(e)}") from None
        self._log.info("listening for UDP on port {port} ({mode}) for {spec}", port=spec.port,
                       mode=spec.mode, spec=spec.text)

    def stopService(self):
        super().stopService()
        if self._transparent is not None:
            self._transparent.stop()
            self._transparent = None
        if self._port is not None:
            port, self._port = self._port, None
            return defer.maybeDeferred(port.stopListening)


class Collector(Service):
    """Frees closed connections' memory within seconds: a full collection of
    CPython's cyclic garbage collector every ``interval`` seconds, over what
    was created after start only.

    A closed HTTP/2 connection (h2's connection holds bound methods of
    itself), a TLS leg and others are reference cycles, which only the cyclic
    collector frees, and its full collections come rarely while the proxy is
    busy: connections closed minutes ago held their tables and buffers in
    the meantime, and the heap they left full of holes did not shrink
    (lane c of bench/run: 3 MiB more resident after every run, kept). When
    it starts, everything the proxy has created so far (modules, classes,
    the CA: ~50,000 objects that live as long as the process) is collected
    once and frozen out of all later collections (`gc.freeze`), so each
    tick walks only objects made since: well under a millisecond idle.
    With many thousands of connections open a collection takes longer, and
    the next one waits ``DUTY`` times as long as it took (at most 1% of the
    proxy's time, and no stall every ``interval`` seconds).

    Only ``twistd tinspect`` (`TwistdProxy`) runs it; a program that embeds
    a `Proxy` owns its process's collector.

    Args:
        reactor: schedules the ticks.
        interval: seconds between collections, at least.
        collect: the collection (`gc.collect`; tests replace it).
        clock: measures how long one took (`time.perf_counter`).
    """

    DUTY = 100

    def __init__(self, reactor: Any, interval: float = 2.0, collect: Callable[[], Any] = gc.collect,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._reactor = reactor
        self.interval = interval
        self._collect = collect
        self._clock = clock
        self._next: Any = None

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()
        self._next = self._reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        started = self._clock()
        self._collect()
        spent = self._clock() - started
        self._next = self._reactor.callLater(max(self.interval, spent * self.DUTY), self._tick)

    def stopService(self):
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None


class Proxy(MultiService):
    """The taps and listeners of one proxy process, and its TLS interception
    state (the CA is loaded or generated when the proxy starts).

    Args:
        taps: taps in chain order.
        settings: limits and timeouts (defaults when ``None``).
        reactor: the reactor (the global one when ``None``).
    """

    _log = Logger()

    def __init__(self, taps: Iterable[Tap] = (), settings: Settings | None = None, reactor: Any = None) -> None:
        super().__init__()
        self.ctx = compose(ProxyContext(TapChain(taps), settings, reactor))
        self.console: Any = None  # the console's tinspect.console.hub.Hub, with serve_console

    @property
    def flows(self):
        """The live flows, by id."""
        return self.ctx.flows

    def listen(self, spec: str) -> "Proxy":
        """Add a TCP listener, ``[MODE@]ENDPOINT`` (see `tinspect.listen.spec`).

        Returns:
            The proxy, so calls chain.

        Raises:
            tinspect.listen.spec.SpecError: the spec is malformed.
        """
        _TCPListener(self.ctx, parse_listen(spec)).setServiceParent(self)
        return self

    def serve_metrics(self, endpoint: str, workers: Iterable[str] = ()) -> "Proxy":
        """Serve the counters in the Prometheus text format at ``http://ENDPOINT/metrics``
        (a Twisted server endpoint string; keep it on loopback or a management network).

        Args:
            workers: the Unix sockets where the other ``--workers`` serve
                theirs (`serve_worker_metrics`): a scrape gets the sum.
        """
        self.ctx.metrics.measure(self.ctx.chain)
        _MetricsListener(self.ctx, endpoint, tuple(workers)).setServiceParent(self)
        return self

    def serve_console(self, endpoint: str, flows: int = 2000, credentials: Iterable[str] = (),
                      clients: Iterable[str] | None = None, body_cap: int | None = None,
                      workers: dict[int, str] | None = None) -> "Proxy":
        """Serve the live web console at ``http://ENDPOINT/`` (a Twisted server endpoint string).

        Its feed wraps the tap chain (`tinspect.console.feed`): call this
        before the proxy starts. The records are in `console`.

        Args:
            flows: records kept (the most recent flows and exchanges).
            credentials: ``USER:PASSWORD`` strings, one of which every request
                must carry (Basic); without any, only a loopback address is served.
            clients: networks (CIDRs) whose clients may connect; by default
                loopback and private networks, as for the explicit proxy.
            body_cap: bytes kept of each body (`tinspect.console.feed.BODY_CAP`).
            workers: worker number -> the Unix socket where that worker of ``--workers``
                serves its records (`serve_worker_console`): the console covers them too.

        Raises:
            ValueError: a bad count, credential or network.
        """
        from tinspect.layers.http.explicit import LOCAL_NETWORKS, ClientNetworks, ProxyAuth

        credentials = list(credentials)
        auth = ProxyAuth(credentials, realm="tinspect console") if credentials else None
        networks = ClientNetworks(tuple(clients) if clients else LOCAL_NETWORKS)
        self._feed_console(flows, body_cap)
        _ConsoleListener(self.ctx, endpoint, (self.console, auth, networks, dict(workers or {}))).setServiceParent(self)
        return self

    def _feed_console(self, flows: int, body_cap: int | None) -> None:
        """Keep the console's records in `console`: its feed wraps the tap chain."""
        from tinspect.console.feed import BODY_CAP, ConsoleFeed
        from tinspect.console.hub import Hub

        self.console = Hub(flows)
        feed = ConsoleFeed(self.console, BODY_CAP if body_cap is None else body_cap)
        old = self.ctx.chain
        self.ctx.chain = TapChain(feed.wrap(old.taps))
        if old.metrics is not None:
            self.ctx.chain.measure(old.metrics)

    def serve_worker_console(self, path: str, flows: int = 2000, body_cap: int | None = None) -> "Proxy":
        """As an extra worker of ``--workers``: keep console records of this worker's flows and serve
        them (the console site, without a password) on the Unix socket ``path``, for worker 0's
        console to merge (`tinspect.console.fanin`). Call before the proxy starts."""
        self._feed_console(flows, body_cap)

        def site() -> Any:
            from tinspect.console.web import console_site

            return console_site(self.console, reactor=self.ctx.reactor)

        _WorkerSocket(self.ctx, path, site, "console").setServiceParent(self)
        return self

    def serve_worker_metrics(self, path: str) -> "Proxy":
        """As an extra worker of ``--workers``: serve the counters on the Unix
        socket ``path`` for worker 0's ``--metrics`` to sum."""
        from tinspect.ops.metrics_http import worker_metrics_factory

        self.ctx.metrics.measure(self.ctx.chain)
        _WorkerSocket(self.ctx, path, lambda: worker_metrics_factory(self.ctx), "metrics").setServiceParent(self)
        return self

    def listen_udp(self, spec: str) -> "Proxy":
        """Add a UDP listener, ``tproxy:PORT`` or ``forward=HOST:PORT@PORT``."""
        _UDPListener(self.ctx, parse_udp(spec)).setServiceParent(self)
        return self

    def privilegedStartService(self) -> None:
        if not any(isinstance(s, (_TCPListener, _UDPListener)) for s in self):
            self.listen(DEFAULT_LISTEN)
        ctx = self.ctx
        if ctx.tls is None and ctx.settings.intercept_tls:
            from tinspect.layers.tls.layer import Interception

            try:
                ctx.tls = Interception.from_settings(ctx.settings)
            except (CAError, ValueError) as e:
                raise ListenError(f"TLS interception: {e}") from None
            self._log.info(
                "TLS interception with CA {subject} (SPKI sha256 {spki})",
                subject=ctx.tls.ca.cert.subject.rfc4514_string(),
                spki=ctx.tls.ca.spki_sha256,
            )
        super().privilegedStartService()


    @property
    def ports(self) -> list:
        """The bound TCP listening ports, in the order they were added."""
        return [s.port for s in self if isinstance(s, _TCPListener) and s.port is not None]

    def run(self, log_to=sys.stderr) -> None:
        """Start every listener and run the reactor until it stops.

        Args:
            log_to: a text stream for the log, or ``None`` to leave logging
                as the caller set it up.

        Raises:
            ListenError: a listener could not start (nothing is left running).
        """
        from twisted.logger import globalLogBeginner, textFileLogObserver

        reactor = self.ctx.reactor
        if log_to is not None:
            globalLogBeginner.beginLoggingTo([textFileLogObserver(log_to)], redirectStandardIO=False)
        try:
            self.privilegedStartService()
        except ListenError:
            for service in self:
                service.stopService()
            raise
        self.startService()
        reactor.addSystemEventTrigger("before", "shutdown", self.stopService)
        reactor.run()


class TwistdProxy(Proxy):
    """The proxy as ``twistd tinspect`` runs it: a listener that cannot
    start ends the process with one log line instead of a traceback, a
    `Collector` keeps closed connections from lingering in memory, and
    SIGHUP reloads (`tinspect.ops.signals`) rather than ends it."""

    _log = Logger()

    def __init__(self, taps: Iterable[Tap] = (), settings: Settings | None = None, reactor: Any = None) -> None:
        super().__init__(taps, settings, reactor)
        Collector(self.ctx.reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        wanted = 2 * self.ctx.settings.max_connections + 256
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        soft, hard = raise_fd_limit(wanted)
        if (soft, hard) != before:
            self._log.info("open files limit raised from {before} to {soft} (hard {hard}) for --max-connections {n}",
                           before=before[0], soft=soft, hard=hard, n=self.ctx.settings.max_connections)
        if soft < wanted:
            self._log.warn(
                "open files are limited to {soft}: fewer than --max-connections {n} proxied connections fit "
                "(raise the hard limit: ulimit -Hn, LimitNOFILE=)", soft=soft, n=self.ctx.settings.max_connections,
            )
        try:
            super().privilegedStartService()
        except ListenError as e:
            self._log.critical("tinspect cannot start: {reason}", reason=str(e))
            raise SystemExit(1) from None
        handle_sighup()


def _now(d: defer.Deferred, where: str) -> Any:
    """The result of an endpoint's ``listen`` Deferred, which fires at once for TCP."""
    box: list = []
    d.addBoth(box.append)
    if not box:
        raise ListenError(f"{where}: the endpoint did not bind synchronously")
    result = box[0]
    if isinstance(result, Exception) or hasattr(result, "getErrorMessage"):
        raise ListenError(f"{where}: {_reason(getattr(result, 'value', result))}")
    return result


def _reason(exc: BaseException) -> str:
    """The useful part of a listen error (Twisted wraps the OS error)."""
    inner = getattr(exc, "socketError", None)
    if isinstance(inner, SocketError):
        return str(inner)
    if isinstance(inner, OSError) and inner.strerror:
        return f"cannot bind: {inner.strerror}"
    return str(exc)

