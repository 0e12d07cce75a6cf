"""Tests for tinspect.headers: the ordered, case-preserving `Headers` of a message."""

from __future__ import annotations

import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.headers import Headers, to_bytes

# RFC 9110 tchar: what a header name is made of.
TCHAR = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

names = st.text(alphabet=TCHAR, min_size=1, max_size=12)
safe_values = st.text(alphabet=st.characters(max_codepoint=0xFF, exclude_characters="\r\n\x00"), max_size=20)
field_lists = st.lists(st.tuples(names, safe_values), max_size=12)


def sample():
    """A small message head with a repeated name in mixed case."""
    return Headers([(b"Host", b"example.org"), (b"Accept", b"*/*"), (b"X-Tag", b"one"), (b"x-tag", b"two")])


def others(fields, name):
    """The fields not called ``name`` (compared case-insensitively), in order."""
    key = name.lower()
    return [(n, v) for n, v in fields if n.lower() != key]


# ---------------------------------------------------------------------------
# to_bytes
# ---------------------------------------------------------------------------


def test_to_bytes_encodes_str_as_latin1():
    """A str becomes its Latin-1 bytes; é is one byte, not two."""
    assert to_bytes("caf\u00e9") == b"caf\xe9"


def test_to_bytes_passes_bytes_through():
    """Bytes (and bytearray) come back as equal bytes."""
    assert to_bytes(b"abc") == b"abc"
    assert to_bytes(bytearray(b"abc")) == b"abc"
    assert type(to_bytes(bytearray(b"abc"))) is bytes


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b", b"a\r\nb", b"\n", b"x\x00"])
def test_to_bytes_rejects_cr_lf_nul(bad):
    """CR, LF and NUL would let a value break out of its line: ValueError."""
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        to_bytes(bad)


def test_to_bytes_rejects_non_latin1():
    """A character outside Latin-1 cannot be carried in a header: ValueError."""
    with pytest.raises(ValueError, match="cannot carry"):
        to_bytes("price: 5\u20ac")


# ---------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------


def test_wrap_uses_the_codecs_list_as_it_is():
    """`Headers.wrap` takes a codec's list as `fields` itself, like the constructor does with bytes pairs."""
    fields = [(b"Host", b"a")]
    h = Headers.wrap(fields)
    assert h.fields is fields
    assert h == Headers([(b"Host", b"a")])
    h["X"] = "1"
    assert fields == [(b"Host", b"a"), (b"X", b"1")]


def test_list_of_bytes_pairs_is_used_without_copy():
    """A list of bytes pairs becomes `fields` itself, so changes show in both."""
    fields = [(b"Host", b"a"), (b"Accept", b"*/*")]
    h = Headers(fields)
    assert h.fields is fields
    h["X-New"] = "1"
    del h["accept"]
    assert fields == [(b"Host", b"a"), (b"X-New", b"1")]


def test_empty_list_is_used_without_copy():
    """An empty list is kept as is too: what a tap adds lands in the codec's list."""
    fields = []
    Headers(fields).add("A", "1")
    assert fields == [(b"A", b"1")]


def test_none_gives_empty_headers():
    """No argument means no fields."""
    assert Headers().fields == []
    assert len(Headers(None)) == 0


def test_str_pairs_are_encoded():
    """Pairs of str are encoded as Latin-1 into a new list of bytes pairs."""
    pairs = [("Host", "caf\u00e9.example"), ("Accept", "*/*")]
    h = Headers(pairs)
    assert h.fields == [(b"Host", b"caf\xe9.example"), (b"Accept", b"*/*")]
    assert h.fields is not pairs


def test_mixed_pairs_are_encoded():
    """A list mixing str and bytes is converted, not taken as is."""
    pairs = [(b"Host", "a"), ("Accept", b"b")]
    h = Headers(pairs)
    assert h.fields == [(b"Host", b"a"), (b"Accept", b"b")]
    assert h.fields is not pairs


def test_tuple_of_bytes_pairs_is_copied_into_a_list():
    """Any other iterable of pairs becomes a new list."""
    h = Headers(((b"A", b"1"), (b"B", b"2")))
    assert h.fields == [(b"A", b"1"), (b"B", b"2")]
    h.add("C", "3")
    assert len(h) == 3


def test_dict_keeps_insertion_order():
    """A dict gives one field per key, in insertion order."""
    h = Headers({"Host": "a", b"Accept": b"*/*", "X-N": "1"})
    assert h.fields == [(b"Host", b"a"), (b"Accept", b"*/*"), (b"X-N", b"1")]


