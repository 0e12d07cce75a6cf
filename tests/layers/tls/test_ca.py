"""Tests for the private CA, leaf minting (tinspect.layers.tls.ca) and `tinspect ca` (tinspect.cli.command)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import stat
import subprocess

import pytest
import service_identity.pyopenssl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from tinspect.cli.command import main
from tinspect.layers.tls.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CAError,
    CertificateAuthority,
    LeafCertificates,
    default_state_dir,
)

DAY = datetime.timedelta(days=1)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _usual_umask():
    """Run each test under the common 022 umask so file modes are predictable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory):
    """A generated (EC) CA, shared by the leaf tests."""
    return CertificateAuthority.generate(tmp_path_factory.mktemp("ca") / "state")


def make_ca_files(
    tmp_path,
    key,
    *,
    ca=True,
    days=3650,
    key_mode=0o600,
    with_ski=True,
    name="Test CA",
):
    """Write a self-signed CA made outside tinspect; return (cert_path, key_path)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if with_ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    cert_path = tmp_path / "ca-cert.pem"
    key_path = tmp_path / "ca-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, key_mode)
    return cert_path, key_path


def verify_with_store(ca: CertificateAuthority, leaf: crypto.X509) -> None:
    """Raise unless ``leaf`` chains to ``ca`` per OpenSSL's verifier."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(ca.cert))
    crypto.X509StoreContext(store, leaf).verify_certificate()


def san_of(leaf: crypto.X509) -> x509.SubjectAlternativeName:
    """The subjectAltName extension value of a pyOpenSSL certificate."""
    return leaf.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def pump(client: ssl.SSLObject, c_in, c_out, server: SSL.Connection) -> None:
    """Drive an in-memory handshake between an ssl client and a pyOpenSSL server."""
    client_done = server_done = False
    for _ in range(20):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        data = c_out.read()
        if data:
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        try:
            data = server.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            c_in.write(data)
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")


def server_for(leaves: LeafCertificates, name: str, extra=()) -> SSL.Connection:
    """A pyOpenSSL server connection presenting the leaf for ``name``."""
    # cryptography objects: pyOpenSSL 26 warns when given its own X509/PKey.
    cert, key = leaves.get_cryptography(name, extra)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.check_privatekey()
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    return conn


# --------------------------------------------------------------------------
# State directory and generation
# --------------------------------------------------------------------------


