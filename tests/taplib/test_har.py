"""tinspect.taplib.har: recorder records to HAR 1.2."""

from __future__ import annotations

from tinspect.taplib.har import encode_body, to_har


def exchange(**over):
    record = {
        "type": "exchange", "flow": "3", "client": ["192.0.2.2", 5000], "server": ["198.51.100.2", 443],
        "protocol": "h2",
        "request": {"method": "GET", "url": "https://a.example/p?q=1&r=", "version": "HTTP/2",
                    "headers": [["accept", "*/*"]], "body": {"size": 0}},
        "response": {"status": 200, "reason": "", "version": "HTTP/2",
                     "headers": [["content-type", "image/png"]], "body": encode_body(b"\x89PNG\x00", 100, 5)},
        "timings": {"start": 1000.0, "request_end": 1000.001, "response_start": 1000.011, "end": 1000.021},
    }
    record.update(over)
    return record


def test_an_exchange_becomes_an_entry_with_timings_query_and_binary_content():
    (entry,) = to_har([exchange()])["log"]["entries"]
    assert entry["startedDateTime"] == "1970-01-01T00:16:40.000+00:00"
    assert entry["time"] == 21.0
    assert entry["timings"]["send"] == 1.0 and entry["timings"]["wait"] == 10.0 and entry["timings"]["receive"] == 10.0
    assert entry["request"]["queryString"] == [{"name": "q", "value": "1"}, {"name": "r", "value": ""}]
    assert entry["response"]["content"] == {"size": 5, "mimeType": "image/png", "text": "iVBORwA=", "encoding": "base64"}
    assert entry["serverIPAddress"] == "198.51.100.2" and entry["connection"] == "3"


def test_an_exchange_without_response_keeps_its_error():
    (entry,) = to_har([exchange(response=None, error="client went away")])["log"]["entries"]
    assert entry["response"]["status"] == 0 and entry["comment"] == "client went away"


def test_bodies_are_capped_and_say_so():
    assert encode_body(b"abcdef", 4, 6) == {"size": 6, "truncated": True, "text": "abcd"}
    assert encode_body(b"ab", 4, 2) == {"size": 2, "text": "ab"}
