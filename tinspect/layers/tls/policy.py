"""TLS interception policy, without I/O: passthrough rules and client failures.

* :class:`PassthroughPolicy`: which connections keep their TLS untouched
  (``--passthrough PATTERN``), and which hosts to stop intercepting after a
  client rejected our certificate (pinned apps; ``--passthrough-rejected``).
* :class:`HostPatterns`: host patterns (names, globs, IPs, CIDRs), shared with
  :class:`ClientCertificate` (``--client-cert PATTERN=CERT.pem[,KEY.pem]``).
* :func:`classify_client_failure`: did the client reject our certificate, or
  just go away?  Also the short reason strings the TLS layer logs.

The handshakes themselves are in ``tinspect/layers/tls/handshake.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import fnmatch
import ipaddress
import re
from collections.abc import Iterable

from OpenSSL import SSL

from tinspect.net.addresses import canonical_host, is_ip

__all__ = [
    "ClientCertificate",
    "ClientFailure",
    "ClientFailureKind",
    "HostPatterns",
    "PassthroughPolicy",
    "classify_client_failure",
    "describe_error",
]


class PassthroughPolicy:
    """Decides which connections keep their TLS untouched (sans-IO).

    Patterns are `HostPatterns`; give IDNs in ``xn--`` form, as
    SNI carries them.  In learning mode, hosts whose clients rejected our
    certificate (pinned apps, clients without our CA) pass through from then
    on; they are kept in memory only, in an LRU of ``max_learned`` entries.
    """

    def __init__(self, patterns: Iterable[str] = (), *, learn: bool = False, max_learned: int = 4096) -> None:
        """Parse the ``--passthrough`` patterns.

        Raises:
            ValueError: An empty pattern.
        """
        self.learn = learn
        self._max_learned = max_learned
        self._patterns = HostPatterns(patterns, what="passthrough")
        self._learned: collections.OrderedDict[str, None] = collections.OrderedDict()

    @property
    def learned(self) -> list[str]:
        """Learned hosts, least recently seen first."""
        return list(self._learned)

    def should_pass(self, host: str | None, ip: str | None = None) -> bool:
        """Whether to relay this connection's TLS untouched.

        Args:
            host: The SNI, or ``None``.
            ip: The original destination address; checked like ``host``.
        """
        for candidate in (host, ip):
            if not candidate:
                continue
            norm = canonical_host(candidate)
            if norm in self._learned:
                self._learned.move_to_end(norm)
                return True
            if self._patterns.match_normalized(norm):
                return True
        return False

    def record_rejection(self, host: str) -> bool:
        """Note that a client rejected our certificate for ``host`` (SNI, else IP).

        Returns:
            ``True`` if the host is newly learned (log it once); ``False`` if
            learning is off or the host was known.
        """
        return self.learn and self.learn_host(host)

    def learn_host(self, host: str) -> bool:
        """Pass ``host`` (SNI, else IP) through from now on, whatever made us learn it
        (a rejected certificate, a server asking for a client certificate we lack).

        Returns:
            ``True`` if the host is newly learned (log it once); ``False`` if
            it was known or nothing is kept (``max_learned`` 0).
        """
        if self._max_learned <= 0:
            return False
        norm = canonical_host(host)
        known = norm in self._learned
        self._learned[norm] = None
        self._learned.move_to_end(norm)
        while len(self._learned) > self._max_learned:
            self._learned.popitem(last=False)
        return not known


class HostPatterns:
    """A set of host patterns, matched against a server name or address (sans-IO).

    Patterns are exact names (``api.example``), fnmatch globs
    (``*.bank.example`` matches any depth below, not the apex; ``?`` and
    ``[...]`` work too), IP literals or CIDR networks. Names compare
    case-insensitively without a trailing dot.

    Args:
        patterns: the patterns.
        what: what they are for, in the error message.

    Raises:
        ValueError: An empty pattern.
    """

    def __init__(self, patterns: Iterable[str], what: str = "host") -> None:
        self._exact: set[str] = set()
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        globs = []
        for pattern in patterns:
            norm = canonical_host(pattern)
            if not norm:
                raise ValueError(f"empty {what} pattern: {pattern!r}")
            try:
                self._networks.append(ipaddress.ip_network(norm, strict=False))
            except ValueError:
                if any(c in norm for c in "*?["):
                    globs.append(fnmatch.translate(norm))
                else:
                    self._exact.add(norm)
        self._glob = re.compile("|".join(globs)) if globs else None

    def match(self, *candidates: str | None) -> bool:
        """Whether any of ``candidates`` (names or IP literals; ``None`` skipped) matches."""
        return any(c and self.match_normalized(canonical_host(c)) for c in candidates)

    def match_normalized(self, norm: str) -> bool:
        """`match` for one host already in `canonical_host` form."""
        if norm in self._exact or (self._glob is not None and self._glob.match(norm)):
            return True
        if self._networks and is_ip(norm):
            addr = ipaddress.ip_address(norm)
            return any(addr in net for net in self._networks)
        return False


@dataclasses.dataclass(frozen=True)
class ClientCertificate:
    """One ``--client-cert PATTERN=CERT.pem[,KEY.pem]``: the certificate presented
    to servers matching ``pattern`` when they ask for one.

    Attributes:
        pattern: a host pattern (as `HostPatterns` reads it).
        cert: the PEM file holding the certificate (then any intermediates).
        key: the PEM file of its private key (``cert`` itself when not given).
        patterns: the parsed pattern.
    """

    pattern: str
    cert: str
    key: str
    patterns: HostPatterns = dataclasses.field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> ClientCertificate:
        """Read ``PATTERN=CERT.pem[,KEY.pem]``.

        Raises:
            ValueError: malformed, with the text quoted.
        """
        pattern, sep, files = text.partition("=")
        cert, _, key = files.partition(",")
        if not sep or not pattern.strip() or not cert.strip():
            raise ValueError(f"{text!r}: expected PATTERN=CERT.pem[,KEY.pem]")
        pattern, cert = pattern.strip(), cert.strip()
        return cls(pattern, cert, key.strip() or cert, HostPatterns([pattern], what="client certificate"))


class ClientFailureKind(enum.Enum):
    """How a client-facing handshake ended without success."""

    REJECTED_CERTIFICATE = "rejected-certificate"  # an alert about our certificate
    ALERT = "alert"  # another alert: no common version or cipher, ...
    CLOSED = "closed"  # the client went away without an alert
    ERROR = "error"  # not TLS at all, or a local error


@dataclasses.dataclass(frozen=True)
class ClientFailure:
    """The outcome of :func:`classify_client_failure`.

    Attributes:
        kind: The category.
        reason: Short human text, e.g. ``"client alert: unknown ca"``.
    """

    kind: ClientFailureKind
    reason: str

    @property
    def rejected_certificate(self) -> bool:
        """Whether the client rejected our certificate."""
        return self.kind is ClientFailureKind.REJECTED_CERTIFICATE


# Alert descriptions (RFC 8446 section 6.2) that mean "not your certificate".
# OpenSSL spells them "tlsv1 alert unknown ca", "sslv3 alert bad certificate".
_CERTIFICATE_ALERTS = frozenset({
    "bad certificate", "unsupported certificate", "certificate revoked", "certificate expired",
    "certificate unknown", "unknown ca",
})  # fmt: skip
_ALERT_RE = re.compile(r"alert ([a-z ]+|number \d+)$")
# twisted.internet.error classes for "went away", by name to stay Twisted-free.
_CLOSED_NAMES = frozenset({"ConnectionDone", "ConnectionLost", "ConnectionAborted"})


def _ssl_reasons(error: SSL.Error) -> list[str]:
    """OpenSSL's reason strings from an ``SSL.Error([(lib, func, reason), ...])``."""
    first = error.args[0] if error.args else None
    if isinstance(first, list):
        return [str(item[-1]) for item in first if isinstance(item, tuple) and item]
    return [str(a) for a in error.args]


