"""Sans-IO fan-out of console records to live subscribers (server-sent event streams).

Subscribers get records' summaries (`tinspect.console.ring.summary`): the
detail of a flow is fetched when it is opened, so an event stays small however
much the record holds. Updates are coalesced: `publish` only marks a record
changed, and `flush` (the site calls it a few times a second while a page is
open) sends each changed record once, in its latest state, so a quick
exchange's three updates (request, response, end) cost one event, and a page
being open costs the proxy per interval, not per unit. Each subscriber is a
``write`` callable plus a ``pending`` callable telling how many
bytes it has not yet handed to the kernel. A subscriber whose backlog passes
``max_pending`` is dropped (its ``close`` called) instead of buffered without bound:
a slow browser tab must not grow the proxy's memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from tinspect.console.ring import FlowRing, LiveRecord, record_id, summary

_JSON = json.JSONEncoder(separators=(",", ":"), default=str)  # made once: json.dumps with default= makes one per call


def sse_event(record: dict[str, Any]) -> bytes:
    """One server-sent event (``data:`` line and blank line) carrying ``record`` as JSON."""
    return b"data: " + _JSON.encode(record).encode() + b"\n\n"


@dataclass
class Subscriber:
    """One live stream: where to write, how much it still holds, how to end it."""

    write: Callable[[bytes], None]
    pending: Callable[[], int]
    close: Callable[[], None]


class Hub:
    """The ring of recent records and the subscribers told of every change.

    Args:
        capacity: records kept (``--console-flows``).
        max_pending: bytes a subscriber may hold unsent before it is dropped.
    """

    def __init__(self, capacity: int, max_pending: int = 1 << 20) -> None:
        self.ring = FlowRing(capacity)
        self.max_pending = max_pending
        self.subscribers: list[Subscriber] = []
        self.dropped = 0
        self._changed: dict[str, dict[str, Any]] = {}  # records published since the last flush, by id

    def subscribe(self, sub: Subscriber) -> None:
        """Add ``sub`` and send it every kept record, oldest first."""
        self.subscribers.append(sub)
        for record in self.ring.entries():
            sub.write(sse_event(summary(record)))

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its stream ended)."""
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def publish(self, record: dict[str, Any] | LiveRecord) -> None:
        """Keep ``record``; the next `flush` sends it (nothing is noted while no page is open)."""
        self.ring.put(record)
        if self.subscribers:
            self._note(record)

    def changed(self, record: LiveRecord) -> None:
        """A `LiveRecord` published before has changed: the next `flush` sends it. The ring needs
        nothing (the record is its own latest state there), so with no page open this does nothing;
        nor does it bring back a record the ring has already let go."""
        if self.subscribers and self.ring.entry(record.id) is record:
            self._note(record)

    def _note(self, record: dict[str, Any] | LiveRecord) -> None:
        """Remember ``record`` for the next `flush` (at most as many as the ring holds)."""
        changed = self._changed
        changed[record_id(record)] = record
        if len(changed) > self.ring.capacity:  # more than the ring holds changed in one interval
            del changed[next(iter(changed))]

    def flush(self) -> None:
        """Send every record published since the last flush, once each, to every subscriber that keeps up."""
        if not self._changed:
            return
        changed, self._changed = self._changed, {}
        if not self.subscribers:
            return
        event = b"".join(sse_event(summary(self.ring.entry(key) or record)) for key, record in changed.items())
        for sub in list(self.subscribers):
            if sub.pending() > self.max_pending:
                self.unsubscribe(sub)
                self.dropped += 1
                sub.close()
                continue
            sub.write(event)
