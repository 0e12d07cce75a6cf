"""Options that need a privilege are checked at start: as nobody without it, twistd stops with a usage error."""

from __future__ import annotations

import shutil
import sys

import pytest

from tests.conftest import REPO
from tests.unprivileged import run_as_nobody

pytestmark = pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("unshare") is None,
                                reason="needs setpriv and unshare (util-linux)")

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
PARSE = [sys.executable, "-c", "import sys; from tinspect.service import Options; "
         "Options().parseOptions(sys.argv[1:]); print('parsed')"]
ENV = {"PYTHONPATH": str(REPO), "HOME": "/tmp"}


def test_spoof_source_without_cap_net_admin_is_a_usage_error_naming_the_option():
    """twistd tinspect --spoof-source as nobody without capabilities exits at once, saying what is missing."""
    out = run_as_nobody([*TWISTD, "--pidfile=", "-n", "tinspect", "--spoof-source", "--listen", "tcp:0"], [], ENV)
    assert out.returncode != 0
    assert "--spoof-source: this process cannot bind upstream sockets to clients' addresses (IP_TRANSPARENT): " \
           "Operation not permitted (TPROXY needs root, CAP_NET_ADMIN or CAP_NET_RAW)" in out.stderr + out.stdout


def test_spoof_source_with_cap_net_admin_starts():
    """The control: the same user holding CAP_NET_ADMIN (as the systemd unit gives it) passes the check."""
    out = run_as_nobody([*PARSE, "--spoof-source", "--listen", "tcp:0"], ["net_admin"], ENV)
    assert (out.returncode, out.stdout.strip()) == (0, "parsed"), out.stderr


def test_without_spoof_source_nobody_needs_no_capability():
    """The check runs only for --spoof-source: an unprivileged explicit proxy's options parse."""
    out = run_as_nobody([*PARSE, "--listen", "tcp:0"], [], ENV)
    assert (out.returncode, out.stdout.strip()) == (0, "parsed"), out.stderr
