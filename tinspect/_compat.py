"""Every reach into the internals of a library the proxy runs on.

Theory of operation
-------------------
A few of the proxy's figures (a fifth of its time on small requests, a tenth
of it on downloads) and one RFC rule depend on what Twisted, h2, hpack, hyperframe
and autobahn do inside, beyond what they document. Each such reach lives in
this module and nowhere else, and ``tests/test_compat.py`` checks, for each,
that the library still has and does what it relies on, failing with the
library's version and what changed when an upgrade breaks it; it checks too
that no other module touches a private name of these libraries. Checked
against Twisted 26.10.0, h2 4.4.1, hpack 4.2.0, hyperframe 6.1.0 and autobahn 26.11.1.

1. Twisted's TCP write queue (`fast_write`). ``tcp.Connection.write``
   queues every write for the next reactor turn; when nothing is queued,
   the bytes may go to the socket at once. Relies on the concrete classes
   ``tcp.Server`` and ``tcp.Client``, and on the ``FileDescriptor``
   attributes that say nothing is queued: ``connected``, ``disconnecting``,
   ``_aborting`` (set by ``abortConnection``), ``_writeDisconnected`` (the
   write side is shut), ``dataBuffer`` and ``_tempDataBuffer`` (this turn's
   writes, not yet joined into ``dataBuffer``), and ``socket``.
2. Twisted's TLS layering (`fast_write`, `eager_tls_records`,
   `lazy_tls_records`, `tls_started`, `replay_into_tls`). ``startTLS`` on a
   TCP transport (``twisted.internet._newtls``) sets its ``TLS`` flag, puts
   a ``TLSMemoryBIOProtocol`` in ``transport.protocol``, which reads the
   ciphertext, and gives that protocol a ``_BypassTLS`` view of the
   connection as its ``transport``, looked up at every write of its
   records: replacing the attribute sends small records the way
   `fast_write` sends, and bytes read before ``startTLS`` (a ClientHello
   we peeked) are fed to ``transport.protocol``.
3. h2's GOAWAY handling (`GracefulH2Connection`). ``H2Connection.__init__``
   maps ``GoAwayFrame`` to the bound ``self._receive_goaway_frame(frame)``,
   which returns ``(frames, events)``; overriding it lets a NO_ERROR GOAWAY
   be reported without closing the state machine.
4. h2's closed-stream memory (`GracefulH2Connection`). ``H2Connection.__init__``
   sizes its ``_closed_streams`` record by ``self.MAX_CLOSED_STREAMS``, so
   an instance attribute set before it runs bounds it.
5. hyperframe's frame repr (`cheap_data_frame_repr`). ``Frame.__repr__``
   shows ``self._body_repr()``, which for ``DataFrame`` hexlifies the whole
   body (``_raw_data_repr(serialize_body())``) to keep 20 hex digits; h2
   builds ``repr(frame)`` for every frame it receives, logging on or not.
6. autobahn's log colours (`quiet_autobahn_colours`). ``autobahn.util.hl``
   (behind ``hltype``, ``hlval``...) colours text with click when
   ``autobahn.util._HAS_CLICK`` is true, and autobahn builds those texts for
   every frame it sends, debug on or not.
7. autobahn's read and failure paths (`AutobahnSide`). Its Twisted
   protocols' ``dataReceived`` builds a coloured debug line for every read,
   then calls ``WebSocketProtocol._dataReceived(data)``, which does the
   work; every failure of a connection (protocol violations, a message too
   big, bad UTF-8, handshake and close timeouts) goes through
   ``WebSocketProtocol._fail_connection(code, reason)``, which has no public
   hook.
8. Twisted's TCP client socket (`connect_from`). ``tcp.Connector._makeTransport``
   builds the ``tcp.Client``, whose ``__init__`` makes its socket with
   ``createInternetSocket`` and binds it to the connector's ``bindAddress``
   right after; overriding both sets IP_TRANSPARENT before that bind (to a
   client's address, which is not the gateway's), and the endpoints'
   ``_WrappingFactory`` turns the connect into a cancellable Deferred as
   ``TCP4ClientEndpoint.connect`` does.
9. Twisted's TLS layering, over a transport that is TLS already (`TLSInTLS`).
   ``startTLS`` exists on TCP transports only; a tunnel through an
   ``https://`` parent and a client of the HTTPS proxy listener run over a
   ``TLSMemoryBIOProtocol``. `TLSInTLS` adds a second one the way
   ``twisted.internet._newtls.startTLS`` adds the first: a
   ``TLSMemoryBIOProtocol`` built with ``_connectWrapped=False`` (the
   application protocol is connected already and must not hear
   ``connectionMade`` again), the producer moved over to it, ``TLS`` set and
   the TLS protocol in ``protocol``, which `replay_into_tls` feeds.
10. Twisted's ``ssl:`` server endpoint (`server_tls_context`).
   ``SSL4ServerEndpoint`` keeps its context factory in ``_sslContextFactory``,
   whose ``getContext()`` (``CertificateOptions`` caches it) is the one
   ``SSL.Context`` all the endpoint's connections are made from; pyOpenSSL
   refuses to change a context once a connection was made from it, so what
   is set on it is set before the endpoint listens.
11. hpack's debug lines (`quiet_hpack_debug`). ``hpack.hpack`` logs through
   its module-level ``log``, a stdlib logger, with ``log.debug(...)`` for
   every integer and every field it encodes or decodes, logging on or not;
   replacing the module attribute replaces what those calls reach.
12. h2's inbound header validation (`fast_header_validation`).
    ``H2Stream._process_received_headers`` calls ``validate_headers(headers,
    flags)`` as a global of ``h2.stream`` (imported from ``h2.utilities``);
    replacing that global replaces the pipeline of generators it builds.
    The replacement relies on h2's ``CONNECTION_HEADERS``,
    ``_ALLOWED_PSEUDO_HEADER_FIELDS``, ``_check_pseudo_header_field_acceptability``
    and on the ``HeaderValidationFlags`` fields ``is_trailer`` and
    ``is_response_header``.
13. Twisted's TLS read loop (`batched_tls_reads`).
    ``TLSMemoryBIOProtocol._flushReceiveBIO`` decrypts what one read of the
    socket fed into the receive BIO, ``recv(2**15)`` after ``recv`` until
    ``WantReadError``, and hands each piece to the application on its own;
    OpenSSL returns one record per call. The replacement keeps its loop and
    its handling of ``ZeroReturnError`` (``_shutdownTLS``,
    ``_tlsShutdownFinished(None)``) and ``Error`` (``_tlsShutdownFinished``
    with the failure), its attributes ``_tlsConnection``,
    ``_lostTLSConnection`` and ``_aborted``, and ``_flushSendBIO`` at the end.
14. zope.interface's cache of instance declarations, as Twisted's TLS
    wrapping and endpoints use it (`keep_declarations`).
    ``TLSMemoryBIOProtocol.makeConnection`` calls ``directlyProvides(self,
    interface)`` once for each interface its transport provides (each call
    replacing the last), ``startTLS`` (``twisted.internet._newtls``) calls
    ``directlyProvides(transport, ISSLTransport)``, and the endpoints'
    ``_WrappingProtocol`` calls it for each of ``IHalfCloseableProtocol``,
    ``IFileDescriptorReceiver`` and ``IHandshakeListener`` its protocol
    provides. ``directlyProvides`` takes the ``Provides(cls, *interfaces)``
    declaration from zope's cache, a ``WeakValueDictionary``; a declaration
    only a dead connection held (a replaced one at once) is dropped by the
    next garbage collection (declarations are in reference cycles), and
    making it again computes its resolution order: 2 of the 24 calls per
    intercepted connection made one, 160 us of its CPU.

autobahn is imported only by the functions that need it (the WebSocket
layer is imported on the first upgrade: autobahn is 8 MiB of RSS).
"""

