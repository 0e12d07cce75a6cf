"""Glue tests of the HTTP/2 layer on in-memory transports, with the h2 library as both peers.

The client (``c``) is an h2 client-side `H2Connection` on a `tests.memnet.Peer`,
the server (``s``) an h2 server-side one on the peer of the dial the proxy
made; `Wire.run` moves bytes between them and the proxy until nobody has
anything more to say. Every assertion is on what a peer's own h2 state
machine decoded (events, bodies, error codes), or on raw frames where a
peer's library would hide them. Most tests use a flow as TLS interception
leaves it with ALPN h2 on both legs (`Net.intercepted`); the cleartext tests
use the preface (prior knowledge) and the probe.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    PingAckReceived,
    PushedStreamReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from h2.settings import Settings as H2Settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from tests.memnet import SERVER_ADDR, Net, Record
from tinspect.chain import Tap
from tinspect.layers.http.h2.conn import CONNECTION_WINDOW, STREAM_WINDOW
from tinspect.layers.http.h2.layer import MAX_RESETS
from tinspect.layers.http.h2.upstream import MAX_H1, known_h1_only, remember_h1_only
from tinspect.layers.http.http1.parse import BodyData, EndOfMessage, Http1Reader, RequestHead
from tinspect.layers.sniff import H2_PREFACE
from tinspect.units import BodyChunk, MessageEnd, Request, Response

CLEAN = {"flows": {}, "open": [], "timers": []}
MiB = 1 << 20

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4


# ---------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------


class Stream:
    """What one peer received on one stream."""

    def __init__(self):
        self.headers = None  # the final head (request or response), a dict of bytes
        self.informational = []
        self.data = bytearray()
        self.trailers = None
        self.ended = False
        self.reset = None  # the error code of a RST_STREAM received

    def __repr__(self):
        return f"<Stream {self.headers} {len(self.data)}B trailers={self.trailers} ended={self.ended} reset={self.reset}>"


class H2Peer:
    """An h2 state machine on one `Peer`, recording what it receives.

    Args:
        peer: the memnet peer (the remote end of one proxy connection).
        client_side: an h2 client (else a server).
        settings: SETTINGS values to announce in the preface.
        consume: acknowledge received DATA at once (an eager reader); when
            ``False`` the test calls `consume` itself.
    """

    def __init__(self, peer, *, client_side, settings=None, consume=True):
        self.peer = peer
        self.conn = conn = H2Connection(H2Configuration(client_side=client_side, header_encoding=None))
        if settings:
            conn.local_settings = H2Settings(client=client_side, initial_values=settings)
        conn.initiate_connection()
        self.consume_at_once = consume
        self.finish_after_goaway = False
        self.streams: dict[int, Stream] = {}
        self.events = []
        self.goaway = None  # the first GOAWAY received
        self.goaways = []
        self.unconsumed = []  # (stream_id, flow_controlled_length) not yet acknowledged
        self.received = 0  # DATA bytes received, all streams
        self._out = b""
        self._queue: dict[int, list] = {}  # stream -> [bytearray data, end, trailers]

    def stream(self, sid):
        st = self.streams.get(sid)
        if st is None:
            st = self.streams[sid] = Stream()
        return st

    # -- sending --

    def send_raw(self, data):
        """Bytes for the proxy, bypassing the state machine."""
        self._out += data

    def queue(self, sid, data, *, end=True, trailers=None):
        """Body data to send on ``sid`` as the proxy's windows allow (streams served in order)."""
        q = self._queue.setdefault(sid, [bytearray(), False, None])
        q[0] += data
        q[1] = end
        q[2] = trailers

    def _pump_queue(self):
        conn = self.conn
        for sid in list(self._queue):
            buf, end, trailers = self._queue[sid]
            while buf:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(buf))
                if room <= 0:
                    break
                last = room == len(buf) and end and trailers is None
                conn.send_data(sid, bytes(buf[:room]), end_stream=last)
                del buf[:room]
                if last:
                    del self._queue[sid]
            if not buf and sid in self._queue and end:
                if trailers is not None:
                    conn.send_headers(sid, trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                del self._queue[sid]

    def consume(self, limit=None):
        """Acknowledge DATA received so far (up to ``limit`` bytes)."""
        left = limit
        while self.unconsumed:
            sid, n = self.unconsumed[0]
            if left is not None:
                if left <= 0:
                    break
                if n > left:
                    self.unconsumed[0] = (sid, n - left)
                    n = left
                else:
                    self.unconsumed.pop(0)
                left -= n
            else:
                self.unconsumed.pop(0)
            if n:
                self.conn.acknowledge_received_data(n, sid)

    def write(self):
        """Send what the state machine (and the queue) have for the proxy; True if anything went."""
        if self._queue and (self.goaway is None or self.finish_after_goaway):
            self._pump_queue()
        self._out += self.conn.data_to_send()
        peer = self.peer
        if not self._out or peer.lost or peer.transport.disconnecting or peer.paused:
            return False
        data, self._out = self._out, b""
        peer.send(data)
        return True

    # -- receiving --

    def read(self):
        """Decode what the proxy wrote; True if it wrote anything."""
        data = self.peer.take()
        if not data:
            return False
        events = self.conn.receive_data(data)
        if self.finish_after_goaway and any(type(e) is ConnectionTerminated and not e.error_code for e in events):
            # Like real servers (and RFC 9113 §6.8), go on with the streams already open after a
            # graceful GOAWAY; the h2 library would close its state machine.
            from h2.connection import ConnectionState
            self.conn.state_machine.state = ConnectionState.CLIENT_OPEN if self.conn.config.client_side else ConnectionState.SERVER_OPEN
        self.events.extend(events)
        for event in events:
            kind = type(event)
            if kind in (RequestReceived, ResponseReceived):
                self.stream(event.stream_id).headers = dict(event.headers)
            elif kind is InformationalResponseReceived:
                self.stream(event.stream_id).informational.append(dict(event.headers))
            elif kind is DataReceived:
                self.stream(event.stream_id).data += event.data
                self.received += len(event.data)
                if self.consume_at_once:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                else:
                    self.unconsumed.append((event.stream_id, event.flow_controlled_length))
            elif kind is TrailersReceived:
                self.stream(event.stream_id).trailers = dict(event.headers)
            elif kind is StreamEnded:
                self.stream(event.stream_id).ended = True
            elif kind is StreamReset:
                self.stream(event.stream_id).reset = event.error_code
            elif kind is ConnectionTerminated:
                self.goaways.append(event)
                if self.goaway is None:
                    self.goaway = event
        return True

    def of(self, kind):
        return [e for e in self.events if type(e) is kind]


class H2Client(H2Peer):
    def __init__(self, peer, *, authority=b"a.example", scheme=b"https", **kwargs):
        super().__init__(peer, client_side=True, **kwargs)
        self.authority = authority
        self.scheme = scheme

    def request(self, path=b"/", method=b"GET", *, body=b"", end=True, extra=(), sid=None):
        """Open a stream; ``end`` with an empty body ends it with the HEADERS frame."""
        sid = sid or self.conn.get_next_available_stream_id()
        headers = [(b":method", method), (b":scheme", self.scheme), (b":authority", self.authority),
                   (b":path", path), *extra]
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.stream(sid)
        return sid


class H2Server(H2Peer):
    def __init__(self, peer, **kwargs):
        super().__init__(peer, client_side=False, **kwargs)

    def respond(self, sid, status=200, body=b"", *, extra=(), end=True, trailers=None):
        """Answer ``sid``: the head now, the body through the window-aware queue."""
        self.conn.send_headers(sid, [(b":status", b"%d" % status), *extra],
                               end_stream=end and not body and trailers is None)
        if body or trailers is not None or (end and (body or trailers is not None)):
            self.queue(sid, body, end=end, trailers=trailers)

    def requests(self):
        """``{stream id: path}`` of the requests received so far."""
        return {sid: st.headers[b":path"] for sid, st in self.streams.items() if st.headers is not None}


class Wire:
    """Moves bytes between h2 peers and the proxy until nothing moves any more."""

    def __init__(self, net, *peers):
        self.net = net
        self.peers = list(peers)
        self.rounds = 0

    def add(self, peer):
        self.peers.append(peer)
        return peer

    def run(self, limit=100000, each=None):
        for _ in range(limit):
            progress = False
            for p in self.peers:
                if p.write():
                    progress = True
            for p in self.peers:
                if p.read():
                    progress = True
            if each is not None and each():
                progress = True
            self.rounds += 1
            if not progress:
                return
        raise AssertionError("the conversation did not settle")


def h2_pair(net, *, server_settings=None, client_settings=None, consume=True, server_consume=True):
    """A client of an intercepted h2 flow and the h2 server the proxy dialled; SETTINGS exchanged."""
    c = H2Client(net.intercepted("h2"), settings=client_settings, consume=consume)
    (dial,) = net.dials
    assert dial.dst == SERVER_ADDR
    s = H2Server(dial.accept(), settings=server_settings, consume=server_consume)
    wire = Wire(net, c, s)
    wire.run()
    return c, s, wire


def h(stream, name):
    return stream.headers.get(name)


def frames(data):
    """``[(type, flags, stream, payload)]`` of raw HTTP/2 frames (server-to-client bytes, no preface)."""
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if len(data) < 9 + length:
            break
        kind, flags = data[3], data[4]
        sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        out.append((kind, flags, sid, data[9:9 + length]))
        data = data[9 + length:]
    return out


def frame(kind, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


def goaways(data):
    """``[(last_stream_id, error_code)]`` of the GOAWAY frames in raw bytes."""
    out = []
    for kind, _, _, payload in frames(data):
        if kind == GOAWAY:
            last, code = struct.unpack(">II", payload[:8])
            out.append((last & 0x7FFFFFFF, code))
    return out


def sha(data):
    return hashlib.sha256(data).hexdigest()


def pattern(size, seed=0):
    """``size`` deterministic, non-repeating-looking bytes."""
    block = hashlib.sha256(b"%d" % seed).digest() * 64  # 2 KiB
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(block + i.to_bytes(4, "big")).digest() * 32
        i += 1
    return bytes(out[:size])


# ---------------------------------------------------------------------------
# 1, 2: requests, streamed bodies, trailers
# ---------------------------------------------------------------------------


def test_get_and_streamed_post_through_h2_both_sides(make_net):
    """A GET and a POST whose body streams in three reads: the server gets both requests with their
    pseudo-fields, the client both answers; the tap's Requests carry the pseudo-fields and stream ids."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    flow = tap.flows[0]
    get = c.request(b"/a?q=1", extra=[(b"accept", b"*/*")])
    post = c.request(b"/upload", b"POST", end=False, extra=[(b"content-type", b"text/plain")])
    wire.run()
    assert set(s.requests().values()) == {b"/a?q=1", b"/upload"}
    up = {path: sid for sid, path in s.requests().items()}
    sget, spost = s.stream(up[b"/a?q=1"]), s.stream(up[b"/upload"])
    assert sget.headers[b":method"] == b"GET" and sget.headers[b":authority"] == b"a.example"
    assert sget.headers[b":scheme"] == b"https" and sget.headers[b"accept"] == b"*/*"
    assert sget.ended and not spost.ended
    for part in (b"one,", b"two,", b"three"):
        c.conn.send_data(post, part)
        wire.run()
    assert bytes(spost.data) == b"one,two,three" and not spost.ended
    c.conn.end_stream(post)
    wire.run()
    assert spost.ended and spost.headers[b":method"] == b"POST"
    assert spost.headers[b"content-type"] == b"text/plain"
    s.respond(up[b"/a?q=1"], 200, b"got it", extra=[(b"content-type", b"text/plain")])
    s.respond(up[b"/upload"], 201, b"")
    wire.run()
    assert c.stream(get).headers[b":status"] == b"200" and bytes(c.stream(get).data) == b"got it"
    assert c.stream(get).headers[b"content-type"] == b"text/plain" and c.stream(get).ended
    assert c.stream(post).headers[b":status"] == b"201" and c.stream(post).ended
    requests = {r.target: r for r in tap.of(Request)}
    g, p = requests["/a?q=1"], requests["/upload"]
    assert (g.method, g.scheme, g.authority, g.version, g.stream_id) == ("GET", "https", "a.example", "HTTP/2", get)
    assert (p.method, p.scheme, p.authority, p.version, p.stream_id) == ("POST", "https", "a.example", "HTTP/2", post)
    assert g.body == b"" and p.body is None
    assert g.headers.get("accept") == "*/*"
    # (the END_STREAM comes on an empty DATA frame, which reaches the taps as an empty chunk)
    assert [u.data for u in tap.of(BodyChunk) if u.message is p and u.data] == [b"one,", b"two,", b"three"]
    assert any(type(u) is MessageEnd and u.message is p for u in tap.units)
    responses = {r.request.stream_id: r for r in tap.of(Response)}
    assert responses[get].status == 200 and responses[get].version == "HTTP/2"
    assert flow.protocol == "h2"
    assert not c.goaway and not s.goaway
    c.conn.close_connection()
    wire.run()
    assert net.leftovers() == CLEAN


def test_data_frames_of_one_stream_in_one_read_reach_the_taps_as_one_chunk_in_order(make_net):
    """A read of DATA frames for streams A, A, B, A: the taps see A's first two joined, then B's,
    then A's last, and each client stream gets its bytes in order."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    a, b = c.request(b"/a"), c.request(b"/b")
    wire.run()
    up = {path: sid for sid, path in s.requests().items()}
    for path in (b"/a", b"/b"):
        s.conn.send_headers(up[path], [(b":status", b"200")])
    wire.run()
    for path, data in ((b"/a", b"one,"), (b"/a", b"two,"), (b"/b", b"other"), (b"/a", b"three")):
        s.conn.send_data(up[path], data)
    wire.run()  # the four frames go to the proxy in one read
    chunks = [(u.message.request.stream_id, u.data) for u in tap.of(BodyChunk) if u.data]
    assert chunks == [(a, b"one,two,"), (b, b"other"), (a, b"three")]
    assert bytes(c.stream(a).data) == b"one,two,three" and bytes(c.stream(b).data) == b"other"
    for path in (b"/a", b"/b"):
        s.conn.end_stream(up[path])
    wire.run()
    assert c.stream(a).ended and c.stream(b).ended
    c.conn.close_connection()
    wire.run()
    assert net.leftovers() == CLEAN


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "one-read"])
def test_trailers_both_ways(make_net, streamed):
    """Request trailers reach the server, response trailers reach the client: streamed over several
    reads, or whole (head, body and trailers in one read)."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    sid = c.request(b"/t", b"POST", end=False, extra=[(b"te", b"trailers")])
    if streamed:
        wire.run()
    c.conn.send_data(sid, b"body-part")
    if streamed:
        wire.run()
    c.conn.send_headers(sid, [(b"x-checksum", b"abc")], end_stream=True)
    wire.run()
    ((usid, sst),) = s.streams.items()
    assert bytes(sst.data) == b"body-part" and sst.trailers == {b"x-checksum": b"abc"} and sst.ended
    assert sst.headers[b"te"] == b"trailers"
    s.conn.send_headers(usid, [(b":status", b"200")])
    if streamed:
        wire.run()
    s.conn.send_data(usid, b"answer")
    if streamed:
        wire.run()
    s.conn.send_headers(usid, [(b"grpc-status", b"0"), (b"x-sum", b"42")], end_stream=True)
    wire.run()
    cst = c.stream(sid)
    assert cst.headers[b":status"] == b"200" and bytes(cst.data) == b"answer"
    assert cst.trailers == {b"grpc-status": b"0", b"x-sum": b"42"} and cst.ended and cst.reset is None
    req = tap.of(Request)[0]
    if streamed:
        ends = [u for u in tap.of(MessageEnd) if u.message is req]
        assert ends[0].trailers.get("x-checksum") == "abc"
    else:
        assert req.body == b"body-part" and req.trailers.get("x-checksum") == "abc"


# ---------------------------------------------------------------------------
# 3, 4: flow control end to end, fairness
# ---------------------------------------------------------------------------


def server_sent(s, sid, total):
    """Body bytes of ``sid`` the server peer has handed to its connection so far."""
    q = s._queue.get(sid)
    return total - (len(q[0]) if q else 0)


def test_slow_client_holds_the_server_to_the_windows(make_net):
    """The server sends 8 MiB to a client that reads nothing: the proxy acknowledges the server no
    more than the client took, so the server stalls with its window at zero and the proxy holds less
    than its windows; once the client reads, every byte arrives, in order."""
    net = make_net([Record()])
    c, s, wire = h2_pair(net, consume=False)
    sid = c.request(b"/big")
    wire.run()
    (usid,) = s.requests()
    body = pattern(8 * MiB)
    s.respond(usid, 200, body)
    wire.run()
    sent = server_sent(s, usid, len(body))
    held = sent - c.received
    assert c.received == 65535  # the client's default windows, all of them
    assert s.conn.local_flow_control_window(usid) == 0
    assert sent < 8 * MiB
    assert held <= STREAM_WINDOW + CONNECTION_WINDOW
    assert held <= STREAM_WINDOW + 65536
    # Still stalled: nothing moves without the client reading.
    wire.run()
    assert server_sent(s, usid, len(body)) == sent and c.received == 65535
    worst = [0]

    def read():
        worst[0] = max(worst[0], server_sent(s, usid, len(body)) - c.received)
        had = bool(c.unconsumed)
        c.consume()
        return had

    wire.run(each=read)
    cst = c.stream(sid)
    assert cst.ended and cst.reset is None
    assert len(cst.data) == len(body) and sha(cst.data) == sha(body)
    assert worst[0] <= STREAM_WINDOW + 65536
    assert not c.goaway and not s.goaway


def test_two_large_downloads_progress_together(make_net):
    """Two 2 MiB answers, the server sending all of the first stream's window before the second's:
    the client gets both interleaved; when either ends, the other is well under way."""
    net = make_net()
    c, s, wire = h2_pair(net)
    a = c.request(b"/a")
    b = c.request(b"/b")
    wire.run()
    up = {path: sid for sid, path in s.requests().items()}
    body_a, body_b = pattern(2 * MiB, 1), pattern(2 * MiB, 2)
    s.respond(up[b"/a"], 200, body_a)
    s.respond(up[b"/b"], 200, body_b)
    seen = {}

    def watch():
        ca, cb = c.stream(a), c.stream(b)
        if ca.ended and "a" not in seen:
            seen["a"] = len(cb.data)
        if cb.ended and "b" not in seen:
            seen["b"] = len(ca.data)
        if "first_b" not in seen and cb.data:
            seen["first_b"] = len(ca.data)

    wire.run(each=watch)
    assert sha(c.stream(a).data) == sha(body_a) and sha(c.stream(b).data) == sha(body_b)
    # b started before a had sent even a fifth of its body...
    assert seen["first_b"] < len(body_a) // 5
    # ...and whichever ended first, the other had more than half of its body by then.
    assert min(seen["a"], seen["b"]) > MiB


# ---------------------------------------------------------------------------
# 5: local answers
# ---------------------------------------------------------------------------


class Block(Tap):
    """Answers 403 locally for request paths containing ``blocked``, and for request body chunks
    containing ``evil`` (after the request went up)."""

    kinds = (Request, BodyChunk)

    def handle(self, unit, flow):
        if type(unit) is Request and "blocked" in unit.path:
            return unit.respond(403, "nope")
        if type(unit) is BodyChunk and b"evil" in unit.data:
            return unit.message.respond(403, "no evil")
        return unit


def test_local_answer_on_one_stream_while_another_goes_to_the_server(make_net):
    """A tap answers /blocked itself: the client gets its 403 on that stream and the server's 200
    on the other; the server never hears of /blocked."""
    net = make_net([Block()])
    c, s, wire = h2_pair(net)
    blocked = c.request(b"/blocked")
    fine = c.request(b"/fine")
    wire.run()
    assert list(s.requests().values()) == [b"/fine"]
    (usid,) = s.requests()
    s.respond(usid, 200, b"from the server")
    wire.run()
    b, f = c.stream(blocked), c.stream(fine)
    assert b.headers[b":status"] == b"403" and bytes(b.data) == b"nope" and b.ended and b.reset is None
    assert b.headers[b"content-type"] == b"text/plain; charset=utf-8"
    assert b.headers[b"content-length"] == b"4"
    assert f.headers[b":status"] == b"200" and bytes(f.data) == b"from the server" and f.ended
    assert list(s.requests().values()) == [b"/fine"]
    assert not c.goaway


def test_local_answer_mid_upload_resets_the_stream_already_at_the_server(make_net):
    """The request went up and its body streams; a tap answers on a later chunk: the server's stream
    is reset (CANCEL) and gets no more of the body, the client gets the 403 and a RST_STREAM(NO_ERROR)
    telling it to stop uploading; a neighbour stream is unaffected."""
    net = make_net([Block()])
    c, s, wire = h2_pair(net)
    up = c.request(b"/upload", b"POST", end=False)
    other = c.request(b"/other", b"POST", end=False)
    c.conn.send_data(up, b"fine,")
    c.conn.send_data(other, b"x")
    wire.run()
    ids = {path: sid for sid, path in s.requests().items()}
    assert bytes(s.stream(ids[b"/upload"]).data) == b"fine,"
    c.conn.send_data(up, b"evil")
    wire.run()
    sup = s.stream(ids[b"/upload"])
    assert sup.reset == ErrorCodes.CANCEL and bytes(sup.data) == b"fine,"
    cup = c.stream(up)
    assert cup.headers[b":status"] == b"403" and bytes(cup.data) == b"no evil" and cup.ended
    assert cup.reset == ErrorCodes.NO_ERROR
    c.conn.send_data(other, b"y", end_stream=True)
    wire.run()
    assert bytes(s.stream(ids[b"/other"]).data) == b"xy" and s.stream(ids[b"/other"]).ended
    s.respond(ids[b"/other"], 200, b"ok")
    wire.run()
    assert bytes(c.stream(other).data) == b"ok" and c.stream(other).ended
    assert not c.goaway and not s.goaway


def test_server_answering_before_the_upload_ends_gives_the_client_its_window_back(make_net):
    """The server reads slowly (16 KiB window, nothing consumed) and answers while the client is still
    uploading: the client gets the answer and RST_STREAM(NO_ERROR), the server's stream is cancelled,
    and the upload bytes the proxy held are acknowledged on the connection: forty such uploads
    (7.5 MiB, 5 MiB of it held, more than the proxy's 4 MiB connection window) do not starve it."""
    net = make_net()
    c, s, wire = h2_pair(net, server_settings={SettingCodes.INITIAL_WINDOW_SIZE: 16384}, server_consume=False)
    for i in range(40):
        sid = c.request(b"/upload/%d" % i, b"POST", end=False)
        for part in b"abcdefghijkl":
            c.conn.send_data(sid, bytes([part]) * 16384)
        wire.run()
        (usid,) = [u for u, path in s.requests().items() if path == b"/upload/%d" % i]
        assert len(s.stream(usid).data) <= 16384  # the rest waits in the proxy for the server's windows
        s.respond(usid, 413, b"too much")
        wire.run()
        st = c.stream(sid)
        assert st.headers[b":status"] == b"413" and bytes(st.data) == b"too much" and st.ended
        assert st.reset == ErrorCodes.NO_ERROR
        assert s.stream(usid).reset == ErrorCodes.CANCEL
    assert c.conn.outbound_flow_control_window > 16384 * 3


# ---------------------------------------------------------------------------
# 6, 7, 8: RST_STREAM, GOAWAY, concurrency limits
# ---------------------------------------------------------------------------


def test_rst_stream_crosses_both_ways_with_its_code(make_net):
    """The client resets one stream (CANCEL): the server's stream is reset with CANCEL. The server
    resets another mid-response (ENHANCE_YOUR_CALM): the client's is reset with that code. A third
    stream on the same connection completes."""
    net = make_net()
    c, s, wire = h2_pair(net)
    by_client = c.request(b"/by-client")
    by_server = c.request(b"/by-server")
    neighbour = c.request(b"/neighbour")
    wire.run()
    ids = {path: sid for sid, path in s.requests().items()}
    for path in (b"/by-client", b"/by-server", b"/neighbour"):
        s.respond(ids[path], 200, b"first part ", end=False)
    wire.run()
    assert all(bytes(c.stream(x).data) == b"first part " for x in (by_client, by_server, neighbour))
    c.conn.reset_stream(by_client, ErrorCodes.CANCEL)
    wire.run()
    assert s.stream(ids[b"/by-client"]).reset == ErrorCodes.CANCEL
    s._queue.pop(ids[b"/by-server"], None)
    s.conn.reset_stream(ids[b"/by-server"], ErrorCodes.ENHANCE_YOUR_CALM)
    wire.run()
    assert c.stream(by_server).reset == ErrorCodes.ENHANCE_YOUR_CALM
    assert not c.stream(by_server).ended
    s.queue(ids[b"/neighbour"], b"and the rest")
    wire.run()
    n = c.stream(neighbour)
    assert bytes(n.data) == b"first part and the rest" and n.ended and n.reset is None
    assert s.stream(ids[b"/neighbour"]).reset is None
    assert not c.goaway and not s.goaway


def test_server_refusing_a_stream_before_answering_is_refused_at_the_client(make_net):
    """A RST_STREAM(REFUSED_STREAM) before any response goes to the client as REFUSED_STREAM (so it
    retries), not as an error page."""
    net = make_net()
    c, s, wire = h2_pair(net)
    sid = c.request(b"/r")
    wire.run()
    (usid,) = s.requests()
    s.conn.reset_stream(usid, ErrorCodes.REFUSED_STREAM)
    wire.run()
    assert c.stream(sid).reset == ErrorCodes.REFUSED_STREAM and c.stream(sid).headers is None


def test_server_goaway_refuses_later_streams_and_finishes_earlier_ones(make_net):
    """Three streams reach the server; it answers the first partly, then GOAWAY(last_stream_id =
    the first), then the rest of the first. The client gets REFUSED_STREAM on the two others, a
    GOAWAY, and the whole first answer; then the proxy closes both connections."""
    net = make_net()
    c, s, wire = h2_pair(net)
    sids = [c.request(b"/%d" % i) for i in (1, 2, 3)]
    wire.run()
    ids = {path: sid for sid, path in s.requests().items()}
    first = ids[b"/1"]
    assert first < ids[b"/2"] < ids[b"/3"]
    c.finish_after_goaway = True  # as nghttp2 and curl do
    s.respond(first, 200, b"part one, ", end=False)
    wire.run()
    # A graceful GOAWAY, written raw: the h2 library would refuse to finish stream 1 after its own.
    s.send_raw(frame(GOAWAY, 0, 0, struct.pack(">II", first, 0)))
    wire.run()
    s.queue(first, b"part two")
    wire.run()
    one, two, three = (c.stream(x) for x in sids)
    assert two.reset == ErrorCodes.REFUSED_STREAM and two.headers is None
    assert three.reset == ErrorCodes.REFUSED_STREAM and three.headers is None
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.NO_ERROR
    assert one.headers[b":status"] == b"200" and bytes(one.data) == b"part one, part two"
    assert one.ended and one.reset is None
    net.settle()
    assert c.peer.closed and s.peer.closed
    assert net.leftovers() == CLEAN


def test_server_goaway_after_an_answer_larger_than_the_client_window(make_net):
    """The server sends a whole 300 KB answer, then GOAWAY: the client, whose window is 64 KiB,
    still gets all of it (and a GOAWAY) as it reads, and the connection then closes cleanly."""
    net = make_net()
    c, s, wire = h2_pair(net)
    sid = c.request(b"/big")
    c.finish_after_goaway = True  # as nghttp2 and curl do
    wire.run()
    (usid,) = s.requests()
    body = pattern(300_000, 3)
    s.respond(usid, 200, body)
    assert s.write()  # all of it: the proxy's windows are larger
    assert not s._queue
    s.send_raw(frame(GOAWAY, 0, 0, struct.pack(">II", usid, 0)))
    wire.run()
    st = c.stream(sid)
    assert [g.error_code for g in c.goaways] == [ErrorCodes.NO_ERROR]
    assert len(st.data) == len(body) and sha(st.data) == sha(body) and st.ended and st.reset is None
    assert net.leftovers() == CLEAN


def test_client_graceful_goaway_still_gets_its_open_streams_answered(make_net):
    """The client says GOAWAY(NO_ERROR) with a stream still open (written raw: its own h2 would read
    nothing more after it): the server still answers that stream and the client still gets it."""
    net = make_net()
    c, s, wire = h2_pair(net)
    sid = c.request(b"/last")
    wire.run()
    (usid,) = s.requests()
    s.finish_after_goaway = True
    c.send_raw(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    wire.run()
    assert s.goaway is not None and s.goaway.error_code == ErrorCodes.NO_ERROR  # passed on
    s.respond(usid, 200, b"still answered")
    wire.run()
    st = c.stream(sid)
    assert st.headers is not None and st.headers[b":status"] == b"200"
    assert bytes(st.data) == b"still answered" and st.ended


def test_server_max_concurrent_streams_is_respected(make_net):
    """The server allows 2 concurrent streams; the client opens 5: never more than 2 are open at the
    server, and all 5 are answered."""
    net = make_net()
    c, s, wire = h2_pair(net, server_settings={SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    sids = [c.request(b"/%d" % i) for i in range(5)]
    most = [0]
    answered = set()

    def serve():
        most[0] = max(most[0], s.conn.open_inbound_streams)
        for usid, st in sorted(s.streams.items()):
            if st.headers is not None and st.ended and usid not in answered:
                answered.add(usid)
                s.respond(usid, 200, b"answer " + st.headers[b":path"])
                return True  # one answer per round: streams wait their turn
        return False

    wire.run(each=serve)
    assert most[0] == 2
    assert len(answered) == 5
    for i, sid in enumerate(sids):
        st = c.stream(sid)
        assert st.headers[b":status"] == b"200" and bytes(st.data) == b"answer /%d" % i and st.ended


# ---------------------------------------------------------------------------
# 9: PING, server push
# ---------------------------------------------------------------------------


def test_client_ping_is_answered_by_the_proxy(make_net):
    """A client PING gets its ACK, with the same payload, from the proxy; the server sees no PING."""
    net = make_net()
    c, s, wire = h2_pair(net)
    c.conn.ping(b"tinspect")
    wire.run()
    assert [e.ping_data for e in c.of(PingAckReceived)] == [b"tinspect"]
    from h2.events import PingReceived
    assert s.of(PingReceived) == []
    sid = c.request(b"/after-ping")
    wire.run()
    (usid,) = s.requests()
    s.respond(usid, 204)
    wire.run()
    assert c.stream(sid).headers[b":status"] == b"204" and c.stream(sid).ended


def test_server_push_never_reaches_the_client(make_net):
    """The proxy tells the server ENABLE_PUSH=0, so the server's h2 refuses to push at all; a server
    that pushes anyway (a raw PUSH_PROMISE) broke the protocol: it gets GOAWAY(PROTOCOL_ERROR), the
    client's pending stream gets a 502 and no pushed stream, then a GOAWAY."""
    from h2.exceptions import ProtocolError
    from hpack import Encoder

    net = make_net()
    c, s, wire = h2_pair(net)
    assert s.conn.remote_settings.enable_push == 0
    sid = c.request(b"/page")
    wire.run()
    (usid,) = s.requests()
    promised = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.example"), (b":path", b"/pushed")]
    with pytest.raises(ProtocolError):
        s.conn.push_stream(usid, 2, promised)
    block = Encoder().encode(promised)
    s.send_raw(frame(PUSH_PROMISE, END_HEADERS, usid, struct.pack(">I", 2) + block))
    wire.run()
    assert c.of(PushedStreamReceived) == []
    assert set(c.streams) == {sid}
    st = c.stream(sid)
    assert st.headers[b":status"] == b"502" and st.ended
    assert b"pushed" in bytes(st.data)
    assert s.goaway is not None and s.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert c.goaway is not None
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# 10, 11: floods and malformed frames from the client
# ---------------------------------------------------------------------------


def test_header_list_over_the_limit_is_a_connection_error(make_net):
    """A request whose header list is larger than max_header_bytes: GOAWAY to the client, the flow
    ends naming it, the server never sees the request, nothing raises."""
    tap = Record()
    net = make_net([tap], max_header_bytes=8192)
    c, s, wire = h2_pair(net)
    assert c.conn.remote_settings.max_header_list_size == 8192
    c.request(b"/huge", extra=[(b"x-big", b"v" * 10000)])
    wire.run()
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert s.requests() == {}
    assert tap.of(Request) == []
    flow = tap.flows[0]
    assert flow.error and "HTTP/2" in flow.error
    assert c.peer.closed
    assert net.leftovers() == CLEAN


def test_continuation_flood_is_a_connection_error(make_net):
    """A HEADERS frame followed by CONTINUATION frames that never end the block: GOAWAY, closed."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    flood = frame(HEADERS, 0, 1, b"\x82")  # :method GET, no END_HEADERS
    flood += b"".join(frame(CONTINUATION, 0, 1, b"\x84") for _ in range(200))
    c.send_raw(flood)
    wire.run()
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
    assert s.requests() == {}
    assert tap.flows[0].error and "HTTP/2" in tap.flows[0].error
    assert c.peer.closed
    assert net.leftovers() == CLEAN


def test_rapid_reset_flood_gets_enhance_your_calm(make_net):
    """A client that opens and at once resets stream after stream, more than MAX_RESETS of them and
    none finished: GOAWAY(ENHANCE_YOUR_CALM), the flow ends naming it."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    opened = 0
    while opened <= MAX_RESETS + 10 and c.goaway is None:
        for _ in range(50):
            sid = c.request(b"/r")
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
            opened += 1
        wire.run()
    assert opened > MAX_RESETS
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert "reset" in tap.flows[0].error
    assert c.peer.closed
    assert net.leftovers() == CLEAN


def test_resets_after_finished_streams_are_not_a_flood(make_net):
    """A client that finished as many streams as it reset is not flooding (the ENHANCE_YOUR_CALM
    rule counts resets beyond the finished streams)."""
    net = make_net()
    c, s, wire = h2_pair(net)
    answered = set()

    def serve():
        did = False
        for usid, st in s.streams.items():
            if st.headers is not None and st.ended and st.reset is None and usid not in answered:
                answered.add(usid)
                s.respond(usid, 204)
                did = True
        return did

    for _ in range(24):
        for _ in range(50):
            c.request(b"/ok")
        wire.run(each=serve)
        for _ in range(50):
            sid = c.request(b"/r", end=False)
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        wire.run(each=serve)
    assert c.goaway is None
    assert sum(1 for st in c.streams.values() if st.ended and st.headers and st.headers[b":status"] == b"204") == 1200
    assert sum(1 for st in s.streams.values() if st.reset == ErrorCodes.CANCEL) > MAX_RESETS


def serve_all(s, answered):
    """A ``Wire.run`` step for the server: answer 204 to every request it has whole."""
    def serve():
        fresh = [sid for sid, st in s.streams.items() if st.ended and st.reset is None and sid not in answered]
        for sid in fresh:
            answered.add(sid)
            s.respond(sid, 204)
        return bool(fresh)
    return serve


def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams(make_net):
    """Thousands of streams over one client connection (and one server connection): the proxy's
    h2 state machines keep how the last streams closed, not every one (h2 keeps 65,536, ~10 MiB)."""
    net = make_net()
    c, s, wire = h2_pair(net)
    answered = set()
    for _ in range(25):
        for _ in range(100):
            c.request(b"/n")
        wire.run(each=serve_all(s, answered))
    assert len(answered) == 2500
    assert sum(1 for st in c.streams.values() if st.headers and st.headers[b":status"] == b"204") == 2500
    layer = c.peer.proto.handler
    for conn in (layer.client.conn, layer.upstream.ep.conn):
        assert conn.MAX_CLOSED_STREAMS <= 2048
        assert len(conn._closed_streams) == conn.MAX_CLOSED_STREAMS
    assert c.goaway is None and s.goaway is None


def test_trailers_late_for_a_stream_the_proxy_reset_are_a_stream_error(make_net):
    """The proxy answers an upload early and resets it (NO_ERROR); hundreds of streams come and go;
    then the client's trailers for the reset stream arrive (sent before it saw the reset): a
    RST_STREAM for that stream, not a GOAWAY. (Were the closed-stream record too short, h2 would
    have forgotten the reset and ended the whole connection.)"""
    from hpack import Encoder, NeverIndexedHeaderTuple

    net = make_net([Block()])
    c, s, wire = h2_pair(net)
    up = c.request(b"/upload", b"POST", end=False)
    c.conn.send_data(up, b"evil")
    answered = set()
    wire.run(each=serve_all(s, answered))
    assert c.stream(up).headers[b":status"] == b"403" and c.stream(up).reset == ErrorCodes.NO_ERROR
    for _ in range(3):
        for _ in range(100):
            c.request(b"/n")
        wire.run(each=serve_all(s, answered))
    assert len(answered) == 300
    block = Encoder().encode([NeverIndexedHeaderTuple(b"x-checksum", b"1")])  # leaves the HPACK table alone
    c.peer.send(frame(HEADERS, END_STREAM | END_HEADERS, up, block))
    raw = c.peer.take()
    assert not goaways(raw)
    assert [sid for kind, _, sid, _ in frames(raw) if kind == RST_STREAM] == [up]
    after = c.request(b"/after")
    wire.run(each=serve_all(s, answered))
    assert c.stream(after).headers[b":status"] == b"204" and c.goaway is None


@pytest.mark.parametrize(
    "bad, code, words",
    [
        (frame(DATA, 0, 0, b"x" * 8), ErrorCodes.PROTOCOL_ERROR, "HTTP/2"),
        (frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\xff\xfe\x7f"), ErrorCodes.COMPRESSION_ERROR, "HTTP/2"),
        (frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), ErrorCodes.PROTOCOL_ERROR, "HTTP/2"),
        (frame(SETTINGS, 0, 0, b"\x00\x04\xff\xff\xff\xff"), ErrorCodes.FLOW_CONTROL_ERROR, "HTTP/2"),
    ],
    ids=["data-on-stream-0", "bad-hpack", "zero-window-update", "window-too-large"],
)
def test_malformed_frames_get_goaway_with_the_error_code(make_net, bad, code, words):
    """A frame RFC 9113 calls a connection error: GOAWAY with its code (raw bytes on the wire), both
    connections close, the flow's error says why."""
    tap = Record()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    pending = c.request(b"/pending")
    wire.run()
    c.peer.send(bad)
    raw = c.peer.take()
    assert goaways(raw) and goaways(raw)[-1][1] == code
    assert c.peer.closed
    flow = tap.flows[0]
    assert flow.closed and words in flow.error
    assert s.peer.closed
    assert c.stream(pending).headers is None
    assert net.leftovers() == CLEAN


# ---------------------------------------------------------------------------
# 12, 13: translation to HTTP/1.1, the cleartext probe
# ---------------------------------------------------------------------------


class H1Server:
    """HTTP/1.1 server peers: parse what the proxy sent each of them."""

    def __init__(self):
        self.peers = []  # (peer, reader, [requests]) ; a request: [head, body bytearray, trailers or None]

    def add(self, peer):
        self.peers.append((peer, Http1Reader("request"), []))
        return peer

    def read(self):
        got = False
        for peer, reader, requests in self.peers:
            data = peer.take()
            if not data:
                continue
            got = True
            for event in reader.feed(data):
                if type(event) is RequestHead:
                    requests.append([event, bytearray(), None])
                elif type(event) is BodyData:
                    requests[-1][1] += event.data
                elif type(event) is EndOfMessage:
                    requests[-1][2] = list(event.trailers)
        return got

    def all(self):
        return [r for _, _, reqs in self.peers for r in reqs]


def fields(head):
    return {name.lower(): value for name, value in head.headers}


def test_h2_client_to_an_http11_server_is_translated(make_net):
    """Known HTTP/1.1-only destination, h2 client: a streamed POST with trailers arrives as chunked
    HTTP/1.1 with Host and the trailer; a whole PUT with a Content-Length; the chunked answer with
    trailers comes back as h2 with trailers and no connection-specific fields."""
    net = make_net()
    remember_h1_only(net.ctx, SERVER_ADDR)
    c = H2Client(net.transparent(), scheme=b"http")
    h1 = H1Server()
    s = h1.add(net.dials[0].accept())
    wire = Wire(net, c)
    post = c.request(b"/form", b"POST", end=False, extra=[(b"te", b"trailers")])
    wire.run(each=h1.read)
    c.conn.send_data(post, b"a=1&")
    wire.run(each=h1.read)
    c.conn.send_data(post, b"b=2")
    c.conn.send_headers(post, [(b"x-sum", b"7")], end_stream=True)
    wire.run(each=h1.read)
    assert net.pending() == []  # no probe, no second connection
    (req,) = h1.all()
    head, body, trailers = req
    assert (head.method, head.target, head.version) == (b"POST", b"/form", b"HTTP/1.1")
    f = fields(head)
    assert f[b"host"] == b"a.example"
    assert f.get(b"transfer-encoding") == b"chunked"
    assert bytes(body) == b"a=1&b=2"
    assert trailers is not None and dict((n.lower(), v) for n, v in trailers) == {b"x-sum": b"7"}
    s.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
           b"Trailer: x-r\r\nContent-Type: text/plain\r\n\r\n5\r\nhello\r\n")
    wire.run(each=h1.read)
    st = c.stream(post)
    assert st.headers[b":status"] == b"200" and bytes(st.data) == b"hello" and not st.ended
    for name in (b"transfer-encoding", b"connection", b"keep-alive"):
        assert name not in st.headers
    s.send(b"6\r\n world\r\n0\r\nx-r: 2\r\n\r\n")
    wire.run(each=h1.read)
    assert bytes(st.data) == b"hello world" and st.trailers == {b"x-r": b"2"} and st.ended
    put = c.request(b"/put", b"PUT", body=b"abc")
    wire.run(each=h1.read)
    head, body, trailers = h1.all()[1]
    assert (head.method, head.target) == (b"PUT", b"/put")
    assert fields(head)[b"content-length"] == b"3" and bytes(body) == b"abc" and b"transfer-encoding" not in fields(head)
    assert len(h1.peers) == 1 and net.pending() == []  # the same connection, kept alive
    s.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    wire.run(each=h1.read)
    assert c.stream(put).headers[b":status"] == b"201" and c.stream(put).ended
    assert c.goaway is None


def test_translation_uses_up_to_max_h1_connections_and_reuses_them(make_net):
    """Ten concurrent GETs to an HTTP/1.1-only server: at most MAX_H1 connections, one request at a
    time on each, later requests reuse them; all ten answered with their own body."""
    net = make_net()
    remember_h1_only(net.ctx, SERVER_ADDR)
    c = H2Client(net.transparent(), scheme=b"http")
    h1 = H1Server()
    h1.add(net.dials[0].accept())
    wire = Wire(net, c)
    sids = {c.request(b"/%d" % i): i for i in range(10)}
    answered = set()

    def serve():
        did = h1.read()
        for d in net.pending():
            h1.add(d.accept())
            did = True
        for peer, _, requests in h1.peers:
            for n, (head, _, trailers) in enumerate(requests):
                if trailers is not None and id(head) not in answered:
                    # one exchange at a time per connection: every earlier one is answered
                    assert all(id(r[0]) in answered for r in requests[:n])
                    answered.add(id(head))
                    body = b"answer " + head.target
                    peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    did = True
        return did

    wire.run(each=serve)
    assert len(net.dials) == MAX_H1
    assert len(answered) == 10
    assert sum(len(reqs) for _, _, reqs in h1.peers) == 10
    assert max(len(reqs) for _, _, reqs in h1.peers) >= 2  # reused
    for sid, i in sids.items():
        st = c.stream(sid)
        assert st.headers[b":status"] == b"200" and bytes(st.data) == b"answer /%d" % i and st.ended


def test_cleartext_probe_finds_http11_and_is_remembered(make_net):
    """A prior-knowledge client to a server that answers the preface with an HTTP/1.1 400: the
    request goes again as HTTP/1.1 on a new connection and succeeds; the next flow to the same
    destination sends HTTP/1.1 straight away, no preface."""
    tap = Record()
    net = make_net([tap])
    c = H2Client(net.transparent(), scheme=b"http")
    s = net.dials[0].accept()
    wire = Wire(net, c)
    sid = c.request(b"/probe")
    wire.run()
    assert s.take().startswith(H2_PREFACE)
    s.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    s.eof()
    net.settle()
    assert known_h1_only(net.ctx, SERVER_ADDR)
    (dial,) = net.pending()
    h1 = H1Server()
    s2 = h1.add(dial.accept())
    wire.run(each=h1.read)
    ((head, _, _),) = h1.all()
    assert (head.method, head.target, fields(head)[b"host"]) == (b"GET", b"/probe", b"a.example")
    s2.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    wire.run(each=h1.read)
    assert c.stream(sid).headers[b":status"] == b"200" and bytes(c.stream(sid).data) == b"ok"
    assert tap.flows[0].protocol == "h2"
    # A second flow: no probe.
    c2 = H2Client(net.transparent(), scheme=b"http")
    h1b = H1Server()
    s3 = h1b.add(net.pending()[0].accept())
    wire2 = Wire(net, c2)
    sid2 = c2.request(b"/again")
    wire2.run(each=h1b.read)
    ((head, _, _),) = h1b.all()
    assert head.target == b"/again"
    s3.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
    wire2.run(each=h1b.read)
    assert bytes(c2.stream(sid2).data) == b"again" and c2.stream(sid2).ended
    assert net.pending() == []


# ---------------------------------------------------------------------------
# 14: whole bodies
# ---------------------------------------------------------------------------


class Rewrite(Tap):
    """Wants whole bodies; upper-cases request bodies and doubles response bodies."""

    whole_bodies = True

    def __init__(self):
        self.seen = []

    def handle(self, unit, flow):
        if type(unit) is Request:
            self.seen.append(("request", unit.body, unit.trailers))
            unit.body = unit.body.upper() + b"!"
        elif type(unit) is Response:
            self.seen.append(("response", unit.body, unit.trailers))
            unit.body = unit.body * 2
        else:
            self.seen.append((unit.kind,))
        return unit


def test_whole_body_tap_rewrites_both_bodies_with_lengths_recomputed(make_net):
    """Bodies that stream over several reads reach a whole-body tap whole; its rewrites go out with
    a content-length that matches (the peers' h2 would refuse a mismatch)."""
    tap = Rewrite()
    net = make_net([tap])
    c, s, wire = h2_pair(net)
    sid = c.request(b"/w", b"POST", end=False, extra=[(b"content-length", b"10")])
    wire.run()
    assert s.requests() == {}  # held until the body is whole
    c.conn.send_data(sid, b"hello")
    wire.run()
    c.conn.send_data(sid, b"world", end_stream=True)
    wire.run()
    ((usid, sst),) = s.streams.items()
    assert bytes(sst.data) == b"HELLOWORLD!" and sst.ended
    assert sst.headers[b"content-length"] == b"11"
    s.conn.send_headers(usid, [(b":status", b"200"), (b"content-length", b"6")])
    wire.run()
    assert c.stream(sid).headers is None  # held until the body is whole
    s.conn.send_data(usid, b"abc")
    wire.run()
    s.conn.send_data(usid, b"def", end_stream=True)
    wire.run()
    st = c.stream(sid)
    assert st.headers[b":status"] == b"200" and st.headers[b"content-length"] == b"12"
    assert bytes(st.data) == b"abcdefabcdef" and st.ended
    assert [x for x in tap.seen if x[0] in ("request", "response")] == [
        ("request", b"helloworld", None), ("response", b"abcdef", None)]
    assert not [x for x in tap.seen if x[0] in ("bodychunk", "messageend")]


def test_request_over_the_servers_header_list_limit_gets_a_431(make_net):
    """The server allows header lists of 400 octets: a request with a 1000-byte field is answered
    431 by the proxy and never reaches the server; a small one on the same connection does."""
    net = make_net()
    c, s, wire = h2_pair(net, server_settings={SettingCodes.MAX_HEADER_LIST_SIZE: 400})
    big = c.request(b"/big", extra=[(b"x-big", b"v" * 1000)])
    small = c.request(b"/small")
    answered = set()

    def serve():
        for usid, st in sorted(s.streams.items()):
            if st.headers is not None and st.ended and usid not in answered:
                answered.add(usid)
                s.respond(usid, 200, b"ok")
                return True
        return False

    wire.run(each=serve)
    assert c.stream(big).headers[b":status"] == b"431"
    assert c.stream(small).headers[b":status"] == b"200"
    assert sorted(s.requests().values()) == [b"/small"]


def test_an_idle_connection_gets_goaway_after_idle_timeout_but_not_while_a_stream_is_open(make_net):
    """--idle-timeout counts only while no stream is open; then GOAWAY (NO_ERROR) and close."""
    net = make_net(idle_timeout=5)
    c, s, wire = h2_pair(net)
    sid = c.request(b"/slow")
    wire.run()
    net.reactor.advance(20)  # a stream is open: no idle time counts
    wire.run()
    assert c.goaway is None and not c.peer.closed
    (up,) = s.requests()
    s.respond(up, 200, b"late")
    wire.run()
    assert bytes(c.stream(sid).data) == b"late"
    net.reactor.advance(4.9)
    wire.run()
    assert c.goaway is None
    net.reactor.advance(0.2)
    wire.run()
    assert c.goaway is not None and c.goaway.error_code == ErrorCodes.NO_ERROR
    assert c.peer.closed
    assert net.leftovers() == CLEAN


def test_a_silent_server_gets_504_but_a_client_that_does_not_read_is_no_silent_server(make_net):
    """--response-timeout: a stream the server never answers gets 504 on its own; a response held
    back because the client does not open its window is not the server's silence."""
    net = make_net(response_timeout=5)
    c, s, wire = h2_pair(net, consume=False)
    big, mute = c.request(b"/big"), c.request(b"/mute")
    wire.run()
    up = {path: sid for sid, path in s.requests().items()}
    body = pattern(1 * MiB)
    s.respond(up[b"/big"], 200, body)
    wire.run()
    assert c.received == 65535  # the client's windows are full; the rest waits in the proxy and the server
    net.reactor.advance(5.1)  # the response to /big came in this period: progress
    wire.run()
    assert c.stream(mute).headers is None
    net.reactor.advance(5)  # a whole period of silence
    wire.run()
    assert c.stream(mute).headers[b":status"] == b"504"  # its body waits for the client's window too
    for _ in range(6):  # 30 s more without the client reading: the big one is not cut
        net.reactor.advance(5)
        wire.run()
    assert c.stream(big).reset is None and s.stream(up[b"/big"]).reset is None
    while c.unconsumed or not c.stream(big).ended:
        c.consume()
        wire.run()
    assert bytes(c.stream(big).data) == body
    assert b"sent nothing for 5 s" in bytes(c.stream(mute).data)


def test_a_later_request_gets_a_whole_response_timeout_of_its_own(make_net):
    """The connection-wide response deadline: a request made late in a period is not cut at its end."""
    net = make_net(response_timeout=5)
    c, s, wire = h2_pair(net)
    first = c.request(b"/first")
    wire.run()
    (up,) = s.requests()
    s.respond(up, 200, b"ok")
    wire.run()
    assert c.stream(first).ended
    net.reactor.advance(5)  # the answer was progress: one more period
    net.reactor.advance(4)
    late = c.request(b"/late")
    wire.run()
    net.reactor.advance(1.1)  # the end of the period the first request began
    wire.run()
    assert c.stream(late).headers is None
    net.reactor.advance(5)
    wire.run()
    assert c.stream(late).headers[b":status"] == b"504"


# ---------------------------------------------------------------------------
# Fuzzing: what the peers send is fed to h2 through the layer
# ---------------------------------------------------------------------------


_FRAME_TYPES = hs.sampled_from([DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY,
                                WINDOW_UPDATE, CONTINUATION, 0x42])
_FRAMES = hs.lists(
    hs.builds(frame, _FRAME_TYPES, hs.integers(0, 255), hs.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
              hs.binary(max_size=64)),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(to_server=_FRAMES, to_client=_FRAMES, junk=hs.binary(max_size=40), from_client=hs.booleans())
def test_fuzz_frames_from_either_peer_never_break_the_proxy(to_server, to_client, junk, from_client):
    """Arbitrary frames (and bytes) after a normal start, from the client or the server: the layer
    answers or closes as h2 decides, raises nothing, and once both peers hang up leaves nothing behind."""
    net = Net([])
    try:
        c, s, wire = h2_pair(net)
        c.request(b"/fuzz")
        wire.run()
        if from_client:
            c.peer.send(b"".join(to_server) + junk)
        else:
            s.peer.send(b"".join(to_client) + junk)
        net.settle()
        for peer in (c.peer, s.peer):
            if not peer.lost:
                peer.close()
        left = net.leftovers()
        assert left["flows"] == {} and left["open"] == [], left
    finally:
        net.shutdown()


@given(data=hs.binary(max_size=64), pad=hs.one_of(hs.none(), hs.integers(0, 255)))
def test_data_frame_repr_is_hyperframes_own_text(data, pad):
    """tinspect.layers.http.h2.conn makes DataFrame's repr cheap (h2 builds it for every frame); the text stays the same."""
    from hyperframe.frame import DataFrame, _raw_data_repr

    frame = DataFrame(1, data=data)
    if pad is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad
    assert repr(frame).endswith(_raw_data_repr(frame.serialize_body()))


def test_h3_advertisements_do_not_reach_the_client(make_net):
    """A server's ALTSVC frames (on the stream and on stream 0) are not relayed, and its Alt-Svc field loses its
    h3 entry (QUIC is refused by default), keeping the others."""
    from h2.events import AlternativeServiceAvailable

    net = make_net([])
    c, s, wire = h2_pair(net)
    sid = c.request(b"/")
    wire.run()
    (up,) = s.requests()
    s.conn.advertise_alternative_service(b'h3=":443"', stream_id=up)
    s.conn.advertise_alternative_service(b'h3=":443"', origin=b"https://a.example")
    s.respond(up, 200, b"ok", extra=[(b"alt-svc", b'h3=":443"; ma=60, h2="b.example:443"')])
    wire.run()
    assert c.stream(sid).headers[b":status"] == b"200" and bytes(c.stream(sid).data) == b"ok"
    assert c.stream(sid).headers[b"alt-svc"] == b'h2="b.example:443"'
    assert not [e for e in c.events if type(e) is AlternativeServiceAvailable]
    assert [e for e in s.events if type(e) is RequestReceived]  # the server did see the request it advertised on
