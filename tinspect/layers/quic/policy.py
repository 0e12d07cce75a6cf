"""Sans-IO QUIC policy: hold a connection's first datagrams, decide pass or refuse, strip h3 adverts.

tinspect does not decrypt QUIC (phase 1 of QUIC support): it reads the name
from a connection's Initial packets (:mod:`tinspect.layers.quic.initial`)
and either relays the connection untouched or refuses it, so that the
browser falls back to TCP, where the proxy inspects it.

* :class:`QuicStart` holds the client's first datagrams of one connection,
  bounded in count, bytes (and, by its caller, time), until the reader has
  the ClientHello or gives up; either way nothing is forwarded before the
  decision.
* :class:`QuicPolicy` is that decision: the taps first (``Tap.quic_decision``:
  the filter tap's host rules), then ``--passthrough`` patterns (a host
  whose TLS the admin relays untouched may use QUIC too), then ``--quic``
  (``refuse``, the default, or ``pass``).
* :func:`without_h3` removes HTTP/3 entries from an ``Alt-Svc`` field value,
  which the HTTP layers apply to intercepted responses unless QUIC passes
  for their host: a browser told nothing about h3 stops trying QUIC where it
  would be refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tinspect.layers.quic.initial import (
    VERSION_1,
    VERSION_2,
    InitialError,
    NeedMore,
    NotInitial,
    QuicHello,
    QuicInitialReader,
    UnknownVersion,
    VersionNegotiation,
)
from tinspect.layers.tls.policy import PassthroughPolicy

__all__ = [
    "MAX_HELD_BYTES",
    "MAX_HELD_DATAGRAMS",
    "PASS",
    "REFUSE",
    "QuicPolicy",
    "QuicStart",
    "Unreadable",
    "Verdict",
    "version_name",
    "without_h3",
]

PASS, REFUSE = "pass", "refuse"

MAX_HELD_DATAGRAMS = 16
"""The most datagrams of one connection held before its ClientHello is whole.

Chromium's hello with post-quantum key shares takes two or three datagrams;
the rest of the allowance is for duplicates and coalesced strays.
"""
MAX_HELD_BYTES = 32 * 1024
"""The most bytes of one connection held before its ClientHello is whole."""


def version_name(version: int | None) -> str:
    """A short, bounded label for a QUIC version: ``v1``, ``v2``, ``other``, or ``unknown`` (no long header)."""
    if version is None:
        return "unknown"
    return {VERSION_1: "v1", VERSION_2: "v2"}.get(version, "other")


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The name of a connection could not be read; the policy decides without it.

    Attributes:
        kind: A short, bounded label for the metrics: ``not_quic``,
            ``unknown_version``, ``version_negotiation``, ``malformed``,
            ``too_many_datagrams``, ``too_many_bytes`` or ``timeout``.
        reason: The reason in words, for the log line.
        version: The QUIC version of the long header, when there was one.
    """

    kind: str
    reason: str
    version: int | None = None


