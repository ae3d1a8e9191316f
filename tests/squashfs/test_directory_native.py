"""The native directory-segment parser and name search (siffs/squashfs/_directory.c) against the
Python code.

The Python code is the oracle: every directory of the corpus images must list and look up (names
present and absent) the same with and without the native code, and so must damaged images (the
same entries or the same error), since the native parser hands anything malformed back to the
Python one.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from siffs.squashfs import SquashFS, SquashfsError, directory, reader, walk
from siffs.squashfs.cache import LruCache
from siffs.squashfs.superblock import SIZE, Superblock
from tests.support.squashfs_corpus import SPECS, damaged_copies

pytestmark = pytest.mark.skipif(
    directory.native_parse is None, reason="native parser not built (pip install -e . builds it)"
)

MAIN = [name for name, spec in SPECS.items() if spec.tree == "main"]
Outcome = list[tuple[bytes, tuple[tuple[bytes, int, int, int | None], ...]]] | tuple[str, str]


def listings(image: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> Outcome:
    """Every directory's (name, inode, cookie, inode found by lookup) entries; or the error."""
    monkeypatch.setattr(directory, "native_parse", directory.native_parse if native else None)
    monkeypatch.setattr(directory, "native_find", directory.native_find if native else None)
    out = []
    try:
        with SquashFS.open(image) as fs:  # a new reader: every segment parsed afresh
            for path, st in walk(fs):
                if st.mode & 0o170000 != 0o040000:
                    continue
                entries = []
                for name, a, cookie in fs.readdir(st.ino):
                    found = fs.lookup(st.ino, name)
                    entries.append((name, a.ino, cookie, None if found is None else found.ino))
                    for absent in (name + b"~", name[:-1], b"\xff" + name):
                        missing = fs.lookup(st.ino, absent)
                        entries.append((absent, -1, -1, None if missing is None else missing.ino))
                out.append((path, tuple(entries)))
    except SquashfsError as e:
        return (type(e).__name__, str(e))
    return out


@pytest.mark.parametrize("name", [*MAIN, "mk-bigdir"])
def test_same_listings_as_the_python_parser(name, corpus, monkeypatch):
    image = corpus.image(name)
    native = listings(image, monkeypatch, native=True)
    assert isinstance(native, list) and sum(len(entries) for _, entries in native) > 2500
    assert all(ino == found for _, entries in native for _, ino, _, found in entries if ino != -1)
    assert native == listings(image, monkeypatch, native=False)


def test_same_answers_on_damaged_directory_tables(corpus, monkeypatch, tmp_path):
    pristine = corpus.image("mk-gzip-4k-raw").read_bytes()  # metadata stored uncompressed
    sb = Superblock.parse(pristine[:SIZE], len(pristine))
    region = (sb.directory_table, sb.fragment_table)  # the directory table (compressed blocks)
    differing_outcomes = set()
    for damaged in damaged_copies(pristine, region, tmp_path / "damaged.sqfs", seed=17, max_flips=8):
        native = listings(damaged, monkeypatch, native=True)
        assert native == listings(damaged, monkeypatch, native=False)
        differing_outcomes.add(repr(native)[:200])
    assert len(differing_outcomes) > 5  # the damage reached the parsers in many different ways


def test_malformed_segments_are_left_to_the_python_parser():
    parse = directory.native_parse
    assert parse is not None
    entry = (0).to_bytes(4, "little") + (7).to_bytes(4, "little") + (1).to_bytes(4, "little")
    entry += (0x20).to_bytes(2, "little") + (0).to_bytes(2, "little") * 2 + (2).to_bytes(2, "little") + b"abc"
    assert parse(entry, 0, 100) == ((b"abc",), (7 << 16 | 0x20,), (12,), (26,))
    assert parse(entry[:-1], 0, 100) is None  # the name runs past the segment
    assert parse(entry, 0, 12) is None  # the listing is shorter than its entries
    too_many = (256).to_bytes(4, "little") + entry[4:]
    assert parse(too_many, 0, 100) is None  # 257 entries in one run


