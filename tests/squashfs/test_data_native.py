"""The native file reader (siffs/squashfs/_data.c) against the Python data path.

The Python reader (``DataReader.read``) is the oracle: every read of every file of the corpus
images must give the same bytes either way, and damaged images must give the same outcome (the
same bytes or the same error), since the native reader leaves anything malformed, and any block
list that does not lie whole in its inode's metadata block, to the Python one. Hand-made tables
check each way of being left to Python, and that the caches are used as ``LruCache`` uses them.
"""

from __future__ import annotations

import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest

from siffs.squashfs import CorruptImage, SquashFS, SquashfsError
from siffs.squashfs.superblock import SIZE, Superblock
from tests.support.squashfs_corpus import SPECS, damaged_copies

native_module = pytest.importorskip(
    "siffs.squashfs._data", reason="native reader not built (pip install -e .)"
)
pytestmark = pytest.mark.skipif(
    os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0"), reason="SIFFS_NO_NATIVE is set"
)


def regular_files(fs: SquashFS) -> list[tuple[int, int]]:
    """(inode number, size) of every regular file reachable from the root."""
    found, todo = [], [fs.root_ino]
    while todo:
        ino = todo.pop()
        for _, a, _ in fs.readdir(ino):
            if stat.S_ISDIR(a.mode):
                todo.append(a.ino)
            elif stat.S_ISREG(a.mode):
                found.append((a.ino, a.size))
    return found


