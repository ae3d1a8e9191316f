"""The native inode decoder (siffs/squashfs/_inode.c) against the Python decoder.

The Python decoder (``read_inode``) is the oracle: every inode of the corpus images must decode
to the same record either way, and damaged inode tables must give the same outcome (the same
records or the same error), since the native decoder hands anything malformed, and any inode
that does not lie whole in its metadata block, back to the Python one.
"""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

from siffs import native
from siffs.squashfs import SquashFS, SquashfsError, inode
from siffs.squashfs.inode import DirLocation, FileLocation, Inode, InodeDecoder, Stat, read_inode
from siffs.squashfs.superblock import SIZE, Superblock
from tests.support.squashfs_corpus import SPECS, damaged_copies

native_module = pytest.importorskip(
    "siffs.squashfs._inode", reason="native decoder not built (pip install -e .)"
)
pytestmark = pytest.mark.skipif(
    os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0"), reason="SIFFS_NO_NATIVE is set"
)

TYPES = (Stat, DirLocation, FileLocation, Inode)
BLOCK_SIZE = 131072


def all_refs(fs: SquashFS) -> list[int]:
    """The reference of every inode reachable from the root (listed, so hard links repeat)."""
    refs, todo = [fs.superblock.root_inode_ref], [fs.root_ino]
    while todo:
        ino = todo.pop()
        for _, a, _ in fs.readdir(ino):
            refs.append(fs.inode(a.ino).ref)
            if stat.S_ISDIR(a.mode):
                todo.append(a.ino)
    return refs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_inode_decodes_as_the_python_decoder_does(name, corpus):
    with SquashFS.open(corpus.image(name)) as fs:
        decoder = InodeDecoder(fs._meta, fs.superblock, fs._ids, fs._xattrs)
        assert decoder.native is not None
        native = python = 0
        for ref in all_refs(fs):
            expected = read_inode(fs._meta, fs.superblock, fs._ids, fs._xattrs, ref)
            pos = fs.superblock.inode_table + (ref >> 16)
            got = decoder.native(fs._meta.block(pos)[0], ref & 0xFFFF, pos, ref)
            if got is None:  # straddles two metadata blocks
                python += 1
            else:
                native += 1
                assert got == expected
                assert [type(x) for x in got] == [type(x) for x in expected]
                assert type(got.stat) is Stat and type(got) is Inode
            assert decoder(ref) == expected
            assert decoder.by_ref is not None and decoder.by_ref(ref) == got  # the block from the cache
    assert native > 20 * python  # the native path is the common one


def outcome(image: Path, *, native: bool) -> list[tuple[object, ...]] | tuple[str, str]:
    """Every entry's attributes and locations as the reader gives them, or the error it raised."""
    saved = inode.native.load
    if not native:
        inode.native.load = lambda name, abi: None  # type: ignore[assignment]
    try:
        with SquashFS.open(image) as fs:
            assert (fs._decode.native is not None) == native
            out: list[tuple[object, ...]] = []
            todo = [fs.root_ino]
            while todo:
                ino = todo.pop()
                for name, a, _ in fs.readdir(ino):
                    node = fs.inode(a.ino)
                    out.append((name, node))
                    if stat.S_ISDIR(a.mode):
                        todo.append(a.ino)
            return out
    except SquashfsError as e:
        return (type(e).__name__, str(e))
    finally:
        inode.native.load = saved


def test_same_outcomes_on_damaged_inode_tables(corpus, tmp_path):
    pristine = corpus.image("mk-gzip-4k-raw").read_bytes()  # metadata stored uncompressed
    sb = Superblock.parse(pristine[:SIZE], len(pristine))
    region = (sb.inode_table, sb.directory_table)
    outcomes = set()
    for damaged in damaged_copies(pristine, region, tmp_path / "damaged.sqfs", seed=23, max_flips=6):
        got = outcome(damaged, native=True)
        assert got == outcome(damaged, native=False)
        outcomes.add(repr(got)[:300])
    assert len(outcomes) > 10  # the damage reached the decoders in many different ways


# -- hand-made inodes -------------------------------------------------------------------------


def header(
    kind: int, ino: int = 5, perm: int = 0o755, uid: int = 0, gid: int = 1, mtime: int = 1234
) -> bytes:
    return struct.pack("<HHHHII", kind, perm, uid, gid, mtime, ino)


def decoder(ids: tuple[int, ...] = (1000, 2000), stored_size: object = None, inode_count: int = 10) -> object:
    return native_module.Decoder(TYPES, inode_count, BLOCK_SIZE, ids, stored_size)


