"""``tinspect lab``: watch the whole pipeline work, in one command (root).

Builds the client / gateway / server namespaces of `tinspect.lab.netlab`, starts
real servers (nginx on port 80 and, with a certificate from its own CA, TLS
with h2 on 443; a WebSocket echo on 8765, a TCP echo on 7, a UDP echo on
5353), runs ``twistd tinspect`` in the gateway behind real TPROXY rules with
the chosen taps (trusting the server's CA, minting leaves from its own), sends
sample traffic from the client (curl over IPv4 and IPv6, HTTPS over HTTP/1.1
and HTTP/2 trusting tinspect's CA, a WebSocket exchange, a TCP echo, UDP
datagrams), prints what each client got and what the taps logged, and
removes everything again. The WebSocket sample needs the ``websockets``
library (installed with the test extras); without it, it is skipped.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence, TextIO

import tinspect
from tinspect.lab.netlab import (
    SERVER4,
    SERVER6,
    SERVER_NAME,
    Lab,
    LabError,
    Nginx,
    ProxyProcess,
    ServerPKI,
    remove_stale_labs,
)

__all__ = ["run_lab", "REQUIRED_TOOLS"]

REQUIRED_TOOLS = ("ip", "iptables", "ip6tables", "ss", "nginx", "curl", "socat", "twistd")

_UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.bind(('::', 5353))\n"
    "while True:\n"
    "    data, addr = s.recvfrom(65535)\n"
    "    s.sendto(b'echo:' + data, addr)\n"
)
_WS_ECHO = (
    "import asyncio\n"
    "from websockets.asyncio.server import serve\n"
    "async def echo(ws):\n"
    "    async for message in ws:\n"
    "        await ws.send(message)\n"
    "async def main():\n"
    "    async with serve(echo, None, 8765):\n"
    "        await asyncio.Future()\n"
    "asyncio.run(main())\n"
)
_WS_ASK = (
    "from websockets.sync.client import connect\n"
    "with connect('ws://{host}:8765/echo', open_timeout=10) as ws:\n"
    "    ws.send('hello over websocket')\n"
    "    print(ws.recv(timeout=10))\n"
)
_UDP_ASK = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(3)\n"
    "s.connect((sys.argv[1], 5353))\n"
    "s.send(b'hello over udp')\n"
    "print(s.recv(65535).decode())\n"
)


def run_lab(taps: str, tap_options: Sequence[str] = (), out: TextIO = sys.stdout) -> int:
    """Run the lab once and report.

    Args:
        taps: the ``--taps`` value for the proxy.
        tap_options: ``TAP.KEY=VALUE`` strings.
        out: where the report goes.

    Returns:
        0 when every sample exchange succeeded, 1 otherwise.
    """
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        print(f"tinspect lab: missing tools: {', '.join(missing)} (./scripts/install-deps installs them)", file=sys.stderr)
        return 2
    remove_stale_labs()
    workdir = Path(tempfile.mkdtemp(prefix="tinspect-lab-"))
    failures = 0
    try:
        with Lab() as lab:
            server = ServerPKI(workdir)
            web = Nginx(lab, lab.server, workdir / "nginx", tls=(server.chain, server.key))
            (web.root / "index.html").write_text("<h1>hello from the lab server</h1>\n")
            web.start()
            echo = lab.spawn(lab.server, "socat", "TCP6-LISTEN:7,fork,reuseaddr,ipv6only=0", "EXEC:cat")
            udp = lab.spawn(lab.server, sys.executable, "-c", _UDP_ECHO)
            websocket = importlib.util.find_spec("websockets") is not None
            lab.wait_listening(lab.server, 443, proc=web.proc)
            lab.wait_listening(lab.server, 7, proc=echo)
            lab.wait_listening(lab.server, 5353, "udp", proc=udp)
            if websocket:
                ws = lab.spawn(lab.server, sys.executable, "-c", _WS_ECHO)
                lab.wait_listening(lab.server, 8765, proc=ws)
            lab.tproxy(8080, dports=[80, 443, 7, 8765])
            lab.tproxy(8053, proto="udp", dports=[5353])
            state = workdir / "state"
            args = ["--listen", "tproxy:8080:interface=\\:\\:", "--udp", "tproxy:8053:interface=\\:\\:", "--taps", taps,
                    "--state-dir", str(state), "--upstream-ca", str(server.ca)]
            for option in tap_options:
                args += ["--tap-option", option]
            # twistd finds the tinspect plugin in twisted/plugins next to the package; an editable
            # install (./scripts/install-deps) only has it there, not in site-packages.
            here = str(Path(tinspect.__file__).resolve().parent.parent)
            proxy = ProxyProcess(lab, lab.gateway, args, workdir / "tinspect.log", [(8080, "tcp"), (8053, "udp")],
                                 {"PYTHONPATH": here})
            print(f"lab: client {lab.client}, gateway {lab.gateway} (tinspect {' '.join(args)}), "
                  f"server {lab.server}", file=out)
            proxy.start()
            samples = [
                ("HTTP over IPv4 (curl)", ["curl", "-sS", "--max-time", "10", f"http://{SERVER4}/"]),
                ("HTTP over IPv6 (curl)", ["curl", "-sS", "--max-time", "10", f"http://[{SERVER6}]/"]),
                ("HTTPS, HTTP/1.1 (curl trusting tinspect's CA)",
                 ["curl", "-sS", "--max-time", "10", "--http1.1", "--cacert", str(state / "ca.pem"),
                  f"https://{SERVER_NAME}/"]),
                ("HTTPS, HTTP/2 (curl trusting tinspect's CA)",
                 ["curl", "-sS", "--max-time", "10", "--http2", "--cacert", str(state / "ca.pem"),
                  f"https://{SERVER_NAME}/"]),
                ("TCP echo (socat)", ["sh", "-c", f"printf 'ping over tcp' | socat -t 5 - TCP:{SERVER4}:7,shut-down"]),
                ("UDP echo", [sys.executable, "-c", _UDP_ASK, SERVER4]),
            ]
            if websocket:
                samples.append(("WebSocket (websockets library)", [sys.executable, "-c", _WS_ASK.format(host=SERVER4)]))
            else:
                print("\n== WebSocket: skipped (pip install websockets to see it)", file=out)
            for title, argv in samples:
                proc = lab.exec(lab.client, *argv, check=False, timeout=20)
                ok = proc.returncode == 0 and proc.stdout.strip()
                failures += not ok
                result = proc.stdout.strip() if ok else f"FAILED: {proc.stderr.strip()}"
                print(f"\n== {title}\n{result}", file=out)
            time.sleep(0.3)
            print("\n== what the taps saw (tinspect log)", file=out)
            for line in proxy.log().splitlines():
                if "[tinspect" in line or "[taps" in line:
                    print(re.sub(r"^\S+ ", "", line), file=out)
            proxy.stop()
    except (LabError, subprocess.TimeoutExpired) as e:
        print(f"tinspect lab: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nlab: {'all exchanges succeeded' if not failures else f'{failures} exchange(s) failed'}; "
          "namespaces removed", file=out)
    return 1 if failures else 0
