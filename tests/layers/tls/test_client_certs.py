"""Client certificates towards servers (--client-cert) and seeing a server ask for one."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from tests.layers.tls.test_tls import RootCA, pump
from tinspect.layers.tls.handshake import UpstreamTLS
from tinspect.layers.tls.policy import ClientCertificate, HostPatterns, PassthroughPolicy

VERSIONS = [SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION]


def write_pem(path, cert, key) -> tuple[str, str]:
    """Write a certificate and its key as two PEM files."""
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def requesting_server(root: RootCA, ask: bool, max_version: int):
    """A server for a.example that asks for (but does not require) a client certificate."""
    cert, key = root.issue(["a.example"])
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_max_proto_version(max_version)
    if ask:
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    return conn


@pytest.fixture
def pki(tmp_path):
    """The servers' CA (as a PEM file) and a client certificate from another CA."""
    servers = RootCA()
    clients = RootCA("Client CA")
    cert, key = clients.issue(["alice"])
    return {"root": servers, "ca": servers.write(tmp_path / "ca.pem"), "client": write_pem(tmp_path / "alice", cert, key),
            "client_cert": cert}


def handshake_with(tls: UpstreamTLS, server: SSL.Connection, sni: str = "a.example"):
    """Run one upstream handshake against ``server``; the creator and pump errors."""
    hs = tls.creator(sni, (), ip="192.0.2.7", port=443)
    conn = hs.new_connection()
    errors = pump(conn, server)
    hs.held = conn
    return hs, errors


@pytest.mark.parametrize("version", VERSIONS)
def test_matching_server_that_asks_gets_the_configured_certificate(pki, version):
    """A server matching the pattern that asks for a certificate gets the configured one."""
    entry = ClientCertificate.parse(f"*.example={pki['client'][0]},{pki['client'][1]}")
    tls = UpstreamTLS(pki["ca"], client_certs=[entry], watch_certificate_requests=True)
    server = requesting_server(pki["root"], True, version)
    hs, errors = handshake_with(tls, server)
    assert errors == {}
    assert hs.client_cert is entry and hs.certificate_requested
    assert server.get_peer_certificate(as_cryptography=True) == pki["client_cert"]


@pytest.mark.parametrize("version", VERSIONS)
def test_server_asking_without_a_configured_certificate_gets_none(pki, version):
    """A server no pattern matches completes the handshake without a certificate, and the ask is seen."""
    entry = ClientCertificate.parse(f"other.example={pki['client'][0]},{pki['client'][1]}")
    tls = UpstreamTLS(pki["ca"], client_certs=[entry], watch_certificate_requests=True)
    server = requesting_server(pki["root"], True, version)
    hs, errors = handshake_with(tls, server)
    assert errors == {}
    assert hs.client_cert is None and hs.certificate_requested
    assert server.get_peer_certificate() is None


@pytest.mark.parametrize("version", VERSIONS)
def test_server_not_asking_is_not_taken_for_one_that_asks(pki, version):
    """A server that sends no CertificateRequest gets no certificate, even a configured one."""
    entry = ClientCertificate.parse(f"a.example={pki['client'][0]},{pki['client'][1]}")
    tls = UpstreamTLS(pki["ca"], client_certs=[entry], watch_certificate_requests=True)
    server = requesting_server(pki["root"], False, version)
    hs, errors = handshake_with(tls, server)
    assert errors == {}
    assert not hs.certificate_requested
    assert server.get_peer_certificate() is None


def test_first_matching_entry_wins_and_addresses_match_too(pki, tmp_path):
    """Entries are tried in order; the destination address matches an IP or CIDR pattern."""
    first = ClientCertificate.parse(f"192.0.2.0/24={pki['client'][0]},{pki['client'][1]}")
    second = ClientCertificate.parse(f"a.example={pki['client'][0]},{pki['client'][1]}")
    tls = UpstreamTLS(pki["ca"], client_certs=[first, second])
    assert tls.creator("a.example", (), ip="192.0.2.7").client_cert is first
    assert tls.creator("a.example", (), ip="198.51.100.1").client_cert is second
    assert tls.creator("b.example", (), ip="198.51.100.1").client_cert is None


def test_key_in_the_certificate_file_is_found(pki, tmp_path):
    """Without KEY.pem the key is read from CERT.pem."""
    both = tmp_path / "both.pem"
    both.write_bytes(open(pki["client"][0], "rb").read() + open(pki["client"][1], "rb").read())
    entry = ClientCertificate.parse(f"a.example={both}")
    assert entry.key == entry.cert == str(both)
    UpstreamTLS(pki["ca"], client_certs=[entry])


def test_mismatched_key_is_a_clear_error(pki, tmp_path):
    """A key that is not the certificate's is refused at start, naming the pattern and files."""
    other = RootCA("Other").issue(["bob"])
    _, wrong_key = write_pem(tmp_path / "bob", *other)
    entry = ClientCertificate.parse(f"a.example={pki['client'][0]},{wrong_key}")
    with pytest.raises(ValueError, match=r"client certificate for a\.example: cannot use .*alice\.crt"):
        UpstreamTLS(pki["ca"], client_certs=[entry])


def test_missing_file_is_a_clear_error(pki, tmp_path):
    """A certificate file that does not exist is refused at start."""
    entry = ClientCertificate.parse(f"a.example={tmp_path / 'none.pem'}")
    with pytest.raises(ValueError, match="client certificate for a.example"):
        UpstreamTLS(pki["ca"], client_certs=[entry])


@pytest.mark.parametrize("text", ["a.example", "=cert.pem", "a.example=", "a.example=,key.pem"])
def test_malformed_client_cert_option_is_refused(text):
    """PATTERN=CERT.pem[,KEY.pem] is required."""
    with pytest.raises(ValueError, match="PATTERN=CERT.pem"):
        ClientCertificate.parse(text)


def test_host_patterns_match_names_globs_and_networks():
    """HostPatterns read names, globs, IPs and CIDRs, case-insensitively."""
    patterns = HostPatterns(["API.example.", "*.corp.example", "10.0.0.0/8", "2001:db8::1"])
    assert patterns.match("api.example")
    assert patterns.match(None, "10.1.2.3")
    assert patterns.match("x.y.corp.example")
    assert patterns.match("2001:DB8::1")
    assert not patterns.match("corp.example", "192.0.2.1")
    with pytest.raises(ValueError, match="empty host pattern"):
        HostPatterns([" "])


def test_learned_host_passes_through_even_without_rejection_learning():
    """learn_host is what --passthrough-client-auth uses: it works without --passthrough-rejected."""
    policy = PassthroughPolicy()
    assert not policy.record_rejection("a.example")
    assert policy.learn_host("A.example")
    assert not policy.learn_host("a.example")
    assert policy.should_pass("a.example")
