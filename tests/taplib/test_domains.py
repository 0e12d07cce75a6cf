"""Domain and URL lists (tinspect.taplib.domains): entries, subdomains, URL prefixes, the files' layout."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinspect.taplib import domains
from tinspect.taplib.domains import DomainList, ListError, Query, read_category, read_domains

LIST = b"""# games
casino.example
  Poker.EXAMPLE.   # a comment after an entry

198.51.100.7
\tdice.example.org\r
"""


@pytest.fixture
def games():
    return DomainList.build("games", [LIST])


@pytest.mark.parametrize("host, listed", [
    ("casino.example", True),
    ("www.casino.example", True),
    ("a.b.casino.example", True),
    ("WWW.Casino.Example.", True),
    ("poker.example", True),
    ("dice.example.org", True),
    ("cdn.dice.example.org", True),
    ("notcasino.example", False),  # a suffix of the name, not a parent domain
    ("example", False),  # a parent of an entry is not listed
    ("casino.example.org", False),
    ("example.org", False),
    ("198.51.100.7", True),
    ("10.198.51.100.7", False),  # addresses are looked up whole
    ("", False),
])
def test_an_entry_matches_its_domain_and_subdomains(games, host, listed):
    """Comments, blank lines, spaces, case and trailing dots are ignored; subdomains match."""
    assert games.has_domain(Query(host)) is listed
    assert games.match(Query(host, "/")) is listed


def test_an_address_does_not_match_by_its_parent_domains():
    """An IPv4 address is one name: a list holding ``100.7`` does not list 198.51.100.7."""
    lst = DomainList.build("odd", [b"100.7\n::1\n"])
    assert not lst.has_domain(Query("198.51.100.7"))
    assert lst.has_domain(Query("::1"))


def test_entries_are_counted_once(games):
    """Duplicates (after normalising) are stored once."""
    assert len(DomainList.build("d", [b"a.example\nA.example.\na.example\n", b"b.example\n"])) == 2
    assert len(games) == 4
    assert "games (4 domains, 0 URLs)" in repr(games)


def test_a_list_read_as_lines_or_as_one_piece_is_the_same():
    """``build`` takes whole lines in any grouping: a file's lines work as well as big pieces."""
    lines = LIST.splitlines(keepends=True)
    one, many = DomainList.build("a", [LIST]), DomainList.build("b", lines)
    for host in ("www.casino.example", "poker.example", "elsewhere.example"):
        assert one.has_domain(Query(host)) == many.has_domain(Query(host))


def test_an_empty_list_matches_nothing():
    """A list with no entries (only comments) answers no."""
    empty = DomainList.build("none", [b"# nothing yet\n\n"])
    assert len(empty) == 0 and not empty.match(Query("example.com", "/"))


def test_a_big_list_finds_every_entry_and_no_other():
    """30,000 entries (enough for the index to be cut in slices): each found, with subdomains; others not."""
    names = [f"site{i}.example" for i in range(30000)]
    lst = DomainList.build("big", ["".join(f"{n}\n" for n in names).encode()])
    assert len(lst) == 30000
    assert all(lst.has_domain(Query(f"www.{n}")) for n in names)
    assert not any(lst.has_domain(Query(f"site{i}.example")) for i in range(30000, 40000))


URLS = b"""# urls
videos.example/watch
tube.example/
http://Clips.Example/Top/
news.example/index.php?id=5
whole.example
"""


@pytest.fixture
def streaming():
    return DomainList.build("streaming", urls=[URLS])


@pytest.mark.parametrize("host, path, listed", [
    ("videos.example", "/watch", True),
    ("videos.example", "/watch/123", True),
    ("videos.example", "/watch?v=1", True),
    ("videos.example", "/watch.html", True),
    ("videos.example", "/watchlist", False),  # the prefix ends inside a word
    ("videos.example", "/", False),
    ("www.videos.example", "/watch", True),  # subdomains of the entry's host
    ("VIDEOS.example.", "/WATCH", True),  # case does not matter, paths included
    ("tube.example", "/anything", True),
    ("tube.example", "/", True),
    ("clips.example", "/top/10", True),  # the scheme is dropped, the host lowercased
    ("clips.example", "/topper", False),
    ("news.example", "/index.php?id=5", True),
    ("news.example", "/index.php?id=50", False),
    ("news.example", "/index.php?id=5&x=1", True),
    ("whole.example", "/x", True),  # a host alone is all of its paths
    ("whole.example", None, False),  # no path (TLS, CONNECT): urls entries do not apply
    ("elsewhere.example", "/watch", False),
])
def test_a_urls_entry_matches_host_and_path_prefix(streaming, host, path, listed):
    """A ``urls`` entry matches its host and subdomains, with the path starting with the entry's at a boundary."""
    assert streaming.has_url(Query(host, path)) is listed
    assert not streaming.has_domain(Query(host, path))


def test_may_match_says_whether_a_host_has_urls_entries(streaming, games):
    """Before the path is known, a host with ``urls`` entries (or a listed domain) may match."""
    assert streaming.may_match(Query("www.videos.example"))
    assert not streaming.may_match(Query("elsewhere.example"))
    assert games.may_match(Query("www.casino.example"))