from __future__ import annotations

import logging
from typing import Any

import h2.stream
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from h2.utilities import _ALLOWED_PSEUDO_HEADER_FIELDS as _PSEUDO_FIELDS
from h2.utilities import CONNECTION_HEADERS as _CONNECTION_FIELDS
from h2.utilities import (
    _check_pseudo_header_field_acceptability as _check_pseudo_fields,
)
from h2.utilities import validate_headers as _validate_headers_h2
from hyperframe.frame import DataFrame, GoAwayFrame
from OpenSSL.SSL import Error as SSLError
from OpenSSL.SSL import WantReadError, ZeroReturnError
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint, _WrappingFactory, _WrappingProtocol
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport, ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import Provides, alsoProvides, implementer, providedBy

from tinspect.net.sockets import make_transparent

__all__ = [
    "fast_write",
    "pending_bytes",
    "eager_tls_records",
    "lazy_tls_records",
    "tls_started",
    "replay_into_tls",
    "GracefulH2Connection",
    "cheap_data_frame_repr",
    "quiet_hpack_debug",
    "fast_header_validation",
    "batched_tls_reads",
    "quiet_autobahn_colours",
    "AutobahnSide",
    "connect_from",
    "TLSInTLS",
    "server_tls_context",
    "keep_declarations",
]