def test_default_state_dir_prefers_tinspect_then_xdg_then_home(monkeypatch, tmp_path):
    """$TINSPECT_STATE_DIR wins, then an absolute $XDG_STATE_HOME, then ~/.local/state."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TINSPECT_STATE_DIR", "/srv/tinspect")
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert str(default_state_dir()) == "/srv/tinspect"
    monkeypatch.delenv("TINSPECT_STATE_DIR")
    assert str(default_state_dir()) == "/xdg/tinspect"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_state_dir() == tmp_path / ".local" / "state" / "tinspect"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == tmp_path / ".local" / "state" / "tinspect"


def test_generate_writes_private_key_0600_and_dir_0700(tmp_path):
    """The key file is 0600, the certificate 0644 and a new state dir 0700."""
    state = tmp_path / "deep" / "state"
    ca = CertificateAuthority.generate(state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert os.stat(state / CA_KEY_FILE).st_mode & 0o777 == 0o600
    assert os.stat(state / CA_CERT_FILE).st_mode & 0o777 == 0o644
    assert ca.cert_path == state / CA_CERT_FILE
    assert ca.key_path == state / CA_KEY_FILE


def test_generated_ca_shape(ec_ca):
    """EC P-256, ten years, CA:TRUE pathlen 0 critical, keyCertSign+cRLSign critical, SKI."""
    cert = ec_ca.cert
    assert isinstance(ec_ca.key, ec.EllipticCurvePrivateKey)
    assert isinstance(ec_ca.key.curve, ec.SECP256R1)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "tinspect CA"
    assert cert.subject == cert.issuer
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3652)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ec_ca.key.public_key())
    assert cert.signature_hash_algorithm.name == "sha256"


def test_generate_refuses_to_overwrite(tmp_path):
    """generate never replaces an existing CA."""
    CertificateAuthority.generate(tmp_path)
    with pytest.raises(CAError, match="already exists"):
        CertificateAuthority.generate(tmp_path)


def test_generate_custom_common_name(tmp_path):
    """The common name is configurable."""
    ca = CertificateAuthority.generate(tmp_path, common_name="Lab 42 CA")
    assert ca.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lab 42 CA"


def test_load_or_generate_generates_once_then_loads(tmp_path):
    """The first call creates the CA, later calls load the same one."""
    first = CertificateAuthority.load_or_generate(tmp_path / "s")
    second = CertificateAuthority.load_or_generate(tmp_path / "s")
    assert first.cert_der == second.cert_der
    assert first.spki_sha256 == second.spki_sha256


def test_load_or_generate_reports_key_without_certificate(tmp_path):
    """A half-written CA (key only) is reported, not silently replaced."""
    CertificateAuthority.generate(tmp_path)
    os.unlink(tmp_path / CA_CERT_FILE)
    with pytest.raises(CAError, match="without ca.pem"):
        CertificateAuthority.load_or_generate(tmp_path)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_load_refuses_key_open_to_group_or_others(tmp_path, mode):
    """A key readable or writable by group/others is refused, naming file and mode."""
    cert_path, key_path = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()), key_mode=mode)
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(cert_path, key_path)
    message = str(info.value)
    assert str(key_path) in message
    assert f"{mode:04o}" in message


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP256R1()),
    ],
    ids=["rsa2048", "ec-p384", "ec-p256"],
)
def test_load_rsa_and_ec_cas_and_mint_verifiable_leaves(tmp_path, key):
    """CAs made elsewhere with RSA or EC keys load and sign leaves that verify."""
    cert_path, key_path = make_ca_files(tmp_path, key)
    ca = CertificateAuthority.load(cert_path, key_path)
    assert ca.cert_path == cert_path and ca.key_path == key_path
    leaf, _ = LeafCertificates(ca).get("www.example.test")
    verify_with_store(ca, leaf)


def test_load_accepts_ca_without_ski(tmp_path):
    """A CA without SKI still works; the leaf's AKI is derived from its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority.load(*make_ca_files(tmp_path, key, with_ski=False))
    leaf, _ = LeafCertificates(ca).get("a.test")
    aki = leaf.to_cryptography().extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    verify_with_store(ca, leaf)


def test_load_refuses_mismatched_key(tmp_path):
    """A key that does not belong to the certificate is refused."""
    cert_path, _ = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_ca_files(other, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority.load(cert_path, other_key)


def test_load_refuses_non_ca_certificate(tmp_path):
    """A certificate with CA:FALSE cannot act as the CA."""
    paths = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()), ca=False)
    with pytest.raises(CAError, match="not a CA"):
        CertificateAuthority.load(*paths)


def test_load_refuses_expired_ca(tmp_path):
    """An expired CA is refused with its expiry date."""
    paths = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()), days=-1)
    with pytest.raises(CAError, match="expired"):
        CertificateAuthority.load(*paths)


def test_load_refuses_encrypted_key(tmp_path):
    """Password-protected keys are refused with a clear message."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = make_ca_files(tmp_path, key)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(CAError, match="encrypted"):
        CertificateAuthority.load(cert_path, key_path)


def test_load_reports_missing_and_garbage_files(tmp_path):
    """Missing or malformed files give CAError naming the file."""
    cert_path, key_path = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CAError, match="nope.pem"):
        CertificateAuthority.load(cert_path, tmp_path / "nope.pem")
    with pytest.raises(CAError, match="nope.pem"):
        CertificateAuthority.load(tmp_path / "nope.pem", key_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(CAError, match="garbage.pem"):
        CertificateAuthority.load(garbage, key_path)


def test_load_accepts_der_files(tmp_path):
    """DER certificate and key files load as well as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_path, key_path = make_ca_files(tmp_path, key)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert CertificateAuthority.load(cert_path, key_path).cert == cert


