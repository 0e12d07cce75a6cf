"""``twistd tinspect``: command-line options and the service maker.

The plugin in ``twisted/plugins/tinspect_plugin.py`` points twistd here.
`Options` is the command line users script against (DESIGN.md); `makeService`
turns it into a `tinspect.proxy.Proxy`. Every mistake the options can catch
(a bad listen spec, an unknown tap or tap option) is a `usage.UsageError`
naming the culprit, raised before anything binds.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.application.service import Service
from twisted.python import usage

from taps import BUILTIN
from tinspect.cli.config import ConfigError, config_argv, split_config
from tinspect.context import Settings
from tinspect.flow import set_id_prefix
from tinspect.layers.http.explicit import ClientNetworks, ProxyAuth
from tinspect.layers.tls.policy import ClientCertificate
from tinspect.listen.spec import DEFAULT_LISTEN, SpecError, parse_listen, parse_udp
from tinspect.listen.workers import Workers, shared_endpoint, worker_argv
from tinspect.net.parent import ParentRules
from tinspect.net.sockets import transparency_refused
from tinspect.ops.logs import JsonLog
from tinspect.proxy import TwistdProxy
from tinspect.taplib.loader import TapLoadError, build_taps, parse_tap_names

__all__ = ["Options", "makeService"]


_REPEATABLE = {"listen", "udp", "passthrough", "proxy-auth", "allow-clients", "upstream-proxy", "client-cert",
               "console-auth", "console-clients"}


class Options(usage.Options):
    """Options of ``twistd tinspect``."""

    synopsis = (
        "[--listen [MODE@]ENDPOINT]... [--udp SPEC]... [--taps NAMES] [--tap-option TAP.KEY=VALUE]...\n"
        "       [--max-body BYTES] [--max-message BYTES] [--proxy-auth USER:PASSWORD]... [--ca-cert PEM --ca-key PEM | --state-dir DIR]\n"
        "       [--upstream-ca PEM] [--insecure-upstream] [--passthrough PATTERN]... [--passthrough-rejected]\n"
        "       [--upstream-proxy 'URL [for PATTERN,...]']... [--upstream-proxy-ca PEM] [--upstream-proxy-connect]\n"
        "       [--client-cert PATTERN=CERT.pem[,KEY.pem]]... [--passthrough-client-auth] [--spoof-source]\n"
        "       [--workers N] [--allow-clients CIDR,...]... [--metrics ENDPOINT] [--log-json PATH]\n"
        "       [--console ENDPOINT [--console-auth USER:PASSWORD]... [--console-flows N]]\n"
        "       [--config tinspect.toml]  (timeouts and limits: see below)"
    )

    longdesc = f"""\
Transparent inspection proxy: relays connections that TPROXY or REDIRECT rules
(or fixed forwards) send it to their destination, passing every unit through
the taps in order, both directions.

--listen [MODE@]ENDPOINT (repeatable). ENDPOINT is a Twisted endpoint string
or tproxy:PORT[:interface=ADDR]. MODE: transparent (default for tproxy:; on
tcp: it is for -j REDIRECT), explicit (default otherwise; HTTP proxy) or
forward=HOST:PORT (fixed upstream). Examples: --listen tproxy:8080,
--listen tproxy:8080:interface=\\:\\: (IPv6), --listen transparent@tcp:8080,
--listen forward=192.0.2.10:80@tcp:8081. With no --listen and no --udp:
{DEFAULT_LISTEN}.

--udp SPEC (repeatable): tproxy:PORT[:interface=ADDR] (transparent, under a
TPROXY rule) or forward=HOST:PORT@[udp:]PORT[:interface=ADDR] (fixed upstream).

HTTP/1.1 is decoded wherever a client's first bytes are a request line
(anything else is relayed raw; a client that says nothing for --sniff-timeout
seconds too). The explicit proxy takes CONNECT and http:// absolute-form
requests; --proxy-auth USER:PASSWORD (repeatable) makes it require Basic
authentication. It serves clients from loopback and private networks only
unless --allow-clients CIDR,... (repeatable; applies to every listener) says
otherwise. Bodies stream; taps that ask for whole bodies get them
buffered up to --max-body bytes.