class QuicStart:
    """One QUIC connection's first datagrams, held until its ClientHello is read.

    Feed it the client's datagrams in arrival order; :attr:`held` keeps them
    to be forwarded (in order) if the connection passes.  The caller bounds
    the time by calling :meth:`give_up` when its timer fires.

    Args:
        max_datagrams: The most datagrams to hold.
        max_bytes: The most bytes to hold.
    """

    __slots__ = ("held", "_bytes", "_reader", "_max_datagrams", "_max_bytes", "_version")

    def __init__(self, max_datagrams: int = MAX_HELD_DATAGRAMS, max_bytes: int = MAX_HELD_BYTES) -> None:
        self.held: list[bytes] = []
        self._bytes = 0
        self._reader = QuicInitialReader()
        self._max_datagrams = max_datagrams
        self._max_bytes = max_bytes
        self._version: int | None = None

    def feed(self, datagram: bytes) -> QuicHello | Unreadable | None:
        """Hold one datagram and read it.

        Returns:
            The hello once whole, an :class:`Unreadable` when the reader (or a
            bound) gives up, ``None`` while more datagrams are needed.
        """
        self.held.append(datagram)
        self._bytes += len(datagram)
        if self._version is None and len(datagram) >= 5 and datagram[0] & 0x80:
            self._version = int.from_bytes(datagram[1:5], "big")
        result = self._reader.feed(datagram)
        if isinstance(result, QuicHello):
            return result
        if isinstance(result, NeedMore):
            if len(self.held) >= self._max_datagrams:
                return Unreadable("too_many_datagrams", f"no whole ClientHello in {len(self.held)} datagrams",
                                  self._version)
            if self._bytes >= self._max_bytes:
                return Unreadable("too_many_bytes", f"no whole ClientHello in {self._bytes} bytes", self._version)
            return None
        if isinstance(result, NotInitial):
            return Unreadable("not_quic", f"not a QUIC Initial ({result.reason})")
        if isinstance(result, UnknownVersion):
            return Unreadable("unknown_version", f"QUIC version 0x{result.version:08x}, which cannot be read",
                              result.version)
        if isinstance(result, VersionNegotiation):
            return Unreadable("version_negotiation", "a Version Negotiation packet from the client side", 0)
        assert isinstance(result, InitialError)
        return Unreadable("malformed", result.reason, self._version)

    def give_up(self, seconds: float) -> Unreadable:
        """The time allowed is over: the reason, for a connection still incomplete."""
        return Unreadable("timeout", f"no whole ClientHello within {seconds:g}s ({len(self.held)} datagrams)",
                          self._version)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one QUIC connection.

    Attributes:
        action: :data:`PASS` or :data:`REFUSE`.
        why: Who decided, for the log line (``"--quic refuse"``, ``"tap filter"``...).
    """

    action: str
    why: str

    @property
    def passes(self) -> bool:
        """Whether the connection is relayed."""
        return self.action == PASS


class QuicPolicy:
    """Decides, per host, whether QUIC connections pass or are refused (sans-IO).

    Args:
        default: ``--quic``: :data:`REFUSE` or :data:`PASS`.
        passthrough: The ``--passthrough`` patterns; a host they match passes.

    Raises:
        ValueError: An unknown ``default`` or an empty pattern.
    """

    def __init__(self, default: str = REFUSE, passthrough: Iterable[str] = ()) -> None:
        if default not in (PASS, REFUSE):
            raise ValueError(f"--quic must be refuse or pass, not {default!r}")
        self.default = default
        self._passthrough = PassthroughPolicy(passthrough)

    def decide(self, name: str | None, ip: str, chain: Any, flow: Any) -> Verdict:
        """The verdict for a connection to ``name`` (its SNI; ``None`` when unread) at ``ip``.

        Args:
            name: The server name, or ``None``: the taps are then asked with ``ip``.
            ip: The original destination address.
            chain: The proxy's `TapChain`, whose ``quic_decision`` asks the taps.
            flow: The flow the taps get.
        """
        answer = chain.quic_decision(name or ip, flow)
        if answer is not None:
            tap, passes = answer
            return Verdict(PASS if passes else REFUSE, f"tap {tap}")
        if self._passthrough.should_pass(name, ip):
            return Verdict(PASS, "--passthrough")
        return Verdict(self.default, f"--quic {self.default}")

    def strip_alt_svc(self, headers: Any, request: Any, chain: Any, flow: Any) -> bool:
        """Remove the h3 entries of a response's ``Alt-Svc`` fields, unless QUIC passes for the host.

        Called by the HTTP layers on every intercepted response, before the
        taps see it; costs one lookup when there is no ``Alt-Svc``.

        Args:
            headers: The response's `Headers` (changed in place).
            request: The `tinspect.units.Request` it answers: QUIC is decided for its host.
            chain, flow: What the taps are asked with.

        Returns:
            Whether anything was removed.
        """
        values = headers.get_all(b"alt-svc")
        if not values:
            return False
        host = request.host
        if not any(_has_h3(value) for value in values) or self.decide(host, host, chain, flow).passes:
            return False
        headers.remove("alt-svc")
        for value in values:
            kept = without_h3(value)
            if kept is not None:
                headers.add("Alt-Svc", kept)
        return True


def _split_commas(value: str) -> list[str]:
    """Split a field value at commas outside quoted strings (RFC 9110 section 5.6.4)."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            parts.append(value[start:i])
            start = i + 1
    parts.append(value[start:])
    return parts


def _is_h3(protocol_id: str) -> bool:
    # h3, and the drafts' h3-29 ... that older servers still advertise; also gQUIC's "quic".
    pid = protocol_id.strip().lower()
    return pid == "h3" or pid.startswith("h3-") or pid == "quic"


def _has_h3(value: str) -> bool:
    return any(_is_h3(entry.split("=", 1)[0]) for entry in _split_commas(value) if entry.strip())


def without_h3(value: str) -> str | None:
    """An ``Alt-Svc`` field value without its HTTP/3 alternatives (RFC 7838).

    Entries are ``protocol-id=alt-authority; params`` separated by commas;
    those whose protocol-id is ``h3`` (or a draft's ``h3-NN``) go, the others
    stay as they were written.  ``clear`` stays.

    Returns:
        What is left, or ``None`` when nothing is (drop the field).
    """
    kept = [entry.strip() for entry in _split_commas(value)
            if entry.strip() and not _is_h3(entry.split("=", 1)[0])]
    return ", ".join(kept) or None
