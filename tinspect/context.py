"""What every connection of one proxy shares: settings, taps, live flows.

A `ProxyContext` is made once per `tinspect.proxy.Proxy` and handed to each
listener. It opens and closes flows (calling the taps' lifecycle hooks), so
every layer does that the same way, and keeps the set of live flows, which tests and the soak check count for leaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tinspect.chain import TapChain
from tinspect.flow import Flow

__all__ = ["Settings", "ProxyContext"]


@dataclass
class Settings:
    """Tunable limits and timeouts; defaults are what a user would expect.

    Attributes:
        connect_timeout: seconds to wait for an upstream TCP connection.
        udp_idle_timeout: seconds of silence after which a UDP session ends.
        udp_max_sessions: UDP sessions per listener; the oldest idle one is
            dropped to make room for a new client.
    """

    connect_timeout: float = 10.0
    udp_idle_timeout: float = 60.0
    udp_max_sessions: int = 4096


class ProxyContext:
    """Shared state of one proxy.

    Args:
        chain: the taps.
        settings: limits and timeouts.
        reactor: the reactor; the global one when ``None``.
    """

    def __init__(self, chain: TapChain, settings: Settings | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.chain = chain
        self.settings = settings or Settings()
        self.flows: dict[str, Flow] = {}

    def open_flow(self, flow: Flow) -> bool:
        """Register a flow and tell the taps.

        Returns:
            ``False`` when a tap's ``flow_opened`` raised: the caller must then
            close the connection (fail closed).
        """
        self.flows[flow.id] = flow
        failure = self.chain.flow_opened(flow)
        if failure is not None:
            flow.mark_ended(f"tap error opening the flow: {failure.getErrorMessage()}")
            return False
        return True

    def close_flow(self, flow: Flow, error: str | None = None) -> None:
        """Mark a flow ended, tell the taps, and forget it (idempotent)."""
        if self.flows.pop(flow.id, None) is None:
            return
        flow.mark_ended(error)
        self.chain.flow_closed(flow)
