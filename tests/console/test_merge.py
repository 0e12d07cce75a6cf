"""The console's fan-in over --workers, sans IO: whose a record is, merged lists and HAR files, the event splitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.console.hub import sse_event
from tinspect.console.merge import EventSplitter, merge_har, merge_summaries, worker_of


@pytest.mark.parametrize("record_id,worker", [("17", 0), ("17.2", 0), ("w1-4242-17.2", 1), ("w12-9-1", 12),
                                              ("w0-1-1", 0), ("w-1", 0), ("www.1", 0)])
def test_a_record_id_names_its_worker(record_id, worker):
    """Worker n's ids start with wN-; worker 0's are bare, and nothing else reads as a worker."""
    assert worker_of(record_id) == worker


def test_lists_merge_oldest_first_keeping_each_workers_order_on_ties():
    """Records of several workers come out by time; equal times keep the order the workers were asked in."""
    own = [{"id": "1", "time": 1.0}, {"id": "2", "time": 3.0}]
    w1 = [{"id": "w1-9-1", "time": 2.0}, {"id": "w1-9-2", "time": 3.0}]
    w2 = [{"id": "w2-8-1", "time": None}]  # a record without a time yet sorts first
    assert [r["id"] for r in merge_summaries([own, w1, w2])] == ["w2-8-1", "1", "w1-9-1", "2", "w1-9-2"]


def test_har_files_merge_into_one_log_in_order_of_start():
    """Every worker's entries land in the first document's log, ordered by startedDateTime."""
    log = {"version": "1.2", "creator": {"name": "tinspect", "version": ""}}
    a = {"log": {**log, "entries": [{"startedDateTime": "2026-12-08T02:00:02.000Z", "n": "a"}]}}
    b = {"log": {**log, "entries": [{"startedDateTime": "2026-12-08T02:00:01.000Z", "n": "b"},
                                    {"startedDateTime": "2026-12-08T02:00:03.000Z", "n": "c"}]}}
    merged = merge_har([a, b])
    assert merged["log"]["version"] == "1.2" and merged["log"]["creator"]["name"] == "tinspect"
    assert [e["n"] for e in merged["log"]["entries"]] == ["b", "a", "c"]
    assert merge_har([a])["log"]["entries"] == a["log"]["entries"]


def test_the_splitter_passes_data_events_and_drops_the_streams_own_config():
    """A worker's stream opens with a comment and its config: worker 0 passes on only the records."""
    s = EventSplitter()
    assert s.feed(b": tinspect console\n\nevent: config\ndata: {\"capacity\": 5}\n\n") == b""
    assert s.feed(b'data: {"id":"w1-2-1"}\n\ndata: {"id"') == b'data: {"id":"w1-2-1"}\n\n'
    assert s.feed(b':"w1-2-2"}\n\n') == b'data: {"id":"w1-2-2"}\n\n'


def test_an_unfinished_event_past_the_limit_ends_the_link():
    """A worker sending an endless event is cut off rather than buffered without bound."""
    s = EventSplitter(limit=64)
    s.feed(b"data: " + b"x" * 50)
    with pytest.raises(ValueError, match="over 64 bytes"):
        s.feed(b"x" * 20)
    s = EventSplitter(limit=64)
    with pytest.raises(ValueError, match="over 64 bytes"):
        s.feed(b'data: {}\n\ndata: ' + b"y" * 80)


@given(st.lists(st.dictionaries(st.sampled_from(["id", "url", "status"]), st.text(max_size=20)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_cut_of_the_stream_gives_the_same_events(records, cuts):
    """However a stream is cut into reads, the events passed on are the same bytes, whole."""
    stream = b"event: config\ndata: {}\n\n" + b"".join(sse_event(r) for r in records)
    s, out, at = EventSplitter(), b"", 0
    for n in cuts:
        out += s.feed(stream[at:at + n])
        at += n
    out += s.feed(stream[at:])
    assert out == b"".join(sse_event(r) for r in records)
