"""The live web console: a bounded ring of flow records, its feed, filters and curl commands."""

from tinspect.console.ring import FlowRing, curl_command, heads, matches, summary

__all__ = ["FlowRing", "curl_command", "heads", "matches", "summary"]
