"""Tests for the TLS building blocks (tinspect.layers.tls.handshake), mostly over pyOpenSSL memory BIOs."""

from __future__ import annotations

import datetime
import gc
import ipaddress
import os
import pathlib
import ssl
import weakref

import pytest
import pytest_twisted
import service_identity.cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import ClientCreator, ClientFactory, Protocol, ServerFactory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import Clock, deferLater
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from zope.interface import implementer

import tinspect.layers.tls.handshake as handshake_module
from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates
from tinspect.layers.tls.clienthello import ClientHelloReader
from tinspect.layers.tls.handshake import (
    ClientFacingTLS,
    UpstreamTLS,
    check_name,
    choose_alpn,
    summarize_certificate,
    verify_peer,
)
from tinspect.layers.tls.policy import ClientFailureKind, PassthroughPolicy, classify_client_failure

# pyOpenSSL 26 deprecates its own X509/PKey in several APIs; we must not use them.
pytestmark = pytest.mark.filterwarnings("error::DeprecationWarning")

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
TLS12 = SSL.TLS1_2_VERSION
TLS13 = SSL.TLS1_3_VERSION


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def pump(client: SSL.Connection, server: SSL.Connection) -> dict[str, SSL.Error]:
    """Run both handshakes to the end, moving bytes between memory BIOs.

    Returns the first error each side raised (a side keeps sending after an
    error, so an alert reaches the peer).
    """
    errors: dict[str, SSL.Error] = {}
    for _ in range(20):
        moved = False
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            if name not in errors:
                try:
                    conn.do_handshake()
                except SSL.WantReadError:
                    pass
                except SSL.Error as e:
                    errors[name] = e
            try:
                data = conn.bio_read(65536)
            except SSL.Error:
                data = b""
            if data:
                peer.bio_write(data)
                moved = True
        if not moved:
            break
    return errors


class StdlibPeer:
    """An ``ssl.SSLObject`` behind the calls :func:`pump` makes on a pyOpenSSL connection.

    pyOpenSSL 26 has no ``session_reused()``; the standard library's
    ``SSLObject.session_reused`` is the independent witness of resumption.
    """

    def __init__(self, context: ssl.SSLContext, server_side: bool, hostname=None, session=None):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=hostname, session=session
        )

    def do_handshake(self):
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None
        except ssl.SSLError as e:
            raise SSL.Error([("stdlib", "", str(e))]) from e

    def bio_read(self, n):
        data = self.outgoing.read(n)
        if not data:
            raise SSL.WantReadError()
        return data

    def bio_write(self, data):
        self.incoming.write(data)

    def recv(self, n):
        try:
            return self.obj.read(n)
        except ssl.SSLWantReadError:
            raise SSL.WantReadError() from None


def read_post_handshake(conn: SSL.Connection) -> None:
    """Let a client process what arrived after the handshake (TLS 1.3 tickets)."""
    try:
        conn.recv(1024)
    except SSL.WantReadError:
        pass


class RootCA:
    """A CA made with cryptography that signs arbitrary server certificates."""

    def __init__(self, cn: str = "Test Upstream Root") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - DAY)
            .not_valid_after(NOW + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path) -> str:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(path)

    def issue(self, names, cn=None, not_before=NOW - DAY, not_after=NOW + 10 * DAY, serial=0x1234ABCD):
        key = ec.generate_private_key(ec.SECP256R1())
        sans = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key


def upstream_server(cert, key, alpn_choice=None, max_version=None, session_context=True):
    """A plain pyOpenSSL server standing in for the real upstream."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    if max_version:
        ctx.set_max_proto_version(max_version)
    if session_context:
        ctx.set_session_id(b"upstream")
    seen = {}

    def on_servername(conn):
        seen["sni"] = conn.get_servername()

    def on_alpn(conn, offered):
        seen["alpn_offers"] = offered
        return alpn_choice if alpn_choice in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    ctx.set_tlsext_servername_callback(on_servername)
    ctx.set_alpn_select_callback(on_alpn)

    def connect():
        conn = SSL.Connection(ctx, None)
        conn.set_accept_state()
        return conn

    return connect, seen


def client_context(ca_pem=None, max_version=None):
    """A client context that verifies chains against ``ca_pem`` (empty store if None)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER)
    if ca_pem:
        ctx.load_verify_locations(ca_pem)
    if max_version:
        ctx.set_max_proto_version(max_version)
    return ctx


