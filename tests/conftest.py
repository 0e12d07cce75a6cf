"""Shared fixtures: the namespace lab and a tinspect process inside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.memnet import Net
from tinspect.lab.netlab import Lab, LabError, Nginx, ProxyProcess, ServerPKI, remove_stale_labs
from tinspect.layers.tls.ca import CertificateAuthority

REPO = Path(__file__).resolve().parent.parent
DUAL = "tproxy:8080:interface=\\:\\:"


def pytest_collection_modifyitems(config, items):
    """Namespace tests need root. CI sets TINSPECT_REQUIRE_NETNS=1 so a missing
    privilege fails loudly instead of skipping."""
    if os.geteuid() == 0:
        return
    if os.environ.get("TINSPECT_REQUIRE_NETNS") == "1":
        raise pytest.UsageError("TINSPECT_REQUIRE_NETNS=1 but not root: the netns tests cannot run")
    skip = pytest.mark.skip(reason="needs root for network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def lab():
    """A fresh client / gateway / server lab, removed even when the test fails."""
    remove_stale_labs()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def proxy(lab, tmp_path):
    """Start ``twistd tinspect`` in the gateway: ``proxy(args, wait=[(port, proto)])``."""
    started = []

    def start(args, wait=(), env=None):
        environment = {"PYTHONPATH": str(REPO), "TINSPECT_STATE_DIR": str(tmp_path / "state")}
        environment.update(env or {})
        process = ProxyProcess(lab, lab.gateway, args, tmp_path / f"proxy{len(started)}.log", wait, environment)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def client_run(lab: Lab, *argv: str, timeout: float = 20) -> str:
    """Run a command in the client namespace and return its stdout (it must succeed)."""
    try:
        return lab.exec(lab.client, *argv, timeout=timeout).stdout
    except LabError as e:
        raise AssertionError(str(e)) from None


@pytest.fixture
def pki(tmp_path):
    """The lab server's own CA (``authority``, for more servers) and certificate (server.test and its
    addresses), and our state dir."""
    server = ServerPKI(tmp_path)
    state = tmp_path / "state"
    ours = CertificateAuthority.load_or_generate(state)
    (tmp_path / "our-ca.pem").write_bytes(ours.cert_pem)
    return {"chain": server.chain, "key": server.key, "state": state, "ours": tmp_path / "our-ca.pem",
            "server_ca": server.ca, "authority": server.authority}


@pytest.fixture
def https(lab, tmp_path, pki):
    web = Nginx(lab, lab.server, tmp_path / "nginx", tls=(pki["chain"], pki["key"]))
    (web.root / "index.html").write_text("hello tls\n")
    web.start()
    lab.wait_listening(lab.server, 443)
    return web


@pytest.fixture
def tls_proxy(lab, proxy, pki):
    """tinspect under TPROXY for ports 80 and 443, trusting the lab server's CA."""

    def start(*extra, trust=True, taps=("logger", "tests.lab_taps:TlsFacts")):
        lab.tproxy(8080, dports=[80, 443])
        args = ["--listen", DUAL, "--state-dir", str(pki["state"]), "--taps", ",".join(taps), *extra]
        if trust:
            args += ["--upstream-ca", str(pki["server_ca"])]
        return proxy(args, wait=[(8080, "tcp")])

    return start


@pytest.fixture
def make_net():
    """``make_net(taps, **settings)``: a fresh in-memory proxy (`tests.memnet.Net`) on a
    memory reactor, which txaio (autobahn's WebSocket layer) uses too; everything is shut
    at teardown."""
    import txaio

    nets = []
    old_loop = txaio.config.loop

    def make(taps=(), **settings):
        net = Net(taps, **settings)
        txaio.config.loop = net.reactor
        nets.append(net)
        return net

    yield make
    for net in nets:
        try:
            net.shutdown()
        except Exception:  # best effort: the test itself has already judged
            pass
    txaio.config.loop = old_loop


@pytest.fixture
def log_events():
    """Every log event emitted during the test, as dicts."""
    from twisted.internet.testing import EventLoggingObserver
    from twisted.logger import globalLogPublisher

    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)