# --------------------------------------------------------------------------
# Hashes users compare against
# --------------------------------------------------------------------------


def test_spki_sha256_matches_independent_computation(ec_ca):
    """spki_sha256 is base64(sha256(DER SubjectPublicKeyInfo)), computed via pyOpenSSL here."""
    pubkey = crypto.X509.from_cryptography(ec_ca.cert).get_pubkey()
    pub_der = crypto.dump_publickey(crypto.FILETYPE_ASN1, pubkey)
    assert ec_ca.spki_sha256 == base64.b64encode(hashlib.sha256(pub_der).digest()).decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_spki_sha256_matches_openssl_command(ec_ca):
    """The documented openssl pipeline gives the same SPKI hash."""
    pubkey = subprocess.run(
        ["openssl", "x509", "-noout", "-pubkey"], input=ec_ca.cert_pem, capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    ).stdout
    assert ec_ca.spki_sha256 == base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_fingerprint_sha256_is_colon_hex_of_der(ec_ca):
    """The fingerprint is in openssl's AA:BB:... form over the DER certificate."""
    expected = crypto.X509.from_cryptography(ec_ca.cert).digest("sha256").decode()
    assert ec_ca.fingerprint_sha256 == expected
    assert ec_ca.cert_der == ec_ca.cert.public_bytes(serialization.Encoding.DER)
    assert ec_ca.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")


# --------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------


def test_leaf_verifies_against_ca_with_x509store(ec_ca):
    """A minted leaf chains to the CA under OpenSSL's verifier."""
    leaf, key = LeafCertificates(ec_ca).get("example.test")
    verify_with_store(ec_ca, leaf)
    assert isinstance(leaf, crypto.X509) and isinstance(key, crypto.PKey)


def test_leaf_shape(ec_ca):
    """CN, CA:FALSE, digitalSignature, serverAuth, AKI from the CA SKI, sha256, shared EC key."""
    leaves = LeafCertificates(ec_ca)
    leaf, key = leaves.get("www.example.test")
    cert = leaf.to_cryptography()
    ext = cert.extensions
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "www.example.test"
    assert cert.issuer == ec_ca.cert.subject
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ca_ski = ec_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.signature_hash_algorithm.name == "sha256"
    assert key is leaves.openssl_key()
    assert isinstance(key.to_cryptography_key(), ec.EllipticCurvePrivateKey)
    assert cert.public_key().public_numbers() == key.to_cryptography_key().public_key().public_numbers()


def test_pyopenssl_and_cryptography_forms_share_the_cache(ec_ca):
    """get and get_cryptography return the same leaf in two forms, counted once."""
    leaves = LeafCertificates(ec_ca)
    leaf, pkey = leaves.get("a.test")
    cert, key = leaves.get_cryptography("a.test")
    assert leaf.to_cryptography() == cert
    assert key is leaves.cryptography_key()
    assert pkey.to_cryptography_key().private_numbers() == key.private_numbers()
    assert (leaves.hits, leaves.misses) == (1, 1)


def test_pyopenssl_forms_load_into_a_context(ec_ca):
    """The pyOpenSSL objects get returns are usable in an SSL.Context (deprecated but working)."""
    leaf, key = LeafCertificates(ec_ca).get("a.test")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    with pytest.warns(DeprecationWarning):
        ctx.use_certificate(leaf)
    with pytest.warns(DeprecationWarning):
        ctx.use_privatekey(key)
    ctx.check_privatekey()


def test_leaves_get_distinct_random_serials(ec_ca):
    """Each leaf has its own serial number."""
    leaves = LeafCertificates(ec_ca)
    serials = {leaves.get(f"h{i}.test")[0].get_serial_number() for i in range(20)}
    assert len(serials) == 20