def test_find_bisects_the_index_and_searches_one_segment():
    find = directory.native_find
    assert find is not None
    segments = {
        -1: directory.Segment((b"a", b"b"), (1, 2), (0, 1), (3, 4)),
        0: directory.Segment((b"m", b"mm", b"m", b"n"), (10, 11, 12, 13), (0, 1, 2, 3), (3, 4, 5, 6)),
        1: directory.Segment((b"x",), (20,), (0,), (3,)),
    }
    table: OrderedDict[object, tuple[object, int]] = OrderedDict()
    asked: list[int] = []

    def load(i: int) -> directory.Segment:
        asked.append(i)
        return segments[i]

    key = ("s", 100, 4, 500)
    first = (b"m", b"x")
    # no block loader or store: every miss goes to load
    assert find(table, key, first, None, None, b"b", load) == 2 and asked == [-1]  # before the first name
    assert find(table, key, first, None, None, b"m", load) == 10  # the first of two equal names
    assert find(table, key, first, None, None, b"x", load) == 20 and asked == [-1, 0, 1]  # bisect_right
    assert find(table, key, first, None, None, b"mx", load) is None and asked == [-1, 0, 1, 0]
    table[(*key, 0)] = (segments[0], 0)
    table["other"] = (None, 0)
    assert find(table, key, first, None, None, b"n", load) == 13 and asked == [-1, 0, 1, 0]  # a hit
    assert list(table)[-1] == (*key, 0)  # marked recently used
    assert find(table, key, (), None, None, b"a", load) == 1  # no index: one segment, number -1
    with pytest.raises(TypeError):
        find(table, key[:3], first, None, None, b"a", load)
    with pytest.raises(TypeError):
        find(table, key, (b"m", "x"), None, None, b"y", load)
    with pytest.raises(TypeError):
        find(table, key, first, None, None, b"a", lambda i: directory.Segment((b"a",), (), (), ()))


def lookups_only(fs: SquashFS, names: SquashFS) -> list[tuple[bytes, int | None]]:
    """Each directory's entries looked up by name (names listed by another reader), as on a cold mount."""
    out = []
    for path, st in walk(names):
        if st.mode & 0o170000 == 0o040000:
            ino = fs.root_ino if path == b"/" else fs.lookup(*parent_and_name(fs, path)).ino  # type: ignore[union-attr]
            for name, _, _ in names.readdir(st.ino):
                for asked in (name, name + b"~"):
                    found = fs.lookup(ino, asked)
                    out.append((path + b"/" + asked, None if found is None else found.ino))
    return out


def parent_and_name(fs: SquashFS, path: bytes) -> tuple[int, bytes]:
    head, _, name = path.rpartition(b"/")
    ino = fs.root_ino
    for part in filter(None, head.split(b"/")):
        ino = fs.lookup(ino, part).ino  # type: ignore[union-attr]
    return ino, name


def passes_at_budgets(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[int, SquashFS, list[int], list[tuple[bytes, int | None]]]]:
    """A lookup-only cold pass on a fresh reader for each budget of the C lookup's kept bytes (one
    that keeps a large tree's hot listings, one of a few listings): (budget, reader, Python's
    segment parses, answers)."""
    for budget in (2 << 20, 1000):
        monkeypatch.setattr(reader, "_C_LISTINGS_BUDGET", budget)
        with SquashFS.open(image) as fs, SquashFS.open(image) as names:
            calls, restore = counting_parses(fs)
            try:
                found = lookups_only(fs, names)
            finally:
                restore()
            yield budget, fs, calls, found


def counting_parses(fs: SquashFS) -> tuple[list[int], Callable[[], None]]:
    """Count the Python parses of ``fs``'s listing segments (each count: the listing's index size)."""
    calls: list[int] = []
    parse = directory.Listing._parse

    def counted(listing: directory.Listing, i: int) -> directory.Segment:
        if listing._cache is fs._meta_cache:
            calls.append(len(listing._index.names))
        return parse(listing, i)

    directory.Listing._parse = counted  # type: ignore[method-assign]
    return calls, lambda: setattr(directory.Listing, "_parse", parse)


@pytest.mark.parametrize("name", MAIN)
def test_listings_without_an_index_are_searched_as_bytes_in_c(name, corpus, monkeypatch):
    """A cold lookup in a directory without an index makes no Segment: the reader's C lookup keeps
    the listing's bytes (_tree.c) within its budget; Python parses only listings with an index.
    A budget of a few listings empties the kept ones often: the answers stay the same."""
    image = corpus.image(name)
    answers = []
    for budget, fs, calls, found in passes_at_budgets(image, monkeypatch):
        answers.append(found)
        assert found and all(ino is not None for path, ino in found if not path.endswith(b"~"))
        segments = [k for k in fs._meta_cache.table if k[0] == "s"]
        assert all(calls) and len(segments) == len(calls)  # only those Python parsed
        kept = fs.native_tree.kept_bytes  # type: ignore[attr-defined]
        assert 0 < kept <= budget
    assert answers[0] == answers[1]


