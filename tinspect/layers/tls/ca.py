"""The private certificate authority and the leaf certificates it mints.

To read TLS traffic tinspect terminates the client's TLS session itself, with
a certificate for the name the client asked for, signed by a CA the client
has been told to trust.  This module owns that CA:

* :class:`CertificateAuthority` loads a CA from PEM files given by the user
  (``--ca-cert/--ca-key``) or generates one on first run into a state
  directory (``--state-dir``, default :func:`default_state_dir`), with the
  private key readable by its owner only.
* :class:`LeafCertificates` mints leaf certificates for host names and IP
  addresses and keeps the most recently used ones in an LRU cache.

Theory of operation
-------------------
Minting has to be cheap: a transparent proxy meets many host names and a
handshake cannot wait for an RSA key generation.  So one EC P-256 leaf key
pair is generated per :class:`LeafCertificates` (that is, per process) and
shared by all leaves (as mitmproxy does); a new leaf costs one signature by
the CA key plus building a small certificate.  Everything that does not
depend on the host name (issuer, key identifiers, key usages) is built once
in ``__init__``.

Leaves are returned as pyOpenSSL objects because the TLS layer configures
pyOpenSSL contexts; each leaf is converted once, when minted, and the cache
holds the converted form.

The CA key type is EC P-256 when we generate one: an ECDSA P-256 signature
is far cheaper than an RSA-2048 one (tens of microseconds against about a
millisecond), which is what minting costs, and P-256 roots are accepted by
every current browser, OS trust store, Android and Java.  User-supplied CAs
may be RSA or EC.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import ipaddress
import os
import pathlib
import re
import stat
import time
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import crypto

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CAError",
    "CertificateAuthority",
    "LeafCertificates",
    "default_state_dir",
]

#: File names inside the state directory.
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"

_CA_VALIDITY = datetime.timedelta(days=3650)
# Apple platforms and Chromium reject leaves valid for longer than 398 days;
# 397 leaves a day of margin for clock differences.
_LEAF_VALIDITY = datetime.timedelta(days=397)
# Back-date certificates so a client whose clock runs behind ours accepts them.
_BACKDATE = datetime.timedelta(days=1)
# Re-mint a cached leaf when it has less than this left, so that a proxy that
# runs for a year never serves an expired certificate from its cache.
_RENEW_MARGIN = datetime.timedelta(days=1)
# X.509 upper bound for a commonName (RFC 5280 ub-common-name).
_MAX_CN = 64

# DNS names as they appear in certificates: LDH labels plus underscore (seen
# in real names), optionally with a leading wildcard label, as upstream
# certificates' names may be copied into a leaf.
_DNS_NAME_RE = re.compile(r"(?:\*\.)?[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")

_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class CAError(Exception):
    """The CA cannot be loaded, generated or used; the message says why."""


def default_state_dir() -> pathlib.Path:
    """Return the directory where tinspect keeps its generated CA.

    The first of: ``$TINSPECT_STATE_DIR``; ``$XDG_STATE_HOME/tinspect``
    (the XDG base directory spec ignores a relative ``XDG_STATE_HOME``, and
    so do we); ``~/.local/state/tinspect``.

    Returns:
        The path; it may not exist yet.
    """
    explicit = os.environ.get("TINSPECT_STATE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return pathlib.Path(xdg) / "tinspect"
    return pathlib.Path.home() / ".local" / "state" / "tinspect"


def _spki_der(key) -> bytes:
    """DER SubjectPublicKeyInfo of a public key."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class CertificateAuthority:
    """A CA certificate and its private key, able to sign leaf certificates.

    Build one with :meth:`load`, :meth:`generate` or :meth:`load_or_generate`
    rather than the constructor, which only checks an in-memory pair.

    Attributes:
        cert: The CA certificate (``cryptography.x509.Certificate``).
        key: Its private key (RSA or EC).
        cert_path: Where the certificate was read from or written to, or
            ``None`` for an in-memory CA.
        key_path: Likewise for the private key.
        cert_pem: The certificate in PEM form, to install on clients.
        cert_der: The certificate in DER form (Windows, Android).
        spki_sha256: Base64 of the SHA-256 of the DER SubjectPublicKeyInfo,
            the form Chromium's ``--ignore-certificate-errors-spki-list`` and
            HPKP-style pins use.
        fingerprint_sha256: SHA-256 of the DER certificate as upper-case hex
            pairs separated by colons, as ``openssl x509 -fingerprint`` and
            the browsers' certificate viewers show it.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key: _PrivateKey,
        cert_path: pathlib.Path | None = None,
        key_path: pathlib.Path | None = None,
    ) -> None:
        """Wrap a CA certificate and key, checking that they belong together.

        Args:
            cert: The CA certificate.
            key: Its private key, RSA or EC.
            cert_path: Source file of the certificate, for messages.
            key_path: Source file of the key, for messages.

        Raises:
            CAError: The key is of another type, does not match the
                certificate, or the certificate is not usable as a CA.
        """
        where = str(cert_path) if cert_path else "CA certificate"
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise CAError(
                f"{key_path or 'CA key'}: unsupported key type {type(key).__name__}; "
                "use an RSA or EC key"
            )
        spki = _spki_der(cert.public_key())
        if spki != _spki_der(key.public_key()):
            raise CAError(f"{key_path or 'CA key'}: private key does not match {where}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None  # v1 roots without extensions are still accepted as anchors
        if bc is not None and not bc.ca:
            raise CAError(f"{where}: not a CA certificate (basicConstraints CA:FALSE)")
        now = datetime.datetime.now(datetime.timezone.utc)
        if cert.not_valid_after_utc <= now + _BACKDATE:
            raise CAError(f"{where}: CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")

        self.cert = cert
        self.key = key
        self.cert_path = cert_path
        self.key_path = key_path
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.spki_sha256 = base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")
        digest = hashlib.sha256(self.cert_der).hexdigest().upper()
        self.fingerprint_sha256 = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))

    @property
    def not_before(self) -> datetime.datetime:
        """Start of the CA's validity (aware, UTC)."""
        return self.cert.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        """End of the CA's validity (aware, UTC)."""
        return self.cert.not_valid_after_utc

    @classmethod
    def load(cls, cert_path: str | os.PathLike, key_path: str | os.PathLike) -> CertificateAuthority:
        """Load a CA from a certificate file and a private key file.

        Both may be PEM or DER; the key must be unencrypted.  The key file
        must not be readable or writable by group or others, the same rule
        ssh applies to identity files: a CA key others can read lets them
        impersonate every site to every client that trusts the CA.

        Args:
            cert_path: The CA certificate file.
            key_path: The CA private key file.

        Returns:
            The loaded CA.

        Raises:
            CAError: A file is missing, unreadable, malformed, too open, or
                the pair is not a usable CA; the message names the file.
        """
        cert_path = pathlib.Path(cert_path)
        key_path = pathlib.Path(key_path)
        try:
            st = os.stat(key_path)
        except OSError as e:
            raise CAError(f"{key_path}: cannot read CA key: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            raise CAError(f"{key_path}: CA key is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise CAError(
                f"{key_path}: CA key has mode {mode:04o}, readable or writable by group or "
                f"others; restrict it with: chmod 600 {key_path}"
            )
        cert_data = _read(cert_path, "CA certificate")
        key_data = _read(key_path, "CA key")
        cert = _parse_cert(cert_data, cert_path)
        key = _parse_key(key_data, key_path)
        return cls(cert, key, cert_path, key_path)

    @classmethod
    def generate(
        cls, state_dir: str | os.PathLike, common_name: str = "tinspect CA"
    ) -> CertificateAuthority:
        """Create a new CA and write it to ``state_dir``.

        The key is EC P-256 (see the module docstring for why), the
        certificate is valid for ten years from yesterday, and it may sign
        leaves only (pathlen 0).  ``ca.pem`` is written 0644 and
        ``ca-key.pem`` is created 0600 from the start (``os.open`` with that
        mode), so it is never readable by others, not even briefly.  A state
        directory we create is 0700.  Existing files are never overwritten.

        Args:
            state_dir: Directory to write ``ca.pem`` and ``ca-key.pem`` into.
            common_name: The CA's subject commonName, shown to users when
                they install or inspect the certificate.

        Returns:
            The new CA.

        Raises:
            CAError: The files already exist or cannot be written.
        """
        state_dir = pathlib.Path(state_dir)
        cert_path = state_dir / CA_CERT_FILE
        key_path = state_dir / CA_KEY_FILE
        for path in (cert_path, key_path):
            if os.path.lexists(path):
                raise CAError(f"{path}: already exists; refusing to overwrite an existing CA")
        try:
            state_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                state_dir.mkdir(mode=0o700)
            except FileExistsError:
                pass  # an existing directory's mode is the user's choice
        except OSError as e:
            raise CAError(f"{state_dir}: cannot create state directory: {e.strerror}") from e

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tinspect"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Key first: if we die in between, load_or_generate finds a key
        # without a certificate and says so, instead of a certificate whose
        # key is lost.
        _write_new(key_path, key_pem, 0o600)
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cert, key, cert_path, key_path)

    @classmethod
    def load_or_generate(cls, state_dir: str | os.PathLike) -> CertificateAuthority:
        """Load the CA from ``state_dir``, generating it there on first run.

        Args:
            state_dir: The state directory (see :func:`default_state_dir`).

        Returns:
            The CA.

        Raises:
            CAError: The directory holds a broken or half-written CA (for
                example a key without its certificate), or writing failed.
        """
        state_dir = pathlib.Path(state_dir)
        cert_path = state_dir / CA_CERT_FILE
        key_path = state_dir / CA_KEY_FILE
        has_cert = os.path.lexists(cert_path)
        has_key = os.path.lexists(key_path)
        if has_cert or has_key:
            if not has_cert:
                raise CAError(
                    f"{key_path}: found a CA key without {cert_path.name}; restore "
                    f"{cert_path} or remove {key_path} to generate a new CA"
                )
            return cls.load(cert_path, key_path)
        return cls.generate(state_dir)