# -- 1. Twisted's TCP write queue -------------------------------------------------

class _TransparentClient(tcp.Client):
    """A TCP client whose socket may bind to an address that is not the host's."""

    def createInternetSocket(self):
        sock = super().createInternetSocket()
        make_transparent(sock, client=True)
        return sock


_TCP = (tcp.Server, tcp.Client, _TransparentClient)


def fast_write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but sent at once when nothing is queued.

    Twisted queues every write for the next reactor turn: two ``epoll_ctl``
    calls and a loop iteration per write, a fifth of the proxy's time on
    small requests. A plain TCP transport whose buffer is empty can hand the
    bytes to the socket now; what the socket does not take is queued as
    usual (so producers are paused as usual). A TLS transport encrypts on
    the ordinary path, and its records may go out the same way
    (`eager_tls_records`).
    """
    if type(transport) in _TCP and not transport.TLS:
        data = _send_now(transport, data)
        if not data:
            return
    transport.write(data)


def pending_bytes(transport: Any) -> int:
    """Bytes ``transport`` holds unsent (its ``dataBuffer`` and this turn's writes);
    the console measures slow readers by it."""
    return len(getattr(transport, "dataBuffer", b"")) + sum(map(len, getattr(transport, "_tempDataBuffer", ())))


def _send_now(connection: Any, data: bytes) -> bytes:
    """Give ``data`` to the TCP ``connection``'s socket now if nothing is
    queued before it; what is left for Twisted's buffer."""
    if (
        connection.connected
        and not connection._aborting  # an aborted connection sends nothing more
        and not connection.disconnecting
        and not connection._writeDisconnected
        and not connection.dataBuffer
        and not connection._tempDataBuffer
    ):
        try:
            sent = connection.socket.send(data)
        except OSError:  # would block, or an error the ordinary path meets again and reports
            return data
        return data[sent:] if sent else data
    return data


# -- 2. Twisted's TLS layering ----------------------------------------------------


class _EagerRecords:
    """What Twisted's TLS protocol writes its records to (its ``_BypassTLS``
    view of the TCP connection), but writing those of up to ``limit`` bytes
    through `_send_now`."""

    __slots__ = ("_bypass", "_connection", "limit")

    def __init__(self, bypass: Any, connection: Any, limit: int) -> None:
        self._bypass = bypass
        self._connection = connection
        self.limit = limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bypass, name)

    def write(self, data: bytes) -> None:
        if len(data) <= self.limit:
            data = _send_now(self._connection, data)
            if not data:
                return
        self._bypass.write(data)


