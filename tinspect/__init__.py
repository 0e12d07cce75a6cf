"""tinspect: a transparent inspection proxy on Twisted.

The public API: units, the `Tap` base class, `Flow`, `Headers` (with
`to_bytes`), `format_addr` and `reason_phrase`, and `Proxy` for scripts. A
tap imports from here and from `tinspect.taplib`, the toolkit for taps.
The module paths of tinspect 0.1 still import (`tinspect._moved`).
"""

from tinspect import _moved
from tinspect.chain import Tap, TapChain
from tinspect.context import Settings
from tinspect.flow import Flow, FlowClosed
from tinspect.headers import Headers, to_bytes
from tinspect.net.addresses import format_addr
from tinspect.proxy import ListenError, Proxy
from tinspect.units import (
    TO_CLIENT,
    TO_SERVER,
    BodyChunk,
    Data,
    Datagram,
    Direction,
    MessageEnd,
    Request,
    Response,
    Unit,
    WebSocketClose,
    WebSocketMessage,
    reason_phrase,
)

__all__ = [
    "Tap",
    "TapChain",
    "Flow",
    "FlowClosed",
    "Proxy",
    "ListenError",
    "Settings",
    "Unit",
    "Data",
    "Datagram",
    "Request",
    "Response",
    "BodyChunk",
    "MessageEnd",
    "WebSocketMessage",
    "WebSocketClose",
    "Headers",
    "Direction",
    "TO_SERVER",
    "TO_CLIENT",
    "to_bytes",
    "format_addr",
    "reason_phrase",
]

_moved.install()