def test_leaf_san_contains_name_and_extra_names_deduplicated(ec_ca):
    """SAN lists the name first, then extras, lowercased, without duplicates."""
    leaf, _ = LeafCertificates(ec_ca).get(
        "Example.test", ["*.example.test", "example.test", "API.example.test.", "*.example.test"]
    )
    assert san_of(leaf).get_values_for_type(x509.DNSName) == [
        "example.test",
        "*.example.test",
        "api.example.test",
    ]


@pytest.mark.parametrize("address", ["192.0.2.7", "2001:db8::1"])
def test_ip_leaf_has_ip_san(ec_ca, address):
    """An IP literal (v4 or v6) becomes an iPAddress SAN, not a DNS name."""
    leaves = LeafCertificates(ec_ca)
    leaf, _ = leaves.get(address)
    san = san_of(leaf)
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]
    assert san.get_values_for_type(x509.DNSName) == []
    verify_with_store(ec_ca, leaf)


def test_mixed_names_and_invalid_extras(ec_ca):
    """Extras may mix IPs and names; invalid extras are skipped, an invalid name is refused."""
    leaves = LeafCertificates(ec_ca)
    leaf, _ = leaves.get("a.test", ["10.0.0.1", "bad name", "caf\u00e9.test", "", "b.test"])
    san = san_of(leaf)
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    with pytest.raises(ValueError):
        leaves.get("not a host")


def test_long_name_goes_in_san_only(ec_ca):
    """Names over 64 chars cannot be a CN: empty subject, critical SAN (RFC 5280)."""
    name = "a" * 60 + ".example.test"
    leaf, _ = LeafCertificates(ec_ca).get(name)
    cert = leaf.to_cryptography()
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == [name]
    verify_with_store(ec_ca, leaf)


def test_cache_hit_returns_same_object_and_counts(ec_ca):
    """A second get for the same names is a cache hit returning the same objects."""
    leaves = LeafCertificates(ec_ca)
    first = leaves.get("a.test", ["c.test", "b.test"])
    assert (leaves.hits, leaves.misses) == (0, 1)
    second = leaves.get("a.test", ["b.test", "c.test"])  # order does not matter
    assert second[0] is first[0] and second[1] is first[1]
    assert (leaves.hits, leaves.misses) == (1, 1)
    leaves.get("a.test")  # different extras: a different leaf
    assert (leaves.hits, leaves.misses) == (1, 2)


def test_lru_eviction_at_cache_size(ec_ca):
    """The least recently used leaf is evicted once cache_size is exceeded."""
    leaves = LeafCertificates(ec_ca, cache_size=2)
    a, _ = leaves.get("a.test")
    leaves.get("b.test")
    assert leaves.get("a.test")[0] is a  # a is now most recently used
    leaves.get("c.test")  # evicts b
    assert len(leaves) == 2
    assert leaves.get("a.test")[0] is a
    hits, misses = leaves.hits, leaves.misses
    leaves.get("b.test")
    assert (leaves.hits, leaves.misses) == (hits, misses + 1)


def test_names_as_given_find_their_leaf_again_within_the_bound(ec_ca):
    """Spellings of the same names find one leaf, each remembered as given; what is remembered is
    bounded like the leaves, and a forgotten spelling still finds its leaf by its normal form."""
    leaves = LeafCertificates(ec_ca, cache_size=2)
    leaf, _ = leaves.get("A.Test.", ["B.test"])
    assert leaves.get("a.test", ["b.test"])[0] is leaf
    assert leaves.get("A.Test.", ["B.test"])[0] is leaf
    assert (leaves.hits, leaves.misses) == (2, 1)
    leaves.get("c.test")
    assert len(leaves._keys) == 2 and ("a.test", ("b.test",)) not in leaves._keys
    assert leaves.get("a.test", ["b.test"])[0] is leaf
    with pytest.raises(ValueError):
        leaves.get("not a name")
    assert len(leaves._keys) == 2