def make_client(ca_pem=None, sni=b"a.example", alpn=None, max_version=None, session=None, ctx=None):
    """A client connection; see :func:`client_context`."""
    conn = SSL.Connection(ctx or client_context(ca_pem, max_version), None)
    if sni:
        conn.set_tlsext_host_name(sni)
    if alpn:
        conn.set_alpn_protos(alpn)
    if session is not None:
        conn.set_session(session)
    conn.set_connect_state()
    return conn


@pytest.fixture
def ca(tmp_path):
    """Our interception CA, generated into a temporary state directory."""
    return CertificateAuthority.generate(tmp_path / "state")


@pytest.fixture
def facing(ca):
    """The client-facing TLS server with a fresh leaf minter."""
    return ClientFacingTLS(LeafCertificates(ca))


@pytest.fixture
def ca_pem(ca):
    """Path of our CA certificate, for clients to trust."""
    return str(ca.cert_path)


@pytest.fixture
def upstream_ca(tmp_path):
    """A separate CA for the stand-in upstream servers, and its PEM file."""
    root = RootCA()
    return root, root.write(tmp_path / "upstream-ca.pem")


# --------------------------------------------------------------------------
# Client-facing (MITM) server
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version, name", [(TLS12, "TLSv1.2"), (TLS13, "TLSv1.3")])
def test_client_trusting_our_ca_completes_handshake(facing, ca_pem, version, name):
    """A client that trusts our CA verifies the minted leaf over TLS 1.2 and 1.3."""
    server = facing.creator("a.example").new_connection()
    client = make_client(ca_pem, max_version=version)
    assert pump(client, server) == {}
    assert client.get_protocol_version_name() == name
    leaf = client.get_peer_certificate(as_cryptography=True)
    service_identity.cryptography.verify_certificate_hostname(leaf, "a.example")


def test_leaf_is_for_sni_and_carries_extra_names(facing, ca_pem):
    """The leaf's CN is the SNI and its SANs add the upstream certificate's names."""
    handshake = facing.creator("a.example", ["a.example", "*.cdn.example", "192.0.2.7"])
    server = handshake.new_connection()
    client = make_client(ca_pem, sni=b"a.example")
    assert pump(client, server) == {}
    leaf = client.get_peer_certificate(as_cryptography=True)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example"
    summary = summarize_certificate(leaf)
    assert summary["dns_names"] == ["a.example", "*.cdn.example"]
    assert summary["ip_addresses"] == ["192.0.2.7"]
    assert handshake.servername == "a.example"
    chain = client.get_peer_cert_chain(as_cryptography=True)
    assert [c.subject for c in chain] == [leaf.subject, facing.leaves.ca.cert.subject]


def test_no_sni_leaf_is_for_destination_ip(facing, ca_pem):
    """Without SNI the servername callback still runs and serves the IP leaf."""
    handshake = facing.creator("10.1.2.3")
    client = make_client(ca_pem, sni=None)
    assert pump(client, handshake.new_connection()) == {}
    leaf = client.get_peer_certificate(as_cryptography=True)
    service_identity.cryptography.verify_certificate_ip_address(leaf, "10.1.2.3")
    assert handshake.servername is None


@pytest.mark.parametrize("upstream_choice", [b"h2", b"http/1.1"])
def test_alpn_selects_exactly_the_upstream_choice(facing, ca_pem, upstream_choice):
    """The client gets the protocol the upstream selected, not its own first choice."""
    handshake = facing.creator("a.example", alpn=upstream_choice)
    client = make_client(ca_pem, alpn=[b"h2", b"http/1.1"])
    server = handshake.new_connection()
    assert pump(client, server) == {}
    assert client.get_alpn_proto_negotiated() == upstream_choice
    assert handshake.negotiated_alpn == upstream_choice


