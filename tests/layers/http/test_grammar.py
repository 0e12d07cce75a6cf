"""The HTTP grammar HTTP/1.1, HTTP/2 fields, WebSocket and the sniffer share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.layers.http import grammar
from tinspect.layers.http.grammar import (
    HOP_BY_HOP,
    KNOWN_METHODS,
    TARGET_OK,
    TCHAR,
    VERSIONS,
    is_token,
    list_items,
    lower_name,
    tokens,
)

# RFC 9110 §5.6.2, written out independently of the module under test.
_RFC_TCHAR = set(b"!#$%&'*+-.^_`|~") | set(range(0x30, 0x3A)) | set(range(0x41, 0x5B)) | set(range(0x61, 0x7B))

token_bytes = st.binary(min_size=1, max_size=16).map(lambda b: bytes(c for c in b if c in _RFC_TCHAR)).filter(bool)
ows = st.sampled_from(["", " ", "\t", " \t "])


def test_tchar_is_exactly_the_rfc_token_characters():
    """TCHAR holds the 77 tchar bytes of RFC 9110 and nothing else."""
    assert set(TCHAR) == _RFC_TCHAR
    assert len(TCHAR) == len(_RFC_TCHAR)


@pytest.mark.parametrize("value", [b"GET", b"X-Custom", b"a", b"!#$%&'*+-.^_`|~"])
def test_tokens_of_tchar_are_tokens(value):
    """Non-empty runs of tchar are tokens."""
    assert is_token(value)


@pytest.mark.parametrize("value", [b"", b"a b", b"a:b", b"a\r", b"(x)", b"a,b", b'"q"', b"\xe9", b"a\x00"])
def test_empty_values_and_separators_are_not_tokens(value):
    """The empty string, spaces, separators, controls and obs-text are not tokens."""
    assert not is_token(value)


@given(st.binary(max_size=20))
def test_is_token_agrees_with_the_rfc_definition(value):
    """is_token is true exactly for non-empty strings of RFC 9110 tchar."""
    assert is_token(value) == (bool(value) and set(value) <= _RFC_TCHAR)


def test_lower_name_lowers_tokens_and_remembers_them(monkeypatch):
    """A valid name comes back lower-cased and is then in the shared cache."""
    monkeypatch.setattr(grammar, "NAME_CACHE", {})
    assert grammar.lower_name(b"X-Remembered") == b"x-remembered"
    assert grammar.NAME_CACHE == {b"X-Remembered": b"x-remembered"}


@pytest.mark.parametrize("name", [b"", b"Bad Name", b"Bad:Name", b"X-\xe9"])
def test_lower_name_refuses_non_tokens_without_caching_them(name):
    """A name that is not a token gives None and never enters the cache."""
    assert lower_name(name) is None
    assert name not in grammar.NAME_CACHE


def test_name_cache_stops_growing_at_its_bound(monkeypatch):
    """Once the cache is full, new names are still validated but no longer remembered."""
    monkeypatch.setattr(grammar, "NAME_CACHE", {b"Full": b"full"})
    monkeypatch.setattr(grammar, "_NAME_CACHE_MAX", 1)
    assert grammar.lower_name(b"New-Name") == b"new-name"
    assert grammar.NAME_CACHE == {b"Full": b"full"}


def test_hop_by_hop_names_are_lower_case():
    """HOP_BY_HOP lists the connection-specific fields in lower case."""
    assert HOP_BY_HOP == {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    }


def test_known_methods_are_tokens_and_versions_are_http1():
    """Every known method is itself a token; the versions are HTTP/1.0 and HTTP/1.1."""
    assert all(is_token(method) for method in KNOWN_METHODS)
    assert VERSIONS == {b"HTTP/1.0", b"HTTP/1.1"}


def test_target_characters_are_visible_ascii_and_obs_text():
    """A target may hold visible ASCII and obs-text, not controls, SP or DEL."""
    assert set(TARGET_OK) == set(range(0x21, 0x7F)) | set(range(0x80, 0x100))


@pytest.mark.parametrize(
    "values,expected",
    [
        ([b"close"], [b"close"]),
        ([b"Keep-Alive, Upgrade"], [b"keep-alive", b"upgrade"]),
        ([b" gzip ,\tchunked"], [b"gzip", b"chunked"]),
        ([b"a,,b", b"", b"C"], [b"a", b"b", b"c"]),
        ([], []),
    ],
)
def test_tokens_split_lists_lower_case(values, expected):
    """Comma lists split across fields, trimmed of SP/HTAB, lower-cased, empty elements dropped."""
    assert tokens(values) == expected


@pytest.mark.parametrize(
    "values,expected",
    [
        (["chat, Superchat"], ["chat", "Superchat"]),
        (["permessage-deflate; client_max_window_bits", "x-webkit"], ["permessage-deflate; client_max_window_bits", "x-webkit"]),
        (["a,, ,b"], ["a", "b"]),
        ([], []),
    ],
)
def test_list_items_split_lists_keeping_case(values, expected):
    """Case-sensitive lists split the same way, case and parameters kept."""
    assert list_items(values) == expected


@given(st.lists(st.lists(st.tuples(ows, token_bytes, ows), max_size=5), max_size=4))
def test_tokens_give_back_the_elements_a_list_was_joined_from(fields):
    """Joining tokens with commas and optional whitespace, then splitting, gives them back in order, lower-cased."""
    values = [b",".join(a.encode() + t + b.encode() for a, t, b in field) for field in fields]
    assert tokens(values) == [t.lower() for field in fields for _, t, _ in field]


@given(st.lists(st.lists(st.tuples(ows, token_bytes.map(bytes.decode), ows), max_size=5), max_size=4))
def test_list_items_give_back_the_elements_a_list_was_joined_from(fields):
    """The str variant gives the same elements back with their case."""
    values = [",".join(a + t + b for a, t, b in field) for field in fields]
    assert list_items(values) == [t for field in fields for _, t, _ in field]


def test_hop_by_hop_still_imports_from_its_0_1_module():
    """tinspect 0.1's ``tinspect.http1.HOP_BY_HOP`` is the grammar's set, not a copy."""
    from tinspect.http1 import HOP_BY_HOP as old

    assert old is HOP_BY_HOP
