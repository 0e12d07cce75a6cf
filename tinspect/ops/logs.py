"""``--log-json PATH``: the log as JSON Lines, one object per event, for log pipelines.

Each line is Twisted's JSON form of the event (its fields as data: the
logger tap's ``flow_id``, ``direction``, ``kind``, ``nbytes``, ``method``,
``url``, ``status``...) plus ``text``, the formatted message, and
``time``, the event's time as ISO 8601. ``-`` writes to standard output
(for containers and journald). It comes in addition to twistd's own log.
"""

from __future__ import annotations

import datetime
import sys
from typing import IO, Any

from twisted.application.service import Service
from twisted.logger import eventAsJSON, formatEvent, globalLogPublisher

__all__ = ["JsonLog"]


class JsonLog(Service):
    """Adds a JSON Lines observer to the global log while the service runs."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._out: IO[str] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._out = sys.stdout if self.path == "-" else open(self.path, "a", encoding="utf-8")
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        out = self._out
        if out is None:
            return
        record = dict(event)
        record["text"] = formatEvent(event)
        when = event.get("log_time")
        if when is not None:
            record["time"] = datetime.datetime.fromtimestamp(when, datetime.timezone.utc).isoformat()
        out.write(eventAsJSON(record) + "\n")
        out.flush()

    def stopService(self):
        super().stopService()
        globalLogPublisher.removeObserver(self)
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()
        self._out = None