def test_index_intervals_are_searched_as_bytes_in_c(corpus, monkeypatch):
    """After a directory's first lookup (Python reads its index and makes the Listing), each lookup
    there keeps and searches its index interval's bytes in C (_tree.c): Python parses one Segment
    per directory with an index, however many of its intervals are looked into. The same answers
    with a budget too small to keep an interval (each then searched once)."""
    image = corpus.image("mk-bigdir")
    answers = []
    with SquashFS.open(image) as names:
        expected = {
            (path, name): st.ino
            for path, dst in walk(names)
            if dst.mode & 0o170000 == 0o040000
            for name, st, _ in names.readdir(dst.ino)
        }
    for budget, fs, calls, found in passes_at_budgets(image, monkeypatch):
        answers.append(found)
        indexed = sorted(n for n in calls if n)
        assert indexed and max(indexed) >= 8  # a directory of many intervals
        assert len(indexed) == len(set(fs._listings))  # one parse per listing with an index
        kept = fs.native_tree.kept_bytes  # type: ignore[attr-defined]
        assert (kept > 8 * 1000) if budget > 1000 else (kept <= budget)
    for path, ino in answers[0]:
        head, _, name = path.rpartition(b"/")
        assert ino == expected.get((head or b"/", name)), path
    assert answers[0] == answers[1]


@pytest.mark.parametrize("name", MAIN)
def test_a_kept_listing_without_an_index_is_parsed_and_stored_in_c(name, corpus):
    """Listing.find of a listing without an index parses its one segment in C: the segment the
    Python parser makes, stored at the same cost."""
    image = corpus.image(name)
    with SquashFS.open(image) as fs, SquashFS.open(image) as py:
        calls, restore = counting_parses(fs)
        checked = 0
        try:
            for _, st in walk(py):
                loc = py.inode(st.ino).dir
                if loc is None or loc.index_count or loc.size <= 3:
                    continue
                table_start = fs.superblock.directory_table
                no_index = directory.Index((), (), ())
                listing = directory.Listing(fs._meta, table_start, loc, no_index, fs._meta_cache)
                first = next(iter(py.readdir(st.ino)))[0]
                assert listing.find(first) is not None
                key = ("s", table_start + loc.block, loc.offset, loc.size - 3, -1)
                segment, cost = fs._meta_cache.table[key]
                oracle = directory.Listing(py._meta, table_start, loc, no_index, py._meta_cache)
                assert type(segment) is directory.Segment and segment == oracle._parse(-1)
                assert cost == segment.cost()
                checked += 1
        finally:
            restore()
        assert checked > 10 and not calls


def test_a_listing_find_will_not_parse_goes_back_to_the_caller():
    find = directory.native_find
    assert find is not None
    table: OrderedDict[object, tuple[object, int]] = OrderedDict()

    def no_block(pos: int) -> tuple[bytes, int]:
        raise SquashfsError(f"no block at {pos}")

    def put(key: object, value: directory.Segment, cost: int) -> directory.Segment:
        raise AssertionError("nothing to store")

    # load None: NotImplemented, for the caller to take the Python way
    assert find(table, ("s", 0, 0, 0), (), no_block, put, b"a", None) is NotImplemented  # empty listing
    assert find(table, ("s", 0, 0, 1 << 17), (), no_block, put, b"a", None) is NotImplemented  # too long
    assert find(table, ("s", 0, 0, 40), (), no_block, put, b"a", None) is NotImplemented  # the block fails
    past_the_block = ("s", 0, 9000, 40)
    assert find(table, past_the_block, (), lambda pos: (b"x" * 8192, 8194), put, b"a", None) is NotImplemented
    malformed = ("s", 0, 0, 40)
    assert find(table, malformed, (), lambda pos: (b"\xff" * 8192, 8194), put, b"a", None) is NotImplemented
    # with a loader, the loader is asked, and its error is what the caller sees
    with pytest.raises(SquashfsError, match="the Python loader"):
        find(table, ("s", 0, 0, 40), (), no_block, put, b"a", lambda i: _raise())

    def interrupted(pos: int) -> tuple[bytes, int]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # a signal's exception is not the image's: it goes up
        find(table, ("s", 0, 0, 40), (), interrupted, put, b"a", None)


def _raise() -> directory.Segment:
    raise SquashfsError("the Python loader")


def test_put_keeps_the_first_value_and_the_budget_right():
    cache = LruCache(1000)
    assert cache.put("k", "first", 100) == "first"
    assert cache.put("k", "second", 100) == "first" and cache.used == 100

    def load() -> str:
        cache.put("j", "stored meanwhile", 300)  # as a native reader may while a load is in flight
        return "loaded"

    assert cache.get_or_load("j", load, lambda v: 200) == "loaded"
    assert cache.table["j"] == ("loaded", 200) and cache.used == 300


def test_no_native_switch():
    code = "from siffs.squashfs import directory; print(directory.native_parse is None)"
    env = {"SIFFS_NO_NATIVE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
