"""Shared fixtures: the namespace lab and a tinspect process inside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tinspect.netlab import Lab, LabError, ProxyProcess, remove_stale_labs

REPO = Path(__file__).resolve().parent.parent


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
