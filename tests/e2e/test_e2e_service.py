"""The systemd unit as it would run: its command line, user and capabilities, its nftables rules.

systemd itself does not run here. The test installs the unit with
``tinspect install-unit``, reads it as systemd would (ExecStartPre,
ExecStart, AmbientCapabilities, Environment), loads its nftables rules in
the lab gateway, and starts its ExecStart as an unprivileged user (nobody)
holding exactly the unit's capabilities (setpriv), then sends HTTPS through
TPROXY and checks it was intercepted.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.unprivileged import NOBODY, python_view, setpriv
from tinspect.lab.netlab import SERVER_NAME

pytestmark = pytest.mark.netns

CAP_BITS = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12}


def unit(path: Path) -> dict[str, list[str]]:
    """The unit's ``[Service]`` settings: key -> every value given, in order."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def command(value: str) -> tuple[list[str], bool, bool]:
    """An Exec line: (argv, runs as root ("+"), failure ignored ("-"))."""
    prefix = re.match(r"[-+@:!]*", value).group(0)
    return shlex.split(value[len(prefix):]), "+" in prefix, "-" in prefix


@pytest.fixture
def world_readable():
    """A directory anyone may read (pytest's own are root's only), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tinspect-unit-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_unit_runs_the_proxy_as_an_unprivileged_user_that_intercepts(lab, https, pki, world_readable):
    """The unit's ExecStart, with only its capabilities, as nobody: TLS through its nftables TPROXY rules
    is intercepted; the process has exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE; SIGHUP keeps it up."""
    work = world_readable
    out = subprocess.run([sys.executable, "-m", "tinspect", "install-unit", "--unit-dir", str(work / "systemd"),
                          "--config-dir", str(work / "etc")], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert "wrote" in out.stdout
    service = unit(work / "systemd" / "tinspect.service")
    # The lab's LAN interface, and the lab server's CA to verify upstream against.
    rules = work / "etc" / "tinspect.nft"
    rules.write_text(rules.read_text().replace('define LAN = "eth1"', 'define LAN = "c0"'))
    server_ca = work / "server-ca.pem"
    server_ca.write_bytes(pki["server_ca"].read_bytes())
    config = work / "etc" / "tinspect.toml"
    config.write_text(config.read_text() + f'upstream-ca = "{server_ca}"\n')
    for path in (work / "etc", config, server_ca):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    state = work / "state"
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)

    for value in service["ExecStartPre"]:
        argv, as_root, ignore = command(value)
        assert as_root, value  # the rules need root; the proxy does not
        lab.exec(lab.gateway, *argv, check=not ignore)
    listed = lab.exec(lab.gateway, "nft", "list", "table", "inet", "tinspect").stdout
    assert "tproxy ip to :8080" in listed and "tproxy ip6 to :8080" in listed

    (start,) = service["ExecStart"]
    argv, as_root, _ = command(start)
    assert not as_root and service["User"] == ["tinspect"] and service["NoNewPrivileges"] == ["yes"]
    caps = service["AmbientCapabilities"][0].split()
    assert caps == service["CapabilityBoundingSet"][0].split() and set(caps) == set(CAP_BITS)
    env = dict(e.split("=", 1) for e in service["Environment"])
    env.update(TINSPECT_STATE_DIR=str(state), PYTHONPATH=str(REPO), HOME=str(state))
    script = " && ".join([*python_view(), "exec " + shlex.join(
        [*setpriv([c.removeprefix("CAP_").lower() for c in caps]), "env", *[f"{k}={v}" for k, v in env.items()], *argv])])
    log = work / "service.log"
    with open(log, "wb") as journal:  # the unit logs to standard output: the journal
        proc = lab.spawn(lab.gateway, "unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                         stdout=journal, stderr=subprocess.STDOUT)
    lab.wait_listening(lab.gateway, 8080, proc=proc)
    ca = state / "ca.pem"
    deadline = time.monotonic() + 10
    while not ca.exists():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)

    twistd = _twistd_pid(proc.pid)
    status = Path(f"/proc/{twistd}/status").read_text()
    assert re.search(r"^Uid:\s+65534\s", status, re.M), status
    effective = int(re.search(r"^CapEff:\s+([0-9a-f]+)", status, re.M).group(1), 16)
    assert effective == sum(1 << bit for bit in CAP_BITS.values()), hex(effective)

    def fetch():
        got = lab.exec(lab.client, "curl", "-sS", "--cacert", str(ca), f"https://{SERVER_NAME}/", timeout=30,
                       check=False)
        assert got.stdout == "hello tls\n", got.stderr + log.read_text()

    fetch()
    os.kill(twistd, signal.SIGHUP)  # ExecReload
    fetch()
    text = log.read_text()
    assert len(re.findall(r"to_server request GET https://server\.test/", text)) == 2, text
    assert "SIGHUP: reloading" in text and proc.poll() is None


def _twistd_pid(root: int) -> int:
    """The twistd process below ``root`` (the namespace and setpriv wrappers exec, unshare forks)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for pid in _descendants(root):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"tinspect" in cmdline and b"unshare" not in cmdline and b"sh\x00-c" not in cmdline:
                return pid
        time.sleep(0.1)
    raise AssertionError("no twistd process")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return found