def _read(path: pathlib.Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CAError(f"{path}: cannot read {what}: {e.strerror}") from e


def _parse_cert(data: bytes, path: pathlib.Path) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            # A bundle may follow the CA certificate; the first one is ours.
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise CAError(f"{path}: not a PEM or DER certificate ({e})") from e


def _parse_key(data: bytes, path: pathlib.Path) -> _PrivateKey:
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError as e:
        # cryptography raises TypeError for a missing password.
        raise CAError(f"{path}: encrypted CA keys are not supported; decrypt it ({e})") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise CAError(f"{path}: not a PEM or DER private key ({e})") from e


def _write_new(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; never overwrite.

    ``O_EXCL`` refuses an existing file (or a planted symlink), and the mode
    is applied at creation, so there is no window where a key file exists
    with looser permissions.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        raise CAError(f"{path}: cannot create: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise CAError(f"{path}: cannot write: {e.strerror}") from e


def _general_name(name: str) -> tuple[str, x509.GeneralName] | None:
    """Normalise a name and make its SAN entry, or ``None`` if it is neither
    a DNS name nor an IP literal."""
    name = name.strip()
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        if getattr(ip, "scope_id", None):
            return None  # a zone index ("fe80::1%eth0") cannot go in a certificate
        return str(ip), x509.IPAddress(ip)
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if len(name) > 253 or not _DNS_NAME_RE.fullmatch(name):
        return None
    return name, x509.DNSName(name)


class LeafCertificates:
    """Mints leaf certificates signed by a CA, with an LRU cache.

    All leaves share one EC P-256 key pair generated when this object is
    made, so that minting costs a single CA signature.

    Attributes:
        ca: The signing :class:`CertificateAuthority`.
        hits: Number of :meth:`get` calls answered from the cache.
        misses: Number of :meth:`get` calls that minted a leaf.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Create a minter.

        Args:
            ca: The CA that signs the leaves.
            cache_size: How many leaves to keep; the least recently used is
                evicted first.  0 disables caching.
            clock: Returns the current POSIX time; tests pass a fake one.
        """
        self.ca = ca
        self.hits = 0
        self.misses = 0
        self._cache_size = cache_size
        self._clock = clock
        # (name, sorted extra names) -> (pyOpenSSL form, cryptography form,
        # not_after as POSIX time).  Both forms are kept because pyOpenSSL
        # 26 deprecates passing its own X509/PKey to Context.use_certificate
        # and use_privatekey, while this API returns them as agreed; callers
        # can pick either without converting per handshake.
        self._cache: collections.OrderedDict[
            tuple[str, tuple[str, ...]], tuple[crypto.X509, x509.Certificate, float]
        ] = collections.OrderedDict()
        # The names as callers give them -> the cache key they normalise to: a hit (the
        # same SNI and upstream names on every connection) then parses no name and builds
        # no GeneralName (a fifth of a millisecond per connection, profiled). Same bound.
        self._keys: collections.OrderedDict[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...]]] = (
            collections.OrderedDict())
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._pkey = crypto.PKey.from_cryptography_key(self._key)
        leaf_public = self._key.public_key()
        try:
            ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
        # The name-independent part of every leaf, built once.
        self._template = (
            x509.CertificateBuilder()
            .issuer_name(ca.cert.subject)
            .public_key(leaf_public)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_public), critical=False)
            .add_extension(aki, critical=False)
        )

    def __len__(self) -> int:
        """Number of leaves currently cached."""
        return len(self._cache)

    def openssl_key(self) -> crypto.PKey:
        """Return the private key shared by all leaves, in pyOpenSSL form.

        Returns:
            The same ``OpenSSL.crypto.PKey`` on every call.
        """
        return self._pkey

    def cryptography_key(self) -> ec.EllipticCurvePrivateKey:
        """Return the private key shared by all leaves, in cryptography form.

        Returns:
            The same EC P-256 key on every call.
        """
        return self._key

    def get(self, name: str, extra_names: Sequence[str] = ()) -> tuple[crypto.X509, crypto.PKey]:
        """Return a leaf certificate for ``name`` and its private key.

        The subject commonName is ``name`` (left out when longer than 64
        characters, which X.509 does not allow; the SAN carries it anyway).
        The subjectAltName lists ``name`` and then ``extra_names``, each as a
        DNS name or, for IPv4/IPv6 literals, an IP address; duplicates are
        dropped.  Names are lowercased and a trailing dot is removed.  Extra
        names that are neither valid DNS names (wildcards allowed) nor IP
        literals are skipped: they usually come from the upstream
        certificate and one odd entry should not stop interception.

        Args:
            name: The host name (usually the SNI) or IP address (when the
                client sent no SNI).
            extra_names: More names to cover, e.g. those of the upstream
                server's certificate.

        Returns:
            ``(certificate, key)`` as pyOpenSSL objects; the certificate is
            cached and the key is shared (see :meth:`openssl_key`).

        Raises:
            ValueError: ``name`` is neither a DNS name nor an IP literal.
            CAError: The CA expires too soon to issue a valid leaf.
        """
        entry = self._entry(name, extra_names)
        return entry[0], self._pkey

    def get_cryptography(
        self, name: str, extra_names: Sequence[str] = ()
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Like :meth:`get`, but return cryptography objects.

        pyOpenSSL 26 ``Context.use_certificate``/``use_privatekey`` prefer
        these (they warn on pyOpenSSL objects).  Same cache, same counters.

        Args:
            name: As for :meth:`get`.
            extra_names: As for :meth:`get`.

        Returns:
            ``(certificate, key)`` as ``cryptography`` objects.

        Raises:
            ValueError: As for :meth:`get`.
            CAError: As for :meth:`get`.
        """
        entry = self._entry(name, extra_names)
        return entry[1], self._key

    def _entry(
        self, name: str, extra_names: Sequence[str]
    ) -> tuple[crypto.X509, x509.Certificate, float]:
        """Return the cache entry for the names, minting it on a miss."""
        given = (name, tuple(extra_names))
        key = self._keys.get(given)
        if key is not None:
            cached = self._cache.get(key)
            if cached is not None and cached[2] - self._clock() > _RENEW_MARGIN.total_seconds():
                self._keys.move_to_end(given)
                self._cache.move_to_end(key)
                self.hits += 1
                return cached
        primary = _general_name(name)
        if primary is None:
            raise ValueError(f"not a DNS name or IP address: {name!r}")
        sans = {primary[0]: primary[1]}  # dicts keep insertion order: primary first
        for extra in extra_names:
            entry = _general_name(extra)
            if entry is not None and entry[0] not in sans:
                sans[entry[0]] = entry[1]
        key = (primary[0], tuple(sorted(list(sans)[1:])))

        if self._cache_size > 0:
            self._keys[given] = key
            self._keys.move_to_end(given)
            while len(self._keys) > self._cache_size:
                self._keys.popitem(last=False)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[2] - now > _RENEW_MARGIN.total_seconds():
            self._cache.move_to_end(key)
            self.hits += 1
            return cached

        self.misses += 1
        cert, not_after = self._mint(primary[0], list(sans.values()), now)
        entry = (crypto.X509.from_cryptography(cert), cert, not_after)
        if self._cache_size > 0:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return entry

    def _mint(
        self, common_name: str, sans: list[x509.GeneralName], now: float
    ) -> tuple[x509.Certificate, float]:
        """Build and sign one leaf; return it and its expiry as POSIX time."""
        now_dt = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        # Stay inside the CA's validity: some validators check nesting, and
        # a leaf outliving its CA would fail anyway.
        not_before = max(now_dt - _BACKDATE, self.ca.not_before)
        not_after = min(now_dt + _LEAF_VALIDITY, self.ca.not_after - _BACKDATE)
        if not_after <= now_dt:
            raise CAError(f"CA certificate expires on {self.ca.not_after:%Y-%m-%d}; cannot issue leaves")
        if len(common_name) <= _MAX_CN:
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        else:
            subject = x509.Name([])
        cert = (
            self._template.subject_name(subject)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(x509.SubjectAlternativeName(sans), critical=not subject)
            .sign(self.ca.key, hashes.SHA256())
        )
        return cert, not_after.timestamp()
