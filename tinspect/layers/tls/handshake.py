"""TLS building blocks for interception: both handshakes, policy, diagnostics.

The connection layer wires these together.  Nothing here owns a transport;
from Twisted we import only the two connection-creator interfaces that
``TLSMemoryBIOFactory`` and ``startTLS`` look for.

* :class:`UpstreamTLS` / :class:`UpstreamHandshake`: the client side towards
  the real server, with certificate verification and session resumption.
* :class:`ClientFacingTLS` / :class:`ClientFacingHandshake`: the server side
  towards the client, presenting a minted leaf and mirroring upstream ALPN.
* :func:`summarize_certificate`: an upstream certificate for taps and logs.

Client certificates (``--client-cert``) live in contexts of their own, one
per entry, built like the shared one: a server matching an entry's pattern
is connected to with that context, and OpenSSL presents the certificate
only if the server asks for one (a CertificateRequest). Whether a server
asked is seen by an info callback (``--passthrough-client-auth``).

Passthrough rules and client failures are in ``tinspect/layers/tls/policy.py``.

Theory of operation
-------------------
A context is costly (the system trust store takes ~6 ms to load) and holds
the session cache and ticket keys, so each side has one per configuration,
set up once.  Per-connection parameters live in single-use creator objects,
which the context callbacks find in a ``WeakKeyDictionary`` keyed by
``SSL.Connection``: Twisted overwrites the app data with its protocol.

Upstream verification is fail-closed.  OpenSSL checks the chain; at depth 0
our verify callback checks the name with service-identity (as Twisted's
``ClientTLSOptions`` does).  The first failure is recorded as a human reason
and the callback returns ``False``, so the handshake aborts with an alert and
nothing reaches an unverified server even if the caller forgets to look.
``insecure=True`` runs the same checks but lets the handshake finish, so the
caller can log what it ignored.  Resumed sessions skip the callback: only
verified sessions are kept, and the name is re-checked after the handshake.

A server sends the same certificate to every connection, so what the proxy
works out of one (the names service-identity matches against, and the
summary taps, logs and the leaf's names come from) is worked out once per
certificate, by its DER bytes, and kept in a bounded LRU
(`UpstreamTLS.server_certificate`); the verification itself, chain and
name, runs on every full handshake and every name check as before. A
lane-d connection (a resumed upstream session) spent 0.5 ms of profiled
time here, on three DER loads, a fingerprint and two pattern extractions.

Client-facing, the servername callback (run for every ClientHello, SNI or
not) switches the connection to a per-leaf context built before the
handshake, so it only picks up a ready object.  Measured here: ``set_context``
costs 1 us a connection, ``Connection.use_certificate`` 63 us (pyOpenSSL 26
re-parses the cryptography certificate on each call); switching cut the
server's CPU per full handshake from 340 to 250 us (TLS 1.2) and from 510 to
390 us (TLS 1.3).  A per-leaf context costs 270 us and 23 KB once: an LRU.
Resumption survives the switch: OpenSSL keeps the session cache and ticket
keys of the starting context, and all contexts share one session id context;
versions, options and ciphers also stay the starting context's.  The ALPN
callback then selects exactly what the upstream selected, or nothing when it
selected nothing: the client sees what it would have seen without us.
"""

from __future__ import annotations

import collections
import os
import weakref
from collections.abc import Sequence

import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import extract_patterns
from service_identity.hazmat import DNS_ID, IPAddress_ID, verify_service_identity
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from tinspect.layers.tls.ca import LeafCertificates
from tinspect.layers.tls.policy import ClientCertificate, describe_error
from tinspect.net.addresses import is_ip

__all__ = [
    "ClientFacingHandshake",
    "ClientFacingTLS",
    "UpstreamHandshake",
    "UpstreamTLS",
    "ServerCertificate",
    "check_name",
    "choose_alpn",
    "summarize_certificate",
    "verify_peer",
]  # fmt: skip

# Mozilla's "intermediate" TLS 1.2 suites that fit our ECDSA leaves; TLS 1.3
# suites are OpenSSL's defaults.
_CLIENT_FACING_CIPHERS = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305"
_SESSION_ID_CONTEXT = b"tinspect"
_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION

# OpenSSL's wording (X509_verify_cert_error_string, not public in pyOpenSSL)
# for the X509_V_ERR_* codes a proxy meets in practice.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate", 7: "certificate signature failure",
    9: "certificate is not yet valid", 10: "certificate has expired", 18: "self-signed certificate",
    19: "self-signed certificate in certificate chain", 20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate", 22: "certificate chain too long", 23: "certificate revoked",
    25: "path length constraint exceeded", 26: "unsuitable certificate purpose", 27: "certificate not trusted",
    28: "certificate rejected", 34: "unhandled critical extension", 47: "permitted subtree violation",
    48: "excluded subtree violation", 66: "EE certificate key too weak", 67: "CA certificate key too weak",
    68: "CA signature digest algorithm too weak", 79: "invalid CA certificate",
}  # fmt: skip

# Server certificates whose patterns and summary are kept (a few KiB each).
_CERTIFICATES_KEPT = 256

# SSL_state_string_long once the client read a CertificateRequest (TLS 1.2 and 1.3 alike).
_READ_CERTIFICATE_REQUEST = b"SSLv3/TLS read server certificate request"


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses of the subjectAltName; empty if absent or malformed."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return [], []
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _as_cryptography(cert: x509.Certificate | crypto.X509) -> x509.Certificate:
    return cert.to_cryptography() if isinstance(cert, crypto.X509) else cert


def summarize_certificate(cert: x509.Certificate | crypto.X509) -> dict:
    """Describe a certificate (usually the upstream's leaf) for taps and logs.

    Args:
        cert: The certificate, in cryptography or pyOpenSSL form.

    Returns:
        A dict: ``subject``/``issuer`` (RFC 4514), ``subject_cn``/``issuer_cn``
        (or ``None``), ``dns_names``/``ip_addresses`` (subjectAltName),
        ``not_before``/``not_after`` (ISO 8601, UTC), ``serial`` and
        ``sha256`` (of the DER form) in lower-case hex, and ``names``: what a
        leaf should carry, i.e. the SAN entries, or the commonName when a
        legacy certificate has no SAN.
    """
    cert = _as_cryptography(cert)
    dns, ips = _sans(cert)
    subject_cn = _cn(cert.subject)
    return {
        "subject": cert.subject.rfc4514_string(),
        "subject_cn": subject_cn,
        "issuer": cert.issuer.rfc4514_string(),
        "issuer_cn": _cn(cert.issuer),
        "dns_names": dns,
        "ip_addresses": ips,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "serial": format(cert.serial_number, "x"),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "names": dns + ips or ([subject_cn] if subject_cn else []),
    }


class ServerCertificate:
    """A server's certificate and what is worked out of it, each once (see
    the module's docstring): the service-identity patterns of the names it is
    for, and its `summarize_certificate` summary.

    Attributes:
        cert: The certificate.
    """

    __slots__ = ("cert", "_patterns", "_summary")

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        self._patterns: Sequence | None = None
        self._summary: dict | None = None

    def patterns(self) -> Sequence:
        """``service_identity.cryptography.extract_patterns`` of the certificate.

        Raises:
            service_identity.CertificateError: As ``extract_patterns`` does
                (each time: a failure is not kept).
        """
        if self._patterns is None:
            self._patterns = extract_patterns(self.cert)
        return self._patterns

    def summary(self) -> dict:
        """`summarize_certificate` of the certificate: a copy of its own to
        each caller (a flow's record is the flow's)."""
        if self._summary is None:
            self._summary = summarize_certificate(self.cert)
        summary = self._summary
        return {**summary, "dns_names": list(summary["dns_names"]), "ip_addresses": list(summary["ip_addresses"]),
                "names": list(summary["names"])}