def describe_error(error: BaseException) -> str:
    if isinstance(error, SSL.Error) and not isinstance(error, (SSL.SysCallError, SSL.ZeroReturnError)):
        return "; ".join(_ssl_reasons(error)) or "TLS error"
    return str(error) or type(error).__name__


def classify_client_failure(error: BaseException | object) -> ClientFailure:
    """Tell why a client-facing handshake failed.

    Pinned apps and clients without our CA abort the handshake with an alert
    about the certificate; :attr:`ClientFailure.rejected_certificate` says so
    and :meth:`PassthroughPolicy.record_rejection` can learn from it.  Some
    pinned clients (OkHttp's ``CertificatePinner``) instead finish the
    handshake and close without a request; that cannot be seen here.

    Args:
        error: The exception from the handshake, or the Twisted ``Failure``
            that ``connectionLost`` got.
    """
    error = getattr(error, "value", error)
    if isinstance(error, (SSL.ZeroReturnError, SSL.SysCallError)):
        return ClientFailure(ClientFailureKind.CLOSED, f"client closed the connection during the handshake ({error})")
    if isinstance(error, SSL.Error):
        reasons = _ssl_reasons(error)
        for reason in reasons:
            match = _ALERT_RE.search(reason)
            if match:
                alert = match.group(1)
                rejected = alert in _CERTIFICATE_ALERTS
                kind = ClientFailureKind.REJECTED_CERTIFICATE if rejected else ClientFailureKind.ALERT
                return ClientFailure(kind, f"client alert: {alert}")
        if any("unexpected eof" in r for r in reasons):
            return ClientFailure(ClientFailureKind.CLOSED, "client closed the connection during the handshake")
    elif isinstance(error, (ConnectionError, EOFError)) or type(error).__name__ in _CLOSED_NAMES:
        return ClientFailure(ClientFailureKind.CLOSED, f"client went away during the handshake ({error})")
    return ClientFailure(ClientFailureKind.ERROR, describe_error(error))
