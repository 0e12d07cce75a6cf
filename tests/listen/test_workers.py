"""``--workers N``: port sharing, the workers' command lines, and two workers end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.conftest import DUAL, REPO
from tinspect.lab.netlab import SERVER_NAME
from tinspect.listen.spec import SpecError
from tinspect.listen.workers import MAX_RESTART_DELAY, STABLE, Workers, shared_endpoint, worker_argv
from tinspect.ops.metrics import Metrics


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
    assert argv[argv.index("tinspect"):] == ["tinspect", "--listen", "tproxy:8080", "--taps", "logger", "--worker",
                                             "--worker-index", "2"]
    assert "--logfile=/var/log/tinspect.log.worker2" in argv and "--nodaemon" in argv
    assert worker_argv(["-n", "tinspect"], ["--workers=3"], 1)[-4:] == ["tinspect", "--worker", "--worker-index", "1"]
    assert worker_argv(["-n", "tinspect"], [], 1, "/run/m.sock", "/run/c.sock")[-4:] == [
        "--worker-metrics", "/run/m.sock", "--worker-console", "/run/c.sock"]
    assert "--logfile=-" in worker_argv(["-n", "tinspect"], [], 1)


def test_twistd_refuses_workers_on_an_unshareable_listener(tmp_path):
    out = subprocess.run([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                          "--pidfile=", "tinspect", "--workers", "2", "--listen", "unix:" + str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode != 0
    assert "--workers needs tcp:, tcp6: or tproxy: listeners" in out.stdout + out.stderr


def test_a_worker_imports_what_worker_0_imported_wherever_it_was_started(tmp_path):
    """Started from a folder holding its own taps/ and tinspect/, a worker still loads the real package."""
    for name in ("taps", "tinspect"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("raise ImportError('the decoy in the current directory')\n")
    argv = worker_argv(["-n", "tinspect"], ["--help"], 1)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "--listen" in out.stdout


class _Process:
    def __init__(self, pid):
        self.pid = pid
        self.signals = []

    def signalProcess(self, sig):
        self.signals.append(sig)


class _Spawner(Clock):
    """A clock that records the processes it is asked to start."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, argv, env=None, childFDs=None):
        process = _Process(len(self.spawned) + 100)
        self.spawned.append((proto, process))
        return process


def _die(reactor):
    proto, _ = reactor.spawned[-1]
    proto.processEnded(Failure(RuntimeError("exit 1")))


def test_a_worker_that_dies_is_started_again_later_each_time_it_dies_young():
    """1 s, then 2 s, 4 s... up to the cap while it keeps dying (each restart counted); a worker that had run a
    while restarts after 1 s."""
    reactor = _Spawner()
    metrics = Metrics()
    workers = Workers(reactor, [["python3", "-c", "worker 1"]], metrics)
    workers.startService()
    assert len(reactor.spawned) == 1
    waits = []
    for _ in range(9):
        _die(reactor)
        before = len(reactor.spawned)
        waited = 0.0
        while len(reactor.spawned) == before:
            reactor.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1, 2, 4, 8, 16, 32, MAX_RESTART_DELAY, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    assert metrics.worker_restarts == 9  # tinspect_worker_restarts_total
    reactor.advance(STABLE)
    _die(reactor)
    reactor.advance(1)
    assert len(reactor.spawned) == 11 and set(workers.running_workers) == {1}


def test_a_stopped_service_starts_no_worker_again():
    """A restart pending when the service stops is cancelled, and a worker ending on stop is not restarted."""
    reactor = _Spawner()
    workers = Workers(reactor, [["python3", "-c", "worker 1"], ["python3", "-c", "worker 2"]])
    workers.startService()
    _die(reactor)  # worker 2 dies: a restart is pending
    workers.stopService()
    (proto1, process1), _ = reactor.spawned
    assert process1.signals  # worker 1 was told to stop
    proto1.processEnded(Failure(RuntimeError("terminated")))
    reactor.advance(MAX_RESTART_DELAY * 2)
    assert len(reactor.spawned) == 2 and reactor.getDelayedCalls() == []


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


@pytest.mark.netns
def test_one_scrape_sums_the_counters_of_every_worker(lab, https, proxy, pki):
    """With --workers 2 and --metrics, worker 0's /metrics counts the connections (the timed exchanges, the
    taps' times, the memory) of both workers."""
    from prometheus_client.parser import text_string_to_metric_families

    lab.tproxy(8080, dports=[443])
    p = proxy(["--listen", DUAL, "--state-dir", str(pki["state"]), "--upstream-ca", str(pki["server_ca"]),
               "--taps", "logger", "--workers", "2", "--metrics", "tcp:9108:interface=127.0.0.1"],
              wait=[(8080, "tcp"), (9108, "tcp")])
    deadline = time.monotonic() + 20
    while len(re.findall(r"users:", lab.exec(lab.gateway, "ss", "-Hltnp", "sport = :8080").stdout)) < 2:
        assert time.monotonic() < deadline, "the second worker did not listen"
        time.sleep(0.1)
    for _ in range(16):
        out = lab.exec(lab.client, "curl", "-sS", "--cacert", str(pki["ours"]), f"https://{SERVER_NAME}/",
                       check=False, timeout=30)
        assert out.returncode == 0 and out.stdout == "hello tls\n", out.stderr
    worker_log = Path(str(p.logfile) + ".worker1")
    served = [len(re.findall(r"to_server request GET https://server\.test/", log))
              for log in (p.log(), worker_log.read_text())]
    assert min(served) > 0, served  # both workers took connections, so a sum differs from worker 0's count
    text = lab.exec(lab.gateway, "curl", "-sS", "--max-time", "10", "http://127.0.0.1:9108/metrics").stdout
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert values["tinspect_workers_reporting"] == 2
    assert values["tinspect_connections_total"] == 16, text
    assert values["process_open_fds"] > 0
    buckets: dict[str, float] = {}  # le -> the count over every protocol (curl picks h2 or HTTP/1.1)
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            if s.name == "tinspect_http_response_seconds_bucket":
                buckets[s.labels["le"]] = buckets.get(s.labels["le"], 0) + s.value
    counts = list(buckets.values())
    assert list(buckets)[-1] == "+Inf" and counts == sorted(counts), buckets
    assert counts[-1] == 16, buckets  # both workers' exchanges
    assert values["process_resident_memory_bytes"] > 2 * 40 * 2**20, text  # two processes' RSS, summed
    taps = {s.labels["le"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "tinspect_tap_seconds_bucket" and s.labels["tap"] == "logger"}
    assert list(taps)[-1] == "+Inf" and list(taps.values()) == sorted(taps.values()), taps
    assert taps["+Inf"] >= 2 * 16, taps  # the logger saw each request and response, in either worker