def decode(data: bytes, offset: int = 0, **kw: object) -> Inode | None:
    got: Inode | None = decoder(**kw).decode(data, offset, 4096, 77)  # type: ignore[attr-defined]
    return got


def test_records_of_every_kind():
    d = decode(header(1) + struct.pack("<IIHHI", 40, 3, 100, 12, 9))
    assert d == Inode(
        Stat(5, 0o40755, 3, 1000, 2000, 100, 1234, 0, 0),
        77,
        None,
        False,
        DirLocation(40, 12, 100, 9, 0, (4096, 32)),
    )
    xd = decode(header(8) + struct.pack("<IIIIHHI", 4, 5000, 80, 9, 2, 33, 0xFFFFFFFF))
    assert xd is not None and xd.dir == DirLocation(80, 33, 5000, 9, 2, (4096, 40)) and xd.extended
    f = decode(header(2, perm=0o4644) + struct.pack("<IIII", 500, 0xFFFFFFFF, 0, 2 * BLOCK_SIZE + 1))
    assert f is not None and f.stat.mode == 0o104644 and f.stat.blocks == (2 * BLOCK_SIZE + 1 + 511) // 512
    assert f.file == FileLocation(500, 3, (4096, 32), None, 0)
    tail = decode(header(2) + struct.pack("<IIII", 500, 7, 99, 2 * BLOCK_SIZE + 1))
    assert tail is not None and tail.file == FileLocation(500, 2, (4096, 32), 7, 99)
    sparse = decode(header(9) + struct.pack("<QQQIIII", 1, 1000, 1200, 2, 0xFFFFFFFF, 0, 0xFFFFFFFF))
    assert sparse is not None and sparse.stat.blocks == 0 and sparse.stat.nlink == 2  # more sparse than size
    link = decode(header(3) + struct.pack("<II", 1, 5) + b"a/b/c")
    assert link is not None and link.target == b"a/b/c" and link.stat.size == 5 and link.stat.mode == 0o120755
    dev = decode(header(5) + struct.pack("<II", 1, (4095 << 8) | 0xFF | (0xFFF00 << 12)))
    assert dev is not None and dev.stat.rdev == inode.linux_rdev((4095 << 8) | 0xFF | (0xFFF00 << 12))
    assert dev.stat.mode == stat.S_IFCHR | 0o755
    fifo = decode(header(13) + struct.pack("<II", 4, 0xFFFFFFFF))
    assert (
        fifo is not None and fifo.stat.mode == stat.S_IFIFO | 0o755 and fifo.extended and fifo.xattr is None
    )


def test_xattr_blocks_come_from_the_table():
    asked = []

    def stored_size(index: int) -> int:
        asked.append(index)
        return 513

    got = decode(header(13) + struct.pack("<II", 1, 6), stored_size=stored_size)
    assert got is not None and got.xattr == 6 and got.stat.blocks == 2 and asked == [6]
    assert decode(header(13) + struct.pack("<II", 1, 6)).xattr is None  # type: ignore[union-attr]  # no table

    def broken(index: int) -> int:
        raise SquashfsError("xattr id table is short")

    with pytest.raises(SquashfsError, match="short"):
        decode(header(13) + struct.pack("<II", 1, 6), stored_size=broken)


@pytest.mark.parametrize(
    "data",
    [
        header(1)[:15],  # header straddles the block end
        header(1) + struct.pack("<IIHH", 40, 3, 100, 12),  # body straddles
        header(3) + struct.pack("<II", 1, 5) + b"a/b",  # target straddles
        header(10) + struct.pack("<II", 1, 3) + b"abc",  # extended link: xattr straddles
        header(1, ino=0) + bytes(16),  # inode number 0
        header(1, ino=11) + bytes(16),  # beyond the inode count
        header(15) + bytes(16),  # unknown type
        header(0) + bytes(16),
        header(4, uid=2) + bytes(8),  # owner index beyond the id table
        header(4, gid=9) + bytes(8),
        header(3) + struct.pack("<II", 1, (1 << 16) + 1) + bytes(70000),  # oversized link target
    ],
)
def test_malformed_or_straddling_inodes_are_left_to_the_python_decoder(data):
    assert decode(data) is None


