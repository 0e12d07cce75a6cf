"""Sans-IO parent proxies: ``--upstream-proxy`` URLs and rules, the CONNECT and SOCKS5 dialogues.

A gateway in a company rarely reaches servers itself: it goes on through a
parent proxy. This module holds everything about that which is not I/O:

- `ParentProxy`, one parent parsed from ``http://``, ``https://``, ``socks5://`` or
  ``socks5h://`` URL, its credentials kept out of every ``str``/``repr`` (`ParentProxy.display`);
- `ParentRules`, the ordered ``URL [for PATTERN,...]`` rules (first match wins, ``direct``
  a target), which say which parent, if any, a destination goes through;
- `connect_request` and `ConnectReplyReader`, the HTTP ``CONNECT`` dialogue, and
  `proxy_fields` for plain HTTP sent to an HTTP parent as absolute-form requests;
- `Socks5Dialogue`, the SOCKS5 client (RFC 1928) with username/password
  authentication (RFC 1929) as a small state machine: bytes in, bytes out.

Each refusal is a `ParentRefused` whose message names the parent (masked) and what it
answered; the Twisted side (`tinspect.net.via_parent`) turns it into the flow's failure.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from tinspect.net.addresses import is_ip

__all__ = [
    "ParentProxy",
    "ParentRule",
    "ParentRules",
    "ParentRefused",
    "ParentUnreachable",
    "connect_request",
    "proxy_fields",
    "ConnectReplyReader",
    "Socks5Dialogue",
    "DIRECT",
]

DIRECT = "direct"
"""The target of a rule that sends matching destinations straight to the server."""

_DEFAULT_PORTS = {"http": 8080, "https": 443, "socks5": 1080, "socks5h": 1080}

MAX_REPLY_HEAD = 16384
"""The most bytes of a CONNECT reply head we read before calling the parent broken."""


class ParentRefused(Exception):
    """The parent refused, failed authentication or spoke nonsense.

    Attributes:
        parent: the parent's masked URL.
        answer: what it said, in plain words (``"407 Proxy Authentication Required"``).
        auth: the refusal is about the credentials (407, SOCKS5 authentication).
    """

    def __init__(self, parent: str, answer: str, auth: bool = False) -> None:
        super().__init__(self._message(parent, answer))
        self.parent = parent
        self.answer = answer
        self.auth = auth

    @staticmethod
    def _message(parent: str, answer: str) -> str:
        return f"parent proxy {parent} answered: {answer}"


class ParentUnreachable(ParentRefused):
    """The parent could not be reached, or did not answer: ``answer`` says why."""

    @staticmethod
    def _message(parent: str, answer: str) -> str:
        return f"parent proxy {parent}: {answer}"


@dataclass(frozen=True, slots=True)
class ParentProxy:
    """One parent proxy (see `ParentProxy.parse`).

    Attributes:
        scheme: ``http``, ``https`` (TLS to the parent), ``socks5`` (names resolved
            here) or ``socks5h`` (names resolved by the parent).
        host: the parent's host name or IP literal.
        port: its port.
        username: for Basic (HTTP) or RFC 1929 (SOCKS5) authentication, or ``None``.
        password: its password (never shown: `display`, ``repr``).
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> "ParentProxy":
        """Parse ``SCHEME://[USER[:PASSWORD]@]HOST[:PORT]`` (user and password percent-encoded).

        Raises:
            ValueError: not such a URL; the message masks the password.
        """
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise ValueError(f"parent proxy {_mask(url)!r}: {e}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"parent proxy {_mask(url)!r}: the scheme must be http, https, socks5 or socks5h")
        if not parts.hostname:
            raise ValueError(f"parent proxy {_mask(url)!r}: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"parent proxy {_mask(url)!r}: a proxy URL has no path, query or fragment")
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if scheme.startswith("socks5") and user is not None:
            if len(user.encode()) > 255 or len((password or "").encode()) > 255:
                raise ValueError(f"parent proxy {_mask(url)!r}: SOCKS5 user names and passwords are 255 bytes at most")
        return cls(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme], user or None, password)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` to connect to."""
        return self.host, self.port

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks5")

    @property
    def display(self) -> str:
        """The URL with the password masked: what logs and pages show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        cred = f"{self.username}:***@" if self.username is not None else ""
        return f"{self.scheme}://{cred}{host}:{self.port}"

    def __str__(self) -> str:
        return self.display

    @property
    def takes_absolute_form(self) -> bool:
        """Plain HTTP can go to it as absolute-form requests (an ``http://`` parent)."""
        return self.scheme == "http"

    def basic_credentials(self) -> bytes | None:
        """The ``Proxy-Authorization`` value for an HTTP parent, or ``None`` without a user."""
        if self.username is None:
            return None
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode())
        return b"Basic " + token


def _mask(url: str) -> str:
    """``url`` with whatever stands between ``:`` and ``@`` in its authority masked."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


@dataclass(frozen=True, slots=True)
class ParentRule:
    """``target`` (a parent, or ``None`` for ``direct``) for destinations matching ``patterns``
    (every destination when there are none)."""

    target: ParentProxy | None
    patterns: tuple[str, ...] = ()

    def matches(self, host: str) -> bool:
        """Whether ``host`` (a name or IP literal) is one this rule is for."""
        if not self.patterns:
            return True
        name = host.lower().rstrip(".")
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            ip = None
        for pattern in self.patterns:
            if "/" in pattern or is_ip(pattern):
                if ip is not None and ip in ipaddress.ip_network(pattern, strict=False):
                    return True
            elif ip is None and fnmatch.fnmatchcase(name, pattern):
                return True
        return False


class ParentRules:
    """The ``--upstream-proxy`` rules in order: which parent a destination goes through.

    Each rule is ``URL`` or ``URL for PATTERN[,PATTERN...]``, where URL may be
    ``direct``; a PATTERN is a host name, an fnmatch glob (``*.corp.example``, which
    matches the names below ``corp.example``), an IP address or a network
    (``10.0.0.0/8``). The first rule that matches wins; a destination no rule
    matches goes direct.

    Args:
        specs: the rules, as given.

    Raises:
        ValueError: a rule cannot be parsed; the message masks passwords.
    """

    def __init__(self, specs: list[str] | tuple[str, ...] = ()) -> None:
        self.rules = tuple(self.parse_rule(s) for s in specs)

    def __bool__(self) -> bool:
        return any(rule.target is not None for rule in self.rules)

    @staticmethod
    def parse_rule(spec: str) -> ParentRule:
        """One rule (see the class docstring)."""
        words = spec.split(None, 2)
        if not words:
            raise ValueError("--upstream-proxy: empty rule")
        url, patterns = words[0], ()
        if len(words) > 1:
            if words[1] != "for" or len(words) < 3:
                raise ValueError(f"--upstream-proxy {_mask(spec)!r}: expected 'URL for PATTERN[,PATTERN...]'")
            patterns = tuple(p.strip().lower().rstrip(".") for p in words[2].split(",") if p.strip())
            if not patterns:
                raise ValueError(f"--upstream-proxy {_mask(spec)!r}: no pattern after 'for'")
            for p in patterns:
                if "/" in p:
                    try:
                        ipaddress.ip_network(p, strict=False)
                    except ValueError:
                        raise ValueError(f"--upstream-proxy {_mask(spec)!r}: {p!r} is not a network") from None
        target = None if url.lower() == DIRECT else ParentProxy.parse(url)
        return ParentRule(target, patterns)

    def choose(self, host: str) -> ParentProxy | None:
        """The parent ``host`` goes through, or ``None`` for a direct connection."""
        for rule in self.rules:
            if rule.matches(host):
                return rule.target
        return None


def _authority(host: str, port: int) -> bytes:
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("idna" if not is_ip(host) else "ascii")


def proxy_fields(parent: ParentProxy) -> list[tuple[bytes, bytes]]:
    """The header fields an absolute-form request to ``parent`` carries (its credentials)."""
    credentials = parent.basic_credentials()
    return [(b"Proxy-Authorization", credentials)] if credentials is not None else []


def connect_request(parent: ParentProxy, host: str, port: int) -> bytes:
    """The ``CONNECT host:port`` request asking ``parent`` for a tunnel (with Basic credentials)."""
    authority = _authority(host, port)
    lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
    lines += [name + b": " + value for name, value in proxy_fields(parent)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


class ConnectReplyReader:
    """Reads an HTTP parent's reply to ``CONNECT`` until the end of its head.

    `feed` answers ``None`` until the head is complete, then the bytes after it
    (the tunnel's first bytes, usually none) when the status is 2xx; it raises
    `ParentRefused` for any other status (naming it) or a malformed head.

    Args:
        parent: the parent's masked URL, for messages.
    """

    def __init__(self, parent: str) -> None:
        self._parent = parent
        self._buf = b""

    def feed(self, data: bytes) -> bytes | None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_REPLY_HEAD:
                raise ParentRefused(self._parent, "a reply head longer than 16 KiB")
            return None
        head, rest = self._buf[:end], self._buf[end + 4:]
        status_line = head.split(b"\r\n", 1)[0]
        m = re.fullmatch(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\x20-\x7e\t]*))?", status_line)
        if m is None:
            raise ParentRefused(self._parent, f"not an HTTP reply: {status_line[:80]!r}")
        status = int(m.group(1))
        reason = (m.group(2) or b"").decode("ascii").strip()
        if not 200 <= status < 300:
            raise ParentRefused(self._parent, f"{status} {reason}".strip(), auth=status == 407)
        return rest

    def close(self) -> None:
        """The parent closed the connection before its reply was complete."""
        raise ParentRefused(self._parent, "closed the connection before answering CONNECT")


_SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class Socks5Dialogue:
    """The client side of a SOCKS5 CONNECT (RFC 1928), with RFC 1929 authentication.

    Theory of operation: `start` gives the greeting (the methods offered: no
    authentication, and username/password when the parent has a user). Each
    `feed` of the parent's bytes answers ``(to_send, rest)``: bytes to write to
    the parent now, and, once the reply to CONNECT has come, the bytes after
    it (``rest`` is ``None`` until then). Any refusal raises `ParentRefused`.

    Args:
        parent: the parent (its credentials, its masked URL).
        host: the destination, a name (sent as such: ``socks5h``, or what the
            caller resolved for ``socks5``) or an IP literal.
        port: the destination port.
    """

    _GREETING, _AUTH, _REPLY, _DONE = range(4)

    def __init__(self, parent: ParentProxy, host: str, port: int) -> None:
        self._parent = parent
        self._host = host
        self._port = port
        self._state = self._GREETING
        self._buf = b""

    def start(self) -> bytes:
        """The greeting to send first."""
        methods = b"\x00\x02" if self._parent.username is not None else b"\x00"
        return b"\x05" + bytes([len(methods)]) + methods

    def _refuse(self, answer: str, auth: bool = False) -> ParentRefused:
        return ParentRefused(self._parent.display, answer, auth)

    def _request(self) -> bytes:
        try:
            ip = ipaddress.ip_address(self._host)
        except ValueError:
            name = self._host.encode("idna")
            if len(name) > 255:
                raise self._refuse("the host name is too long for SOCKS5") from None
            address = b"\x03" + bytes([len(name)]) + name
        else:
            address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
        return b"\x05\x01\x00" + address + self._port.to_bytes(2, "big")

    def feed(self, data: bytes) -> tuple[bytes, bytes | None]:
        """Take the parent's bytes (see the class docstring)."""
        self._buf += data
        out = b""
        while True:
            if self._state == self._GREETING:
                if len(self._buf) < 2:
                    return out, None
                version, method = self._buf[0], self._buf[1]
                self._buf = self._buf[2:]
                if version != 5:
                    raise self._refuse(f"not SOCKS5 (version {version})")
                if method == 0:
                    out += self._request()
                    self._state = self._REPLY
                elif method == 2 and self._parent.username is not None:
                    user = self._parent.username.encode()
                    password = (self._parent.password or "").encode()
                    out += b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password
                    self._state = self._AUTH
                elif method == 0xFF:
                    raise self._refuse("no acceptable authentication method"
                                       + ("" if self._parent.username else " (it wants a user name and password)"),
                                       auth=True)
                else:
                    raise self._refuse(f"chose authentication method {method}, which was not offered")
            elif self._state == self._AUTH:
                if len(self._buf) < 2:
                    return out, None
                status = self._buf[1]
                self._buf = self._buf[2:]
                if status != 0:
                    raise self._refuse("user name/password authentication failed", auth=True)
                out += self._request()
                self._state = self._REPLY
            elif self._state == self._REPLY:
                if len(self._buf) < 5:
                    return out, None
                version, reply, atyp = self._buf[0], self._buf[1], self._buf[3]
                if version != 5:
                    raise self._refuse(f"not a SOCKS5 reply (version {version})")
                if reply != 0:
                    raise self._refuse(f"SOCKS5 reply {reply}: {_SOCKS_REPLIES.get(reply, 'unknown error')}")
                if atyp == 1:
                    size = 4 + 4 + 2
                elif atyp == 4:
                    size = 4 + 16 + 2
                elif atyp == 3:
                    size = 4 + 1 + self._buf[4] + 2
                else:
                    raise self._refuse(f"a SOCKS5 reply with address type {atyp}")
                if len(self._buf) < size:
                    return out, None
                rest, self._buf = self._buf[size:], b""
                self._state = self._DONE
                return out, rest
            else:
                raise RuntimeError("the SOCKS5 dialogue is over")

    def close(self) -> None:
        """The parent closed the connection before the dialogue ended."""
        raise self._refuse("closed the connection during the SOCKS5 handshake")