def test_cache_size_zero_disables_cache(ec_ca):
    """cache_size=0 mints every time."""
    leaves = LeafCertificates(ec_ca, cache_size=0)
    assert leaves.get("a.test")[0] is not leaves.get("a.test")[0]
    assert (leaves.hits, leaves.misses, len(leaves)) == (0, 2, 0)


def test_validity_window_backdated_and_inside_ca(ec_ca):
    """not_before = now - 1 day, not_after = now + 397 days, both within the CA's validity."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    leaf, _ = LeafCertificates(ec_ca, clock=now.timestamp).get("a.test")
    cert = leaf.to_cryptography()
    assert cert.not_valid_before_utc == now - DAY
    assert cert.not_valid_after_utc == now + datetime.timedelta(days=397)
    assert ec_ca.not_before <= cert.not_valid_before_utc
    assert cert.not_valid_after_utc <= ec_ca.not_after


def test_validity_capped_by_ca_expiry(tmp_path):
    """A CA expiring in 100 days caps leaves at its expiry minus one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = CertificateAuthority.load(*make_ca_files(tmp_path, key, days=100))
    leaf, _ = LeafCertificates(ca).get("a.test")
    cert = leaf.to_cryptography()
    assert cert.not_valid_after_utc == ca.not_after - DAY
    assert cert.not_valid_before_utc >= ca.not_before
    verify_with_store(ca, leaf)


def test_cached_leaf_renewed_before_expiry(ec_ca):
    """A cached leaf close to its expiry is re-minted, not served."""
    now = [datetime.datetime.now(datetime.timezone.utc).timestamp()]
    leaves = LeafCertificates(ec_ca, clock=lambda: now[0])
    first, _ = leaves.get("a.test")
    now[0] += 300 * 86400
    assert leaves.get("a.test")[0] is first
    now[0] += 97 * 86400  # within a day of not_after
    renewed, _ = leaves.get("a.test")
    assert renewed is not first
    assert renewed.to_cryptography().not_valid_after_utc > first.to_cryptography().not_valid_after_utc


def test_real_handshake_python_ssl_strict_client(ec_ca):
    """Python's ssl client with hostname checks and VERIFY_X509_STRICT accepts our leaf."""
    leaves = LeafCertificates(ec_ca)
    server = server_for(leaves, "www.example.test", ["example.test"])
    ctx = ssl.create_default_context(cadata=ec_ca.cert_pem.decode())
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="www.example.test")
    pump(client, c_in, c_out, server)
    assert client.getpeercert()["subject"] == ((("commonName", "www.example.test"),),)


def test_real_handshake_python_ssl_ip_address(ec_ca):
    """A client connecting to an IP literal accepts the IP leaf."""
    server = server_for(LeafCertificates(ec_ca), "192.0.2.7")
    ctx = ssl.create_default_context(cadata=ec_ca.cert_pem.decode())
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="192.0.2.7")
    pump(client, c_in, c_out, server)


def test_real_handshake_wrong_host_is_rejected(ec_ca):
    """The hostname check really runs: a leaf for another name fails."""
    server = server_for(LeafCertificates(ec_ca), "other.test")
    ctx = ssl.create_default_context(cadata=ec_ca.cert_pem.decode())
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="www.example.test")
    with pytest.raises(ssl.SSLCertVerificationError):
        pump(client, c_in, c_out, server)


def test_service_identity_verify_hostname_on_pyopenssl_client(ec_ca):
    """service_identity accepts the leaf's names after a pyOpenSSL handshake."""
    server = server_for(LeafCertificates(ec_ca), "www.example.test", ["*.example.test"])
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(ec_ca.cert))
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"www.example.test")
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    client.do_handshake()
    service_identity.pyopenssl.verify_hostname(client, "www.example.test")
    service_identity.pyopenssl.verify_hostname(client, "cdn.example.test")
    with pytest.raises(service_identity.VerificationError):
        service_identity.pyopenssl.verify_hostname(client, "evil.test")