def test_decode_by_reference_takes_the_block_from_the_cache_or_its_loader():
    block = header(6) + struct.pack("<II", 1, 0)
    table: OrderedDict[object, tuple[object, int]] = OrderedDict()
    loaded: list[int] = []

    def load(pos: int) -> tuple[bytes, int]:
        loaded.append(pos)
        if pos != 4096 + 3:
            raise SquashfsError(f"no block at {pos}")
        return block, 0

    d = native_module.Decoder(TYPES, 10, BLOCK_SIZE, (1000, 2000), None, cache=(table, load, 4096, 5))
    assert d.decode_ref(3 << 16).stat.mode == stat.S_IFIFO | 0o755
    assert loaded == [4096 + 3]  # a miss: the loader (it stores nothing here)
    assert d.decode_ref(3 << 16).stat.ino == 5 and loaded == [4096 + 3]  # remembered by the decoder
    fresh = native_module.Decoder(TYPES, 10, BLOCK_SIZE, (1000, 2000), None, cache=(table, load, 4096, 5))
    table["m", 4096 + 3] = ((block, 0), 0)
    table["x"] = (None, 0)
    assert fresh.decode_ref(3 << 16).stat.ino == 5 and loaded == [4096 + 3]  # a hit in the cache
    assert list(table)[-1] == ("m", 4096 + 3)  # marked recently used
    with pytest.raises(SquashfsError, match="no block at 4097"):
        d.decode_ref(1 << 16)
    assert d.decode_ref(5 << 16) is None  # past the inode table: the Python decoder says why
    assert d.decode_ref((3 << 16) | 4) is None  # not a well-formed inode there
    with pytest.raises(RuntimeError, match="without a cache"):
        decoder().decode_ref(0)  # type: ignore[attr-defined]


def test_remembered_blocks_outlive_the_cache_and_are_few():
    """A decoder keeps the last eight blocks it was given (the image never changes), and no more."""
    table: OrderedDict[object, tuple[object, int]] = OrderedDict()
    loaded: list[int] = []

    def load(pos: int) -> tuple[bytes, int]:
        loaded.append(pos)
        return header(6, ino=1 + (pos - 4096) // 100) + struct.pack("<II", 1, 0), 0

    d = native_module.Decoder(TYPES, 20, BLOCK_SIZE, (1000, 2000), None, cache=(table, load, 4096, 2000))
    for k in range(8):
        assert d.decode_ref((k * 100) << 16).stat.ino == 1 + k
    table.clear()
    assert [d.decode_ref((k * 100) << 16).stat.ino for k in range(8)] == list(range(1, 9))
    assert len(loaded) == 8  # all eight remembered, though the cache holds none of them
    assert d.decode_ref((8 * 100) << 16).stat.ino == 9  # a ninth: the oldest is let go
    assert d.decode_ref(0).stat.ino == 1 and loaded[-2:] == [4096 + 800, 4096]


def test_offsets_outside_the_block():
    d = decoder()
    data = header(6) + struct.pack("<II", 1, 0)
    assert d.decode(data, len(data) + 1, 0, 0) is None  # type: ignore[attr-defined]
    assert d.decode(data, -1, 0, 0) is None  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        d.decode(bytearray(data), 0, 0, 0)  # type: ignore[attr-defined]


def test_only_named_tuple_classes_with_the_right_fields():
    with pytest.raises(TypeError):
        native_module.Decoder((Stat, DirLocation, Inode, FileLocation), 1, BLOCK_SIZE, (), None)
    with pytest.raises(TypeError):
        native_module.Decoder((Stat, DirLocation, FileLocation, dict), 1, BLOCK_SIZE, (), None)
    with pytest.raises(ValueError):
        native_module.Decoder(TYPES, 1, 0, (), None)
    with pytest.raises(TypeError):
        native_module.Decoder(TYPES, 1, BLOCK_SIZE, ("0",), None)


def test_no_native_switch():
    code = "from siffs import native; print(native.load('siffs.squashfs._inode', abi=1) is None)"
    env = {"SIFFS_NO_NATIVE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_a_module_built_from_other_sources_is_not_used(caplog):
    """An editable install updated without a rebuild keeps the old .so: a module whose interface
    version is not the caller's (or that states none) gives the Python code, and a warning."""
    assert native.load("siffs.squashfs._inode", abi=1) is native_module
    with caplog.at_level("WARNING", logger="siffs.native"):
        assert native.load("siffs.squashfs._inode", abi=2) is None
        assert native.load("json", abi=1) is None  # no ABI at all, as a build from before it
    assert "built for interface 1, not 2" in caplog.text and "built for interface None, not 1" in caplog.text
