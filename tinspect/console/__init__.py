"""The live web console: a bounded ring of flow summaries, their filters and curl commands."""

from tinspect.console.ring import FlowRing, curl_command, flow_record, heads, matches

__all__ = ["FlowRing", "curl_command", "flow_record", "heads", "matches"]
