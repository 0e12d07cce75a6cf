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

from tinspect.net.addresses import host_port

__all__ = ["SpecError", "ListenSpec", "UDPSpec", "parse_listen", "parse_udp", "parse_hostport", "split_endpoint", "DEFAULT_LISTEN"]

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

    @property
    def tls(self) -> bool:
        """Whether the endpoint speaks TLS to its clients first (``ssl:``): with the
        explicit mode, an HTTPS proxy listener."""
        return self.endpoint.split(":", 1)[0] == "ssl"


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
    """Parse ``HOST:PORT`` or ``[V6]:PORT`` (`tinspect.net.addresses.host_port`, port required).

    Raises:
        SpecError: malformed, or the port is not 1-65535.
    """
    try:
        return host_port(text, None)
    except ValueError as e:
        raise SpecError(str(e)) from None


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
    kind, _, tail = rest.partition(":")
    if kind in ("tproxy", "udp"):
        rest = tail
    elif mode is None:
        raise SpecError(f"{text!r}: use tproxy:PORT or forward=HOST:PORT@PORT")
    if kind == "tproxy" and mode is not None:
        raise SpecError(f"{text!r}: tproxy: takes no mode")
    try:
        args, options = split_endpoint(rest)
    except ValueError as e:
        raise SpecError(f"{text!r}: {e}") from None
    if not args[0].isdigit() or not 0 < int(args[0]) < 65536:
        raise SpecError(f"{text!r}: bad or missing port")
    port = int(args[0])
    unknown = args[1:] + [key for key in options if key != "interface"]
    if unknown:
        raise SpecError(f"{text!r}: unknown option {unknown[0]!r} (only interface=ADDR)")
    interface = options.get("interface", "")
    if kind == "tproxy":
        return UDPSpec(text, "tproxy", port, interface)
    if mode is None or not mode.startswith("forward="):
        raise SpecError(f"{text!r}: a UDP listener is tproxy:PORT or forward=HOST:PORT@PORT")
    return UDPSpec(text, "forward", port, interface, parse_hostport(mode[len("forward="):]))


def split_endpoint(text: str) -> tuple[list[str], dict[str, str]]:
    """The positional and ``key=value`` fields of an endpoint string's
    arguments (what follows its type), split as Twisted's
    ``serverFromString`` splits them: on ``:``, the first unescaped ``=``
    of a field separating key from value, a backslash taking the next
    character literally (``interface=\\:\\:``).

    Raises:
        ValueError: the text ends with a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    field: list[str] = []
    equals = -1  # where the first unescaped "=" of the field is
    chars = iter(text)
    for c in chars:
        if c == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError(f"{text!r} ends with a lone backslash")
            field.append(escaped)
        elif c == ":":
            _add_field("".join(field), equals, args, kwargs)
            field, equals = [], -1
        else:
            if c == "=" and equals < 0:
                equals = len(field)
            field.append(c)
    _add_field("".join(field), equals, args, kwargs)
    return args, kwargs


def _add_field(value: str, equals: int, args: list[str], kwargs: dict[str, str]) -> None:
    if equals < 0:
        args.append(value)
    else:
        kwargs[value[:equals]] = value[equals + 1:]