def test_non_dict_mapping_gives_its_items():
    """The docstring promises 'or a mapping': a read-only mapping gives its items."""
    h = Headers(types.MappingProxyType({"ab": "value"}))
    assert h.fields == [(b"ab", b"value")]


@pytest.mark.parametrize(
    "fields",
    [
        [("X-A", "a\r\nX-Injected: 1")],
        {"X-A": "line\nbreak"},
        [("X-A", "nul\x00")],
        [("X-A", "\u2603")],
    ],
)
def test_construction_rejects_unsafe_values(fields):
    """Converted str pairs and dicts are checked like assigned values."""
    with pytest.raises(ValueError):
        Headers(fields)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["host", "HOST", "Host", b"host", b"hOsT"])
def test_lookup_ignores_case(name):
    """get, [], raw and `in` find a field whatever the case of the name."""
    h = sample()
    assert h.get(name) == "example.org"
    assert h[name] == "example.org"
    assert h.raw(name) == b"example.org"
    assert name in h


def test_get_returns_first_of_repeated_fields():
    """With a name repeated, get and raw return the first value."""
    h = sample()
    assert h.get("X-TAG") == "one"
    assert h.raw(b"x-tag") == b"one"


def test_get_all_returns_every_value_in_order():
    """get_all gives all values of a name, whatever their case, without splitting commas."""
    h = Headers([(b"X-Tag", b"a, b"), (b"Host", b"h"), (b"x-TAG", b"c")])
    assert h.get_all("x-tag") == ["a, b", "c"]
    assert h.get_all(b"X-Tag") == ["a, b", "c"]
    assert h.get_all("missing") == []


def test_missing_names():
    """A missing name: get gives the default, raw None, [] KeyError, `in` False."""
    h = sample()
    assert h.get("cookie") is None
    assert h.get("cookie", "none") == "none"
    assert h.raw("cookie") is None
    assert "cookie" not in h
    with pytest.raises(KeyError):
        h["cookie"]


def test_contains_only_takes_names():
    """`in` with something that is not a str or bytes is simply False."""
    h = sample()
    assert 1 not in h
    assert None not in h
    assert ("Host", "example.org") not in h


def test_non_latin1_name_is_never_present():
    """A name that cannot be encoded cannot be in the headers: `in` is False, get gives the default."""
    h = sample()
    assert "\u20ac" not in h
    assert h.get("\u20ac", "default") == "default"


def test_values_decode_as_latin1():
    """Values come back as str through Latin-1, byte for byte."""
    h = Headers([(b"X-Name", b"caf\xe9")])
    assert h["x-name"] == "caf\u00e9"
    assert h.items() == [("X-Name", "caf\u00e9")]


def test_items_iter_and_len_follow_field_order():
    """items, iteration and len see every field, in order, repeats included."""
    h = sample()
    assert h.items() == [("Host", "example.org"), ("Accept", "*/*"), ("X-Tag", "one"), ("x-tag", "two")]
    assert list(h) == ["Host", "Accept", "X-Tag", "x-tag"]
    assert len(h) == 4
    assert len(Headers()) == 0
    assert list(Headers()) == []


# ---------------------------------------------------------------------------
# changing
# ---------------------------------------------------------------------------


def test_setitem_replaces_first_in_place_and_drops_later_duplicates():
    """Setting a repeated name keeps the first field's position and case, and removes the rest."""
    h = Headers([(b"X-Tag", b"one"), (b"Host", b"h"), (b"x-tag", b"two"), (b"Accept", b"*/*"), (b"X-TAG", b"3")])
    h["x-TAG"] = "new"
    assert h.fields == [(b"X-Tag", b"new"), (b"Host", b"h"), (b"Accept", b"*/*")]


def test_setitem_keeps_fields_before_the_first_occurrence():
    """Fields before the replaced one are untouched, even with the same name in other case later."""
    h = Headers([(b"A", b"1"), (b"B", b"2"), (b"Host", b"old"), (b"C", b"3")])
    h["host"] = b"new"
    assert h.fields == [(b"A", b"1"), (b"B", b"2"), (b"Host", b"new"), (b"C", b"3")]


def test_setitem_appends_new_name_with_its_case():
    """A name not there yet is appended, spelled as given."""
    h = sample()
    h["X-Seen-By"] = "tinspect"
    assert h.fields[-1] == (b"X-Seen-By", b"tinspect")
    assert len(h) == 5


