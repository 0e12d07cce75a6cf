"""What every connection of one proxy shares: settings, taps, live flows.

A `ProxyContext` is made once per `tinspect.proxy.Proxy` and handed to each
listener. It opens and closes flows (calling the taps' lifecycle hooks), so
every layer does that the same way, and keeps the set of live flows, which tests and the soak check count for leaks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tinspect.chain import TapChain
from tinspect.flow import Flow
from tinspect.layers.quic.policy import QuicPolicy
from tinspect.net.parent import ParentRules
from tinspect.net.sockets import is_local_address
from tinspect.ops.metrics import Metrics

if TYPE_CHECKING:
    from tinspect.layers.http.explicit import ProxyAuth

__all__ = ["Settings", "ProxyContext"]


@dataclass
class Settings:
    """Tunable limits and timeouts; defaults are what a user would expect.

    Attributes:
        connect_timeout: seconds to wait for an upstream TCP connection.
        idle_timeout: seconds an HTTP/1.1 connection may wait between
            requests, or an HTTP/2 one with no stream open, before it is closed;
            also how long an HTTP/1.1 client may read nothing while the proxy's
            buffer for it is full before the exchange is cut.
        header_timeout: seconds from the first byte of an HTTP/1 request
            head to its end (``408`` beyond: slowloris).
        response_timeout: seconds a server may send nothing while a response
            is awaited or being read (``504`` page, or the exchange aborted
            once the response began); time the proxy holds the server back
            (a slow client or tap) does not count.
        handshake_timeout: seconds from a client's first TLS byte to the end
            of its handshake with us.
        max_connections: client connections open at once, over all TCP
            listeners; more are refused (closed at accept, logged).
        max_connections_per_client: the same, per client address.
        udp_idle_timeout: seconds of silence after which a UDP session ends.
        udp_max_sessions: UDP sessions per listener; the oldest idle one is
            dropped to make room for a new client.
        sniff_timeout: seconds to wait for a client's first bytes before
            relaying the connection raw (server-speaks-first protocols are
            relayed as soon as the server speaks).
        max_body: largest HTTP body buffered for a tap that asks for whole
            bodies; larger ones stream (``--max-body``).
        max_message: largest WebSocket message (and frame); a side that
            sends a larger one is closed with 1009, the other with 1011
            (``--max-message``).
        ws_compression: offer and accept permessage-deflate, each side on
            its own (the server is offered it when the client offered it).
        max_request_line, max_header_bytes, max_headers: HTTP/1 head limits
            (answered 414 and 431 beyond them).
        proxy_auth: Basic authentication the explicit proxy requires, or
            ``None``.
        allow_clients: networks whose clients the listeners serve
            (``--allow-clients``); ``None``: explicit listeners serve
            loopback and private networks (`tinspect.layers.http.explicit.LOCAL_NETWORKS`),
            transparent ones every client routed through them.
        ca_cert, ca_key: the CA's PEM (or DER) files; when not given, the CA
            is loaded from (or generated into) ``state_dir``.
        state_dir: where a generated CA lives (a per-user default).
        upstream_ca: PEM bundle servers are verified against instead of the
            system trust store.
        insecure_upstream: do not verify servers (loudly logged).
        passthrough: host patterns (``*.bank.example``, IPs, CIDRs) whose
            TLS is relayed untouched.
        passthrough_rejected: pass through, from then on, hosts whose client
            rejected our certificate (pinned apps).
        leaf_cache_size: leaf certificates kept in memory.
        intercept_tls: decrypt TLS at all (``False``: relay it raw).
        quic: what becomes of QUIC connections no tap or ``--passthrough``
            pattern decides (``--quic``): ``"refuse"`` (their datagrams are
            dropped, so the client falls back to TCP, where it is
            inspected) or ``"pass"`` (relayed after their name is logged).
        quic_ports: destination ports whose transparent UDP is read as QUIC
            (``--quic-ports``).
        quic_hold_timeout: seconds a QUIC connection's first datagrams are
            held waiting for its whole ClientHello before the policy
            decides without the name.
        upstream_proxies: the ``--upstream-proxy`` rules (``URL [for PATTERN,...]``, first
            match wins; `tinspect.net.parent.ParentRules`): parent proxies upstream
            connections go through.
        upstream_proxy_ca: PEM bundle ``https://`` parents are verified against instead of
            the system trust store.
        upstream_proxy_connect: send plain HTTP to an ``http://`` parent through CONNECT
            tunnels too, not as absolute-form requests.
        client_certs: ``--client-cert PATTERN=CERT.pem[,KEY.pem]`` entries: the
            certificate presented to matching servers that ask for one.
        passthrough_client_auth: pass through, from then on, hosts that ask
            for a client certificate none of ``client_certs`` is for.
        spoof_source: upstream connections leave from the client's address
            (IP_TRANSPARENT; ``--spoof-source``).
    """

    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    header_timeout: float = 30.0
    response_timeout: float = 60.0
    handshake_timeout: float = 15.0
    max_connections: int = 8192
    max_connections_per_client: int = 512
    udp_idle_timeout: float = 60.0
    udp_max_sessions: int = 4096
    sniff_timeout: float = 1.0
    max_body: int = 100 * 1024 * 1024
    max_message: int = 16 * 1024 * 1024
    ws_compression: bool = True
    max_request_line: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    proxy_auth: ProxyAuth | None = None
    allow_clients: tuple[str, ...] | None = None
    ca_cert: str | None = None
    ca_key: str | None = None
    state_dir: str | None = None
    upstream_ca: str | None = None
    insecure_upstream: bool = False
    passthrough: tuple[str, ...] = ()
    passthrough_rejected: bool = False
    leaf_cache_size: int = 1024
    intercept_tls: bool = True
    quic: str = "refuse"
    quic_ports: tuple[int, ...] = (443,)
    quic_hold_timeout: float = 2.0
    upstream_proxies: tuple[str, ...] = ()
    upstream_proxy_ca: str | None = None
    upstream_proxy_connect: bool = False
    client_certs: tuple[str, ...] = ()
    passthrough_client_auth: bool = False
    spoof_source: bool = False


class ProxyContext:
    """Shared state of one proxy.

    Args:
        chain: the taps.
        settings: limits and timeouts.
        reactor: the reactor; the global one when ``None``.
    """

    def __init__(self, chain: TapChain, settings: Settings | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.chain = chain
        self.settings = settings or Settings()
        self.flows: dict[str, Flow] = {}
        self.clients: Counter[str] = Counter()  # open client connections per client address
        self.connections = 0  # open client connections, all addresses
        self.ports: set[int] = set()  # this proxy's own TCP listening ports (loop detection)
        self.metrics = Metrics()
        self.tls: Any = None  # tinspect.layers.tls.layer.Interception, set up when the proxy starts
        self.websocket: Any = None  # tinspect.layers.websocket's autobahn factories, made on first use
        self.quic = QuicPolicy(self.settings.quic, self.settings.passthrough)  # ValueError: a bad --quic
        # The layer a connection goes to when one layer has opened what it carries (TLS decrypted, a
        # CONNECT tunnel): called with a tinspect.net.handoff.Handoff. Set by the composition root,
        # tinspect.layers.dispatch.compose (a Sniffer), so that no layer imports the dispatcher.
        self.next_layer: Callable[[Any], object] | None = None
        self.parents = ParentRules(self.settings.upstream_proxies)  # which parent proxy a destination goes through
        self.parent_tls: dict[str, Any] = {}  # an https:// parent's host -> its TLS client options, made once

    def admit(self, host: str) -> str | None:
        """Count a new client connection from ``host``, or say why it is refused
        (the limits); `release` it when it ends."""
        settings = self.settings
        if self.connections >= settings.max_connections:
            return f"{settings.max_connections} client connections are open (--max-connections)"
        if self.clients[host] >= settings.max_connections_per_client:
            return f"{settings.max_connections_per_client} connections from this client are open " \
                   f"(--max-connections-per-client)"
        self.clients[host] += 1
        self.connections += 1
        self.metrics.connections_total += 1
        return None

    def release(self, host: str) -> None:
        """A client connection `admit` counted has ended."""
        self.connections -= 1
        left = self.clients[host] - 1
        if left > 0:
            self.clients[host] = left
        else:
            del self.clients[host]

    def loops(self, dst: tuple[str, int]) -> bool:
        """Whether connecting to ``dst`` would reach this proxy itself: one of its
        listening ports on a local address (a client that connected to a
        transparent port directly, a CONNECT to the proxy's own address)."""
        return dst[1] in self.ports and is_local_address(dst[0])

    def open_flow(self, flow: Flow) -> bool:
        """Register a flow and tell the taps.

        Returns:
            ``False`` when a tap's ``flow_opened`` raised: the caller must then
            close the connection (fail closed).
        """
        self.flows[flow.id] = flow
        failure = self.chain.flow_opened(flow)
        if failure is not None:
            flow.mark_ended(f"tap error opening the flow: {failure.getErrorMessage()}")
            return False
        return True

    def close_flow(self, flow: Flow, error: str | None = None) -> None:
        """Mark a flow ended, tell the taps, and forget it (idempotent)."""
        if self.flows.pop(flow.id, None) is None:
            return
        flow.mark_ended(error)
        self.metrics.flow_closed(flow.protocol, flow.error)
        self.chain.flow_closed(flow)
