"""Sans-IO tests of MessageAssembler: message heads and body pieces in, units to the taps out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tinspect.chain import Arm, Tap, TapChain
from tinspect.flow import Flow
from tinspect.headers import Headers
from tinspect.layers.http.assemble import MessageAssembler
from tinspect.units import TO_CLIENT, TO_SERVER, BodyChunk, MessageEnd, Request, Response


class Whole(Tap):
    """Wants every body whole; remembers the body each head had when asked."""

    whole_bodies = True

    def __init__(self):
        self.asked = []

    def wants_whole_body(self, message, flow):
        self.asked.append(message.body)
        return True


class Log:
    """Stands in for a `twisted.logger.Logger`: keeps what was logged."""

    def __init__(self):
        self.events = []

    def info(self, format, **fields):
        self.events.append((format, fields))


FLOW = Flow(("192.0.2.2", 5555), ("198.51.100.2", 80))


def assembler(taps=(), direction=TO_SERVER, limit=100):
    """An assembler on an arm of ``taps``; returns it, what the arm delivered, and its log."""
    delivered = []
    arm = Arm(TapChain(list(taps)), FLOW, direction, delivered.append)
    log = Log()
    return MessageAssembler(arm, limit, log), delivered, log


def post():
    return Request("POST", "/upload", Headers([(b"Host", b"a.example")]))


def shape(unit):
    """A unit as a comparable tuple: what a tap could tell apart."""
    if type(unit) is BodyChunk:
        return ("chunk", unit.data)
    if type(unit) is MessageEnd:
        return ("end", unit.trailers.fields if unit.trailers else None)
    return ("message", unit.body, unit.body_too_large, unit.trailers.fields if unit.trailers else None)


def test_whole_message_is_one_unit_with_body_and_trailers():
    """A message that arrived whole goes to the taps as one unit carrying body and trailers."""
    asm, delivered, _ = assembler()
    req = post()
    asm.whole(req, b"hello", [(b"x-sum", b"1")])
    assert delivered == [req]
    assert req.body == b"hello" and req.trailers.fields == [(b"x-sum", b"1")]


def test_whole_message_without_trailer_fields_has_trailers_none():
    """An empty trailer list is no trailers: taps see ``None``."""
    asm, delivered, _ = assembler()
    req = post()
    asm.whole(req, b"", [])
    assert [shape(u) for u in delivered] == [("message", b"", False, None)]


def test_whole_message_skips_the_whole_body_question():
    """A message that arrived whole is whole already: no tap is asked whether it wants it whole."""
    tap = Whole()
    asm, delivered, _ = assembler([tap])
    asm.whole(post(), b"abc", None)
    assert tap.asked == [] and len(delivered) == 1


def test_streamed_message_is_head_chunks_and_end():
    """Without a tap wanting it whole, the head goes at once, then a chunk per piece, then the end."""
    asm, delivered, _ = assembler()
    req = post()
    assert asm.head(req) is False
    assert delivered == [req] and req.body is None
    asm.data(req, b"ab")
    asm.data(req, b"cd")
    asm.end(req, [(b"x-sum", b"2")])
    assert [shape(u) for u in delivered] == [
        ("message", None, False, None), ("chunk", b"ab"), ("chunk", b"cd"), ("end", [(b"x-sum", b"2")]),
    ]
    assert all(u.message is req for u in delivered[1:])
    assert not asm.buffering


def test_units_take_the_arms_direction():
    """Chunks and ends travel in the direction of the arm the assembler feeds."""
    asm, delivered, _ = assembler(direction=TO_CLIENT)
    resp = Response(200, "OK", body=None)
    asm.head(resp)
    asm.data(resp, b"x")
    asm.end(resp, None)
    assert [u.direction for u in delivered] == [TO_CLIENT, TO_CLIENT, TO_CLIENT]


def test_body_units_name_the_message_the_layer_passes():
    """After its head passed the taps the layer names the unit they passed on: the body's units name it too."""
    asm, delivered, _ = assembler()
    req = post()
    asm.head(req)
    replaced = post()
    asm.data(replaced, b"x")
    asm.end(replaced, None)
    assert delivered[1].message is replaced and delivered[2].message is replaced