def check_name(cert: x509.Certificate | crypto.X509 | ServerCertificate, name: str) -> str | None:
    """Check with service-identity (RFC 6125) that a certificate covers a name.

    What ``verify_certificate_hostname`` (or ``verify_certificate_ip_address``
    for an IP literal) checks, with the certificate's patterns worked out
    once when it is a `ServerCertificate`.

    Args:
        cert: The server's leaf certificate.
        name: A DNS name (the SNI) or an IP literal.

    Returns:
        ``None`` if it does, else a human reason such as
        ``"hostname mismatch: certificate is for a.example, not b.example"``.
    """
    server = cert if isinstance(cert, ServerCertificate) else ServerCertificate(_as_cryptography(cert))
    cert = server.cert
    by_ip = is_ip(name)
    try:
        verify_service_identity(cert_patterns=server.patterns(),
                                obligatory_ids=[IPAddress_ID(name) if by_ip else DNS_ID(name)], optional_ids=[])
    except service_identity.VerificationError:
        listed = [n for names in _sans(cert) for n in names]
        shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
        return f"{'IP address' if by_ip else 'hostname'} mismatch: certificate is for {shown}, not {name}"
    except service_identity.CertificateError as e:
        return f"unusable certificate for {name}: {e} (subject {cert.subject.rfc4514_string()})"
    return None


def verify_peer(connection: SSL.Connection, sni: str | None, ip: str | None = None) -> str | None:
    """After a handshake, check that the peer's certificate is for ``sni`` (else ``ip``).

    The name half of verification (the chain is OpenSSL's); returns ``None``
    when the certificate matches, else a human reason.
    """
    cert = connection.get_peer_certificate(as_cryptography=True)
    return _name_problem(None if cert is None else ServerCertificate(cert), sni or ip)


def _name_problem(server: ServerCertificate | None, name: str | None) -> str | None:
    """`verify_peer`'s answer for the peer's certificate ``server`` (``None``: it sent none)."""
    if not name:
        return "no server name or address to verify the certificate against"
    return "server sent no certificate" if server is None else check_name(server, name)


