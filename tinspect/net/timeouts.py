"""Timers for connections that stall: one deadline at a time, cheap to keep alive.

A `Deadline` calls its handler once, ``seconds`` after `start`, unless it is
stopped, suspended or started again first. While it runs, `kick` says "there was
progress": a kick costs one integer increment (no timer is touched per
chunk of a body), and the check that finds kicks waits another ``seconds``.
So an idle deadline fires between ``seconds`` and twice ``seconds`` after
the last progress, and never while progress continues; a deadline nobody
kicks (a whole request head must arrive in time) fires after exactly
``seconds``. ``busy`` (optional) is asked at expiry: when it says the
silence is the proxy's own doing (it paused reading for back-pressure or a
slow tap), the deadline waits another round instead of firing.

A connection with many requests restarts its deadline two or three times
per request; `suspend` (between two periods) and `start` leave an already
scheduled timer alone where they can, moving only the due time it checks
when it fires, so that a keep-alive connection does not pay for two
timer-heap operations per request. `stop` cancels the timer: call it when
the connection ends, so no timer keeps a finished layer alive.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["Deadline"]


class Deadline:
    """One restartable deadline.

    Args:
        reactor: provides ``callLater`` and ``seconds``.
        on_expire: called with the ``what`` given to `start`.
        busy: asked at expiry; ``True`` postpones it by another period.
    """

    __slots__ = ("_reactor", "_on_expire", "_busy", "_call", "_kicks", "_seen", "_seconds", "_due", "what")

    def __init__(self, reactor: Any, on_expire: Callable[[str], None], busy: Callable[[], bool] | None = None) -> None:
        self._reactor = reactor
        self._on_expire = on_expire
        self._busy = busy
        self._call: Any = None
        self._kicks = 0
        self._seen = 0
        self._seconds = 0.0
        self._due = 0.0
        self.what: str | None = None  # what is being waited for, while running

    @property
    def running(self) -> bool:
        return self.what is not None

    def start(self, seconds: float, what: str) -> None:
        """Expire ``seconds`` from now (replacing any earlier deadline)."""
        self._seconds = seconds
        self._seen = self._kicks
        self.what = what
        self._due = self._reactor.seconds() + seconds
        call = self._call
        if call is None:
            self._call = self._reactor.callLater(seconds, self._check)
        elif call.getTime() > self._due:
            # Not ``call.reset``: moving a call sooner makes Twisted search its timer heap
            # linearly (22 s of 67 with 6,000 connections open), where a cancel is O(1)
            # and its slot is swept out in bulk later.
            call.cancel()
            self._call = self._reactor.callLater(seconds, self._check)
        # else the timer fires early, finds the due time later and waits on

    def kick(self) -> None:
        """Progress: the current period does not end in expiry."""
        self._kicks += 1

    def suspend(self) -> None:
        """Stop until the next `start`, keeping the timer (see the module's docstring)."""
        self.what = None

    def stop(self) -> None:
        """Stop, and cancel the timer."""
        self.what = None
        call = self._call
        if call is not None:
            self._call = None
            call.cancel()

    def _check(self) -> None:
        self._call = None
        if self.what is None:
            return  # suspended
        now = self._reactor.seconds()
        if now < self._due:
            self._call = self._reactor.callLater(self._due - now, self._check)
            return
        if self._kicks != self._seen or (self._busy is not None and self._busy()):
            self._seen = self._kicks
            self._due = now + self._seconds
            self._call = self._reactor.callLater(self._seconds, self._check)
            return
        what, self.what = self.what, None
        self._on_expire(what)
