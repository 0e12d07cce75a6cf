"""HAR 1.2 from the ``recorder`` tap's JSON Lines (sans-IO but for the CLI).

`to_har` turns the recorder's exchange records into a HAR 1.2 log that
browser developer tools (Chromium's and Firefox's Network panels) import;
WebSocket message records become ``_webSocketMessages`` of the entry of
their flow's upgrade, as Chromium writes them. ``python3 -m tinspect har
RECORDING.jsonl OUT.har`` converts a recording.
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlsplit

__all__ = ["to_har", "convert", "encode_body"]


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="milliseconds")


def _ms(a: float | None, b: float | None) -> float:
    return round((b - a) * 1000, 3) if a is not None and b is not None and b >= a else -1


def _headers(fields: list) -> list[dict]:
    return [{"name": name, "value": value} for name, value in fields]


def _mime(fields: list) -> str:
    for name, value in fields:
        if name.lower() == "content-type":
            return value
    return ""


def _content(body: dict | None, fields: list) -> dict:
    content: dict[str, Any] = {"size": body["size"] if body else 0, "mimeType": _mime(fields)}
    if body and "text" in body:
        content["text"] = body["text"]
    elif body and "base64" in body:
        content["text"], content["encoding"] = body["base64"], "base64"
    return content


def _entry(r: dict) -> dict:
    req, resp, t = r["request"], r.get("response"), r["timings"]
    entry: dict[str, Any] = {
        "startedDateTime": _iso(t["start"]),
        "time": max(_ms(t["start"], t.get("end") or t.get("request_end")), 0),
        "request": {
            "method": req["method"], "url": req["url"], "httpVersion": req["version"],
            "headers": _headers(req["headers"]), "cookies": [],
            "queryString": [{"name": k, "value": v} for k, v in parse_qsl(urlsplit(req["url"]).query,
                                                                          keep_blank_values=True)],
            "headersSize": -1, "bodySize": req["body"]["size"] if req.get("body") else 0,
        },
        "response": {
            "status": resp["status"] if resp else 0, "statusText": resp["reason"] if resp else "",
            "httpVersion": resp["version"] if resp else "", "headers": _headers(resp["headers"]) if resp else [],
            "cookies": [], "content": _content(resp.get("body") if resp else None, resp["headers"] if resp else []),
            "redirectURL": "", "headersSize": -1,
            "bodySize": resp["body"]["size"] if resp and resp.get("body") else (0 if resp else -1),
        },
        "cache": {},
        "timings": {
            "blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
            "send": max(_ms(t["start"], t.get("request_end")), 0),
            "wait": max(_ms(t.get("request_end"), t.get("response_start")), 0),
            "receive": max(_ms(t.get("response_start"), t.get("end")), 0),
        },
        "serverIPAddress": r.get("server", [""])[0] if r.get("server") else "",
        "connection": r["flow"],
    }
    body = req.get("body")
    if body and ("text" in body or "base64" in body):
        entry["request"]["postData"] = {"mimeType": _mime(req["headers"]), "text": body.get("text", body.get("base64"))}
    if r.get("error"):
        entry["comment"] = r["error"]
    return entry


def to_har(records: Iterable[dict], creator_version: str = "") -> dict:
    """A HAR 1.2 document from recorder records (exchanges and WebSocket messages)."""
    entries: list[dict] = []
    upgrades: dict[str, dict] = {}
    for r in records:
        if r.get("type") == "exchange":
            entry = _entry(r)
            entries.append(entry)
            if r.get("response") and r["response"]["status"] == 101:
                entry["_resourceType"] = "websocket"
                entry["_webSocketMessages"] = []
                upgrades[r["flow"]] = entry
        elif r.get("type") == "websocket" and r["flow"] in upgrades:
            upgrades[r["flow"]]["_webSocketMessages"].append({
                "type": "send" if r["direction"] == "to_server" else "receive",
                "time": r["time"], "opcode": 2 if r["binary"] else 1,
                "data": r.get("text", r.get("base64", "")),
            })
    return {"log": {"version": "1.2", "creator": {"name": "tinspect", "version": creator_version},
                    "entries": entries}}


def convert(jsonl_text: str, creator_version: str = "") -> str:
    """The HAR JSON for a recording's text."""
    records = []
    for line in jsonl_text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a crash or a full disk: the others still count
    return json.dumps(to_har(records, creator_version), indent=1)


def encode_body(data: bytes, cap: int, total: int) -> dict:
    """How a recorded body is stored: its size, and up to ``cap`` bytes as text (UTF-8) or base64."""
    out: dict[str, Any] = {"size": total}
    kept = data[:cap]
    if total > len(kept):
        out["truncated"] = True
    try:
        out["text"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        out["base64"] = base64.b64encode(kept).decode("ascii")
    return out
