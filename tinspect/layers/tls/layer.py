"""The TLS layer: peek at the ClientHello, handshake upstream first, then the client.

Theory of operation
-------------------
The sniffer hands a connection here when its first bytes are a TLS record.
`TlsLayer` then:

1. reads the ClientHello with the sans-IO `ClientHelloReader` (SNI, ALPN
   offers), without answering anything: the client waits for a ServerHello;
2. asks the taps whether the name is blocked for this client (`Tap.tls_block`):
   if so, the client gets an ``access_denied`` alert, or (when it trusts our
   CA) a leaf for the name without the server being contacted, so that a tap
   answers its requests with a block page; else it asks the passthrough
   policy whether to leave this TLS alone; if so the connection goes to the
   raw relay from its first byte;
3. starts TLS on the upstream TCP connection (already opened at accept
   time) with the client's SNI and the ALPN protocols we can carry, and
   waits for that handshake; the upstream certificate is verified there
   (`tinspect.layers.tls.handshake.UpstreamTLS`, fail closed);
4. starts TLS towards the client with a leaf for the SNI (or the original
   IP) that carries the upstream certificate's names, selecting exactly the
   ALPN protocol the server chose, and replays the ClientHello bytes into it
   (Twisted's ``startTLS`` on the accepted transport, then the buffered bytes
   into the TLS layer it added: `tinspect._compat.replay_into_tls`);
5. when the client handshake completes, hands the plaintext to
   ``ctx.next_layer`` (a new `Sniffer`), whose upstream is the TLS
   connection of step 3: HTTP/1.1 is decoded, anything else relayed raw.

When the upstream cannot be reached or fails verification, the client
handshake is still completed (with a leaf for the name it asked for) so that
an HTTP client can be told why in a 502 page; anything else is closed with a
logged reason. A client that rejects our certificate (an alert) is logged,
and with ``--passthrough-rejected`` its host is passed through from then on;
with ``--passthrough-client-auth`` so is a host whose server asked (in step
3) for a client certificate we have none for (``--client-cert``).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from tinspect._compat import replay_into_tls
from tinspect.context import ProxyContext, Settings
from tinspect.flow import Flow
from tinspect.layers.raw import start_tls
from tinspect.layers.tls.ca import CAError, CertificateAuthority, LeafCertificates
from tinspect.layers.tls.clienthello import (
    ACCESS_DENIED,
    ClientHello,
    ClientHelloError,
    ClientHelloReader,
    NotTLS,
    alert_record,
)
from tinspect.layers.tls.handshake import ClientFacingTLS, UpstreamHandshake, UpstreamTLS
from tinspect.layers.tls.policy import ClientCertificate, PassthroughPolicy, classify_client_failure
from tinspect.net.addresses import format_addr
from tinspect.net.handoff import Handoff, Upstream, relay_raw
from tinspect.net.shells import ServerConnection
from tinspect.net.timeouts import Deadline

__all__ = ["Interception", "TlsLayer"]

# ALPN protocols not offered upstream: HTTP/3 runs over QUIC, not TLS over
# TCP, and h2c is no TLS protocol at all. HTTP/1.x and h2 are decoded; any
# other protocol the server picks is relayed raw.
_UNCARRIED = frozenset({b"h3", b"h2c"})


class Interception:
    """What every intercepted TLS connection of one proxy shares.

    Args:
        ca: the CA that signs the leaves.
        upstream_ca: PEM bundle to verify servers against instead of the
            system trust store.
        insecure: do not enforce upstream verification (logged loudly).
        passthrough: host patterns whose TLS is relayed untouched.
        learn: pass through, from then on, hosts whose clients rejected our
            certificate.
        leaf_cache_size: leaf certificates kept.
        client_certs: ``--client-cert`` entries (`ClientCertificate`), first match wins.
        passthrough_client_auth: pass through, from then on, hosts that asked
            for a client certificate none of ``client_certs`` is for, so the
            real client can authenticate itself.
    """

    _log = Logger()

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        upstream_ca: str | None = None,
        insecure: bool = False,
        passthrough: tuple[str, ...] = (),
        learn: bool = False,
        leaf_cache_size: int = 1024,
        client_certs: tuple[ClientCertificate, ...] = (),
        passthrough_client_auth: bool = False,
    ) -> None:
        self.ca = ca
        self.leaves = LeafCertificates(ca, leaf_cache_size)
        self.upstream = UpstreamTLS(upstream_ca, insecure=insecure, client_certs=client_certs,
                                    watch_certificate_requests=passthrough_client_auth)
        self.passthrough_client_auth = passthrough_client_auth
        self.client_facing = ClientFacingTLS(self.leaves)
        self.passthrough = PassthroughPolicy(passthrough, learn=learn)
        self.insecure = insecure

    def connector(self, flow: Flow, dst: tuple[str, int], scheme: str, alpn: bytes) -> UpstreamHandshake | None:
        """The TLS parameters of one more upstream connection of ``flow``.

        To the flow's own destination: TLS again when the flow is
        intercepted TLS, with the same server name, verified the same way.
        Elsewhere (a tap routed a request): TLS when ``scheme`` is https,
        verified against ``dst``'s host. ``None`` means plain TCP.
        """
        if dst == flow.dst:
            if flow.tls_version is None:
                return None
            return self.upstream.creator(flow.sni, [alpn], ip=dst[0], port=dst[1])
        if scheme != "https":
            return None
        return self.upstream.creator(dst[0], [alpn], ip=dst[0], port=dst[1])

    @classmethod
    def from_settings(cls, settings: Settings) -> Interception:
        """Load (or generate) the CA and build the shared TLS state.

        Raises:
            CAError: the CA cannot be loaded or generated.
            ValueError: ``upstream_ca``, a passthrough pattern or a client
                certificate is unusable.
        """
        if settings.ca_cert or settings.ca_key:
            if not (settings.ca_cert and settings.ca_key):
                raise CAError("--ca-cert and --ca-key go together")
            ca = CertificateAuthority.load(settings.ca_cert, settings.ca_key)
        else:
            from tinspect.layers.tls.ca import default_state_dir

            ca = CertificateAuthority.load_or_generate(settings.state_dir or default_state_dir())
        if settings.insecure_upstream:
            cls._log.warn(
                "--insecure-upstream: server certificates are NOT verified; anyone on the path to a "
                "server can impersonate it to your clients"
            )
        return cls(
            ca,
            upstream_ca=settings.upstream_ca,
            insecure=settings.insecure_upstream,
            passthrough=tuple(settings.passthrough),
            learn=settings.passthrough_rejected,
            leaf_cache_size=settings.leaf_cache_size,
            client_certs=tuple(ClientCertificate.parse(text) for text in settings.client_certs),
            passthrough_client_auth=settings.passthrough_client_auth,
        )


class TlsLayer:
    """Intercepts one TLS connection (see the module docstring).

    The sniffer makes it the handler of both shells (`tinspect.net.handoff.take_over`)
    and replays the client's first bytes into it.

    Args:
        ctx: the proxy context (``ctx.tls`` is the `Interception`).
        handoff: the connection, its upstream plain TCP (connecting, connected
            or failed). The layer keeps the upstream's state in it, and what the
            server says before the client's handshake is done, for the layer
            after it.
    """

    _log = Logger()

    def __init__(self, ctx: ProxyContext, handoff: Handoff) -> None:
        self.ctx = ctx
        self.tls: Interception = ctx.tls
        self.flow = handoff.flow
        self._handoff = handoff
        self._client = handoff.client
        self._server = handoff.upstream.shell
        self._up = handoff.upstream  # its failure: why the upstream is unusable
        self._reader = ClientHelloReader()
        self._hello: ClientHello | None = None
        self._upstream_hs: Any = None
        self._client_hs: Any = None
        self._done = False  # handed over, or giving up
        self._closed = False
        self._deadline = Deadline(ctx.reactor, self._timed_out)
        self._deadline.start(ctx.settings.handshake_timeout, "handshake")

    # -- client side ----------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self._hello is not None:
            # Only before the client handshake starts: the rest of the
            # hello's segment. Keep it with the hello for the replay.
            self._reader.feed(data)
            return
        try:
            hello = self._reader.feed(data)
        except NotTLS:
            self._relay_raw()
            return
        except ClientHelloError as e:
            self._log.warn(
                "flow {flow_id}: unreadable TLS ClientHello from {client} ({reason}); relaying it raw",
                flow_id=self.flow.id,
                client=format_addr(self.flow.client),
                reason=str(e),
            )
            self._relay_raw()
            return
        if hello is not None:
            self._got_hello(hello)

    def client_eof(self) -> None:
        self._give_up("client closed before the TLS handshake")

    def client_lost(self, reason: Failure) -> None:
        if self._closed:
            return
        self._closed = self._done = True
        self._deadline.stop()
        failure = classify_client_failure(reason)
        name = self._name()
        if self._client_hs is not None:
            self._client_hs.count(False)
        if self._client_hs is not None and failure.rejected_certificate:
            learned = self.tls.passthrough.record_rejection(name) if self._hello and self._hello.sni else False
            self._log.warn(
                "flow {flow_id}: client {client} rejected our certificate for {name}: {reason}{learned}",
                flow_id=self.flow.id,
                client=format_addr(self.flow.client),
                name=name,
                reason=failure.reason,
                learned="; passing it through from now on" if learned else "",
            )
            self.flow.mark_ended(f"client rejected our certificate: {failure.reason}")
        elif self._client_hs is not None:
            self._log.info(
                "flow {flow_id}: TLS handshake with client {client} failed: {reason}",
                flow_id=self.flow.id,
                client=format_addr(self.flow.client),
                reason=failure.reason,
            )
            self.flow.mark_ended(f"client TLS handshake failed: {failure.reason}")
        else:
            self.flow.mark_ended("client went away")
        self._close_upstream()
        self._handoff.on_closed()

    def client_handshake_done(self) -> None:
        """The client accepted our certificate: decode what it says now."""
        transport = self._client.transport
        handle = transport.getHandle()
        self.flow.tls_version = handle.get_protocol_version_name()
        protocol = handle.get_alpn_proto_negotiated()
        self.flow.alpn = protocol.decode("ascii", "replace") if protocol else None
        self._client_hs.count(True)
        self.flow.timings.client_tls_done = self.flow.timings.now()
        self._done = True
        self._deadline.stop()
        self._log.info(
            "flow {flow_id}: TLS intercepted for {name} ({version}, ALPN {alpn})",
            flow_id=self.flow.id,
            name=self._name(),
            version=self.flow.tls_version,
            alpn=self.flow.alpn or "none",
        )
        up = self._up
        if up.failure is not None:
            up.transport = None
            up.sticky = True
        self.ctx.next_layer(self._handoff)

    # -- upstream side --------------------------------------------------------

    def server_connected(self, transport: Any) -> None:
        self._up.connecting = None
        self._up.transport = transport
        if self._hello is not None and self._upstream_hs is None:
            self._start_upstream_tls()

    def server_failed(self, reason: str) -> None:
        self._up.connecting = None
        self._up.failure = reason
        if self._hello is not None:
            self._start_client_tls(())

    def server_handshake_done(self) -> None:
        hs = self._upstream_hs
        problem = hs.verification_error()
        if problem is not None:  # only in insecure mode: the handshake went on
            self._log.warn(
                "flow {flow_id}: INSECURE: upstream {dst} failed verification and is used anyway: {reason}",
                flow_id=self.flow.id,
                dst=format_addr(self.flow.dst),
                reason=problem,
            )
        self._learn_client_auth(hs)
        server = hs.server_certificate()
        summary = server.summary() if server is not None else None
        self.flow.upstream_cert = summary
        self._start_client_tls(summary["names"] if summary else ())

    def server_data(self, data: bytes) -> None:
        self._handoff.server_early += data  # before the client handshake is done

    def server_eof(self) -> None:
        self._handoff.server_eof = True

    def server_lost(self, reason: Failure) -> None:
        self._up.transport = None
        if self._done:
            return
        if self._client_hs is None:
            # No TLS with the server: say why to the client, over TLS.
            hs = self._upstream_hs
            self._up.failure = hs.explain(reason) if hs is not None else "the server closed the connection"
            if hs is not None and hs.verification_error() is None:
                # A server that requires a client certificate may abort the handshake without one
                # (TLS 1.2). One that failed verification is not learned: TLS 1.3 asks before the
                # server shows its certificate, and passing it through would hand the client to it.
                self._learn_client_auth(hs)
            self._log.warn(
                "flow {flow_id}: TLS to upstream {dst} failed: {reason}",
                flow_id=self.flow.id,
                dst=format_addr(self.flow.dst),
                reason=self._up.failure,
            )
            if self._hello is not None:
                self._start_client_tls(())
        else:
            self._handoff.server_eof = True  # the sniffer after the handshake sees the close
            self._handoff.server_lost = reason

    # -- steps ----------------------------------------------------------------

    def _got_hello(self, hello: ClientHello) -> None:
        self._hello = hello
        self.flow.sni = hello.sni
        name = self._name()
        passthrough = self.tls.passthrough.should_pass(name, self.flow.dst[0])
        verdict = self.ctx.chain.tls_block(name, self.flow, not passthrough)
        if verdict == "alert" or (verdict == "page" and passthrough):
            self._refuse(name)
            return
        if verdict == "page":
            self._blocked(name)
            return
        if passthrough or self.ctx.chain.tls_passthrough(name, self.flow):
            self.flow.verdict = "passthrough"
            self._log.info(
                "flow {flow_id}: passing TLS for {name} through untouched", flow_id=self.flow.id, name=name
            )
            self._relay_raw()
            return
        self._client.transport.pauseProducing()  # nothing more until our ServerHello
        if self._up.failure is not None:
            self._start_client_tls(())
        elif self._up.transport is not None:
            self._start_upstream_tls()

    def _refuse(self, name: str) -> None:
        """Answer the ClientHello with an ``access_denied`` alert and close: a tap blocked it,
        and the client would not see a page. No certificate is made; the upstream TCP
        connection (opened at accept) is closed without a byte sent."""
        self._done = True
        self._deadline.stop()
        self.flow.mark_ended(f"TLS for {name} refused at the ClientHello (blocked)")
        self._log.info(
            "flow {flow_id}: TLS for {name} from {client} refused with an access_denied alert (blocked)",
            flow_id=self.flow.id, name=name, client=format_addr(self.flow.client),
        )
        transport = self._client.transport
        transport.write(alert_record(ACCESS_DENIED))
        transport.loseConnection()
        self._let_server_go()

    def _blocked(self, name: str) -> None:
        """Intercept without the server: a tap blocked the name and will answer every
        request with its page, so the client gets a leaf for the name alone."""
        self._log.info(
            "flow {flow_id}: TLS for {name} blocked at the ClientHello: intercepted without contacting the server",
            flow_id=self.flow.id, name=name,
        )
        self._let_server_go()
        self._up.failure = f"{name} is blocked (decided at the ClientHello)"
        self._client.transport.pauseProducing()
        self._start_client_tls(())

    def _let_server_go(self) -> None:
        """Close the upstream TCP connection, whose events go nowhere from now on, and hand on
        a server side that never connects."""
        self._server.handler = _Discarded()
        self._close_upstream()
        self._server = ServerConnection(None)
        self._up = self._handoff.upstream = Upstream(self._server)

    def _start_upstream_tls(self) -> None:
        hello = self._hello
        offers = [p for p in hello.alpn if p not in _UNCARRIED]
        host, port = self.flow.dst[0], self.flow.dst[1]
        self._upstream_hs = hs = self.tls.upstream.creator(hello.sni, offers, ip=host, port=port)
        self._server.tls = hs
        start_tls(self._up.transport, hs)

    def _start_client_tls(self, names) -> None:
        if self._client_hs is not None or self._done:
            return
        hs = self._upstream_hs
        failure = self._up.failure
        alpn = hs.negotiated_alpn if (hs is not None and failure is None) else None
        if failure is not None:
            # So that an HTTP client can read the 502 page.
            alpn = next((p for p in (b"http/1.1", b"h2") if p in self._hello.alpn), None)
        try:
            self._client_hs = chs = self.tls.client_facing.creator(self._name(), list(names), alpn=alpn)
        except (ValueError, CAError) as e:
            self._give_up(f"cannot make a certificate for {self._name()}: {e}")
            return
        transport = self._client.transport
        start_tls(transport, chs)
        replay = self._hello.raw + self._reader.leftover
        replay_into_tls(transport, replay)
        transport.resumeProducing()

    def _learn_client_auth(self, hs: UpstreamHandshake) -> None:
        """With ``--passthrough-client-auth``, if the server asked for a client certificate
        and we have none for it: this connection goes on without one (the server decides
        what that means: an answer, or an aborted handshake), the next ones to the host
        pass through, so the client can present its own."""
        if not (hs.certificate_requested and hs.client_cert is None and self.tls.passthrough_client_auth):
            return
        name = self._name()
        learned = self.tls.passthrough.learn_host(name)
        self._log.warn(
            "flow {flow_id}: {name} ({dst}) asked for a client certificate and none is configured for it; "
            "{what}",
            flow_id=self.flow.id,
            name=name,
            dst=format_addr(self.flow.dst),
            what="passing it through from now on (--passthrough-client-auth)" if learned else "already learned",
        )

    def _name(self) -> str:
        hello = self._hello
        return hello.sni if hello is not None and hello.sni else self.flow.dst[0]

    def _relay_raw(self) -> None:
        """Relay the connection untouched, from its first byte."""
        self._done = True
        self._deadline.stop()
        self._handoff.client_early = self._reader.received
        relay_raw(self.ctx.chain, self._handoff)

    def _timed_out(self, what: str) -> None:
        self._give_up(f"no complete TLS handshake within {self.ctx.settings.handshake_timeout:g} s "
                      f"of the client's first byte")

    def _give_up(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        self._deadline.stop()
        self.flow.mark_ended(reason)
        self._log.info("flow {flow_id}: {reason}", flow_id=self.flow.id, reason=reason)
        self._client.transport.loseConnection()
        self._close_upstream()

    def _close_upstream(self) -> None:
        up = self._up
        if up.transport is not None:
            up.transport.loseConnection()
        elif up.connecting is not None:
            up.connecting.cancel()


class _Discarded:
    """The handler of an upstream connection let go before it was used: it hears nothing."""

    def server_connected(self, transport: Any) -> None:
        transport.loseConnection()

    def server_failed(self, reason: str) -> None:
        pass

    def server_data(self, data: bytes) -> None:
        pass

    def server_eof(self) -> None:
        pass

    def server_lost(self, reason: Failure) -> None:
        pass
