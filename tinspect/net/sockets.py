"""Linux socket options for transparent proxying (no Twisted here).

TPROXY and REDIRECT hand a proxy connections addressed to somebody else. How
the original destination is recovered differs:

* TPROXY (``-j TPROXY``): the socket must have ``IP_TRANSPARENT`` (or
  ``IPV6_TRANSPARENT``) *before* ``bind``; the accepted socket's local address
  *is* the original destination. For UDP, ``IP_RECVORIGDSTADDR`` makes each
  datagram carry it as ancillary data, and replies must be sent from a
  transparent socket bound to that address.
* REDIRECT (``-j REDIRECT``, NAT): the kernel rewrote the destination; the
  original one is read back from conntrack with ``SO_ORIGINAL_DST`` (IPv4) or
  ``IP6T_SO_ORIGINAL_DST`` (IPv6).

Setting ``IP_TRANSPARENT`` needs CAP_NET_ADMIN (root).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
import struct
import termios
from typing import Any

from tinspect.net.addresses import format_addr, normalize_host

__all__ = [
    "SocketError",
    "original_dst",
    "transparent_socket",
    "transparency_refused",
    "family_for",
    "recv_with_orig_dst",
    "enable_orig_dst",
]

SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IPV6_RECVORIGDSTADDR = 74
SO_ORIGINAL_DST = 80
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
IP6T_SO_ORIGINAL_DST = 80


class SocketError(Exception):
    """A socket could not be set up; the message says why in plain words."""


def family_for(host: str) -> socket.AddressFamily:
    """``AF_INET6`` for IPv6 literals, ``AF_INET`` otherwise (including ``""``)."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


_PRIVILEGE = "TPROXY needs root, CAP_NET_ADMIN or CAP_NET_RAW"


def make_transparent(sock: socket.socket, client: bool = False) -> None:
    """Set IP_TRANSPARENT (IPV6_TRANSPARENT) on ``sock``: it may then bind to an
    address that is not the host's, and a listener accepts TPROXY's connections.

    A ``client`` TCP socket (not yet bound) also gets
    IP_BIND_ADDRESS_NO_PORT: its port is chosen at connect time, for the
    4-tuple, so one client address can carry as many connections as it has
    destinations times ports.

    Raises:
        PermissionError: without CAP_NET_ADMIN or CAP_NET_RAW (the message says so).
    """
    v6 = sock.family == socket.AF_INET6
    try:
        sock.setsockopt(SOL_IPV6 if v6 else SOL_IP, IPV6_TRANSPARENT if v6 else IP_TRANSPARENT, 1)
    except PermissionError as e:
        raise PermissionError(e.errno, f"{e.strerror} ({_PRIVILEGE})") from None
    if client and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)