def eager_tls_records(transport: Any, limit: int) -> None:
    """Send the TLS records of up to ``limit`` bytes that a TCP
    ``transport`` carries as `fast_write` sends (at once when nothing is
    queued); to call right after ``transport.startTLS``. Nothing on other
    transports."""
    if type(transport) in _TCP:
        tls = transport.protocol
        tls.transport = _EagerRecords(tls.transport, transport, limit)


def lazy_tls_records(transport: Any) -> None:
    """Leave every TLS record of ``transport`` to Twisted's buffer again
    (nothing to do unless `eager_tls_records` was called on it)."""
    records = getattr(getattr(transport, "protocol", None), "transport", None)
    if isinstance(records, _EagerRecords):
        records.limit = 0


# -- 14. the declarations Twisted's TLS wrapping and endpoints make ---------------

# (class, the interfaces it is declared with one at a time) -> the declarations, held.
# The key holds the transport's own declaration (ISSLTransport added to its class's),
# so that one is kept too. A handful of classes meet here; the bound is a safeguard.
_kept_declarations: dict[tuple[type, Any], tuple] = {}
_KEPT_DECLARATIONS = 64


def _keep(cls: type, interfaces: Any) -> None:
    key = (cls, interfaces)
    if key not in _kept_declarations and len(_kept_declarations) < _KEPT_DECLARATIONS:
        _kept_declarations[key] = tuple(Provides(cls, interface) for interface in interfaces)


def keep_declarations(transport: Any = None, protocol: Any = None) -> None:
    """Keep the zope.interface declarations Twisted makes for every new
    connection alive, so that each is made once, not once per connection
    (item 14 above).

    Args:
        transport: a transport ``startTLS`` was just called on: what its TLS
            protocol was declared with (an interface at a time, those of
            ``transport``), and ``transport``'s own.
        protocol: a protocol an endpoint is about to connect (its
            ``_WrappingProtocol``'s declarations, one per interface).
    """
    tls = getattr(transport, "protocol", None)
    if tls is not None:
        _keep(type(tls), providedBy(transport))
    if protocol is not None:
        _keep(_WrappingProtocol, providedBy(protocol))


def tls_started(transport: Any) -> bool:
    """Whether ``startTLS`` was called on ``transport``."""
    return getattr(transport, "TLS", False)


def replay_into_tls(transport: Any, data: bytes) -> None:
    """Feed ``data``, read from ``transport`` before ``startTLS`` was
    called on it, to the TLS layer ``startTLS`` added, as if read now."""
    transport.protocol.dataReceived(data)


# -- 3, 4. h2's GOAWAY handling and closed-stream memory --------------------------


class GracefulH2Connection(H2Connection):
    """h2's connection, except that a graceful GOAWAY lets streams finish,
    and that it remembers fewer closed streams.

    RFC 9113 §6.8: streams up to the GOAWAY's last stream id may complete.
    h2 closes the whole connection on any GOAWAY it receives, and drops what
    it had queued; a NO_ERROR GOAWAY is here only reported (as
    `ConnectionTerminated`), and the layer stops opening streams.

    h2 remembers how each of the last 65,536 closed streams closed, so that
    a HEADERS frame still in flight on a stream it reset gets RST_STREAM (a
    stream error) rather than GOAWAY (a connection error: every stream
    lost): about 10 MiB for every long-lived connection, on either leg.

    Args:
        config: h2's configuration.
        max_closed_streams: how many closed streams to remember.
    """

    def __init__(self, config: H2Configuration, max_closed_streams: int) -> None:
        self.MAX_CLOSED_STREAMS = max_closed_streams  # read by H2Connection.__init__
        super().__init__(config)

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list, list]:
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = ErrorCodes.NO_ERROR
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


# -- 5. hyperframe's frame repr ---------------------------------------------------


def _data_body_repr(frame: DataFrame) -> str:
    """What hyperframe's ``DataFrame`` repr shows of the body, from its
    first bytes only (the same text)."""
    padding = frame.serialize_padding_data()
    size = len(padding) + len(frame.data) + frame.pad_length
    if not size:
        return "None"
    digits = (padding + frame.data[:10] + bytes(min(frame.pad_length, 10)))[:10].hex()
    return f"<hex:{digits}...>" if size > 10 else f"<hex:{digits}>"