def test_alpn_selects_nothing_when_upstream_chose_nothing(facing, ca_pem):
    """An upstream without ALPN means no ALPN for the client, and the handshake still works."""
    handshake = facing.creator("a.example", alpn=None)
    client = make_client(ca_pem, alpn=[b"h2", b"http/1.1"])
    assert pump(client, handshake.new_connection()) == {}
    assert client.get_alpn_proto_negotiated() == b""
    assert handshake.negotiated_alpn is None


def test_choose_alpn_never_picks_what_the_client_did_not_offer():
    """choose_alpn mirrors the upstream only when the client offered that protocol."""
    assert choose_alpn([b"h2", b"http/1.1"], b"http/1.1") == b"http/1.1"
    assert choose_alpn([b"http/1.1"], b"h2") is None
    assert choose_alpn([b"h2"], None) is None


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_client_facing_session_is_resumed(facing, ca_pem, version):
    """A second connection resumes the first one's session (cache or ticket)."""
    ctx = ssl.create_default_context(cafile=ca_pem)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if version == TLS12 else ssl.TLSVersion.TLSv1_3
    client = StdlibPeer(ctx, False, "a.example")
    assert pump(client, facing.creator("a.example").new_connection()) == {}
    read_post_handshake(client)
    assert not client.obj.session_reused

    again = StdlibPeer(ctx, False, "a.example", session=client.obj.session)
    assert pump(again, facing.creator("a.example").new_connection()) == {}
    assert again.obj.session_reused


def test_creator_is_single_use(facing):
    """A per-connection creator refuses to make a second connection."""
    handshake = facing.creator("a.example")
    handshake.new_connection()
    with pytest.raises(RuntimeError):
        handshake.new_connection()


def test_connections_are_freed_once_their_user_drops_them(facing, upstream_ca):
    """Neither side's creator map keeps a finished connection (and its buffers) alive."""
    upstream = UpstreamTLS(upstream_ca[1])
    refs = []
    for creator in (facing.creator("a.example"), upstream.creator("a.example")):
        conn = creator.new_connection()
        refs.append(weakref.ref(conn))
        assert creator.connection is conn
        del conn
    del creator
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert len(facing._handshakes) == 0 and len(upstream._handshakes) == 0


# --------------------------------------------------------------------------
# Upstream verification
# --------------------------------------------------------------------------


def stdlib_upstream(tmp_path, cert, key, max_version):
    """A standard-library TLS server (it can tell whether a session was reused)."""
    cert_file, key_file = tmp_path / "up-cert.pem", tmp_path / "up-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if max_version == TLS12 else ssl.TLSVersion.TLSv1_3
    servers = []

    def connect():
        servers.append(StdlibPeer(ctx, True))
        return servers[-1]

    return connect, servers


def upstream_handshake(tls, server_connect, sni="a.example", alpn=(), ip=None, port=443):
    handshake = tls.creator(sni, alpn, ip=ip, port=port)
    conn = handshake.new_connection()
    errors = pump(conn, server_connect())
    handshake.held = conn  # the creator holds its connection weakly; its user (Twisted's protocol) holds it
    return handshake, errors


def test_upstream_verification_passes_with_right_ca_and_name(upstream_ca):
    """A chain to the configured CA and a matching name verify; SNI and ALPN are sent."""
    root, pem = upstream_ca
    connect, seen = upstream_server(*root.issue(["a.example"]), alpn_choice=b"h2")
    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect, alpn=[b"h2", b"http/1.1"])
    assert errors == {}
    assert handshake.verification_error() is None
    assert verify_peer(handshake.connection, "a.example") is None
    assert seen == {"sni": b"a.example", "alpn_offers": [b"h2", b"http/1.1"]}
    assert handshake.negotiated_alpn == b"h2"
    assert handshake.peer_certificate().subject.rfc4514_string() == "CN=a.example"


def test_upstream_wrong_ca_fails_with_reason(upstream_ca, tmp_path):
    """A chain to a CA we do not trust aborts the handshake with OpenSSL's reason."""
    root, _ = upstream_ca
    other = RootCA("Other Root").write(tmp_path / "other.pem")
    connect, _ = upstream_server(*root.issue(["a.example"]))
    handshake, errors = upstream_handshake(UpstreamTLS(other), connect)
    assert "client" in errors
    assert handshake.verification_error() == "certificate verify failed: unable to get local issuer certificate"
    assert handshake.explain(errors["client"]) == handshake.verification_error()