def transparency_refused() -> str | None:
    """Why this process may not make transparent sockets, or ``None`` if it may.

    A probe, for a start-up check: ``--spoof-source`` sets IP_TRANSPARENT on
    every upstream socket, and without the privilege each connection would
    fail on its own later. The probe is an unbound UDP socket of the first
    family the host has.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            continue  # this family is not configured on the host
        with sock:
            try:
                make_transparent(sock)
            except PermissionError as e:
                return e.strerror
        return None
    return "no IPv4 or IPv6 socket can be made"


def transparent_socket(
    kind: socket.SocketKind,
    host: str,
    port: int,
    *,
    backlog: int = socket.SOMAXCONN,
    reuse_port: bool = False,
    recv_orig_dst: bool = False,
    transparent: bool = True,
    reuse_addr: bool = True,
) -> socket.socket:
    """Create a non-blocking IP_TRANSPARENT socket bound to ``(host, port)``.

    Args:
        kind: ``SOCK_STREAM`` (then it listens) or ``SOCK_DGRAM``.
        host: address to bind; ``""`` is all IPv4 addresses, ``"::"`` all
            IPv6 (and IPv4-mapped) ones.
        port: port to bind.
        backlog: listen backlog for stream sockets.
        reuse_port: set SO_REUSEPORT (several processes share the port).
        recv_orig_dst: for datagram sockets, ask for each datagram's original
            destination (see `recv_with_orig_dst`).
        transparent: set IP_TRANSPARENT (``False``: an ordinary socket, for
            a listener that only needs ``reuse_port``).
        reuse_addr: set SO_REUSEADDR. ``False`` for a socket bound to port 0
            that must get a port of its own: two UDP sockets that both have
            it may be given the same ephemeral port.

    Raises:
        SocketError: with a message naming the address and the cause
            (missing privilege, address in use...).
    """
    family = family_for(host)
    where = format_addr((host or "0.0.0.0", port))
    sock = socket.socket(family, kind)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if transparent:
            try:
                make_transparent(sock)
            except PermissionError as e:
                raise SocketError(f"cannot make a transparent socket on {where}: {e.strerror}") from None  # it names the privilege
        if recv_orig_dst:
            enable_orig_dst(sock)
        try:
            sock.bind((host, port))
        except OSError as e:
            hint = ""
            if e.errno == errno.EADDRINUSE:
                hint = " (no ephemeral port of it is free)" if port == 0 else " (another program already listens there)"
            raise SocketError(f"cannot bind {where}: {e.strerror}{hint}") from None
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise


def enable_orig_dst(sock: socket.socket) -> None:
    """Ask the kernel to attach each datagram's original destination."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
        # IPv4 datagrams arriving on a dual-stack socket carry the IPv4 form.
        try:
            sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
        except OSError:
            pass
    else:
        sock.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """Where a REDIRECTed TCP connection was going, from conntrack.

    Args:
        sock: the accepted socket.

    Raises:
        SocketError: the connection was not redirected (no NAT entry).
    """
    if sock.family == socket.AF_INET6:
        # An IPv4 connection on a dual-stack socket (v4-mapped peer) is in the
        # IPv4 conntrack table.
        if not sock.getpeername()[0].startswith("::ffff:"):
            try:
                return _parse_sockaddr(sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
            except OSError as e:
                raise SocketError(f"no original destination for this connection: {e.strerror}") from None
    try:
        return _parse_sockaddr(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16))
    except OSError as e:
        raise SocketError(f"no original destination for this connection: {e.strerror}") from None


def _parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """Decode a ``struct sockaddr_in`` or ``sockaddr_in6`` (network order)."""
    family = struct.unpack_from("=H", raw, 0)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET6:
        host = str(ipaddress.IPv6Address(raw[8:24]))
        return normalize_host(host), port
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


def recv_with_orig_dst(
    sock: socket.socket, bufsize: int = 65535
) -> tuple[bytes, tuple[str, int], tuple[str, int] | None]:
    """Receive one datagram and the address it was originally sent to.

    Returns:
        ``(payload, source address, original destination or None)``.
    """
    data, ancdata, _flags, src = sock.recvmsg(bufsize, 256)
    dst = None
    for level, kind, value in ancdata:
        if (level, kind) in ((SOL_IP, IP_RECVORIGDSTADDR), (SOL_IPV6, IPV6_RECVORIGDSTADDR)):
            dst = _parse_sockaddr(value)
    return data, (normalize_host(src[0]), src[1]), dst


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's limit on open files towards ``wanted`` (never lower
    than it is); returns ``(soft, hard)`` after. A proxy needs two descriptors
    per proxied connection, and the usual soft limit of 1024 would cut it off
    at about 500.

    The soft limit goes up to the hard one. When ``wanted`` is above the hard
    limit too, the hard limit is raised with it if the process may
    (CAP_SYS_RESOURCE: twistd before it drops root, up to ``fs.nr_open``);
    otherwise the soft limit stops at the hard one.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
        except (ValueError, OSError):
            pass  # not privileged, or above fs.nr_open: the hard limit stays
        else:
            return wanted, wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def pending_bytes(transport: Any) -> int:
    """How many bytes wait unread in a TCP transport's socket (0 when it has none
    or is not a socket: a TLS transport's records are counted by the layer under it).

    A timer and a socket that became readable in the same reactor turn race: the
    reactor runs due timers before it reads. This tells a timer that the peer did
    speak in time.
    """
    try:
        fd = transport.getHandle().fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, TypeError, ValueError):
        return 0


def is_local_address(host: str) -> bool:
    """Whether ``host`` (an IP literal, or ``localhost``) is an address of this machine.

    Binding a socket succeeds only for local addresses, which tells them
    apart without a list of interfaces (in whatever network namespace this
    runs). Other names are not resolved here (that would block): ``False``.
    """
    if host == "localhost":
        return True
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return False
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as e:
            return e.errno != errno.EADDRNOTAVAIL
    return True
