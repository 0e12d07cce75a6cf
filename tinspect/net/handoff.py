"""One layer handing a connection to the next.

A connection changes layers as its protocol is found out: the `Sniffer` hands it to
the TLS, HTTP/1.1 or HTTP/2 layer or to the raw relay; the TLS layer, once the client's
handshake is done, and the explicit proxy, once a CONNECT tunnel is open, hand it to a
new `Sniffer` (through ``ctx.next_layer``: no layer imports the dispatcher); the
HTTP/1.1 layer hands an upgraded connection to WebSocket or to the raw relay.

Theory of operation
-------------------
What travels is a `Handoff`: the client's shell, the server side as an `Upstream`
record (connecting, connected or failed), what each side has sent that the old layer
read but did not act on, and which of the old layer's `Leg` objects hold the
transports. `take_over` is the one way to switch, in this order:

1. `Handoff.release`: the old layer's producers are unregistered from its legs'
   transports and every reason it paused them for is lifted (`PauseReason.ALL`), so the
   new layer starts from transports nobody else holds;
2. the new layer becomes both shells' handler;
3. what was read early is replayed into the shells' handlers as if it came now, in the
   order it must arrive: the server's bytes, the server's EOF, the client's bytes, the
   client's EOF, and last the server connection's loss. Each is taken off the handoff
   before it is delivered, so a handler that hands the connection on again while it
   is being replayed (a `Sniffer` deciding) passes on only what is left.

A new layer that reads the `Upstream`'s state itself is made before `take_over`, from
the released handoff; `relay_raw` does that for the raw relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tinspect.chain import TapChain
from tinspect.flow import Flow
from tinspect.layers.raw import Leg, PauseReason, RawRelay
from tinspect.net.shells import ClientConnection, ClientHandler, ServerConnection, ServerHandler

__all__ = ["Upstream", "Handoff", "take_over", "relay_raw"]


@dataclass(slots=True)
class Upstream:
    """The server side of a connection, as one layer hands it to the next.

    Attributes:
        shell: the upstream `ServerConnection`.
        connecting: the connect Deferred while the connection is being made
            (cancel it to give up), else ``None``.
        transport: the connected transport (TLS already, after the TLS layer),
            else ``None``.
        failure: why the connection failed or is unusable, if it is.
        sticky: the failure is for good (the server failed TLS verification):
            HTTP requests get a 502 page naming it instead of a new connection.
    """

    shell: ServerConnection
    connecting: Deferred | None = None
    transport: Any = None
    failure: str | None = None
    sticky: bool = False


@dataclass(slots=True)
class Handoff:
    """A connection on its way from one layer to the next (see the module docstring).

    Attributes:
        flow: the connection's flow.
        client: the client's `ClientConnection` shell.
        upstream: the server side.
        on_closed: called once when the connection is done (passed from layer to layer).
        client_early: bytes the client sent that no layer has acted on yet.
        server_early: the same from the server.
        client_eof: the client half-closed after ``client_early``.
        server_eof: the server did, after ``server_early``.
        server_lost: the upstream connection is gone already (after its EOF).
        legs: the old layer's legs: its producers are registered on their
            transports and it may have paused them; `release` undoes both.
    """

    flow: Flow
    client: ClientConnection
    upstream: Upstream
    on_closed: Callable[[], None]
    client_early: bytes = b""
    server_early: bytes = b""
    client_eof: bool = False
    server_eof: bool = False
    server_lost: Failure | None = None
    legs: tuple[Leg, ...] = ()

    def release(self) -> None:
        """The old layer lets go of the transports (once; `take_over` calls it).

        A new layer that registers producers of its own, or reads, before it
        takes the shells over (WebSocket checks the server's ``101`` first) calls
        it earlier.
        """
        legs, self.legs = self.legs, ()
        for leg in legs:
            leg.transport.unregisterProducer()
        for leg in legs:
            leg.resume(PauseReason.ALL)


def take_over(handoff: Handoff, layer: ClientHandler, server: ServerHandler | None = None) -> None:
    """Hand the connection to ``layer``: the one way every layer switches.

    Args:
        handoff: the connection.
        layer: the client shell's handler from now on.
        server: the server shell's handler from now on; ``None`` when the new
            layer already put its own there (an HTTP layer wraps the shell in
            its upstream connection) or, a shell that failed to connect, none.
    """
    handoff.release()
    client, shell = handoff.client, handoff.upstream.shell
    client.handler = layer
    if server is not None:
        shell.handler = server
    # Each step reads the handlers again: one of them may have handed the connection on.
    if handoff.server_early:
        data, handoff.server_early = handoff.server_early, b""
        shell.handler.server_data(data)
    if handoff.server_eof:
        handoff.server_eof = False
        shell.handler.server_eof()
    if handoff.client_early:
        data, handoff.client_early = handoff.client_early, b""
        client.handler.client_data(data)
    if handoff.client_eof:
        handoff.client_eof = False
        client.handler.client_eof()
    if handoff.server_lost is not None:
        reason, handoff.server_lost = handoff.server_lost, None
        shell.handler.server_lost(reason)


def relay_raw(chain: TapChain, handoff: Handoff) -> RawRelay:
    """Hand the connection to a new raw relay (``flow.protocol`` becomes ``"tcp"``).

    Returns:
        The relay, both shells' handler now.
    """
    handoff.release()  # before the relay registers its own producers
    flow = handoff.flow
    flow.protocol = "tcp"
    relay = RawRelay(chain, flow, handoff.client.transport, on_closed=handoff.on_closed)
    up = handoff.upstream
    if up.transport is not None:
        relay.server_connected(up.transport)
    elif up.failure is not None:
        relay.server_failed(up.failure)
    take_over(handoff, relay, relay)
    return relay
