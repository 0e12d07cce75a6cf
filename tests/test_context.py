"""ProxyContext: what all connections of one proxy share."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

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


_RAISE_ABOVE_HARD = (
    "import resource\n"
    "from tinspect.net.sockets import raise_fd_limit\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 512))\n"
    "print(*raise_fd_limit(2000), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
)


def _may_raise_hard_limits() -> bool:
    """Whether this process holds CAP_SYS_RESOURCE (capability 24), which raising a hard limit needs."""
    with open("/proc/self/status") as f:
        eff = next(line for line in f if line.startswith("CapEff:"))
    return bool(int(eff.split()[1], 16) >> 24 & 1)


@pytest.mark.skipif(not _may_raise_hard_limits(), reason="raising the hard limit needs CAP_SYS_RESOURCE")
def test_a_privileged_process_raises_the_hard_limit_too():
    """Above the hard limit, a process that may (root) raises soft and hard to what is wanted."""
    out = subprocess.run([sys.executable, "-c", _RAISE_ABOVE_HARD], capture_output=True, text=True, check=True,
                         cwd=REPO)
    assert out.stdout.split() == ["2000"] * 4


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_without_cap_sys_resource_the_soft_limit_stops_at_the_hard_one():
    """Without CAP_SYS_RESOURCE the hard limit stays and the soft limit is raised to it."""
    out = subprocess.run(["setpriv", "--bounding-set=-sys_resource", sys.executable, "-c", _RAISE_ABOVE_HARD],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["512", "512", "512", "512"]