class UpstreamTLS:
    """Client-side TLS towards real servers: one shared context per configuration.

    Attributes:
        context: The shared ``SSL.Context`` (TLS 1.2 minimum, trust store).
        insecure: Verification results are computed but not enforced.
    """

    def __init__(
        self,
        ca_file: str | os.PathLike | None = None,
        *,
        insecure: bool = False,
        session_cache_size: int = 1024,
        client_certs: Sequence[ClientCertificate] = (),
        watch_certificate_requests: bool = False,
    ) -> None:
        """Build the shared context, and one more per client certificate.

        Args:
            ca_file: PEM bundle of trusted CAs (``--upstream-ca``); else the
                system store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set; with
                cryptography's wheels pyOpenSSL finds the distribution bundle,
                ``/etc/ssl/certs/ca-certificates.crt`` on Debian).
            insecure: Do not abort handshakes that fail verification.
            session_cache_size: Upstream sessions kept for resumption; 0: none.
            client_certs: ``--client-cert`` entries, first match wins: a
                server matching one gets its certificate when it asks for one.
            watch_certificate_requests: Note, for each handshake, whether the
                server asked for a client certificate
                (`UpstreamHandshake.certificate_requested`); it costs an info
                callback per handshake step, so only ``--passthrough-client-auth``
                turns it on.

        Raises:
            ValueError: ``ca_file`` cannot be read or holds no certificate; a
                client certificate or key cannot be loaded or do not match.
        """
        self.insecure = insecure
        self.handshakes: collections.Counter[tuple[str, str, str]] = collections.Counter()  # see _Creator.count
        self._sessions: collections.OrderedDict[tuple, SSL.Session] = collections.OrderedDict()
        self._session_cache_size = session_cache_size
        self._handshakes: weakref.WeakKeyDictionary[SSL.Connection, UpstreamHandshake] = weakref.WeakKeyDictionary()
        self._ca_file = ca_file
        self._watch = watch_certificate_requests
        self.context = self._new_context()
        # A context per certificate: OpenSSL sends a context's chain (intermediates
        # included), which pyOpenSSL cannot set per connection.
        self._client_certs = [(entry, self._new_context(entry)) for entry in client_certs]
        self._certificates: collections.OrderedDict[bytes, ServerCertificate] = collections.OrderedDict()

    def server_certificate(self, cert: crypto.X509) -> ServerCertificate:
        """The `ServerCertificate` of a certificate a server sent: the one
        made for the same DER bytes if it is among the last
        ``_CERTIFICATES_KEPT`` seen."""
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
        certificates = self._certificates
        server = certificates.get(der)
        if server is not None:
            certificates.move_to_end(der)
            return server
        server = certificates[der] = ServerCertificate(x509.load_der_x509_certificate(der))
        if len(certificates) > _CERTIFICATES_KEPT:
            certificates.popitem(last=False)
        return server

    def _new_context(self, client_cert: ClientCertificate | None = None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(_OPTIONS)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection holds no 16-34 KiB record buffers
        ctx.set_verify(SSL.VERIFY_PEER, self._on_verify)
        # We keep sessions per upstream ourselves; OpenSSL's store would only grow.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_CLIENT | SSL.SESS_CACHE_NO_INTERNAL_STORE)
        if self._ca_file is None:
            ctx.set_default_verify_paths()
        else:
            try:
                ctx.load_verify_locations(os.fsencode(self._ca_file))
            except SSL.Error as e:
                raise ValueError(f"{os.fsdecode(self._ca_file)}: cannot load upstream CA certificates ({e})") from e
        if client_cert is not None:
            try:
                ctx.use_certificate_chain_file(os.fsencode(client_cert.cert))
                ctx.use_privatekey_file(os.fsencode(client_cert.key))
                ctx.check_privatekey()
            except SSL.Error as e:
                raise ValueError(
                    f"client certificate for {client_cert.pattern}: cannot use {client_cert.cert}"
                    f" with key {client_cert.key} ({describe_error(e)})"
                ) from e
        if self._watch:
            ctx.set_info_callback(self._on_info)
        return ctx

    def client_certificate(self, *names: str | None) -> tuple[ClientCertificate | None, SSL.Context]:
        """The client certificate for a server (its SNI, its address: the first
        entry either matches), and the context that presents it."""
        for entry, ctx in self._client_certs:
            if entry.patterns.match(*names):
                return entry, ctx
        return None, self.context

    def creator(
        self, sni: str | None, alpn: Sequence[bytes] = (), ip: str | None = None, port: int | None = None
    ) -> UpstreamHandshake:
        """Make the single-use creator for one upstream connection.

        Args:
            sni: The client's server name, sent as SNI and verified.  An IP
                literal is not sent (RFC 6066) and is verified as an address.
            alpn: Protocols to offer, in order; the caller filters the
                client's offers down to what it can relay.
            ip: The upstream address, verified when there is no SNI.
            port: The upstream port; only part of the session cache key.
        """
        return UpstreamHandshake(self, sni, alpn, ip, port)

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & SSL.SSL_CB_CONNECT_LOOP and conn.get_state_string() == _READ_CERTIFICATE_REQUEST:
            handshake = self._handshakes.get(conn)
            if handshake is not None:
                handshake.certificate_requested = True

    def _on_verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        handshake = self._handshakes.get(conn)
        if handshake is None:
            return bool(ok)
        try:
            passed = handshake._on_verify(cert, errno, depth, bool(ok))
        except Exception as e:  # OpenSSL's C stack would swallow it
            handshake._fail(f"internal error while verifying: {e!r}")
            passed = False
        return passed or self.insecure

    def _store_session(self, key: tuple, session: SSL.Session) -> None:
        if self._session_cache_size > 0:
            self._sessions[key] = session
            self._sessions.move_to_end(key)
            while len(self._sessions) > self._session_cache_size:
                self._sessions.popitem(last=False)


class _Creator:
    """What both creators share: one ``SSL.Connection`` each, known to the owner's callbacks."""

    _connect = True  # client side: connect state; server side: accept state

    def __init__(self, owner: UpstreamTLS | ClientFacingTLS) -> None:
        self._connection: weakref.ref[SSL.Connection] | None = None
        self._owner = owner

    @property
    def connection(self) -> SSL.Connection | None:
        """The ``SSL.Connection`` once made, while its user still holds it.

        Held weakly: the owner's map from connection to creator is weak in
        its key, so a creator holding its connection would keep both alive
        for ever (a whole SSL object, buffers and all, per connection).
        """
        return self._connection() if self._connection is not None else None

    def new_connection(self) -> SSL.Connection:
        """Make the connection, in connect or accept state, for use with memory BIOs."""
        conn = self._make()
        if self._connect:
            conn.set_connect_state()
        else:
            conn.set_accept_state()
        return conn

    def _make(self) -> SSL.Connection:
        if self._connection is not None:
            raise RuntimeError(f"a {type(self).__name__} makes one connection; ask for a new one")
        conn = SSL.Connection(self._starting_context(), None)
        self._configure(conn)
        self._owner._handshakes[conn] = self
        self._connection = weakref.ref(conn)
        return conn

    def _starting_context(self) -> SSL.Context:
        return self._owner.context

    def _configure(self, conn: SSL.Connection) -> None:
        pass

    @property
    def negotiated_alpn(self) -> bytes | None:
        """The ALPN protocol selected in the handshake, or ``None``."""
        return (self.connection.get_alpn_proto_negotiated() or None) if self.connection else None

    def count(self, ok: bool) -> None:
        """Count this handshake's end in the owner's ``handshakes`` (for the metrics),
        by outcome, TLS version and ALPN protocol ("none" where there is none)."""
        conn = self.connection
        version = (conn.get_protocol_version_name() if ok and conn is not None else None) or "none"
        alpn = (self.negotiated_alpn if ok else None) or b"none"
        self._owner.handshakes["ok" if ok else "failed", version, alpn.decode("ascii", "replace")] += 1


@implementer(IOpenSSLClientConnectionCreator)
class UpstreamHandshake(_Creator):
    """One upstream connection's TLS parameters and verification outcome.

    Pass it to ``transport.startTLS(handshake)`` or
    ``TLSMemoryBIOFactory(handshake, True, factory)``; without Twisted call
    :meth:`new_connection`.

    Attributes:
        sni: The server name sent, or ``None``.
        name: What the certificate is verified against (the SNI, or the IP).
        alpn_offers: The ALPN protocols offered.
        connection: The ``SSL.Connection``, once made.
        client_cert: The ``--client-cert`` entry presented if the server asks
            for a certificate, or ``None``.
        certificate_requested: The server asked for a client certificate
            (known only when the owner watches for it).
    """

    certificate_requested = False

    def __init__(
        self, owner: UpstreamTLS, sni: str | None, alpn: Sequence[bytes], ip: str | None, port: int | None
    ) -> None:
        """Use :meth:`UpstreamTLS.creator`."""
        super().__init__(owner)
        if sni is not None and is_ip(sni):
            sni, ip = None, sni
        self.sni = sni
        self.name = sni or ip
        self.alpn_offers = list(alpn)
        self._session_key = (self.name, ip, port)
        self.client_cert, self._ctx = owner.client_certificate(sni, ip)
        self._error: str | None = None
        self._name_checked = False
        self._verify_called = False
        self._server_cert: ServerCertificate | None = None

    def _starting_context(self) -> SSL.Context:
        return self._ctx

    def clientConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """``IOpenSSLClientConnectionCreator``: make the connection (Twisted sets connect state)."""
        return self._make()

    def _configure(self, conn: SSL.Connection) -> None:
        if self.sni:
            conn.set_tlsext_host_name(self.sni.encode("ascii"))
        if self.alpn_offers:
            conn.set_alpn_protos(self.alpn_offers)
        session = self._owner._sessions.get(self._session_key)
        if session is not None:
            self._owner._sessions.move_to_end(self._session_key)
            conn.set_session(session)

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason

    def _on_verify(self, cert: crypto.X509, errno: int, depth: int, ok: bool) -> bool:
        """Record the first chain or name failure; ``True`` if this step passed."""
        self._verify_called = True
        if not ok:
            text = _VERIFY_ERRORS.get(errno, f"X509 verification error {errno}")
            where = f" (at depth {depth}: {_cn(cert.to_cryptography().subject)})" if depth else ""
            self._fail(f"certificate verify failed: {text}{where}")
            return False
        if depth != 0 or self._name_checked:
            return True
        self._name_checked = True
        if self.name is None:
            reason = "no server name or address to verify the certificate against"
        else:
            self._server_cert = self._owner.server_certificate(cert)
            reason = check_name(self._server_cert, self.name)
        if reason is not None:
            self._fail(reason)
        return reason is None

    @property
    def resumed(self) -> bool:
        """Whether the completed handshake resumed an earlier session.

        pyOpenSSL 26 has no ``session_reused()``; a resumed handshake is one
        with a server certificate that our verify callback never saw.
        """
        conn = self.connection
        return conn is not None and not self._verify_called and conn.get_peer_certificate() is not None

    def peer_certificate(self) -> x509.Certificate | None:
        """The server's leaf certificate, once the handshake got that far."""
        server = self.server_certificate()
        return server.cert if server is not None else None

    def server_certificate(self) -> ServerCertificate | None:
        """The server's leaf certificate as a `ServerCertificate` (the one every
        connection that got the same certificate shares), once the handshake got
        that far."""
        if self._server_cert is None and self.connection is not None:
            cert = self.connection.get_peer_certificate()
            if cert is not None:
                self._server_cert = self._owner.server_certificate(cert)
        return self._server_cert

    def verification_error(self) -> str | None:
        """Why the server's certificate is not acceptable, or ``None`` if it is.

        After a completed handshake this is ``None`` unless the mode is
        insecure (a failure in secure mode aborts the handshake); after a
        failed one it is the reason, if verification was the cause.
        """
        if self._error is None and not self._name_checked and self.resumed:
            self._name_checked = True  # the verify callback never ran
            self._error = _name_problem(self.server_certificate(), self.name)
        return self._error

    def refusal(self) -> str | None:
        """Why the connection of this completed handshake must not be used:
        its verification error, unless verification is not enforced.

        A full handshake that fails verification in secure mode never
        completes; a resumed one skips the verify callback, and its name is
        checked (`verification_error`) and refused here.
        """
        problem = self.verification_error()
        return None if problem is None or self._owner.insecure else problem

    def explain(self, error: BaseException | object) -> str:
        """Turn a failed handshake's exception (or ``connectionLost``'s ``Failure``) into a reason.

        Returns:
            The verification reason if verification failed, else a
            description of the TLS error.
        """
        return self._error or describe_error(getattr(error, "value", error))

    def remember_session(self) -> None:
        """Keep the session for the next connection to this upstream (name, IP, port).

        Call it when the connection ends: TLS 1.3 tickets arrive after the
        handshake.  Sessions that failed verification are never kept.
        """
        if self.connection is not None and self.verification_error() is None:
            session = self.connection.get_session()
            if session is not None:
                self._owner._store_session(self._session_key, session)


def choose_alpn(offered: Sequence[bytes], upstream: bytes | None) -> bytes | None:
    """Pick the client-facing ALPN protocol: exactly what the upstream chose.

    Args:
        offered: The client's ALPN offers.
        upstream: What the upstream selected, or ``None``.

    Returns:
        ``upstream`` if the client offered it, else ``None`` (select nothing).
        There is no fallback to ``http/1.1``: a client offering ALPN to a
        server that ignores it gets the same answer through us.
    """
    return upstream if upstream is not None and upstream in offered else None


class ClientFacingTLS:
    """Server-side TLS towards clients, with our minted leaves.

    Attributes:
        context: The shared ``SSL.Context`` every connection starts on: TLS
            1.2 and 1.3, session cache and tickets, our cipher choice.
        leaves: The leaf minter.
    """

    def __init__(self, leaves: LeafCertificates, *, session_timeout: int = 7200, context_cache_size: int = 256) -> None:
        """Build the shared context.

        Args:
            leaves: The leaf minter (all leaves share its key).
            session_timeout: Lifetime of cached sessions and tickets, seconds.
            context_cache_size: Per-leaf contexts kept (about 23 KB each).
        """
        self.leaves = leaves
        self.handshakes: collections.Counter[tuple[str, str, str]] = collections.Counter()  # see _Creator.count
        self._handshakes: weakref.WeakKeyDictionary[SSL.Connection, ClientFacingHandshake] = weakref.WeakKeyDictionary()
        # id(leaf) -> (leaf, context); holding the leaf keeps its id unique.
        self._contexts: collections.OrderedDict[int, tuple[x509.Certificate, SSL.Context]] = collections.OrderedDict()
        self._context_cache_size = context_cache_size
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(_OPTIONS | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_cipher_list(_CLIENT_FACING_CIPHERS)
        ctx.set_session_id(_SESSION_ID_CONTEXT)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        ctx.set_timeout(session_timeout)
        ctx.set_tlsext_servername_callback(self._on_servername)
        self.context = ctx

    def creator(self, name: str, extra_names: Sequence[str] = (), alpn: bytes | None = None) -> ClientFacingHandshake:
        """Mint (or fetch) the leaf and its context; make the single-use creator.

        Args:
            name: The client's SNI, or the original destination IP without one.
            extra_names: More leaf names, usually
                ``summarize_certificate(upstream)["names"]``.
            alpn: The protocol the upstream selected (``None``: none).

        Raises:
            ValueError: ``name`` is neither a DNS name nor an IP literal.
            tinspect.layers.tls.ca.CAError: The CA cannot issue leaves.
        """
        leaf, _key = self.leaves.get_cryptography(name, extra_names)
        return ClientFacingHandshake(self, leaf, self._leaf_context(leaf), alpn)

    def _leaf_context(self, leaf: x509.Certificate) -> SSL.Context:
        entry = self._contexts.get(id(leaf))
        if entry is not None and entry[0] is leaf:
            self._contexts.move_to_end(id(leaf))
            return entry[1]
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(leaf)
        ctx.use_privatekey(self.leaves.cryptography_key())
        # Send the CA too: Chromium's --ignore-certificate-errors-spki-list
        # only matches certificates the server presents.
        ctx.add_extra_chain_cert(self.leaves.ca.cert)
        ctx.set_session_id(_SESSION_ID_CONTEXT)  # must match for resumption after set_context
        ctx.set_alpn_select_callback(self._on_alpn)  # OpenSSL asks the switched-to context
        if self._context_cache_size > 0:
            self._contexts[id(leaf)] = (leaf, ctx)
            while len(self._contexts) > self._context_cache_size:
                self._contexts.popitem(last=False)
        return ctx

    def _on_servername(self, conn: SSL.Connection) -> None:
        handshake = self._handshakes.get(conn)
        if handshake is None:
            return  # not ours: no certificate, the handshake fails
        raw = conn.get_servername()
        handshake.servername = raw.decode("ascii", "replace") if raw else None
        conn.set_context(handshake._context)

    def _on_alpn(self, conn: SSL.Connection, offered: list[bytes]) -> bytes | object:
        handshake = self._handshakes.get(conn)
        choice = choose_alpn(offered, handshake.alpn if handshake else None)
        return SSL.NO_OVERLAPPING_PROTOCOLS if choice is None else choice


@implementer(IOpenSSLServerConnectionCreator)
class ClientFacingHandshake(_Creator):
    """One client connection's leaf and ALPN choice.

    Pass it to ``TLSMemoryBIOFactory(handshake, False, factory)``; without
    Twisted call :meth:`new_connection`.

    Attributes:
        leaf: The certificate presented to the client.
        alpn: The ALPN protocol to select (``None``: none).
        servername: The SNI the client sent, once the handshake saw it.
        connection: The ``SSL.Connection``, once made.
    """

    _connect = False

    def __init__(self, owner: ClientFacingTLS, leaf: x509.Certificate, context: SSL.Context, alpn: bytes | None):
        """Use :meth:`ClientFacingTLS.creator`."""
        super().__init__(owner)
        self.leaf = leaf
        self.alpn = alpn
        self.servername: str | None = None
        self._context = context

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """``IOpenSSLServerConnectionCreator``: make the connection (Twisted sets accept state)."""
        return self._make()
