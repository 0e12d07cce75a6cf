"""Parsing ``--listen [MODE@]ENDPOINT`` and ``--udp SPEC`` (no I/O here).

``--listen``:
    ENDPOINT is a Twisted server endpoint string (``tcp:8080``,
    ``tcp6:8080:interface=\\:\\:1``...) or ours, ``tproxy:PORT[:interface=ADDR]``.
    MODE is ``transparent``, ``explicit`` or ``forward=HOST:PORT``; without
    one it is ``transparent`` for ``tproxy:`` and ``explicit`` otherwise.
    A transparent ``tproxy:`` listener takes the original destination from the
    socket's local address; a transparent listener on any other endpoint is
    meant for ``-j REDIRECT`` and asks conntrack (SO_ORIGINAL_DST).

``--udp``:
    ``tproxy:PORT[:interface=ADDR]`` transparent, or
    ``forward=HOST:PORT@[udp:]PORT[:interface=ADDR]`` fixed upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SpecError", "ListenSpec", "UDPSpec", "parse_listen", "parse_udp", "parse_hostport", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


class SpecError(ValueError):
    """A listen or UDP spec is malformed; the message quotes it."""


@dataclass(frozen=True)
class ListenSpec:
    """A parsed ``--listen`` value.

    Attributes:
        text: the spec as given.
        mode: ``"tproxy"``, ``"redirect"``, ``"forward"`` or ``"explicit"``.
        endpoint: the Twisted endpoint string.
        dst: the fixed destination for ``"forward"``.
    """

    text: str
    mode: str
    endpoint: str
    dst: tuple[str, int] | None = None


@dataclass(frozen=True)
class UDPSpec:
    """A parsed ``--udp`` value.

    Attributes:
        text: the spec as given.
        mode: ``"tproxy"`` or ``"forward"``.
        port: the port to listen on.
        interface: the address to bind (``""`` all IPv4, ``"::"`` IPv6).
        dst: the fixed destination for ``"forward"``.
    """

    text: str
    mode: str
    port: int
    interface: str = ""
    dst: tuple[str, int] | None = None


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``.

    Raises:
        SpecError: malformed, or the port is not 1-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise SpecError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise SpecError(f"{text!r}: write IPv6 addresses in brackets, [2001:db8::1]:80")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError(f"{text!r}: bad port {port!r}")
    return host, int(port)


def _split_mode(text: str) -> tuple[str | None, str]:
    head, sep, tail = text.partition("@")
    if not sep:
        return None, text
    return head, tail


def parse_listen(text: str) -> ListenSpec:
    """Parse one ``--listen`` value.

    Raises:
        SpecError: with the reason.
    """
    mode, endpoint = _split_mode(text.strip())
    if not endpoint:
        raise SpecError(f"{text!r}: no endpoint")
    is_tproxy = endpoint.split(":", 1)[0] == "tproxy"
    if mode is None:
        mode = "transparent" if is_tproxy else "explicit"
    if mode == "transparent":
        return ListenSpec(text, "tproxy" if is_tproxy else "redirect", endpoint)
    if mode == "explicit":
        if is_tproxy:
            raise SpecError(f"{text!r}: an explicit proxy listens on tcp:, not tproxy:")
        return ListenSpec(text, "explicit", endpoint)
    if mode.startswith("forward="):
        return ListenSpec(text, "forward", endpoint, parse_hostport(mode[len("forward="):]))
    raise SpecError(f"{text!r}: unknown mode {mode!r} (transparent, explicit or forward=HOST:PORT)")


def parse_udp(text: str) -> UDPSpec:
    """Parse one ``--udp`` value.

    Raises:
        SpecError: with the reason.
    """
    mode, rest = _split_mode(text.strip())
    fields = rest.split(":")
    kind = fields[0]
    if kind in ("tproxy", "udp"):
        fields = fields[1:]
    elif mode is None:
        raise SpecError(f"{text!r}: use tproxy:PORT or forward=HOST:PORT@PORT")
    if kind == "tproxy" and mode is not None:
        raise SpecError(f"{text!r}: tproxy: takes no mode")
    if not fields or not fields[0].isdigit() or not 0 < int(fields[0]) < 65536:
        raise SpecError(f"{text!r}: bad or missing port")
    port = int(fields[0])
    interface = ""
    for option in _rejoin_escaped(fields[1:]):
        key, sep, value = option.partition("=")
        if key != "interface" or not sep:
            raise SpecError(f"{text!r}: unknown option {option!r} (only interface=ADDR)")
        interface = value
    if kind == "tproxy":
        return UDPSpec(text, "tproxy", port, interface)
    if mode is None or not mode.startswith("forward="):
        raise SpecError(f"{text!r}: a UDP listener is tproxy:PORT or forward=HOST:PORT@PORT")
    return UDPSpec(text, "forward", port, interface, parse_hostport(mode[len("forward="):]))


def _rejoin_escaped(fields: list[str]) -> list[str]:
    """Undo splitting on escaped colons (``interface=\\:\\:1``), as endpoint strings do."""
    out: list[str] = []
    for field in fields:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + ":" + field
        else:
            out.append(field)
    return out