def test_upstream_wrong_hostname_fails_with_reason(upstream_ca):
    """A certificate for other names aborts the handshake and says which names it has."""
    root, pem = upstream_ca
    connect, _ = upstream_server(*root.issue(["a.example", "www.a.example"]))
    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect, sni="b.example")
    assert "client" in errors
    assert handshake.verification_error() == (
        "hostname mismatch: certificate is for a.example, www.a.example, not b.example"
    )


def test_upstream_expired_certificate_fails_with_reason(upstream_ca):
    """An expired leaf aborts the handshake with 'certificate has expired'."""
    root, pem = upstream_ca
    cert, key = root.issue(["a.example"], not_before=NOW - 10 * DAY, not_after=NOW - DAY)
    connect, _ = upstream_server(cert, key)
    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect)
    assert "client" in errors
    assert handshake.verification_error() == "certificate verify failed: certificate has expired"


def test_upstream_without_sni_verifies_the_ip_address(upstream_ca):
    """With no SNI the destination IP is verified against IP SANs, and no SNI is sent."""
    root, pem = upstream_ca
    connect, seen = upstream_server(*root.issue(["192.0.2.10"], cn="server"))
    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect, sni=None, ip="192.0.2.10")
    assert errors == {}
    assert handshake.verification_error() is None
    assert seen["sni"] is None

    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect, sni=None, ip="192.0.2.11")
    assert "client" in errors
    assert handshake.verification_error() == "IP address mismatch: certificate is for 192.0.2.10, not 192.0.2.11"


def test_upstream_ip_literal_sni_is_verified_as_ip_and_not_sent(upstream_ca):
    """An IP literal given as SNI is not sent (RFC 6066) but verified as an address."""
    root, pem = upstream_ca
    connect, seen = upstream_server(*root.issue(["2001:db8::1"], cn="server"))
    handshake, errors = upstream_handshake(UpstreamTLS(pem), connect, sni="2001:db8::1")
    assert errors == {}
    assert (handshake.sni, handshake.name, seen["sni"]) == (None, "2001:db8::1", None)


def test_insecure_mode_completes_but_reports_what_failed(upstream_ca, tmp_path):
    """Insecure mode lets a bad chain and name through and still says why they are bad."""
    root, _ = upstream_ca
    other = RootCA("Other Root").write(tmp_path / "other.pem")
    connect, _ = upstream_server(*root.issue(["a.example"]))
    handshake, errors = upstream_handshake(UpstreamTLS(other, insecure=True), connect, sni="b.example")
    assert errors == {}
    assert handshake.verification_error() == "certificate verify failed: unable to get local issuer certificate"


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_upstream_session_is_resumed_after_remember(upstream_ca, tmp_path, version):
    """remember_session() lets the next connection to the same upstream resume."""
    root, pem = upstream_ca
    connect, servers = stdlib_upstream(tmp_path, *root.issue(["a.example"]), version)
    tls = UpstreamTLS(pem)
    first, errors = upstream_handshake(tls, connect)
    assert errors == {} and not first.resumed and not servers[-1].obj.session_reused
    read_post_handshake(first.connection)
    first.remember_session()

    second, errors = upstream_handshake(tls, connect)
    assert errors == {}
    assert servers[-1].obj.session_reused
    assert second.resumed
    assert second.verification_error() is None
    other_port, _ = upstream_handshake(tls, connect, port=8443)
    assert not servers[-1].obj.session_reused and not other_port.resumed


def test_failed_verification_is_never_resumed(upstream_ca, tmp_path):
    """A session whose verification failed (insecure mode) is not kept for resumption."""
    root, pem = upstream_ca
    connect, servers = stdlib_upstream(tmp_path, *root.issue(["a.example"]), TLS12)
    tls = UpstreamTLS(pem, insecure=True)
    first, _ = upstream_handshake(tls, connect, sni="b.example")
    first.remember_session()
    second, _ = upstream_handshake(tls, connect, sni="b.example")
    assert not servers[-1].obj.session_reused and not second.resumed