def cheap_data_frame_repr() -> None:
    """Make ``repr`` of a hyperframe ``DataFrame`` cost the same whatever
    its size: h2 builds it for every frame it receives, and hyperframe
    hexlifies the whole body for it, a tenth of the proxy's CPU time on a
    download."""
    DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign]


# -- 6, 7. autobahn ---------------------------------------------------------------


def quiet_autobahn_colours() -> None:
    """No ANSI colours in autobahn's log texts: it builds them for every
    frame it sends, debug on or not (a tenth of the proxy's CPU on small
    messages), and they would be escape codes in log files."""
    import autobahn.util

    autobahn.util._HAS_CLICK = False


class AutobahnSide:
    """Mixed in before one of autobahn's Twisted WebSocket protocols: reads
    without autobahn's per-read debug line, and `connection_failing` as the
    hook for every failure of the connection."""

    def dataReceived(self, data: bytes) -> None:
        # autobahn's builds a debug line, names coloured, for every read, debug on or not.
        self._dataReceived(data)

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        if self.state != self.STATE_CLOSED:
            self.connection_failing(code, reason)
        super()._fail_connection(code, reason)

    def connection_failing(self, code: int, reason: str) -> None:
        """autobahn is failing the open connection with ``code`` and
        ``reason`` (it closes it next); nothing by default."""


# -- 8. Twisted's TCP client socket ----------------------------------------------


class _TransparentConnector(tcp.Connector):
    def _makeTransport(self) -> tcp.Client:
        return _TransparentClient(self.host, self.port, self.bindAddress, self, self.reactor)


def connect_from(reactor: Any, host: str, port: int, factory: Any, timeout: float, source: str) -> Deferred:
    """Connect to the IP literal ``host`` from ``source``, an address of another
    machine (a client's: IP_TRANSPARENT), with an ephemeral port.

    Returns:
        A Deferred firing with the connected protocol (cancel it to give up);
        a socket that cannot be made transparent or bound fails it with
        ``ConnectBindError``.
    """
    wrapping = _WrappingFactory(factory)
    _TransparentConnector(host, port, wrapping, timeout, (source, 0), reactor).connect()
    return wrapping._onConnection


# -- 9. Twisted's TLS over a transport that is TLS already ------------------------