def test_whole_body_tap_gets_the_body_buffered_at_the_end():
    """A tap that wants bodies whole gets nothing until the end, then one unit with every byte."""
    asm, delivered, _ = assembler([Whole()])
    req = post()
    assert asm.head(req) is True
    assert asm.buffering
    asm.data(req, b"ab")
    asm.data(req, b"cd")
    assert delivered == []
    asm.end(req, [(b"x-sum", b"3")])
    assert [shape(u) for u in delivered] == [("message", b"abcd", False, [(b"x-sum", b"3")])]
    assert not asm.buffering


def test_whole_body_question_sees_the_head_without_a_body():
    """A tap deciding per message is asked with the head, its body still None."""
    tap = Whole()
    asm, _, _ = assembler([tap])
    asm.head(post())  # a Request's body defaults to b""
    assert tap.asked == [None]


def test_body_up_to_the_limit_stays_buffered():
    """A body of exactly ``limit`` bytes is still handed over whole."""
    asm, delivered, log = assembler([Whole()], limit=4)
    req = post()
    asm.head(req)
    asm.data(req, b"abcd")
    asm.end(req, None)
    assert [shape(u) for u in delivered] == [("message", b"abcd", False, None)]
    assert log.events == []


def test_body_past_the_limit_streams_marked_too_large_and_says_so():
    """Past ``limit`` the head goes with body_too_large, the buffered bytes as one chunk, then the rest
    streams; the log names the flow, the kind and the limit."""
    asm, delivered, log = assembler([Whole()], limit=4)
    req = post()
    asm.head(req)
    asm.data(req, b"abc")
    asm.data(req, b"de")
    assert not asm.buffering
    asm.data(req, b"f")
    asm.end(req, [(b"x-sum", b"4")])
    assert [shape(u) for u in delivered] == [
        ("message", None, True, None), ("chunk", b"abcde"), ("chunk", b"f"), ("end", [(b"x-sum", b"4")]),
    ]
    assert delivered[0] is req and all(u.message is req for u in delivered[1:])
    ((format, fields),) = log.events
    assert "streaming it instead of buffering" in format
    assert fields == {"flow_id": FLOW.id, "kind": "request", "limit": 4}


def test_next_message_starts_afresh():
    """One assembler carries message after message: a buffered one leaves nothing to the next."""
    tap = Whole()
    asm, delivered, _ = assembler([tap])
    first = post()
    asm.head(first)
    asm.data(first, b"one")
    asm.end(first, None)
    tap.whole_bodies = False
    tap.wants_whole_body = lambda message, flow: False
    second = post()
    assert asm.head(second) is False
    asm.data(second, b"two")
    asm.end(second, None)
    assert [shape(u) for u in delivered] == [
        ("message", b"one", False, None), ("message", None, False, None), ("chunk", b"two"), ("end", None),
    ]


def expected(chunks, wants_whole, limit, trailers):
    """What the taps should get for a body read as ``chunks`` (the model the property checks against)."""
    fields = trailers or None
    if not wants_whole:
        return [("message", None, False, None), *(("chunk", c) for c in chunks), ("end", fields)]
    size = 0
    for i, c in enumerate(chunks):
        size += len(c)
        if size > limit:
            return [("message", None, True, None), ("chunk", b"".join(chunks[: i + 1])),
                    *(("chunk", c) for c in chunks[i + 1:]), ("end", fields)]
    return [("message", b"".join(chunks), False, fields)]


@given(
    chunks=st.lists(st.binary(max_size=64), max_size=12),
    wants_whole=st.booleans(),
    limit=st.integers(min_value=0, max_value=400),
    trailers=st.lists(st.tuples(st.sampled_from([b"x-a", b"x-b"]), st.binary(min_size=1, max_size=4)), max_size=2),
)
def test_any_split_of_a_body_reaches_the_taps_intact(chunks, wants_whole, limit, trailers):
    """Any split, with or without a whole-body tap, any limit: the units carry exactly the body's bytes in
    order; one unit when the body is wanted whole and fits, else the head, the chunks and the end."""
    asm, delivered, log = assembler([Whole()] if wants_whole else [], limit=limit)
    req = post()
    asm.head(req)
    for c in chunks:
        asm.data(req, c)
    asm.end(req, trailers)
    got = [shape(u) for u in delivered]
    assert got == expected(chunks, wants_whole, limit, trailers)
    body = delivered[0].body if delivered[0].body is not None else b"".join(
        u.data for u in delivered if type(u) is BodyChunk
    )
    assert body == b"".join(chunks)
    assert len(log.events) == (1 if got[0][2] else 0)
    assert not asm.buffering