@pytest.mark.parametrize("value", ["a\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00", "\u20ac"])
def test_setitem_rejects_unsafe_value_and_leaves_headers_unchanged(value):
    """A value with CR, LF, NUL or non-Latin-1 text is refused before anything changes."""
    h = sample()
    before = list(h.fields)
    with pytest.raises(ValueError):
        h["Host"] = value
    with pytest.raises(ValueError):
        h["X-New"] = value
    assert h.fields == before


def test_setitem_rejects_name_with_line_break():
    """A name cannot smuggle a line break either."""
    h = Headers()
    with pytest.raises(ValueError):
        h["X-A\r\nX-B"] = "1"
    assert h.fields == []


def test_add_appends_even_when_name_exists():
    """add always appends a new field, keeping the existing ones."""
    h = sample()
    h.add("host", b"second")
    assert h.fields[-1] == (b"host", b"second")
    assert h.get_all("Host") == ["example.org", "second"]


def test_add_rejects_unsafe_value():
    """add checks values like assignment does."""
    h = Headers()
    with pytest.raises(ValueError):
        h.add("X-A", "a\r\nb")
    assert len(h) == 0


def test_remove_deletes_every_field_of_the_name_and_counts_them():
    """remove drops all fields of a name, whatever their case, and says how many there were."""
    h = sample()
    assert h.remove("X-TAG") == 2
    assert h.fields == [(b"Host", b"example.org"), (b"Accept", b"*/*")]
    assert h.remove("x-tag") == 0


def test_remove_keeps_the_same_list():
    """remove edits `fields` in place, so the codec's list sees it."""
    fields = [(b"A", b"1"), (b"B", b"2")]
    h = Headers(fields)
    h.remove(b"a")
    assert h.fields is fields
    assert fields == [(b"B", b"2")]


def test_del_removes_all_or_raises_keyerror():
    """del removes every field of a name; a missing name is a KeyError."""
    h = sample()
    del h["x-tag"]
    assert "X-Tag" not in h
    assert len(h) == 2
    with pytest.raises(KeyError):
        del h["x-tag"]
    with pytest.raises(KeyError):
        del Headers()["Host"]


def test_copy_is_independent():
    """Changing a copy leaves the original alone, and the other way round."""
    h = sample()
    c = h.copy()
    assert c == h
    assert c.fields is not h.fields
    c["Host"] = "other"
    c.add("X-New", "1")
    del c["accept"]
    assert h == sample()
    h["Accept"] = "text/html"
    assert c.get("accept") is None


def test_equality_compares_fields_in_order():
    """Headers are equal when their fields are, in the same order; other types are not equal."""
    assert Headers([("A", "1"), ("B", "2")]) == Headers([(b"A", b"1"), (b"B", b"2")])
    assert Headers([("A", "1"), ("B", "2")]) != Headers([("B", "2"), ("A", "1")])
    assert Headers([("A", "1")]) != Headers([("A", "2")])
    assert Headers([("A", "1")]) != [(b"A", b"1")]
    assert Headers() == Headers([])


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@given(fields=field_lists, data=st.data(), value=safe_values)
def test_set_then_get_returns_the_value(fields, data, value):
    """Setting any name leaves exactly one field with it, holding the value; other fields keep their order."""
    existing = [n for n, _ in fields]
    name = data.draw(st.sampled_from(existing) | names if existing else names)
    name = data.draw(st.sampled_from([name, name.lower(), name.upper()]))
    h = Headers(fields)
    before = list(h.fields)
    key = name.lower().encode()
    first = next((i for i, (n, _) in enumerate(before) if n.lower() == key), None)

    h[name] = value

    assert h[name] == value
    assert h.get_all(name) == [value]
    assert others(h.fields, key) == others(before, key)
    if first is None:
        assert h.fields[-1] == (name.encode(), value.encode("latin-1"))
    else:
        assert h.fields[first] == (before[first][0], value.encode("latin-1"))


@given(fields=field_lists, data=st.data())
def test_remove_leaves_no_field_of_that_name(fields, data):
    """remove takes out every field of a name, counts them, and keeps the rest in order."""
    existing = [n for n, _ in fields]
    name = data.draw(st.sampled_from(existing) | names if existing else names)
    h = Headers(fields)
    before = list(h.fields)
    key = name.lower().encode()

    removed = h.remove(name.upper())

    assert removed == sum(1 for n, _ in before if n.lower() == key)
    assert name not in h
    assert h.get_all(name) == []
    assert h.fields == others(before, key)
