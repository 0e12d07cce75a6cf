"""SIGHUP, shared: whatever wants to reload on it (a tap's rules file) registers here.

One handler for the process calls every registered callback in the reactor
thread (`on_sighup`); a callback that raises is logged and the others still
run. Connections are untouched: a reload changes what later decisions see.
``twistd tinspect`` installs the handler at start (`handle_sighup`) even
when nothing registers, since SIGHUP's default action ends the process and
``systemctl reload`` sends it.
"""

from __future__ import annotations

import signal
from typing import Callable

from twisted.logger import Logger

__all__ = ["on_sighup", "handle_sighup"]

_log = Logger()
_callbacks: list[Callable[[], None]] = []


def on_sighup(callback: Callable[[], None]) -> None:
    """Call ``callback`` (in the reactor thread) on every SIGHUP from now on."""
    handle_sighup()
    _callbacks.append(callback)


def handle_sighup() -> None:
    """Take SIGHUP over for the reload (once; from the main thread)."""
    if signal.getsignal(signal.SIGHUP) is not _handler:
        signal.signal(signal.SIGHUP, _handler)


def _handler(signum: int, frame: object) -> None:
    from twisted.internet import reactor

    reactor.callFromThread(_run)


def _run() -> None:
    _log.info("SIGHUP: reloading")
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            _log.failure("reloading on SIGHUP failed in {callback!r}", callback=callback)