# --------------------------------------------------------------------------
# tinspect ca
# --------------------------------------------------------------------------


def test_cli_ca_state_dir_generates_and_prints(tmp_path, capsys):
    """`tinspect ca --state-dir DIR` generates on first use and prints PEM, SPKI and fingerprint."""
    state = tmp_path / "state"
    assert main(["ca", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    ca = CertificateAuthority.load(state / CA_CERT_FILE, state / CA_KEY_FILE)
    assert f"spki-sha256: {ca.spki_sha256}\n" in out
    assert ca.fingerprint_sha256 in out
    assert f"state-dir: {state}\n" in out
    assert str(state / CA_KEY_FILE) in out
    assert out.endswith(ca.cert_pem.decode())
    # A second run loads the same CA.
    assert main(["ca", "--state-dir", str(state)]) == 0
    assert f"spki-sha256: {ca.spki_sha256}\n" in capsys.readouterr().out


def test_cli_ca_der_file(tmp_path, capsys):
    """--der writes the DER certificate for Windows/Android installs."""
    der = tmp_path / "ca.cer"
    assert main(["ca", "--state-dir", str(tmp_path / "s"), "--der", str(der)]) == 0
    ca = CertificateAuthority.load(tmp_path / "s" / CA_CERT_FILE, tmp_path / "s" / CA_KEY_FILE)
    assert der.read_bytes() == ca.cert_der
    assert f"der: {der}" in capsys.readouterr().out


def test_cli_ca_explicit_files(tmp_path, capsys):
    """--ca-cert/--ca-key load a user-provided CA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert_path, key_path = make_ca_files(tmp_path, key)
    assert main(["ca", "--ca-cert", str(cert_path), "--ca-key", str(key_path)]) == 0
    out = capsys.readouterr().out
    assert f"spki-sha256: {CertificateAuthority.load(cert_path, key_path).spki_sha256}" in out
    assert "state-dir" not in out


def test_cli_ca_pem_only(tmp_path, capsys):
    """--pem-only prints just the certificate, fit for redirecting into a file."""
    assert main(["ca", "--state-dir", str(tmp_path), "--pem-only"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-----BEGIN CERTIFICATE-----")
    x509.load_pem_x509_certificate(out.encode())


def test_cli_ca_default_dir_needs_generate(tmp_path, monkeypatch, capsys):
    """Without options the default dir is only read; --generate creates the CA there."""
    monkeypatch.setenv("TINSPECT_STATE_DIR", str(tmp_path / "default"))
    assert main(["ca"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--generate" in err
    assert main(["ca", "--generate"]) == 0
    assert (tmp_path / "default" / CA_KEY_FILE).exists()
    capsys.readouterr()
    assert main(["ca"]) == 0
    assert "spki-sha256: " in capsys.readouterr().out


def test_cli_ca_error_is_one_line_and_status_2(tmp_path, capsys):
    """A CAError (key too open) prints one line naming the file and returns 2."""
    cert_path, key_path = make_ca_files(tmp_path, ec.generate_private_key(ec.SECP256R1()), key_mode=0o644)
    assert main(["ca", "--ca-cert", str(cert_path), "--ca-key", str(key_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("tinspect: ")
    assert captured.err.count("\n") == 1
    assert str(key_path) in captured.err and "0644" in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        ["ca", "--ca-cert", "x.pem"],
        ["ca", "--ca-key", "k.pem"],
        ["ca", "--ca-cert", "x.pem", "--ca-key", "k.pem", "--generate"],
        ["ca", "--bogus"],
        [],
    ],
)
def test_cli_usage_errors_return_2(argv, capsys):
    """Inconsistent or unknown options are usage errors with status 2."""
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_cli_help_returns_0(capsys):
    """--help exits cleanly with status 0."""
    assert main(["ca", "--help"]) == 0
    assert "--der" in capsys.readouterr().out