def test_bad_upstream_ca_file_is_a_clear_error(tmp_path):
    """--upstream-ca pointing at a non-PEM file fails when the context is built."""
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="bad.pem: cannot load upstream CA certificates"):
        UpstreamTLS(bad)


@pytest.mark.skipif(not os.path.exists("/etc/ssl/certs/ca-certificates.crt"), reason="no Debian CA bundle")
def test_default_trust_store_is_the_system_bundle():
    """Without --upstream-ca the context trusts the roots in the system bundle."""
    pem = pathlib.Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()
    first = pem[: pem.index(b"-----END CERTIFICATE-----") + 25]
    root = crypto.X509.from_cryptography(x509.load_pem_x509_certificate(first))
    store = UpstreamTLS().context.get_cert_store()
    crypto.X509StoreContext(store, root).verify_certificate()  # raises if the root is unknown


def test_check_name_without_san_is_reported():
    """A certificate with a CN but no SAN is unusable for name checks and says so."""
    cert, _ = RootCA().issue([], cn="a.example")
    assert check_name(cert, "a.example").startswith("unusable certificate for a.example:")


# --------------------------------------------------------------------------
# Twisted wiring
# --------------------------------------------------------------------------


class _Recorder(Protocol):
    def __init__(self):
        self.reason = None
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.reason = reason


def _twisted_pair(upstream_handshake_, facing_handshake):
    clock = Clock()
    client_proto, server_proto = _Recorder(), _Recorder()
    client_factory = TLSMemoryBIOFactory(upstream_handshake_, True, ClientFactory.forProtocol(lambda: client_proto), clock)
    server_factory = TLSMemoryBIOFactory(facing_handshake, False, ServerFactory.forProtocol(lambda: server_proto), clock)
    client, server, io = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None), greet=False, clock=clock
    )
    return client, server, io, client_proto, server_proto


def test_creators_drive_twisted_tls_memory_bio(facing, ca_pem):
    """Both creators provide Twisted's interfaces and handshake through TLSMemoryBIOProtocol."""
    upstream = UpstreamTLS(ca_pem).creator("a.example", [b"h2", b"http/1.1"])
    downstream = facing.creator("a.example", alpn=b"http/1.1")
    assert IOpenSSLClientConnectionCreator.providedBy(upstream)
    assert IOpenSSLServerConnectionCreator.providedBy(downstream)
    client, server, io, client_proto, server_proto = _twisted_pair(upstream, downstream)
    client.write(b"hello")
    io.flush()
    assert server_proto.data == b"hello"
    assert client.negotiatedProtocol == b"http/1.1"
    assert upstream.verification_error() is None


def test_twisted_verification_failure_is_explained(facing, ca_pem):
    """A name mismatch aborts the Twisted handshake and explain() names the cause."""
    upstream = UpstreamTLS(ca_pem).creator("b.example")
    client, server, io, client_proto, server_proto = _twisted_pair(upstream, facing.creator("a.example"))
    client.write(b"secret")
    io.flush()
    assert server_proto.data == b""
    assert client_proto.reason is not None
    assert upstream.explain(client_proto.reason) == "hostname mismatch: certificate is for a.example, not b.example"


# --------------------------------------------------------------------------
# Certificate summary
# --------------------------------------------------------------------------


def test_summarize_certificate_fields():
    """The summary has names, validity, serial and fingerprint of the certificate."""
    root = RootCA("Summary Root")
    cert, _ = root.issue(
        ["a.example", "*.a.example", "192.0.2.1"],
        not_before=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        not_after=datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        serial=0xABCDEF,
    )
    summary = summarize_certificate(crypto.X509.from_cryptography(cert))
    assert summary == {
        "subject": "CN=a.example",
        "subject_cn": "a.example",
        "issuer": "CN=Summary Root",
        "issuer_cn": "Summary Root",
        "dns_names": ["a.example", "*.a.example"],
        "ip_addresses": ["192.0.2.1"],
        "not_before": "2026-01-02T03:04:05+00:00",
        "not_after": "2027-01-02T03:04:05+00:00",
        "serial": "abcdef",
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "names": ["a.example", "*.a.example", "192.0.2.1"],
    }


def test_summary_names_fall_back_to_cn_without_san():
    """A legacy certificate without SANs gives its CN as the name to mint."""
    cert, _ = RootCA().issue([], cn="legacy.example")
    assert summarize_certificate(cert)["names"] == ["legacy.example"]


