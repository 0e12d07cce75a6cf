"""Sans-IO core of the console's fan-in over ``--workers``: whose a record is, merged lists, the event splitter.

Every worker keeps its own records (`tinspect.console.hub.Hub`); worker 0,
which serves the page, asks the others for theirs (`tinspect.console.fanin`).
A record's id names its worker: worker ``n``'s flow ids start with
``w{n}-{pid}-`` (`tinspect.flow.set_id_prefix`), and the record ids are made from them, so
`worker_of` routes ``/api/flows/ID`` without asking anyone. The lists and
HAR files of several workers are merged here, and `EventSplitter` cuts a
worker's server-sent event stream into whole events for worker 0 to pass on
unparsed, holding at most ``limit`` bytes of an unfinished one.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

__all__ = ["worker_of", "merge_summaries", "merge_har", "EventSplitter", "EVENT_LIMIT"]

_WORKER = re.compile(r"w([1-9][0-9]*)-")

EVENT_LIMIT = 1 << 20
"""Bytes of one unfinished event a worker link may hold; a longer one ends the link."""


def worker_of(record_id: str) -> int:
    """The worker holding record ``record_id``: ``n`` for ``w{n}-...``, else 0 (worker 0's ids are bare)."""
    m = _WORKER.match(record_id)
    return int(m.group(1)) if m else 0


def merge_summaries(lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Several workers' record lists as one, oldest first (by ``time``; ties keep the workers' order)."""
    merged = [record for records in lists for record in records]
    merged.sort(key=lambda record: record.get("time") or 0)
    return merged


def merge_har(hars: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several HAR documents (`tinspect.taplib.har.to_har`) as one: the first's ``log``, every entry,
    in order of start (HAR's ``startedDateTime``, ISO 8601 in UTC, sorts as text)."""
    hars = list(hars)
    entries = [entry for har in hars for entry in har.get("log", {}).get("entries", ())]
    entries.sort(key=lambda entry: str(entry.get("startedDateTime", "")))
    return {"log": {**hars[0]["log"], "entries": entries}}


class EventSplitter:
    """Cuts a server-sent event stream into its ``data:`` events, each with its blank line.

    Comments and named events (the stream's ``config``) are left out: worker 0
    sends its own. Each fed chunk returns the events it completed, joined.

    Args:
        limit: bytes of one unfinished event held; past it `feed` raises.
    """

    def __init__(self, limit: int = EVENT_LIMIT) -> None:
        self.limit = limit
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        """The whole ``data:`` events ``data`` ended, as one bytes object.

        Raises:
            ValueError: an event longer than ``limit``.
        """
        buf = self._rest + data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            if len(buf) > self.limit:
                raise ValueError(f"a console event over {self.limit} bytes")
            self._rest = buf
            return b""
        self._rest = buf[cut + 2:]
        if len(self._rest) > self.limit:
            raise ValueError(f"a console event over {self.limit} bytes")
        return b"".join(event + b"\n\n" for event in buf[:cut].split(b"\n\n") if event.startswith(b"data: "))
