"""ProxyContext: what all connections of one proxy share."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO
from tinspect.chain import TapChain
from tinspect.context import ProxyContext, Settings


def test_connection_limits_count_per_client_and_in_total():
    """ProxyContext.admit/release: both limits hold, refusals say which, released ones free their place."""
    ctx = ProxyContext(TapChain([]), Settings(max_connections=3, max_connections_per_client=2), reactor=object())
    assert ctx.admit("192.0.2.2") is None and ctx.admit("192.0.2.2") is None
    assert "--max-connections-per-client" in ctx.admit("192.0.2.2")
    assert ctx.admit("192.0.2.3") is None
    assert "--max-connections)" in ctx.admit("192.0.2.4")
    ctx.release("192.0.2.2")
    assert ctx.admit("192.0.2.4") is None
    for host in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        ctx.release(host)
    assert ctx.connections == 0 and not ctx.clients


def test_the_open_files_limit_is_raised_for_the_connections_allowed():
    """raise_fd_limit lifts a low soft limit towards what is wanted, within the hard limit."""
    script = (
        "import resource\n"
        "from tinspect.net.sockets import raise_fd_limit\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_fd_limit(1000)[0], raise_fd_limit(100)[0], resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["1000", "1000", "1000"]