# --------------------------------------------------------------------------
# Passthrough policy
# --------------------------------------------------------------------------


def test_passthrough_exact_and_glob_patterns():
    """Exact names and globs match case-insensitively; '*.x' covers subdomains, not x."""
    policy = PassthroughPolicy(["api.example", "*.Bank.example"])
    assert policy.should_pass("API.example.")
    assert policy.should_pass("www.bank.example")
    assert policy.should_pass("a.b.bank.example")
    assert not policy.should_pass("bank.example")
    assert not policy.should_pass("notbank.example")
    assert not policy.should_pass("www.api.example")
    assert not policy.should_pass(None)


def test_passthrough_ip_and_cidr_patterns():
    """IP literals and CIDR networks match the SNI-less destination address."""
    policy = PassthroughPolicy(["192.0.2.5", "10.0.0.0/8", "2001:db8::/32"])
    assert policy.should_pass(None, "192.0.2.5")
    assert policy.should_pass(None, "10.200.1.1")
    assert policy.should_pass("a.example", "2001:db8:0::7")
    assert policy.should_pass("[2001:db8::1]")
    assert not policy.should_pass("a.example", "192.0.2.6")


def test_passthrough_rejects_empty_pattern():
    """An empty --passthrough value is an error, not a match-nothing."""
    with pytest.raises(ValueError):
        PassthroughPolicy(["ok.example", " "])


def test_passthrough_learning_off_ignores_rejections():
    """Without learning mode a rejection changes nothing."""
    policy = PassthroughPolicy()
    assert policy.record_rejection("pinned.example") is False
    assert not policy.should_pass("pinned.example")


def test_passthrough_learns_rejected_hosts_with_lru_bound():
    """Learned hosts pass through; the least recently seen is forgotten past the bound."""
    policy = PassthroughPolicy(learn=True, max_learned=2)
    assert policy.record_rejection("a.example") is True
    assert policy.record_rejection("A.example") is False
    policy.record_rejection("b.example")
    assert policy.should_pass("a.example")  # refreshes a
    policy.record_rejection("c.example")  # evicts b, the least recently seen
    assert policy.learned == ["a.example", "c.example"]
    assert not policy.should_pass("b.example")


# --------------------------------------------------------------------------
# Client rejection detection
# --------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_client_without_our_ca_is_a_certificate_rejection(facing, version):
    """A verifying client with an empty trust store alerts 'unknown ca'; we classify it."""
    client = make_client(None, max_version=version)
    errors = pump(client, facing.creator("a.example").new_connection())
    failure = classify_client_failure(errors["server"])
    assert failure.kind is ClientFailureKind.REJECTED_CERTIFICATE
    assert failure.rejected_certificate
    assert failure.reason == "client alert: unknown ca"


def test_client_closing_mid_handshake_is_not_a_rejection(facing, ca_pem):
    """EOF in the middle of the handshake is 'closed', not a rejection."""
    client = make_client(ca_pem)
    server = facing.creator("a.example").new_connection()
    with pytest.raises(SSL.WantReadError):
        client.do_handshake()
    server.bio_write(client.bio_read(65536))
    with pytest.raises(SSL.WantReadError):
        server.do_handshake()
    server.bio_shutdown()
    with pytest.raises(SSL.Error) as info:
        server.do_handshake()
    failure = classify_client_failure(info.value)
    assert failure.kind is ClientFailureKind.CLOSED
    assert not failure.rejected_certificate


def test_classify_other_failures():
    """Other alerts, local errors and Twisted's ConnectionDone are told apart."""
    alert = SSL.Error([("SSL routines", "", "tlsv1 alert protocol version")])
    assert classify_client_failure(alert).kind is ClientFailureKind.ALERT
    assert classify_client_failure(alert).reason == "client alert: protocol version"
    plain = SSL.Error([("SSL routines", "", "http request")])
    assert (classify_client_failure(plain).kind, classify_client_failure(plain).reason) == (
        ClientFailureKind.ERROR,
        "http request",
    )
    assert classify_client_failure(Failure(ConnectionDone())).kind is ClientFailureKind.CLOSED


