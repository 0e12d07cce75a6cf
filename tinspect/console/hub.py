"""Sans-IO fan-out of console records to live subscribers (server-sent event streams).

Subscribers get records' summaries (`tinspect.console.ring.summary`): the
detail of a flow is fetched when it is opened, so an event stays small however
much the record holds. Each subscriber is a ``write`` callable plus a ``pending`` callable telling how many
bytes it has not yet handed to the kernel. A subscriber whose backlog passes
``max_pending`` is dropped (its ``close`` called) instead of buffered without bound:
a slow browser tab must not grow the proxy's memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from tinspect.console.ring import FlowRing, summary


def sse_event(record: dict[str, Any]) -> bytes:
    """One server-sent event (``data:`` line and blank line) carrying ``record`` as JSON."""
    return b"data: " + json.dumps(record, separators=(",", ":"), default=str).encode() + b"\n\n"


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

    def subscribe(self, sub: Subscriber) -> None:
        """Add ``sub`` and send it every kept record, oldest first."""
        self.subscribers.append(sub)
        for record in self.ring.records():
            sub.write(sse_event(summary(record)))

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its stream ended)."""
        if sub in self.subscribers:
            self.subscribers.remove(sub)

    def publish(self, record: dict[str, Any]) -> None:
        """Keep ``record`` and send its summary to every subscriber that keeps up
        (no serialising at all while no page is open)."""
        self.ring.put(record)
        if not self.subscribers:
            return
        event = sse_event(summary(self.ring.get(record["id"]) or record))
        for sub in list(self.subscribers):
            if sub.pending() > self.max_pending:
                self.unsubscribe(sub)
                self.dropped += 1
                sub.close()
                continue
            sub.write(event)
