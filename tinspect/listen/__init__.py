"""Listeners: listen specs, endpoints, accept factories, workers.

The names of tinspect 0.1's ``tinspect.listen`` (the spec parsers) are
re-exported from `tinspect.listen.spec`.
"""

from tinspect.listen.spec import (
    DEFAULT_LISTEN,
    ListenSpec,
    SpecError,
    UDPSpec,
    parse_hostport,
    parse_listen,
    parse_udp,
    split_endpoint,
)

__all__ = ["SpecError", "ListenSpec", "UDPSpec", "parse_listen", "parse_udp", "parse_hostport", "split_endpoint",
           "DEFAULT_LISTEN"]
