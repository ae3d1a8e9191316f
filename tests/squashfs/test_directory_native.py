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
from pathlib import Path

import pytest

from siffs.squashfs import SquashFS, SquashfsError, directory, walk
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
    assert find(table, key, first, b"b", load) == 2 and asked == [-1]  # before the first index name
    assert find(table, key, first, b"m", load) == 10  # the first of two equal names, as tuple.index
    assert find(table, key, first, b"x", load) == 20 and asked == [-1, 0, 1]  # bisect_right
    assert find(table, key, first, b"mx", load) is None and asked == [-1, 0, 1, 0]
    table[(*key, 0)] = (segments[0], 0)
    table["other"] = (None, 0)
    assert find(table, key, first, b"n", load) == 13 and asked == [-1, 0, 1, 0]  # a hit
    assert list(table)[-1] == (*key, 0)  # marked recently used
    assert find(table, key, (), b"a", load) == 1  # no index: one segment, number -1
    with pytest.raises(TypeError):
        find(table, key[:3], first, b"a", load)
    with pytest.raises(TypeError):
        find(table, key, (b"m", "x"), b"y", load)
    with pytest.raises(TypeError):
        find(table, key, first, b"a", lambda i: directory.Segment((b"a",), (), (), ()))


def test_no_native_switch():
    code = "from siffs.squashfs import directory; print(directory.native_parse is None)"
    env = {"SIFFS_NO_NATIVE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