# --------------------------------------------------------------------------
# Real sockets: the wiring the connection layer will use
# --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_start_tls_both_legs_with_replayed_client_hello(tmp_path):
    """Peek the hello, startTLS upstream, then startTLS to the client replaying the peeked bytes."""
    from twisted.internet import reactor

    server_ca = CertificateAuthority.generate(tmp_path / "server-ca")  # the "real" server's CA
    proxy_ca = CertificateAuthority.generate(tmp_path / "proxy-ca")
    server_tls, facing = ClientFacingTLS(LeafCertificates(server_ca)), ClientFacingTLS(LeafCertificates(proxy_ca))
    upstream_tls = UpstreamTLS(server_ca.cert_path)
    done = Deferred()
    lost = []

    class UpperServer(Protocol):
        def connectionMade(self):
            self.transport.startTLS(server_tls.creator("a.example", alpn=b"http/1.1"))

        def dataReceived(self, data):
            self.transport.write(data.upper())

        def connectionLost(self, reason):
            lost.append("server")

    @implementer(IHandshakeListener)
    class UpstreamLeg(Protocol):
        def __init__(self, handshake, ready):
            self.handshake, self.ready, self.peer = handshake, ready, None

        def connectionMade(self):
            self.transport.startTLS(self.handshake)

        def handshakeCompleted(self):
            self.ready.callback(self)

        def dataReceived(self, data):
            self.peer.transport.write(data)

        def connectionLost(self, reason):
            lost.append("upstream")
            if not self.ready.called:
                self.ready.errback(reason)
            elif self.peer is not None:
                self.peer.transport.loseConnection()

    class ClientLeg(Protocol):
        def connectionMade(self):
            self.reader, self.upstream = ClientHelloReader(), None
            self.facing = None

        def dataReceived(self, data):
            if self.facing is not None:  # decrypted by TLSMemoryBIOProtocol
                self.upstream.transport.write(data)
                return
            hello = self.reader.feed(data)
            if hello is not None:
                self.transport.pauseProducing()
                port = server_port.getHost().port
                handshake = upstream_tls.creator(hello.sni, list(hello.alpn), "127.0.0.1", port)
                ready = Deferred()
                ClientCreator(reactor, UpstreamLeg, handshake, ready).connectTCP("127.0.0.1", port)
                ready.addCallback(self._upstream_ready, hello).addErrback(done.errback)

        def _upstream_ready(self, upstream, hello):
            assert upstream.handshake.verification_error() is None
            self.upstream, upstream.peer = upstream, self
            names = summarize_certificate(upstream.handshake.peer_certificate())["names"]
            self.facing = facing.creator(hello.sni, names, alpn=upstream.handshake.negotiated_alpn)
            self.transport.startTLS(self.facing)
            self.transport.protocol.dataReceived(hello.raw + self.reader.leftover)  # replay
            self.transport.resumeProducing()

        def connectionLost(self, reason):
            lost.append("client-leg")
            if self.upstream is not None:
                self.upstream.transport.loseConnection()

    class Client(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello")

        def dataReceived(self, data):
            done.callback((data, self.transport.negotiatedProtocol, self.transport.getPeerCertificate()))
            self.transport.loseConnection()

    server_port = reactor.listenTCP(0, ServerFactory.forProtocol(UpperServer), interface="127.0.0.1")
    proxy_port = reactor.listenTCP(0, ServerFactory.forProtocol(ClientLeg), interface="127.0.0.1")
    try:
        options = optionsForClientTLS(
            "a.example", Certificate.loadPEM(proxy_ca.cert_pem), acceptableProtocols=[b"h2", b"http/1.1"]
        )
        reactor.connectSSL("127.0.0.1", proxy_port.getHost().port, ClientFactory.forProtocol(Client), options)
        data, alpn, cert = await done.addTimeout(10, reactor)
        assert (data, alpn) == (b"HELLO", b"http/1.1")
        assert cert.to_cryptography().issuer == proxy_ca.cert.subject
        for _ in range(100):  # closing one leg closes the others
            if len(lost) == 3:
                break
            await deferLater(reactor, 0.01)
        assert sorted(lost) == ["client-leg", "server", "upstream"]
    finally:
        await server_port.stopListening()
        await proxy_port.stopListening()


def test_a_resumed_session_is_refused_for_a_name_its_certificate_lacks(upstream_ca, tmp_path):
    """Sessions are kept per (name, IP, port), so this takes a planted one: a handshake resumed with a
    session for a.example while asking for b.example completes (no verify callback runs), and
    `refusal` names the mismatch; in insecure mode it is only reported."""
    root, pem = upstream_ca
    connect, servers = stdlib_upstream(tmp_path, *root.issue(["a.example"]), TLS12)
    for insecure in (False, True):
        tls = UpstreamTLS(pem, insecure=insecure)
        first, errors = upstream_handshake(tls, connect)
        assert errors == {} and first.refusal() is None
        first.remember_session()
        tls._sessions[("b.example", None, 443)] = tls._sessions[("a.example", None, 443)]
        planted, errors = upstream_handshake(tls, connect, sni="b.example")
        assert errors == {} and planted.resumed and servers[-1].obj.session_reused
        problem = planted.verification_error()
        assert problem is not None and "b.example" in problem
        assert planted.refusal() == (None if insecure else problem)


def test_connections_that_get_the_same_certificate_share_what_is_worked_out_of_it(upstream_ca):
    """Two handshakes with a server sending one certificate share its `ServerCertificate` (patterns,
    summary); each gets a summary of its own to change; a name the certificate lacks still fails
    with the reason a fresh check gives, and another certificate gets another record."""
    root, pem = upstream_ca
    tls = UpstreamTLS(pem)
    cert, key = root.issue(["a.example", "www.a.example"])
    connect, _ = upstream_server(cert, key)
    first, errors = upstream_handshake(tls, connect)
    second, errors2 = upstream_handshake(tls, connect)
    assert errors == errors2 == {}
    assert first.server_certificate() is second.server_certificate()
    mine = first.server_certificate().summary()
    mine["names"].append("evil.example")
    assert second.server_certificate().summary() == summarize_certificate(cert)
    wrong, errors = upstream_handshake(tls, connect, sni="b.example")
    assert "client" in errors
    assert wrong.verification_error() == check_name(cert, "b.example")
    assert wrong.verification_error().startswith("hostname mismatch: certificate is for a.example, www.a.example")
    other, errors = upstream_handshake(tls, upstream_server(*root.issue(["a.example"]))[0])
    assert errors == {} and other.server_certificate() is not first.server_certificate()


def test_the_server_certificates_kept_are_bounded(upstream_ca, monkeypatch):
    """Past the bound, the least recently seen certificate's record is dropped, and made anew when
    that certificate comes again."""
    monkeypatch.setattr(handshake_module, "_CERTIFICATES_KEPT", 2)
    root, pem = upstream_ca
    tls = UpstreamTLS(pem)
    a, b, c = (crypto.X509.from_cryptography(root.issue([name])[0]) for name in ("a.example", "b.example", "c.example"))
    kept_a, kept_b = tls.server_certificate(a), tls.server_certificate(b)
    assert tls.server_certificate(a) is kept_a  # a is now the most recent
    tls.server_certificate(c)
    assert tls.server_certificate(a) is kept_a
    assert tls.server_certificate(b) is not kept_b
    assert len(tls._certificates) == 2


def test_handshake_ends_are_counted_by_outcome_version_and_alpn(upstream_ca, tmp_path):
    """count() files an ok handshake under its version and ALPN, a failed one under "none" (for the metrics)."""
    root, pem = upstream_ca
    tls = UpstreamTLS(pem)
    connect, _ = upstream_server(*root.issue(["a.example"]), alpn_choice=b"h2")
    good, errors = upstream_handshake(tls, connect, alpn=[b"h2"])
    assert errors == {}
    good.count(True)
    other = RootCA("Other Root").write(tmp_path / "other.pem")
    distrusting = UpstreamTLS(other)
    bad, errors = upstream_handshake(distrusting, connect)
    assert "client" in errors
    bad.count(False)
    assert dict(tls.handshakes) == {("ok", "TLSv1.3", "h2"): 1}
    assert dict(distrusting.handshakes) == {("failed", "none", "none"): 1}
