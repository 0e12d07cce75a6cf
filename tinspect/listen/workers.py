"""``--workers N``: N proxy processes sharing the listening ports.

The process twistd starts is worker 0. Every ``--listen`` endpoint is bound
with SO_REUSEPORT (`shared_endpoint`), so the kernel spreads new connections
over the workers' sockets. Once worker 0 is up (its CA loaded or generated,
so the others find it in the state directory), `Workers` starts workers
1..N-1 with the same command line plus ``--worker``, each its own twistd in
the foreground, and stops them when it stops. ``--udp`` listeners stay in
worker 0: UDP sessions are per process.

Each worker logs where worker 0 does, with ``.workerN`` after the log file's
name (to standard output when worker 0 logs there). A worker imports exactly
what worker 0 did: it starts with worker 0's ``sys.path`` (the current
directory made absolute), not with its own current directory first, which
would let a ``taps/`` or ``tinspect/`` folder there shadow the package. A
worker that exits while the service runs is logged and started again, after
a pause that doubles while it keeps dying young (1 s up to a minute).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from tinspect.listen.spec import SpecError
from tinspect.ops.signals import on_sighup

__all__ = ["shared_endpoint", "worker_argv", "Workers"]

_TWISTD = "import sys; sys.path[:] = {path!r}; from twisted.scripts.twistd import run; run()"

RESTART_DELAY = 1.0
"""Seconds before a worker that exited is started again; doubled for each
death within `STABLE` seconds of its start, up to `MAX_RESTART_DELAY`."""
MAX_RESTART_DELAY = 60.0
STABLE = 30.0


def shared_endpoint(endpoint: str) -> str:
    """``endpoint`` bound with SO_REUSEPORT: ``tproxy:`` gets
    ``reuseport=yes``, ``tcp:``/``tcp6:`` become ``tcpshared:``.

    Raises:
        SpecError: an endpoint type that cannot be shared.
    """
    kind, _, rest = endpoint.partition(":")
    if kind == "tproxy":
        return endpoint if "reuseport=" in rest else f"{endpoint}:reuseport=yes"
    if kind == "tcp":
        return f"tcpshared:{rest}"
    if kind == "tcp6":
        return f"tcpshared:{rest}" if "interface=" in rest else f"tcpshared:{rest}:interface=\\:\\:"
    if kind == "tcpshared":
        return endpoint
    raise SpecError(f"{endpoint!r}: --workers needs tcp:, tcp6: or tproxy: listeners")


def worker_argv(twistd_argv: list[str], tinspect_argv: list[str], n: int, metrics_socket: str | None = None,
                console_socket: str | None = None) -> list[str]:
    """The command line of worker ``n``: twistd in the foreground, logging
    next to worker 0, with ``tinspect_argv`` minus ``--workers`` plus
    ``--worker --worker-index n`` (and ``--worker-metrics metrics_socket``,
    where worker 0 sums its counters, and ``--worker-console console_socket``,
    where worker 0's console reads its records)."""
    logfile = _logfile(twistd_argv)
    log = "-" if logfile in (None, "-") else f"{logfile}.worker{n}"
    args: list[str] = []
    skip = False
    for arg in tinspect_argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            args.append(arg)
    path = [os.path.abspath(entry) for entry in sys.path]  # "" (the current directory) made absolute
    extra = ["--worker-metrics", metrics_socket] if metrics_socket else []
    if console_socket:
        extra += ["--worker-console", console_socket]
    return [sys.executable, "-c", _TWISTD.format(path=path), "--nodaemon", "--pidfile=", f"--logfile={log}", "tinspect",
            *args, "--worker", "--worker-index", str(n), *extra]


def _logfile(argv: list[str]) -> str | None:
    """twistd's ``-l``/``--logfile`` value in ``argv``, if any."""
    for i, arg in enumerate(argv):
        if arg in ("-l", "--logfile") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--logfile="):
            return arg.split("=", 1)[1]
        if arg.startswith("-l") and len(arg) > 2:
            return arg[2:]
        if arg == "tinspect":
            break
    return None


class _Worker(ProcessProtocol):
    """One run of worker ``n``: ``ended`` fires when its process has exited."""

    def __init__(self, service: "Workers", n: int, started: float) -> None:
        self.service = service
        self.n = n
        self.started = started
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        self.service._ended(self, reason)
        self.ended.callback(None)


class Workers(Service):
    """Starts and stops workers 1..count-1 beside this process.

    Args:
        reactor: the reactor.
        argvs: one command line per extra worker (`worker_argv`).
        metrics: the `tinspect.ops.metrics.Metrics` whose ``worker_restarts``
            counts the workers that exited and are started again.
    """

    _log = Logger()

    def __init__(self, reactor: Any, argvs: list[list[str]], metrics: Any = None) -> None:
        self.reactor = reactor
        self.argvs = argvs
        self.metrics = metrics
        self.running_workers: dict[int, tuple[_Worker, Any]] = {}
        self._delays: dict[int, float] = {}  # worker n -> the pause before its next restart
        self._restarts: dict[int, Any] = {}  # worker n -> the pending restart's DelayedCall
        self.setName("workers")

    def startService(self) -> None:
        super().startService()
        on_sighup(self._reload_workers)
        for n in range(1, len(self.argvs) + 1):
            self._start(n)

    def _start(self, n: int) -> None:
        self._restarts.pop(n, None)
        argv = self.argvs[n - 1]
        proto = _Worker(self, n, self.reactor.seconds())
        process = self.reactor.spawnProcess(proto, argv[0], argv, env=os.environ.copy(),
                                            childFDs={0: "w", 1: 1, 2: 2})
        self.running_workers[n] = (proto, process)
        self._log.info("worker {n} started (pid {pid})", n=n, pid=process.pid)

    def _reload_workers(self) -> None:
        """SIGHUP reloads the workers' taps too: pass it on."""
        for _, process in list(self.running_workers.values()):
            try:
                process.signalProcess(signal.SIGHUP)
            except Exception:  # ended meanwhile
                pass

    def _ended(self, proto: _Worker, reason: Any) -> None:
        self.running_workers.pop(proto.n, None)
        if not self.running:
            return
        n = proto.n
        if self.reactor.seconds() - proto.started >= STABLE:
            self._delays.pop(n, None)  # it had been up a while: a fresh start
        delay = self._delays.get(n, RESTART_DELAY)
        self._delays[n] = min(delay * 2, MAX_RESTART_DELAY)
        self._log.error("worker {n} exited: {reason}; starting it again in {delay:g} s",
                        n=n, reason=reason.getErrorMessage(), delay=delay)
        if self.metrics is not None:
            self.metrics.worker_restarts += 1
        self._restarts[n] = self.reactor.callLater(delay, self._start, n)

    def stopService(self) -> defer.Deferred:
        super().stopService()
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        waits = []
        for proto, process in list(self.running_workers.values()):
            try:
                process.signalProcess(signal.SIGTERM)
            except Exception:  # already gone
                continue
            waits.append(proto.ended)
        return defer.DeferredList(waits)
