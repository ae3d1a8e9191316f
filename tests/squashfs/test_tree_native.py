"""The reader's per-request methods in C (siffs/squashfs/_tree.c) against its Python methods.

The Python methods are the oracle: on every corpus image, a walk that asks for every entry by
name (and for absent names), and for every inode's attributes, link target, xattr names and
bytes, gets the same answers (or the same error, message included) from the C methods as from
the Python ones, and leaves the same table of known inodes. A pure-Python reader
(``SIFFS_NO_NATIVE=1``) on damaged images gives the same outcomes too. A reader whose Python
methods count their calls shows that the C path is the one taken.
"""

from __future__ import annotations

import gc
import os
import stat
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from siffs.squashfs import SquashFS, SquashfsError
from siffs.squashfs.superblock import SIZE, Superblock
from tests.support.squashfs_corpus import SPECS, damaged_copies

pytest.importorskip("siffs.squashfs._tree", reason="native reader not built (pip install -e .)")
pytestmark = pytest.mark.skipif(
    os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0"), reason="SIFFS_NO_NATIVE is set"
)
PER_REQUEST = ("lookup", "getattr", "readlink", "listxattr", "getxattr", "read")


def outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except SquashfsError as exc:
        return ("error", type(exc).__name__, str(exc))


def requests(fs: SquashFS, image: Path) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """Every per-request call a client walking the tree makes, in the kernel's order.

    The names come from another reader of ``image``, so ``fs`` learns each inode from the
    lookup that finds it, as the daemon does on a cold mount (not from a listing).
    """
    with SquashFS.open(image) as lister:
        todo = [lister.root_ino]
        bs = lister.superblock.block_size
        while todo:
            d = todo.pop()
            yield "lookup", (d, b"no-such-entry")
            for name, a, _ in SquashFS.readdir(lister, d):
                yield "lookup", (d, name)
                yield "getattr", (a.ino,)
                yield "listxattr", (a.ino,)
                yield "listxattr", (a.ino,)  # the attribute set in the cache now: answered in C
                try:
                    names = SquashFS.listxattr(lister, a.ino)
                except SquashfsError:
                    names = []
                for xattr in [*names, b"user.no-such-attribute"]:
                    yield "getxattr", (a.ino, xattr)
                yield "readlink", (a.ino,)
                if stat.S_ISDIR(a.mode):
                    todo.append(a.ino)
                for off, size in ((0, a.size + 1), (a.size // 2, 5000), (bs - 1, 2), (a.size, 3)):
                    yield "read", (a.ino, off, size)


def walk_outcomes(fs: SquashFS, image: Path, python: bool) -> list[Any]:
    out = []
    try:
        for op, args in requests(fs, image):
            fn = getattr(SquashFS, op).__get__(fs) if python else getattr(fs, op)
            out.append((op, args, outcome(fn, *args)))
    except SquashfsError as exc:  # the walk's own listing met damage
        out.append(("readdir", type(exc).__name__, str(exc)))
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_request_is_answered_as_the_python_methods_answer_it(name, corpus):
    image = corpus.image(name)
    with SquashFS.open(image) as fs:
        assert type(fs.lookup).__name__ == "builtin_function_or_method"
        native = walk_outcomes(fs, image, python=False)
        python = walk_outcomes(fs, image, python=True)
        assert native == python
        assert outcome(fs.getattr, 10**9) == outcome(SquashFS.getattr.__get__(fs), 10**9)


@pytest.mark.parametrize("name", ["mk-gzip", "gen-zstd", "mk-bigdir"])
def test_the_table_of_known_inodes_is_learned_as_python_learns_it(name, corpus, monkeypatch):
    image = corpus.image(name)
    with SquashFS.open(image) as fs:
        native = walk_outcomes(fs, image, python=False)
        native_refs = dict(fs._refs)
    monkeypatch.setenv("SIFFS_NO_NATIVE", "1")
    with SquashFS.open(image) as py:
        assert type(py.lookup).__name__ == "method"
        assert walk_outcomes(py, image, python=False) == native
        assert py._refs == native_refs


def test_damaged_images_give_what_the_python_reader_gives(corpus, tmp_path, monkeypatch):
    pristine = corpus.image("mk-gzip").read_bytes()
    sb = Superblock.parse(pristine[:SIZE], len(pristine))
    regions = [(sb.inode_table, sb.directory_table), (sb.directory_table, sb.fragment_table)]
    compared = 0
    for seed, region in enumerate(regions):
        for path in damaged_copies(pristine, region, tmp_path / "d.sqfs", seed=seed, max_flips=4, cases=40):
            results = []
            for no_native in ("", "1"):
                monkeypatch.setenv("SIFFS_NO_NATIVE", no_native)
                try:
                    with SquashFS.open(path) as fs:
                        results.append(walk_outcomes(fs, path, python=False))
                except SquashfsError as exc:
                    results.append([("open", type(exc).__name__, str(exc))])
            assert results[0] == results[1]
            compared += len(results[0])
    assert compared > 1000


class Counting(SquashFS):
    """A reader whose Python methods count their calls (the C methods' fallbacks)."""

    calls: dict[str, int]

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.calls = dict.fromkeys(PER_REQUEST, 0)
        super().__init__(*args, **kw)

    def lookup(self, parent: int, name: bytes) -> Any:
        self.calls["lookup"] += 1
        return super().lookup(parent, name)

    def getattr(self, ino: int) -> Any:
        self.calls["getattr"] += 1
        return super().getattr(ino)

    def readlink(self, ino: int) -> bytes:
        self.calls["readlink"] += 1
        return super().readlink(ino)

    def listxattr(self, ino: int) -> list[bytes]:
        self.calls["listxattr"] += 1
        return super().listxattr(ino)

    def read(self, ino: int, offset: int, size: int) -> bytes:
        self.calls["read"] += 1
        return super().read(ino, offset, size)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self.calls["getxattr"] += 1
        return super().getxattr(ino, name)


def test_the_common_case_never_reaches_python(corpus):
    with Counting.open(corpus.image("mk-gzip")) as fs:
        entries = []  # (directory, name, inode, mode) of the whole tree, listed by Python
        todo = [fs.root_ino]
        while todo:
            d = todo.pop()
            for name, a, _ in SquashFS.readdir(fs, d):
                entries.append((d, name, a.ino, a.mode))
                if stat.S_ISDIR(a.mode):
                    todo.append(a.ino)
        for d, name, ino, mode in entries:
            assert fs.lookup(d, name) == fs.getattr(ino)
            for xattr in fs.listxattr(ino):
                assert fs.getxattr(ino, xattr) == SquashFS.getxattr(fs, ino, xattr)
            if stat.S_ISLNK(mode):
                assert fs.readlink(ino)
            elif stat.S_ISREG(mode):
                assert len(fs.read(ino, 0, 4096)) == min(4096, fs.getattr(ino).size)
    directories = sum(stat.S_ISDIR(m) for *_, m in entries)
    files = sum(stat.S_ISREG(m) for *_, m in entries)
    assert files > 50 and directories > 5
    # Python answered the first lookup in each directory with an index (its listing kept
    # after), the first request for each attribute set (which loads it), and the few inodes (and
    # block lists) that straddle two metadata blocks, which the C decoder leaves to Python.
    indexed = sum(fs.inode(ino).dir.index_count > 0 for *_, ino, m in entries if stat.S_ISDIR(m))  # type: ignore[union-attr]
    assert fs.calls["lookup"] <= indexed + 1
    assert fs.calls["getattr"] <= len(entries) // 10
    assert fs.calls["read"] <= files // 10
    assert fs.calls["readlink"] <= sum(stat.S_ISLNK(m) for *_, m in entries) // 10 + 1
    sets = {fs.inode(ino).xattr for _, _, ino, _ in entries} - {None}
    assert 0 < fs.calls["listxattr"] <= len(sets) < len(entries)
    assert fs.calls["getxattr"] == 0  # each after its listxattr, which loaded the set


def test_a_reader_is_freed_when_dropped(corpus):
    fs = SquashFS.open(corpus.image("mk-gzip"))
    fs.close()
    ref = weakref.ref(fs)
    del fs
    gc.collect()
    assert ref() is None