WebSocket (ws:// and wss://) is terminated on both sides: each message
crosses the taps whole, up to --max-message bytes (a larger one closes its
sender with 1009 and the other side with 1011).

TLS (any port) is intercepted: the server is verified first (system trust
store, or --upstream-ca), then the client gets a leaf certificate for the
name it asked for, signed by the CA (--ca-cert/--ca-key, or one generated
into --state-dir; print it with `tinspect ca`). --passthrough PATTERN relays
matching hosts untouched; --no-tls relays all TLS untouched.

A server that asks for a client certificate gets the one of the first
--client-cert PATTERN=CERT.pem[,KEY.pem] (repeatable) its name or address
matches; with none it goes on without one, or, with --passthrough-client-auth,
the host is passed through from then on so the client can present its own.
--spoof-source makes upstream connections leave from the client's address
(IP_TRANSPARENT; needs the return-route recipe of docs/gateway.md).

--taps NAMES: comma-separated, in chain order: built-in names
({", ".join(BUILTIN)}), entry-point names (group tinspect.taps), module:Class, or
ALIAS=module:Class. --tap-option NAME.KEY=VALUE sets a tap's option.

--console ENDPOINT serves a live web console of the flows (loopback unless
--console-auth or --console-auth-file gives it a password; see docs/console.md).

--workers N runs N processes sharing the TCP listening ports (SO_REUSEPORT;
tcp:, tcp6: and tproxy: listeners); --udp stays in the first. The others log
next to it (LOGFILE.workerN).
"""

    optParameters = [
        ["taps", "t", "", "Taps in chain order, comma-separated (logger,mangler,mypkg.mod:MyTap)."],
        ["connect-timeout", None, 10.0, "Seconds to wait for an upstream TCP connection.", float],
        ["idle-timeout", None, 60.0, "Seconds a client connection may wait between HTTP requests.", float],
        ["header-timeout", None, 30.0, "Seconds from a request head's first byte to its end (408 beyond).", float],
        ["response-timeout", None, 60.0, "Seconds a server may send nothing while its response is awaited "
                                          "or read (504 beyond).", float],
        ["handshake-timeout", None, 15.0, "Seconds from a client's first TLS byte to the end of its handshake.",
         float],
        ["max-connections", None, 8192, "Client connections open at once; more are refused.", int],
        ["max-connections-per-client", None, 512, "Client connections open at once from one address.", int],
        ["udp-timeout", None, 60.0, "Seconds of silence before a UDP session ends.", float],
        ["sniff-timeout", None, 1.0, "Seconds to wait for a client's first bytes before relaying raw.", float],
        ["max-body", None, 100 * 1024 * 1024, "Largest HTTP body buffered for a tap that asks for whole bodies.", int],
        ["max-message", None, 16 * 1024 * 1024, "Largest WebSocket message; a larger one closes its sender with 1009.",
         int],
        ["ca-cert", None, None, "CA certificate (PEM or DER) that signs the leaf certificates."],
        ["ca-key", None, None, "The CA's private key (unencrypted; mode 0600 or stricter)."],
        ["state-dir", None, None, "Where a generated CA is kept (default: $TINSPECT_STATE_DIR, "
                                  "$XDG_STATE_HOME/tinspect or ~/.local/state/tinspect)."],
        ["upstream-ca", None, None, "PEM bundle to verify servers against instead of the system trust store."],
        ["upstream-proxy-ca", None, None, "PEM bundle to verify https:// parent proxies against instead of the "
                                          "system trust store."],
        ["leaf-cache", None, 1024, "Leaf certificates kept in memory.", int],
        ["workers", None, 1, "Proxy processes sharing the listening ports (SO_REUSEPORT).", int],
        ["metrics", None, None, "Serve counters in the Prometheus text format at http://ENDPOINT/metrics "
                                "(e.g. tcp:9108:interface=127.0.0.1); with --workers, summed over them."],
        ["log-json", None, None, "Also write the log as JSON Lines to PATH ('-': standard output)."],
        ["worker-metrics", None, None, "(internal) The Unix socket where this worker serves its counters."],
        ["worker-console", None, None, "(internal) The Unix socket where this worker serves its console records."],
        ["worker-index", None, 0, "(internal) This worker's number (its flow ids start with wN-).", int],
        # QUIC (transparent UDP on --quic-ports, read by tinspect/layers/quic)
        ["quic", None, "refuse", "QUIC connections no tap or --passthrough decides: refuse (dropped: the browser "
                                 "falls back to TCP, where it is inspected) or pass (relayed, name logged)."],
        ["quic-ports", None, "443", "Destination ports whose transparent UDP is read as QUIC (comma-separated)."],
        # The live web console (tinspect/console; nothing of it exists without --console)
        ["console", None, None, "Serve the live web console at http://ENDPOINT/ (a bare PORT: "
                                "tcp:PORT:interface=127.0.0.1; tcp: without interface= binds loopback too)."],
        ["console-flows", None, 2000, "Flows and exchanges the console keeps in memory (the most recent).", int],
        ["console-body", None, 4096, "Bytes the console keeps of each body (0: sizes only).", int],
        ["console-auth-file", None, None, "A file of USER:PASSWORD lines: the console requires one (Basic)."],
    ]

    optFlags = [
        ["insecure-upstream", None, "Do not verify server certificates (logged loudly)."],
        ["passthrough-rejected", None, "Pass through, from then on, hosts whose client rejected our certificate."],
        ["upstream-proxy-connect", None, "Send plain HTTP to an http:// parent proxy through CONNECT, not as "
                                         "absolute-form requests."],
        ["no-tls", None, "Do not intercept TLS: relay it raw."],
        ["passthrough-client-auth", None, "Pass through, from then on, hosts that ask for a client certificate "
                                          "none of --client-cert is for."],
        ["spoof-source", None, "Connect upstream from the client's address (IP_TRANSPARENT, any port)."],
        ["worker", None, "(internal) This process is an extra worker of --workers."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["udp"] = []
        self["tap_options"] = {}
        self["proxy_auth"] = []
        self["allow_clients"] = []
        self["passthrough"] = []
        self["upstream_proxy"] = []
        self["client_certs"] = []
        self["console_auth"] = []
        self["console_clients"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        self["argv"] = argv
        try:
            path, rest = split_config(argv)
            if path is not None:
                rest = config_argv(path, self.optParameters, self.optFlags, _REPEATABLE, rest) + rest
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        super().parseOptions(rest)

    def opt_config(self, path: str) -> None:
        """FILE: options from a TOML file (keys are these options' names; [tap.NAME] tables
        hold tap options); the command line overrides it."""
        raise usage.UsageError("--config is read before the other options")  # split off in parseOptions

    def opt_listen(self, spec: str) -> None:
        """[MODE@]ENDPOINT to listen on (repeatable); see above."""
        try:
            self["listen"].append(parse_listen(spec))
        except SpecError as e:
            raise usage.UsageError(f"--listen: {e}") from None

    def opt_udp(self, spec: str) -> None:
        """UDP listener: tproxy:PORT or forward=HOST:PORT@PORT (repeatable)."""
        try:
            self["udp"].append(parse_udp(spec))
        except SpecError as e:
            raise usage.UsageError(f"--udp: {e}") from None

    def opt_passthrough(self, pattern: str) -> None:
        """Relay TLS for hosts matching PATTERN untouched (*.bank.example, IP, CIDR; repeatable)."""
        self["passthrough"].append(pattern)

    def opt_upstream_proxy(self, rule: str) -> None:
        """'URL [for PATTERN,...]': reach servers through a parent proxy (http://, https://, socks5://,
        socks5h://, credentials in the URL; 'direct' for none); the first matching rule wins (repeatable)."""
        try:
            ParentRules.parse_rule(rule)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["upstream_proxy"].append(rule)

    def opt_client_cert(self, text: str) -> None:
        """PATTERN=CERT.pem[,KEY.pem]: the certificate for servers matching PATTERN that ask for one
        (repeatable; first match wins)."""
        try:
            ClientCertificate.parse(text)
        except ValueError as e:
            raise usage.UsageError(f"--client-cert: {e}") from None
        self["client_certs"].append(text)

    def opt_allow_clients(self, networks: str) -> None:
        """Serve only clients in these networks (comma-separated CIDRs; repeatable). Default: the explicit
        proxy serves loopback and private networks, transparent listeners every client routed to them."""
        parts = [n for n in networks.split(",") if n.strip()]
        try:
            ClientNetworks(parts)
        except ValueError as e:
            raise usage.UsageError(f"--allow-clients: {e}") from None
        self["allow_clients"] += parts

    def opt_console_auth(self, credentials: str) -> None:
        """USER:PASSWORD the console requires (Basic; repeatable; --console-auth-file keeps it out of ps)."""
        self["console_auth"].append(credentials)

    def opt_console_clients(self, networks: str) -> None:
        """Serve the console only to clients in these networks (comma-separated CIDRs; repeatable).
        Default: loopback and private networks, as for the explicit proxy."""
        parts = [n for n in networks.split(",") if n.strip()]
        try:
            ClientNetworks(parts)
        except ValueError as e:
            raise usage.UsageError(f"--console-clients: {e}") from None
        self["console_clients"] += parts

    def opt_proxy_auth(self, credentials: str) -> None:
        """USER:PASSWORD the explicit proxy requires (Basic; repeatable)."""
        self["proxy_auth"].append(credentials)

    def opt_tap_option(self, text: str) -> None:
        """TAP.KEY=VALUE: an option for a tap (repeatable; a repeated key gives a list)."""
        name, sep, value = text.partition("=")
        tap, dot, key = name.partition(".")
        if not sep or not dot or not tap or not key:
            raise usage.UsageError(f"--tap-option {text!r}: expected TAP.KEY=VALUE")
        options = self["tap_options"].setdefault(tap, {})
        if key in options:  # a repeated key gives a list, for the taps that take one
            before = options[key]
            options[key] = [*(before if isinstance(before, list) else [before]), value]
        else:
            options[key] = value

    def postOptions(self) -> None:
        try:
            self["tap_objects"] = build_taps(parse_tap_names(self["taps"]), self["tap_options"])
        except TapLoadError as e:
            raise usage.UsageError(str(e)) from None
        if bool(self["ca-cert"]) != bool(self["ca-key"]):
            raise usage.UsageError("--ca-cert and --ca-key go together")
        for key in ("connect-timeout", "idle-timeout", "header-timeout", "response-timeout", "handshake-timeout",
                    "max-connections", "max-connections-per-client", "udp-timeout", "sniff-timeout", "max-body", "max-message", "leaf-cache", "workers"):
            if self[key] <= 0:
                raise usage.UsageError(f"--{key} must be positive")
        if self["workers"] > 1 or self["worker"]:
            if not self["listen"] and not self["udp"]:
                self["listen"].append(parse_listen(DEFAULT_LISTEN))
            try:
                self["listen"] = [
                    parse_listen(spec.text[: len(spec.text) - len(spec.endpoint)] + shared_endpoint(spec.endpoint))
                    for spec in self["listen"]
                ]
            except SpecError as e:
                raise usage.UsageError(f"--listen: {e}") from None
        if self["quic"] not in ("refuse", "pass"):
            raise usage.UsageError(f"--quic must be refuse or pass, not {self['quic']!r}")
        try:
            ports = tuple(int(p) for p in str(self["quic-ports"]).split(",") if p.strip())
        except ValueError:
            ports = (0,)
        if not all(0 < p < 65536 for p in ports):
            raise usage.UsageError(f"--quic-ports: expected ports 1-65535, comma-separated, not {self['quic-ports']!r}")
        self["quic_ports"] = ports
        try:
            self["auth"] = ProxyAuth(self["proxy_auth"]) if self["proxy_auth"] else None
        except ValueError as e:
            raise usage.UsageError(f"--proxy-auth: {e}") from None
        self._console_options()
        if self["spoof-source"]:
            refused = transparency_refused()
            if refused:  # checked now: otherwise every upstream connection would fail on its own
                raise usage.UsageError(f"--spoof-source: this process cannot bind upstream sockets to clients' "
                                       f"addresses (IP_TRANSPARENT): {refused}")

    def _console_options(self) -> None:
        """Check the console's options; ``console`` becomes an endpoint string, loopback unless told."""
        if self["console-flows"] < 1 or self["console-body"] < 0:
            raise usage.UsageError("--console-flows must be positive and --console-body not negative")
        if self["console-auth-file"]:
            try:
                with open(self["console-auth-file"], encoding="utf-8") as f:
                    lines = [line.strip() for line in f]
            except OSError as e:
                raise usage.UsageError(f"--console-auth-file {self['console-auth-file']}: {e.strerror}") from None
            self["console_auth"] += [line for line in lines if line and not line.startswith("#")]
        try:
            if self["console_auth"]:
                ProxyAuth(self["console_auth"])
        except ValueError as e:
            raise usage.UsageError(f"--console-auth: {str(e).replace('proxy credentials', 'credentials')}") from None
        if self["console"]:
            self["console"] = console_endpoint(self["console"])


def makeService(options: Options, reactor: Any = None) -> TwistdProxy:
    """Build the proxy service from parsed options."""
    settings = Settings(
        connect_timeout=options["connect-timeout"],
        idle_timeout=options["idle-timeout"],
        header_timeout=options["header-timeout"],
        response_timeout=options["response-timeout"],
        handshake_timeout=options["handshake-timeout"],
        max_connections=options["max-connections"],
        max_connections_per_client=options["max-connections-per-client"],
        udp_idle_timeout=options["udp-timeout"],
        sniff_timeout=options["sniff-timeout"],
        max_body=options["max-body"],
        max_message=options["max-message"],
        proxy_auth=options["auth"],
        allow_clients=tuple(options["allow_clients"]) or None,
        ca_cert=options["ca-cert"],
        ca_key=options["ca-key"],
        state_dir=options["state-dir"],
        upstream_ca=options["upstream-ca"],
        insecure_upstream=bool(options["insecure-upstream"]),
        passthrough=tuple(options["passthrough"]),
        passthrough_rejected=bool(options["passthrough-rejected"]),
        upstream_proxies=tuple(options["upstream_proxy"]),
        upstream_proxy_ca=options["upstream-proxy-ca"],
        upstream_proxy_connect=bool(options["upstream-proxy-connect"]),
        leaf_cache_size=options["leaf-cache"],
        intercept_tls=not options["no-tls"],
        quic=options["quic"],
        quic_ports=options["quic_ports"],
        client_certs=tuple(options["client_certs"]),
        passthrough_client_auth=bool(options["passthrough-client-auth"]),
        spoof_source=bool(options["spoof-source"]),
    )
    proxy = TwistdProxy(options["tap_objects"], settings, reactor)
    if options["log-json"]:
        JsonLog(options["log-json"]).setServiceParent(proxy)  # workers append to the same file, line by line
    for spec in options["listen"]:
        proxy.listen(spec.text)
    if options["worker"]:
        # Flow and console record ids unique across the workers, and across a restarted worker's runs
        set_id_prefix(f"w{options['worker-index']}-{os.getpid()}-")
        if options["worker-console"]:  # first, as in worker 0: the counters then measure the chain it wraps
            proxy.serve_worker_console(options["worker-console"], options["console-flows"], options["console-body"])
        if options["worker-metrics"]:
            proxy.serve_worker_metrics(options["worker-metrics"])
        return proxy  # UDP sessions, the metrics endpoint and the console page live in worker 0
    extra = range(1, options["workers"])
    runtime = None  # where the extra workers serve worker 0 their counters and console records
    if extra and (options["metrics"] or options["console"]):
        runtime = tempfile.mkdtemp(prefix="tinspect-workers-")  # 0700: only this user reaches the sockets
        proxy.addService(_RemoveWhenStopped(runtime))
    metrics = {n: os.path.join(runtime, f"worker{n}.sock") for n in extra if runtime and options["metrics"]}
    consoles = {n: os.path.join(runtime, f"console{n}.sock") for n in extra if runtime and options["console"]}
    if options["console"]:
        proxy.serve_console(options["console"], options["console-flows"], options["console_auth"],
                            options["console_clients"], options["console-body"], workers=consoles)
    if options["metrics"]:
        proxy.serve_metrics(options["metrics"], list(metrics.values()))
    for spec in options["udp"]:
        proxy.listen_udp(spec.text)
    if extra:
        argvs = [worker_argv(sys.argv, options["argv"], n, metrics_socket=metrics.get(n),
                             console_socket=consoles.get(n)) for n in extra]
        Workers(proxy.ctx.reactor, argvs, proxy.ctx.metrics).setServiceParent(proxy)
    return proxy


def console_endpoint(text: str) -> str:
    """The endpoint ``--console`` binds: a bare port, or a ``tcp:``/``tcp6:`` endpoint
    without ``interface=``, on loopback; anything else as given."""
    if text.isdigit():
        return f"tcp:{text}:interface=127.0.0.1"
    kind = text.split(":", 1)[0]
    if kind in ("tcp", "tcp6") and "interface=" not in text:
        return text + (":interface=127.0.0.1" if kind == "tcp" else ":interface=\\:\\:1")
    return text


class _RemoveWhenStopped(Service):
    """Removes a directory of the proxy's (the workers' sockets) when it stops."""

    def __init__(self, path: str) -> None:
        self.path = path

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)
