"""Micro-benchmark for tinspect.layers.http.http1.parse: microseconds per parse/serialize.

Run with ``python bench/micro_http1.py`` from the repository root.  Stdlib
only (``timeit``); each figure is the best of several repeats.
"""

from __future__ import annotations

import os
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from tinspect.layers.http.http1.parse import Http1Reader  # noqa: E402
from tinspect.layers.http.http1.write import serialize_request_head, serialize_response_head  # noqa: E402

CURL_GET = (
    b"GET /index.html HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)
BODY = b"x" * 1024
RESPONSE_HEADERS = [
    (b"Server", b"nginx/1.24.0"),
    (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
    (b"Content-Type", b"text/html"),
    (b"Content-Length", b"1024"),
    (b"Connection", b"keep-alive"),
]
RESPONSE = serialize_response_head(b"HTTP/1.1", 200, b"OK", RESPONSE_HEADERS) + BODY
REQUEST_HEADERS = [(b"Host", b"example.com"), (b"User-Agent", b"curl/8.5.0"), (b"Accept", b"*/*")]


def parse_request() -> None:
    Http1Reader("request").feed(CURL_GET)


def parse_response() -> None:
    reader = Http1Reader("response")
    reader.expect_response(b"GET")
    reader.feed(RESPONSE)


def parse_request_reused(reader: Http1Reader = Http1Reader("request")) -> None:
    reader.feed(CURL_GET)


def serialize_request() -> None:
    serialize_request_head(b"GET", b"/index.html", b"HTTP/1.1", REQUEST_HEADERS)


def serialize_response() -> None:
    serialize_response_head(b"HTTP/1.1", 200, b"OK", RESPONSE_HEADERS)


def bench(fn, number: int = 20000, repeat: int = 7) -> float:
    """Return the best time per call of ``fn`` in microseconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    """Print one line per measured operation."""
    cases = [
        ("parse curl GET head (new reader)", parse_request),
        ("parse curl GET head (kept-alive reader)", parse_request_reused),
        ("parse 1 KiB Content-Length response", parse_response),
        ("serialize curl GET head", serialize_request),
        ("serialize response head", serialize_response),
    ]
    total = 0.0
    for name, fn in cases:
        us = bench(fn)
        if fn is not parse_request_reused:
            total += us
        print(f"{name:42s} {us:7.2f} us")
    print(f"{'round trip (parse+serialize both)':42s} {total:7.2f} us")


if __name__ == "__main__":
    main()