@implementer(ITLSTransport, IHandshakeListener)
class TLSInTLS(Protocol):
    """Between a TLS transport and the protocol using it: that protocol's
    transport, on which ``startTLS`` works as on TCP, adding TLS inside the TLS.

    Theory of operation: the outer transport (an ``https://`` parent's TLS, the
    HTTPS proxy listener's) delivers its plaintext here; until ``startTLS`` it
    goes on to ``wrapped``, whose calls (``write``, ``loseConnection``, the
    producer ones) go straight to the outer transport. ``startTLS`` puts a
    ``TLSMemoryBIOProtocol`` between the two, as Twisted's own does on TCP: it
    reads what the outer transport delivers and writes its records to it, and
    ``wrapped`` talks to it, through this same object, from then on (the
    layers keep the transport they were given). The outer transport is TLS from
    the start, so ``TLS`` is set from the start: TLS cannot half-close
    (`tinspect.layers.raw.Leg.shut_write` closes instead).

    Args:
        wrapped: the protocol that gets this object as its transport.
        client: whether TLS started here is a client's (towards a server) or a
            server's (towards a client).
    """

    TLS = True
    protocol: Any = None  # the inner TLSMemoryBIOProtocol once startTLS was called

    def __init__(self, wrapped: Any, client: bool) -> None:
        self.wrapped = wrapped
        self._client = client
        self._producer: tuple[Any, bool] | None = None

    # -- the outer transport's protocol --

    def connectionMade(self) -> None:
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        (self.protocol or self.wrapped).dataReceived(data)

    def handshakeCompleted(self) -> None:
        # The outer handshake; the inner TLS protocol tells ``wrapped`` of its own.
        if self.protocol is None and IHandshakeListener.providedBy(self.wrapped):
            self.wrapped.handshakeCompleted()

    def connectionLost(self, reason: Any) -> None:
        (self.protocol or self.wrapped).connectionLost(reason)

    # -- the wrapped protocol's transport --

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        """Start TLS inside the outer TLS (``normal``: in this object's ``client`` role)."""
        if self.protocol is not None:
            raise RuntimeError("TLS inside this transport is started already")
        producer = self._producer
        if producer is not None:
            self.unregisterProducer()
        client = self._client if normal else not self._client
        factory = TLSMemoryBIOFactory(contextFactory, client, None)
        self.protocol = tls = factory.protocol(factory, self.wrapped, False)
        alsoProvides(self, ISSLTransport)
        tls.makeConnection(self.transport)
        _keep(type(tls), providedBy(self.transport))
        if producer is not None:
            self.registerProducer(*producer)

    def write(self, data: bytes) -> None:
        (self.protocol or self.transport).write(data)

    def writeSequence(self, data: Any) -> None:
        (self.protocol or self.transport).writeSequence(data)

    def loseConnection(self) -> None:
        (self.protocol or self.transport).loseConnection()

    def abortConnection(self) -> None:
        (self.protocol or self.transport).abortConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        (self.protocol or self.transport).registerProducer(producer, streaming)
        self._producer = (producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        (self.protocol or self.transport).unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getHandle(self) -> Any:
        """The inner TLS connection once started, else the outer one."""
        return (self.protocol or self.transport).getHandle()

    def getPeerCertificate(self) -> Any:
        return (self.protocol or self.transport).getPeerCertificate()

    @property
    def negotiatedProtocol(self) -> bytes | None:
        """ALPN of the inner TLS once started, else of the outer one."""
        return (self.protocol or self.transport).negotiatedProtocol

    def setTcpNoDelay(self, enabled: bool) -> None:
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(enabled)


# -- 10. Twisted's ssl: server endpoint -------------------------------------------


def server_tls_context(endpoint: Any) -> Any:
    """The ``SSL.Context`` every connection of the ``ssl:`` server ``endpoint`` is made
    from (to configure before it listens).

    Raises:
        TypeError: ``endpoint`` is not an ``ssl:`` one.
    """
    if not isinstance(endpoint, SSL4ServerEndpoint):
        raise TypeError(f"not an ssl: endpoint: {endpoint!r}")
    return endpoint._sslContextFactory.getContext()
# -- 11. hpack's debug lines ----------------------------------------------------------


class _NoDebug:
    """A stdlib logger whose ``debug`` does nothing; everything else is the logger's."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


def quiet_hpack_debug() -> None:
    """Make hpack's debug lines cost one empty call each: it logs a few for
    every header field it encodes or decodes (64 calls into logging per
    request relayed between two HTTP/2 legs, debug on or not). Left alone
    when stdlib logging has debug on for hpack (tinspect logs through
    twisted.logger and never turns it on)."""
    import hpack.hpack

    log = hpack.hpack.log
    if isinstance(log, logging.Logger) and not log.isEnabledFor(logging.DEBUG):
        hpack.hpack.log = _NoDebug(log)


# -- 12. h2's inbound header validation ----------------------------------------------

# RFC 9113 §8.2.1: the bytes a field name may contain (no controls, SP, upper
# case, DEL or above); ':' is among them, and allowed only first.
_NAME_BYTES = bytes(range(0x21, 0x41)) + bytes(range(0x5B, 0x7F))
_VALUE_FORBIDDEN = b"\x00\r\n"


def _validate_headers_fast(headers: Any, flags: Any) -> list:
    """h2's inbound validation (``h2.utilities.validate_headers``) in one pass.

    Every field of a received header block goes through h2's pipeline of
    seven generators, two of which walk each name and value byte by byte in
    Python: a sixth of what the h2 library spends on a relayed request. This
    checks the same rules with ``bytes.translate`` and set lookups, and only
    to accept: a block it has any doubt about (anything h2 could refuse) goes
    through h2's own pipeline, which raises h2's own error, so that what is
    refused, and the error saying why, stay h2's. What it accepts h2 accepts
    (``tests/test_compat.py`` checks this on generated blocks).
    """
    if type(headers) is not list:
        headers = list(headers)
    request = not flags.is_response_header and not flags.is_trailer
    pseudo: set = set()
    regular = False
    method = authority = host = None
    doubt = False
    for header in headers:
        name = header[0]
        value = header[1]
        if not name or name.translate(None, _NAME_BYTES) or name.find(b":", 1) >= 0:
            doubt = True
            break
        if value and (len(value.translate(None, _VALUE_FORBIDDEN)) != len(value)
                      or value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09)):
            doubt = True
            break
        if name[0] == 0x3A:
            if regular or name in pseudo or name not in _PSEUDO_FIELDS:
                doubt = True
                break
            pseudo.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value and request:
                doubt = True
                break
        else:
            regular = True
            if name in _CONNECTION_FIELDS or (name == b"te" and value.lower() != b"trailers"):
                doubt = True
                break
            if name == b"host" and request:
                if host is not None:
                    doubt = True
                    break
                host = value
    if not doubt:
        _check_pseudo_fields(pseudo, method, flags)  # raises what h2's pipeline raises first
        if not request or (authority is not None or host is not None) and (
                authority is None or host is None or authority == host):
            return headers
    return list(_validate_headers_h2(headers, flags))


def fast_header_validation() -> None:
    """Have h2 validate received header blocks with `_validate_headers_fast`."""
    h2.stream.validate_headers = _validate_headers_fast


# -- 13. Twisted's TLS read loop ------------------------------------------------------

_TLS_RECV = 2**15  # what Twisted asks OpenSSL for per call (one record comes back)
_TWISTED_FLUSH_RECEIVE_BIO = TLSMemoryBIOProtocol._flushReceiveBIO  # what the replacement follows (the tests read it)


def _deliver_batch(tls: Any, chunks: list[bytes]) -> None:
    """Hand what the loop decrypted so far to the application, as one chunk."""
    if chunks and not tls._aborted:
        ProtocolWrapper.dataReceived(tls, chunks[0] if len(chunks) == 1 else b"".join(chunks))
        chunks.clear()


def _flush_receive_bio_batched(self: Any) -> None:
    """``TLSMemoryBIOProtocol._flushReceiveBIO``, but what one read of the
    socket decrypts reaches the application as one chunk."""
    chunks: list[bytes] = []
    while not self._lostTLSConnection:
        try:
            chunks.append(self._tlsConnection.recv(_TLS_RECV))
        except WantReadError:
            break
        except ZeroReturnError:  # close_notify: what came before it first, then the shutdown
            _deliver_batch(self, chunks)
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        except SSLError:
            failure = Failure()
            _deliver_batch(self, chunks)
            self._tlsShutdownFinished(failure)
    _deliver_batch(self, chunks)
    self._flushSendBIO()


def batched_tls_reads() -> None:
    """Deliver what one read of a TLS connection decrypts as one chunk, not
    one per TLS record.

    OpenSSL hands back one record (16 KiB at most) per ``SSL_read``, and
    Twisted passes each to the application on its own: a 64 KiB read of the
    socket became four passes through the HTTP/2 or HTTP/1.1 layer, each
    with its parse, its events, its pump and its writes, though one would do
    for all of it. What one pass gets stays bounded by one read of the
    socket (Twisted reads 64 KiB at a time) and what was left of a record
    before it.
    """
    TLSMemoryBIOProtocol._flushReceiveBIO = _flush_receive_bio_batched  # type: ignore[method-assign]