def test_a_category_directory_holds_domains_and_urls(tmp_path):
    """``read_category``: its name is the directory's, and either file may be missing."""
    games = tmp_path / "games"
    games.mkdir()
    (games / "domains").write_bytes(b"casino.example\n")
    (games / "urls").write_bytes(b"portal.example/play\n")
    lst = read_category(games)
    assert lst.name == "games" and lst.source == str(games) and len(lst) == 2
    assert lst.match(Query("www.casino.example", "/")) and lst.match(Query("portal.example", "/play/x"))
    (games / "urls").unlink()
    assert len(read_category(games)) == 1
    (games / "domains").rename(games / "urls")
    assert read_category(games).has_url(Query("casino.example", "/"))


def test_a_category_directory_must_hold_a_list(tmp_path):
    """A directory with neither file, a file, or a missing path is refused with a reason."""
    with pytest.raises(ListError, match="neither a domains nor a urls file"):
        read_category(tmp_path)
    (tmp_path / "ads.txt").write_bytes(b"ads.example\n")
    with pytest.raises(ListError, match="is not a directory"):
        read_category(tmp_path / "ads.txt")
    with pytest.raises(FileNotFoundError):
        read_category(tmp_path / "missing")


def test_a_plain_list_is_named_by_its_stem(tmp_path, monkeypatch):
    """``read_domains``: the category is the file's stem; files are read in pieces of whole lines."""
    monkeypatch.setattr(domains, "_CHUNK", 7)  # pieces smaller than a line: each must still end at one
    path = tmp_path / "ads.txt"
    path.write_bytes(b"ads.example\ntracker.example.net\nlast.example")  # no final newline
    lst = read_domains(path)
    assert lst.name == "ads" and len(lst) == 3
    assert all(lst.has_domain(Query(h)) for h in ("x.ads.example", "tracker.example.net", "last.example"))
    assert not lst.has_domain(Query("example.net"))


def test_the_hash_is_the_same_in_every_process():
    """The index's hash is stable (64-bit BLAKE2b of the name), not Python's per-process ``hash()``."""
    assert Query("Example.COM.").hash(0) == 0x13C51305C1CF2666


# -- properties -------------------------------------------------------------------------------------

label = st.text("abc", min_size=1, max_size=2)
name = st.lists(label, min_size=1, max_size=4).map(".".join)


@st.composite
def written(draw, entry):
    """An entry as a list file may write it: any case, trailing dots, spaces around, a comment after."""
    text = "".join(c.upper() if draw(st.booleans()) else c for c in entry)
    text += "." * draw(st.integers(0, 2))
    return draw(st.sampled_from(["", " ", "\t"])) + text + draw(st.sampled_from(["", " ", "  # note"]))


@given(st.lists(name, max_size=12), name, st.data())
def test_a_host_matches_iff_it_or_a_parent_domain_is_listed(entries, host, data):
    """For any list and host: listed exactly when one of the host's suffixes at a dot is an entry."""
    lines = [data.draw(written(e)) for e in entries]
    text = ("\n".join(lines) + data.draw(st.sampled_from(["", "\n", "\n# end\n"]))).encode()
    lst = DomainList.build("p", [text])
    labels = host.split(".")
    expected = any(".".join(labels[i:]) in entries for i in range(len(labels)))
    assert lst.has_domain(Query(host.upper() + ".")) is expected


def test_a_host_whose_crc32_holds_a_tab_byte_keeps_its_urls_apart():
    """b.b.b.ba's CRC-32 has a tab byte: its urls record must not swallow a.a's (found by hypothesis)."""
    lst = DomainList.build("u", urls=[b"a.a/\nb.b.b.ba/x\n"])
    assert lst.has_url(Query("a.a", "/")) and lst.has_url(Query("b.b.b.ba", "/x"))
    assert not lst.has_url(Query("b.b.b.ba", "/"))


path = st.lists(st.text("ab/?=", max_size=3), max_size=3).map(lambda parts: "/" + "".join(parts))


@given(st.lists(st.tuples(name, path), max_size=8), name, path)
def test_a_url_matches_iff_an_entry_prefixes_it_at_a_boundary(entries, host, request_path):
    """For any urls list: a match is an entry for the host or a parent, whose path starts the request's."""
    lst = DomainList.build("u", urls=["".join(f"{h}{p}\n" for h, p in entries).encode()])
    suffixes = {".".join(host.split(".")[i:]) for i in range(host.count(".") + 1)}

    def under(prefix):
        rest = request_path[len(prefix):]
        return request_path.startswith(prefix) and (prefix.endswith("/") or not rest[:1].isalnum())

    expected = any(h in suffixes and under(p) for h, p in entries)
    assert lst.has_url(Query(host, request_path)) is expected


@given(st.lists(st.binary(max_size=40), max_size=5))
def test_any_bytes_build_a_list(pieces):
    """Whatever a list file holds, it builds (a bad line is an entry that never matches)."""
    lst = DomainList.build("any", pieces, pieces)
    lst.match(Query("example.com", "/"))
