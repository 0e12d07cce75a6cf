"""The console hub: records fan out as server-sent events; slow subscribers are dropped."""

import json

from tinspect.console.hub import Hub, Subscriber, sse_event


class Sink:
    def __init__(self):
        self.out, self.closed, self.held = [], False, 0

    def sub(self):
        return Subscriber(self.out.append, lambda: self.held, self.close)

    def close(self):
        self.closed = True


def test_sse_event_is_one_data_line_of_json():
    """An event is ``data: <json>`` and a blank line, JSON without newlines."""
    ev = sse_event({"id": "1", "url": "a\nb"})
    assert ev.startswith(b"data: ") and ev.endswith(b"\n\n") and ev.count(b"\n") == 2
    assert json.loads(ev[6:]) == {"id": "1", "url": "a\nb"}


def test_new_subscriber_gets_the_ring_then_live_updates():
    """Joining replays kept records; later ones arrive as they are published."""
    hub = Hub(2)
    for i in range(3):
        hub.publish({"id": str(i)})
    sink = Sink()
    hub.subscribe(sink.sub())
    hub.publish({"id": "2", "status": 200})
    hub.flush()
    assert [json.loads(e[6:]) for e in sink.out] == [{"id": "1"}, {"id": "2"}, {"id": "2", "status": 200}]


def test_a_slow_subscriber_is_dropped_not_buffered():
    """A subscriber holding more than max_pending bytes is closed and forgotten; others go on."""
    hub = Hub(10, max_pending=100)
    slow, fast = Sink(), Sink()
    hub.subscribe(slow.sub())
    hub.subscribe(fast.sub())
    slow.held = 101
    hub.publish({"id": "1"})
    hub.flush()
    hub.publish({"id": "2"})
    hub.flush()
    assert slow.closed and slow.out == [] and hub.dropped == 1
    assert len(fast.out) == 2 and len(hub.subscribers) == 1


def test_without_a_page_open_nothing_is_serialised(monkeypatch):
    """Publishing with no subscriber only keeps the record: no JSON is made per update."""
    import tinspect.console.hub as hub_module

    made = []
    monkeypatch.setattr(hub_module, "sse_event", lambda record: made.append(record) or b"")
    hub = Hub(5)
    hub.publish({"id": "1"})
    hub.publish({"id": "1", "status": 200})
    assert made == [] and hub.ring.get("1") == {"id": "1", "status": 200}
    hub.subscribe(Sink().sub())
    hub.publish({"id": "2"})
    hub.flush()
    assert [r["id"] for r in made] == ["1", "2"]


def test_events_carry_the_summary_not_the_detail():
    """A subscriber gets a record without its detail; the ring keeps the detail."""
    hub = Hub(5)
    sink = Sink()
    hub.subscribe(sink.sub())
    hub.publish({"id": "1", "status": 200, "detail": {"request": {"headers": [["A", "b"]]}}})
    hub.flush()
    assert [json.loads(e[6:]) for e in sink.out] == [{"id": "1", "status": 200}]
    assert hub.ring.get("1")["detail"]["request"]["headers"] == [["A", "b"]]


def test_updates_between_flushes_are_one_event_in_the_latest_state():
    """A record published three times before a flush goes out once, as it is last; a flush with
    nothing changed sends nothing."""
    hub = Hub(5)
    sink = Sink()
    hub.subscribe(sink.sub())
    record = {"id": "1", "status": None}
    hub.publish(record)
    record["status"] = 200
    hub.publish(record)
    hub.publish({"id": "1", "done": True})
    hub.flush()
    hub.flush()
    assert [json.loads(e[6:]) for e in sink.out] == [{"id": "1", "status": 200, "done": True}]
