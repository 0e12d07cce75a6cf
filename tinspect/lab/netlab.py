"""A client / gateway / server lab in Linux network namespaces (needs root).

Tests, the benchmark and the ``tinspect lab`` command all build the same
topology, using only documentation address ranges::

    client ns            gateway ns                       server ns
    eth0 192.0.2.2 ----- c0 192.0.2.1   s0 198.51.100.1 ----- eth0 198.51.100.2
         2001:db8:1::2      2001:db8:1::1  2001:db8:2::1          2001:db8:2::2
                            p0 203.0.113.1 ----- eth0 203.0.113.2   parent ns (``Lab(parent=True)``)
                               2001:db8:3::1          2001:db8:3::2

The gateway routes between the two (so "direct" traffic works with no proxy)
and, once `Lab.tproxy` or `Lab.redirect` is called, diverts the client's
traffic to a local port with real iptables rules, the way a user's gateway
would. Processes started with `Lab.spawn` are stopped, and the namespaces
deleted, by `Lab.down`, which a ``with`` block or a test fixture always runs,
even when the test fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Lab", "LabError", "Nginx", "ProxyProcess", "ServerPKI", "remove_stale_labs", "CLIENT4", "SERVER4", "CLIENT6", "SERVER6", "GW_CLIENT4", "GW_SERVER4", "PARENT4", "PARENT6"]

CLIENT4, GW_CLIENT4, GW_SERVER4, SERVER4 = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
CLIENT6, GW_CLIENT6, GW_SERVER6, SERVER6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"
GW_PARENT4, PARENT4, GW_PARENT6, PARENT6 = "203.0.113.1", "203.0.113.2", "2001:db8:3::1", "2001:db8:3::2"

PREFIX = "tinspect-"
SERVER_NAME = "server.test"  # resolves to the server in every lab namespace (RFC 6761 .test)
_NETNS_ETC = Path("/etc/netns")
_counter = itertools.count(1)


class LabError(RuntimeError):
    """A lab command failed; the message holds the command and its output."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("text", True)
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    proc = subprocess.run(list(argv), capture_output=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        err = proc.stderr if kw["text"] else proc.stderr.decode(errors="replace")
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {err.strip()}")
    return proc


class Lab:
    """Three namespaces joined by veth pairs, torn down by `down`.

    Args:
        tag: distinguishes concurrent labs; defaults to pid and a counter.
        parent: also a fourth namespace on the gateway's side, for a parent proxy the
            gateway reaches the servers through (routed on to them by the gateway).

    Attributes:
        client, gateway, server: the namespace names.
        parent: the parent's namespace name, or ``None``.
    """

    def __init__(self, tag: str | None = None, parent: bool = False) -> None:
        tag = tag or f"{os.getpid()}-{next(_counter)}"
        self.client = f"{PREFIX}{tag}-c"
        self.gateway = f"{PREFIX}{tag}-g"
        self.server = f"{PREFIX}{tag}-s"
        self.parent = f"{PREFIX}{tag}-p" if parent else None
        self._procs: list[subprocess.Popen] = []
        self._up = False

    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.client, self.gateway, self.server, *([self.parent] if self.parent else []))

    def up(self) -> None:
        """Create the namespaces, links, addresses and routes."""
        if shutil.which("ip") is None:
            raise LabError("the ip command (iproute2) is not installed")
        if os.geteuid() != 0:
            raise LabError("network namespaces need root")
        self._up = True
        try:
            for ns in self.namespaces:
                _write_etc(ns)
                _run(["ip", "netns", "add", ns])
                self.exec(ns, "ip", "link", "set", "lo", "up")
                self._sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
            _run(["ip", "link", "add", "eth0", "netns", self.client, "type", "veth", "peer", "name", "c0",
                  "netns", self.gateway])
            _run(["ip", "link", "add", "eth0", "netns", self.server, "type", "veth", "peer", "name", "s0",
                  "netns", self.gateway])
            self._sysctl(
                self.gateway,
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
            links = [
                (self.client, "eth0", f"{CLIENT4}/24", f"{CLIENT6}/64"),
                (self.gateway, "c0", f"{GW_CLIENT4}/24", f"{GW_CLIENT6}/64"),
                (self.gateway, "s0", f"{GW_SERVER4}/24", f"{GW_SERVER6}/64"),
                (self.server, "eth0", f"{SERVER4}/24", f"{SERVER6}/64"),
            ]
            routes = [(self.client, GW_CLIENT4, GW_CLIENT6), (self.server, GW_SERVER4, GW_SERVER6)]
            if self.parent is not None:
                _run(["ip", "link", "add", "eth0", "netns", self.parent, "type", "veth", "peer", "name", "p0",
                      "netns", self.gateway])
                links += [(self.gateway, "p0", f"{GW_PARENT4}/24", f"{GW_PARENT6}/64"),
                          (self.parent, "eth0", f"{PARENT4}/24", f"{PARENT6}/64")]
                routes.append((self.parent, GW_PARENT4, GW_PARENT6))
            for ns, dev, v4, v6 in links:
                self.exec(ns, "ip", "addr", "add", v4, "dev", dev)
                self.exec(ns, "ip", "-6", "addr", "add", v6, "dev", dev, "nodad")
                self.exec(ns, "ip", "link", "set", dev, "up")
            for ns, gw4, gw6 in routes:
                self.exec(ns, "ip", "route", "add", "default", "via", gw4)
                self.exec(ns, "ip", "-6", "route", "add", "default", "via", gw6)
            # Policy routing for TPROXY: marked packets are delivered locally.
            for family, local in (("-4", "0.0.0.0/0"), ("-6", "::/0")):
                self.exec(self.gateway, "ip", family, "rule", "add", "fwmark", "1", "lookup", "100")
                self.exec(self.gateway, "ip", family, "route", "add", "local", local, "dev", "lo", "table", "100")
        except BaseException:
            self.down()
            raise

    def _sysctl(self, ns: str, *settings: str) -> None:
        self.exec(ns, "sysctl", "-qw", *settings)

    def exec(self, ns: str, *argv: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """Run a command in a namespace and wait for it.

        Raises:
            LabError: it exited non-zero and ``check`` is true.
        """
        return _run(["ip", "netns", "exec", ns, *argv], check=check, timeout=timeout, **kw)

    def spawn(self, ns: str, *argv: str, **kw) -> subprocess.Popen:
        """Start a long-running command in a namespace; `down` stops it."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], start_new_session=True, **kw)
        self._procs.append(proc)
        return proc

    def wait_listening(self, ns: str, port: int, proto: str = "tcp", timeout: float = 15,
                       proc: subprocess.Popen | None = None) -> None:
        """Wait until something in ``ns`` listens on ``port``.

        Raises:
            LabError: nothing listened in time, or ``proc`` exited first.
        """
        flag = "-Hltn" if proto == "tcp" else "-Hlun"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.exec(ns, "ss", flag, f"sport = :{port}", check=False).stdout
            if out.strip():
                return
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{' '.join(proc.args)} exited with {proc.returncode} before listening on {port}")
            time.sleep(0.05)
        raise LabError(f"nothing listened on {proto} port {port} in {ns} within {timeout}s")

    def _rule(self, *args: str, v6: bool) -> None:
        self.exec(self.gateway, "ip6tables" if v6 else "iptables", *args)

    def tproxy(self, port: int, proto: str = "tcp", dports: Sequence[int] | None = None) -> None:
        """Divert the client's ``proto`` traffic (to ``dports``, or all) to ``port`` with TPROXY.

        This is the recipe of docs/gateway.md: packets of connections that
        already have a transparent socket are marked and delivered locally;
        new ones are handed to the proxy's listener by the TPROXY target.
        """
        for v6 in (False, True):
            self._ensure_divert(v6)
            match = ["-p", proto, *(["-m", "multiport", "--dports", ",".join(map(str, dports))] if dports else [])]
            self._rule("-t", "mangle", "-A", "PREROUTING", "-i", "c0", "-p", proto, "-m", "socket", "--transparent",
                       "-j", "TINSPECT_DIVERT", v6=v6)
            self._rule("-t", "mangle", "-A", "PREROUTING", "-i", "c0", *match, "-j", "TPROXY",
                       "--tproxy-mark", "0x1/0x1", "--on-port", str(port), v6=v6)

    def _ensure_divert(self, v6: bool) -> None:
        proc = self.exec(self.gateway, "ip6tables" if v6 else "iptables", "-t", "mangle", "-L", "TINSPECT_DIVERT",
                         check=False)
        if proc.returncode != 0:
            self._rule("-t", "mangle", "-N", "TINSPECT_DIVERT", v6=v6)
            self._rule("-t", "mangle", "-A", "TINSPECT_DIVERT", "-j", "MARK", "--set-mark", "1", v6=v6)
            self._rule("-t", "mangle", "-A", "TINSPECT_DIVERT", "-j", "ACCEPT", v6=v6)

    def spoof_return(self, proto: str = "tcp") -> None:
        """Deliver to the proxy the servers' answers to connections it made from a
        client's address (``--spoof-source``), the recipe of docs/gateway.md: they
        come in on the server side, addressed to the client, and belong to a
        transparent socket of the proxy's, so they are marked and routed locally
        (``fwmark 1 lookup 100``, table 100: ``local default dev lo``) instead of
        being forwarded to the client."""
        for v6 in (False, True):
            self._ensure_divert(v6)
            self._rule("-t", "mangle", "-A", "PREROUTING", "-i", "s0", "-p", proto, "-m", "socket", "--transparent",
                       "-j", "TINSPECT_DIVERT", v6=v6)

    def redirect(self, port: int, proto: str = "tcp", dports: Sequence[int] | None = None) -> None:
        """Divert the client's traffic to local ``port`` with NAT REDIRECT."""
        for v6 in (False, True):
            match = ["-p", proto, *(["-m", "multiport", "--dports", ",".join(map(str, dports))] if dports else [])]
            self._rule("-t", "nat", "-A", "PREROUTING", "-i", "c0", *match, "-j", "REDIRECT", "--to-ports",
                       str(port), v6=v6)

    def add_host(self, name: str, *addresses: str) -> None:
        """Make ``name`` resolve to ``addresses`` in every namespace (another server, say a CDN)."""
        for ns in self.namespaces:
            with open(_NETNS_ETC / ns / "hosts", "a") as hosts:
                hosts.writelines(f"{address} {name}\n" for address in addresses)

    def clear_rules(self) -> None:
        """Remove every diversion (back to plain routing)."""
        for tool in ("iptables", "ip6tables"):
            for table in ("mangle", "nat"):
                self.exec(self.gateway, tool, "-t", table, "-F", check=False)
            self.exec(self.gateway, tool, "-t", "mangle", "-X", "TINSPECT_DIVERT", check=False)

    def down(self) -> None:
        """Stop spawned processes and delete the namespaces (safe to call twice)."""
        for proc in self._procs:
            _stop(proc)
        self._procs.clear()
        if not self._up:
            return
        for ns in self.namespaces:
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(_NETNS_ETC / ns, ignore_errors=True)
        self._up = False


def _write_etc(ns: str) -> None:
    """Name resolution inside a namespace, which ``ip netns exec`` mounts over
    /etc: ``server.test`` is the lab server, and DNS goes to the namespace's
    own loopback, where nothing answers, so no lookup ever leaves the lab."""
    etc = _NETNS_ETC / ns
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    (etc / "hosts").write_text(
        f"127.0.0.1 localhost\n::1 localhost\n{SERVER4} {SERVER_NAME}\n{SERVER6} {SERVER_NAME}\n"
    )


def _stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(grace)


def remove_stale_labs() -> list[str]:
    """Delete lab namespaces left by processes that no longer exist.

    Returns:
        The names removed.
    """
    removed = []
    out = _run(["ip", "netns", "list"], check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            for p in _run(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    os.kill(int(p), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run(["ip", "netns", "del", name], check=False)
            shutil.rmtree(_NETNS_ETC / name, ignore_errors=True)
            removed.append(name)
    return removed


class Nginx:
    """An nginx server of Debian's, run in a namespace with a generated config.

    Args:
        lab: the lab.
        ns: the namespace to run in.
        workdir: a directory for the config, logs and the document root.
        port: the plain HTTP port.
        extra: more directives for the ``server`` block.
        tls: ``(certificate chain, key)`` PEM files: also serve HTTPS (TLS 1.2
            and 1.3, h2 and http/1.1) on port 443.
        http2: the plain port speaks HTTP/2 with prior knowledge (h2c) instead
            of HTTP/1.1 (nginx 1.22 cannot offer both on one plain port).
        more: more directives for the ``http`` block, after the ``server``
            block (another ``server`` block, say).

    The access log (`access_log`) has one line per request:
    ``<connection serial> <request line> <status>``, so a test can tell
    which requests shared a connection.
    """

    def __init__(self, lab: Lab, ns: str, workdir: Path, port: int = 80, extra: str = "",
                 tls: tuple[Path, Path] | None = None, http2: bool = False, more: str = "") -> None:
        self.lab = lab
        self.more = more
        self.http2 = http2
        self.extra = extra
        self.tls = tls
        self.ns = ns
        self.workdir = Path(workdir)
        self.port = port
        self.root = self.workdir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Nginx":
        """Write the config, start nginx and wait until it listens."""
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        tls_conf = ""
        if self.tls is not None:
            tls_conf = (f"listen 443 ssl http2; listen [::]:443 ssl http2; ssl_certificate {self.tls[0]}; "
                        f"ssl_certificate_key {self.tls[1]}; ssl_protocols TLSv1.2 TLSv1.3;")
        plain = " http2" if self.http2 else ""
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            f"""
user root;
worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    log_format conn '$connection "$request" $status';
    access_log {self.workdir}/access.log conn;
    log_format clients '$remote_addr "$request" $status';
    access_log {self.workdir}/clients.log clients;
    client_body_temp_path {self.workdir}/body;
    proxy_temp_path {self.workdir}/proxy;
    fastcgi_temp_path {self.workdir}/fastcgi;
    uwsgi_temp_path {self.workdir}/uwsgi;
    scgi_temp_path {self.workdir}/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen {self.port}{plain};
        listen [::]:{self.port}{plain};
        {tls_conf}
        root {self.root};
        {self.extra}
    }}
    {self.more}
}}
"""
        )
        self.proc = self.lab.spawn(self.ns, binary, "-c", str(conf), "-p", str(self.workdir),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.lab.wait_listening(self.ns, self.port, proc=self.proc)
        return self

    def access_log(self, name: str = "access.log") -> list[tuple[str, str, str]]:
        """``(connection serial, request line, status)`` per request so far, from ``name`` in the
        work directory (another server block's log, in the same ``conn`` format, say)."""
        path = self.workdir / name
        lines = path.read_text().splitlines() if path.exists() else []
        out = []
        for line in lines:
            conn, _, rest = line.partition(" ")
            request, _, status = rest.rpartition(" ")
            out.append((conn, request.strip('"'), status))
        return out


    def client_addresses(self) -> list[str]:
        """The client address nginx saw, per request so far (``$remote_addr``)."""
        path = self.workdir / "clients.log"
        return [line.partition(" ")[0] for line in path.read_text().splitlines()] if path.exists() else []


class ProxyProcess:
    """``twistd -n tinspect ...`` running in a lab namespace, logging to a file.

    Args:
        lab: the lab.
        ns: the namespace (usually ``lab.gateway``).
        args: arguments after ``tinspect``.
        logfile: where twistd writes its log.
        wait: ``(port, proto)`` pairs to wait for before returning from `start`.
        env: extra environment (PYTHONPATH for taps of one's own, say).
    """

    def __init__(self, lab: Lab, ns: str, args: Sequence[str], logfile: Path,
                 wait: Sequence[tuple[int, str]] = (), env: dict[str, str] | None = None) -> None:
        self.lab = lab
        self.ns = ns
        self.args = list(args)
        self.logfile = Path(logfile)
        self.wait = list(wait)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ProxyProcess":
        """Start twistd and wait until every port in ``wait`` listens."""
        env_args = [f"{k}={v}" for k, v in self.env.items()]
        self.proc = self.lab.spawn(
            self.ns, "env", *env_args, "twistd", "-n", "--pidfile=", "-l", str(self.logfile), "tinspect", *self.args,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            for port, proto in self.wait:
                self.lab.wait_listening(self.ns, port, proto, proc=self.proc)
        except LabError as e:
            raise LabError(f"{e}\n--- proxy log ---\n{self.log()}") from None
        return self

    def log(self) -> str:
        """The log so far."""
        return self.logfile.read_text() if self.logfile.exists() else ""

    def status(self, field: str) -> int:
        """A kB figure from /proc/PID/status, such as ``VmHWM`` (peak RSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def open_fds(self) -> int:
        """How many descriptors the proxy holds."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> int:
        """Stop the proxy; returns its exit code."""
        if self.proc is not None:
            _stop(self.proc)
            return self.proc.returncode
        return 0


class ServerPKI:
    """The lab server's own CA and its certificate for ``server.test`` and
    its addresses, as files for nginx and friends (so a lab's "real" server
    is verified like any server on the Internet, not by our CA), or, given
    an ``authority``, a certificate for the same names from that CA.

    Args:
        workdir: where the files go.
        common_name: the new CA's name.
        authority: issue the certificate from this CA instead of a new one
            (a `tinspect.layers.tls.ca.CertificateAuthority`; the benchmark's bare relay
            poses as the server with one from the proxy's CA).
        name, addresses: what the certificate is for (another server of the
            lab's, say a CDN, gets one from the same ``authority``).

    Attributes:
        chain: leaf then CA certificate, PEM (``ssl_certificate``).
        key: the leaf's key, PEM, unencrypted, 0600.
        ca: the CA certificate, PEM: what ``--upstream-ca`` trusts.
        authority: the CA itself, to issue more certificates from.
    """

    def __init__(self, workdir: Path, common_name: str = "Lab server CA", authority: Any = None,
                 name: str = SERVER_NAME, addresses: Sequence[str] = (SERVER4, SERVER6)) -> None:
        from cryptography.hazmat.primitives import serialization

        from tinspect.layers.tls.ca import CertificateAuthority, LeafCertificates

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if authority is None:
            authority = CertificateAuthority.generate(workdir / "server-ca", common_name=common_name)
        self.authority = authority
        cert, key = LeafCertificates(authority).get_cryptography(name, list(addresses))
        self.chain = workdir / "server-chain.pem"
        self.chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + authority.cert_pem)
        self.key = workdir / "server-key.pem"
        self.key.touch(mode=0o600)
        self.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        self.ca = workdir / "server-ca.pem"
        self.ca.write_bytes(authority.cert_pem)
