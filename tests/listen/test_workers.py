"""``--workers N``: port sharing, the workers' command lines, and two workers end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DUAL, REPO
from tinspect.lab.netlab import SERVER_NAME
from tinspect.listen.spec import SpecError
from tinspect.listen.workers import shared_endpoint, worker_argv


@pytest.mark.parametrize(
    "endpoint,shared",
    [
        ("tproxy:8080", "tproxy:8080:reuseport=yes"),
        ("tproxy:8080:interface=\\:\\:", "tproxy:8080:interface=\\:\\::reuseport=yes"),
        ("tproxy:8080:reuseport=yes", "tproxy:8080:reuseport=yes"),
        ("tcp:3128:interface=127.0.0.1", "tcpshared:3128:interface=127.0.0.1"),
        ("tcp6:3128", "tcpshared:3128:interface=\\:\\:"),
    ],
)
def test_listeners_are_rewritten_to_share_their_port(endpoint, shared):
    assert shared_endpoint(endpoint) == shared


def test_an_unshareable_endpoint_is_refused():
    with pytest.raises(SpecError, match="--workers needs"):
        shared_endpoint("unix:/tmp/proxy.sock")


def test_worker_command_line_keeps_the_options_and_logs_beside_worker_0():
    argv = worker_argv(["-n", "-l", "/var/log/tinspect.log", "tinspect", "--workers", "4"],
                       ["--listen", "tproxy:8080", "--workers", "4", "--taps", "logger"], 2)
    assert argv[argv.index("tinspect"):] == ["tinspect", "--listen", "tproxy:8080", "--taps", "logger", "--worker"]
    assert "--logfile=/var/log/tinspect.log.worker2" in argv and "--nodaemon" in argv
    assert worker_argv(["-n", "tinspect"], ["--workers=3"], 1)[-2:] == ["tinspect", "--worker"]
    assert "--logfile=-" in worker_argv(["-n", "tinspect"], [], 1)


def test_twistd_refuses_workers_on_an_unshareable_listener(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                          "--pidfile=", "tinspect", "--workers", "2", "--listen", "unix:" + str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0
    assert "--workers needs tcp:, tcp6: or tproxy: listeners" in out.stdout + out.stderr


@pytest.mark.netns
def test_two_workers_share_the_tproxy_port_and_the_ca(lab, https, proxy, pki):
    """Two workers listen on the TPROXY port, both intercept TLS with the same CA, and stop together."""
    lab.tproxy(8080, dports=[443])
    p = proxy(["--listen", DUAL, "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
               "--taps", "logger", "--workers", "2"], wait=[(8080, "tcp")])
    deadline = time.monotonic() + 20
    while len(re.findall(r"users:", lab.exec(lab.gateway, "ss", "-Hltnp", "sport = :8080").stdout)) < 2:
        assert time.monotonic() < deadline, "the second worker did not listen"
        time.sleep(0.1)
    for _ in range(24):
        out = lab.exec(lab.client, "curl", "-sS", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/",
                       check=False, timeout=30)
        assert out.returncode == 0 and out.stdout == "hello tls\n", out.stderr
    worker_log = Path(str(p.logfile) + ".worker1")
    time.sleep(0.3)
    served = [len(re.findall(r"to_server request GET https://server\.test/", log))
              for log in (p.log(), worker_log.read_text())]
    assert sum(served) == 24 and min(served) > 0, served  # the kernel spread the connections
    p.stop()
    time.sleep(0.5)
    left = lab.exec(lab.gateway, "ss", "-Hltn", "sport = :8080").stdout
    assert left.strip() == "", left