def ranges(size: int, block_size: int) -> list[tuple[int, int]]:
    """Reads that start and end inside, at and across block boundaries, the tail and past the end."""
    out = [(0, size), (0, 1), (0, block_size), (size // 2, 7000), (max(0, size - 3), 10), (size, 5)]
    if size > block_size:
        out += [(block_size - 1, 2), (block_size, block_size), (block_size // 2, 3 * block_size)]
    return out


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_read_gives_what_the_python_reader_gives(name, corpus):
    with SquashFS.open(corpus.image(name)) as fs:
        native = fs._data.native
        assert native is not None
        bs = fs.superblock.block_size
        served = left = 0
        for ino, size in regular_files(fs):
            node = fs.inode(ino)
            assert node.file is not None
            for offset, length in ranges(size, bs):
                expected = fs._data.read(node.ref, node.file, size, offset, length)
                got = native(node.ref, offset, length)
                if got is not None:
                    assert got == expected, (ino, offset, length)
                if size <= 64 * bs:  # a longer list often runs into the next metadata block
                    served += got is not None
                    left += got is None
                assert fs.read(ino, offset, length) == expected
    assert served >= 5 * left  # the native path is the common one for all but huge files


def outcome(image: Path, *, native: bool) -> list[object] | tuple[str, str]:
    """Every file's bytes at a few ranges as the reader gives them, or the error it raised."""
    try:
        with SquashFS.open(image) as fs:
            if not native:
                fs._data.native = None
            out: list[object] = []
            for ino, size in regular_files(fs):
                for offset, length in ranges(size, fs.superblock.block_size):
                    try:
                        out.append(fs.read(ino, offset, length))
                    except SquashfsError as e:
                        out.append((type(e).__name__, str(e)))
            return out
    except SquashfsError as e:
        return (type(e).__name__, str(e))


@pytest.mark.parametrize("name", ["mk-gzip-4k-raw", "mk-lz4-4k"])
def test_same_outcomes_on_damaged_images(name, corpus, tmp_path):
    pristine = corpus.image(name).read_bytes()
    sb = Superblock.parse(pristine[:SIZE], len(pristine))
    outcomes = set()
    # Inode table to the end: block lists, directories, fragment table, ids.
    for region in ((sb.inode_table, sb.bytes_used), (SIZE, sb.inode_table)):
        for damaged in damaged_copies(
            pristine, region, tmp_path / "damaged.sqfs", seed=31, max_flips=4, cases=40
        ):
            got = outcome(damaged, native=True)
            assert got == outcome(damaged, native=False)
            outcomes.add(repr(got)[:300])
    assert len(outcomes) > 10  # the damage reached the readers in many different ways


# -- hand-made tables ---------------------------------------------------------------------------

BS = 4096
INODE_TABLE = 1000
FRAGMENT_TABLE_BLOCK = 50_000
NO_FRAGMENT = 0xFFFFFFFF
UNCOMPRESSED = 1 << 24


def file_inode(
    blocks_start: int, size: int, sizes: list[int], fragment: int = NO_FRAGMENT, frag_offset: int = 0
) -> bytes:
    header = struct.pack("<HHHHII", 2, 0o644, 0, 0, 0, 7)
    return (
        header
        + struct.pack("<IIII", blocks_start, fragment, frag_offset, size)
        + struct.pack(f"<{len(sizes)}I", *sizes)
    )


class Tables:
    """Two cache tables and the loaders a FileReader falls back to on a miss (which record their calls)."""

    def __init__(self, inode_block: bytes, fragments: list[tuple[int, int]] | None = None) -> None:
        self.meta: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self.data: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self.meta[("m", INODE_TABLE)] = ((inode_block, INODE_TABLE + 9999), 0)
        self.fragments = fragments or []
        if fragments:
            table = b"".join(struct.pack("<QII", start, word, 0) for start, word in fragments)
            self.meta[("m", FRAGMENT_TABLE_BLOCK)] = ((table, 0), 0)
        self.missed: list[tuple[int, ...]] = []
        self.on_miss: Callable[[int, int], bytes] | None = None

    def meta_block(self, pos: int) -> tuple[bytes, int]:
        self.missed.append((pos,))
        raise CorruptImage(f"no metadata block at {pos}")

    def data_block(self, start: int, word: int) -> bytes:
        self.missed.append((start, word))
        if self.on_miss is None:
            raise CorruptImage(f"no data block at {start}")
        return self.on_miss(start, word)

    def reader(self, *, image_end: int = 10**9, max_list: int = 10**6) -> object:
        layout = (INODE_TABLE, 100, BS, image_end, max_list, len(self.fragments), (FRAGMENT_TABLE_BLOCK,))
        return native_module.FileReader(self.meta, self.data, self.meta_block, self.data_block, layout)

    def read(self, offset: int, size: int, ref: int = 0, **kw: int) -> bytes | None:
        got: bytes | None = self.reader(**kw).read(ref, offset, size)  # type: ignore[attr-defined]
        return got


def block(seed: int, n: int = BS) -> bytes:
    return bytes((seed + i) % 251 for i in range(n))


def test_blocks_sparse_short_and_a_tail():
    words = [100, 0, 200]  # stored, sparse, stored (short: it unpacks to 1000 bytes)
    t = Tables(file_inode(5000, 3 * BS + 10, words, fragment=1, frag_offset=20), [(1, 1), (7000, 64)])
    t.data[("d", 5000, 100)] = (block(1), 0)
    t.data[("d", 5100, 200)] = (block(3, 1000), 0)  # the sparse block takes no bytes on disk
    t.data[("d", 7000, 64)] = (block(9, 64), 0)
    whole = block(1) + bytes(BS) + block(3, 1000) + bytes(BS - 1000) + block(9, 64)[20:30]
    for offset, size in [
        (0, 3 * BS + 10),
        (0, 10**6),
        (BS - 5, 10),
        (3 * BS + 2, 4),
        (2 * BS + 999, 3),
        (5, 0),
    ]:
        assert t.read(offset, size) == whole[offset : offset + size]
    assert t.read(3 * BS + 10, 5) == b"" and t.read(-1, 5) == b"" and t.read(0, -3) == b""
    assert t.missed == []  # everything was a hit
    assert t.read(0, BS) is t.data["d", 5000, 100][0]  # one whole block: the cached one, no copy
    assert t.read(2 * BS, BS) == block(3, 1000) + bytes(BS - 1000)  # a short one: zero-filled
    assert t.read(0, BS - 1) == block(1)[:-1] and t.read(BS, BS) == bytes(BS)  # part of one, a sparse one


def test_hits_are_marked_recently_used_and_misses_go_to_the_loaders():
    t = Tables(file_inode(5000, 2 * BS, [100, 100]))
    t.data[("d", 5000, 100)] = (block(1), 0)
    t.data[("x", 1)] = (b"", 0)
    t.on_miss = lambda start, word: block(2)
    assert t.read(0, 2 * BS) == block(1) + block(2)
    assert t.missed == [(5100, 100)]  # the loader stores nothing itself: that is LruCache's job
    assert list(t.data)[-1] == ("d", 5000, 100)
    assert list(t.meta)[-1] == ("m", INODE_TABLE)
    t.on_miss = None
    with pytest.raises(CorruptImage, match="no data block at 5100"):
        t.read(BS, 1)


def test_a_missing_metadata_block_is_loaded_through_the_python_loader():
    t = Tables(file_inode(5000, BS, [100]))
    with pytest.raises(CorruptImage, match="no metadata block at 1001"):
        t.read(0, 1, ref=1 << 16)  # inode-table block 1 is not cached


def test_an_extended_file_inode():
    header = struct.pack("<HHHHII", 9, 0o644, 0, 0, 0, 7)
    record = struct.pack("<QQQIIII", 1 << 33, BS + 1, 0, 1, 0, 3, 0xFFFFFFFF) + struct.pack("<I", 50)
    t = Tables(header + record, [(6000, 10)])
    t.data[("d", 1 << 33, 50)] = (block(4), 0)
    t.data[("d", 6000, 10)] = (block(5, 10), 0)
    assert t.read(0, BS + 1, image_end=1 << 40) == block(4) + block(5, 10)[3:4]
    assert t.read(0, 1, image_end=1 << 32) is None  # its blocks would run past the image


def inode_at_end(inode: bytes, fill: int) -> bytes:
    return bytes(fill) + inode


@pytest.mark.parametrize(
    ("inode", "fragments", "read", "kw"),
    [
        (struct.pack("<HHHHII", 1, 0o755, 0, 0, 0, 7) + bytes(16), None, (0, 1), {}),  # a directory
        (struct.pack("<HHHHII", 3, 0o777, 0, 0, 0, 7) + struct.pack("<II", 1, 1) + b"x", None, (0, 1), {}),
        (file_inode(5000, BS, [100])[:20], None, (0, 1), {}),  # the record runs past the block
        (file_inode(5000, 2 * BS, [100]), None, (0, 1), {}),  # the list runs past the block
        (file_inode(5000, 2 * BS, [100, 100]), None, (0, 1), {"max_list": 7}),  # longer than the table allows
        (file_inode(5000, 2 * BS, [100, 100]), None, (0, 1), {"image_end": 5199}),  # blocks past the image
        (file_inode(10**6, BS, [100]), None, (0, 1), {"image_end": 5000}),  # starts past the image
        (file_inode(5000, 10, [], fragment=0), None, (0, 1), {}),  # a tail, and no fragment table
        (file_inode(5000, 10, [], fragment=1), [(6000, 10)], (0, 1), {}),  # fragment index past the table
        (file_inode(5000, 10, [], fragment=0), [(6000, 0)], (0, 1), {}),  # fragment with no data
        (file_inode(5000, 10, [], fragment=0, frag_offset=5), [(6000, 10)], (0, 1), {}),  # tail past it
    ],
)
def test_anything_else_is_left_to_the_python_reader(inode, fragments, read, kw):
    t = Tables(inode, fragments)
    t.data[("d", 6000, 10)] = (block(5, 10), 0)
    t.data[("d", 5000, 100)] = (block(1), 0)
    assert t.read(*read, **kw) is None


def test_a_fragment_record_past_its_table_block_is_left_to_python():
    t = Tables(file_inode(5000, 10, [], fragment=1), [(6000, 10), (6000, 10)])
    table, _ = t.meta[("m", FRAGMENT_TABLE_BLOCK)][0]  # type: ignore[misc]
    t.meta[("m", FRAGMENT_TABLE_BLOCK)] = ((table[:20], 0), 0)
    t.data[("d", 6000, 10)] = (block(5, 10), 0)
    assert t.read(0, 1) is None


def test_references_and_sizes_out_of_range():
    t = Tables(file_inode(5000, BS, [100]))
    t.data[("d", 5000, 100)] = (block(1), 0)
    assert t.read(0, 1, ref=100 << 16) is None  # past the inode table
    assert t.reader().read(0, 1 << 70, 1) is None  # type: ignore[attr-defined]
    assert t.reader().read(1 << 70, 0, 1) is None  # type: ignore[attr-defined]
    assert t.read(0, 1 << 62) == block(1)


def test_the_layout_is_checked():
    t = Tables(file_inode(5000, BS, [100]))
    with pytest.raises(ValueError, match="fragment table blocks"):
        native_module.FileReader(t.meta, t.data, t.meta_block, t.data_block, (0, 1, BS, 1, 1, 513, ()))
    with pytest.raises(ValueError, match="block_size"):
        native_module.FileReader(t.meta, t.data, t.meta_block, t.data_block, (0, 1, 0, 1, 1, 0, ()))
    with pytest.raises(RuntimeError, match="not initialised"):
        native_module.FileReader.__new__(native_module.FileReader).read(0, 0, 1)
