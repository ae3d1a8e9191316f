"""The reader interface beyond what the kernel comparison covers: errors and their errnos,
cookies, index use, O(1) open, path resolution, byte ranges, threads, caches, codecs."""

from __future__ import annotations

import errno
import hashlib
import lzma
import os
import random
import stat
import struct
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lz4.block
import lzallright
import pytest
import zstandard

from siffs.squashfs import (
    CorruptImage,
    FileSource,
    IsADirectory,
    MissingCodec,
    NoSuchAttribute,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
    NotFound,
    SquashFS,
    Stat,
    SymlinkLoop,
    UnsupportedImage,
    codecs,
    format_long,
    quote_name,
    reader,
    resolve,
    walk,
)
from siffs.squashfs.cache import LruCache

# --- opening ------------------------------------------------------------------------------


class CountingSource:
    """A FileSource that counts its reads, to see how much work a call does."""

    def __init__(self, path: Path) -> None:
        self.inner = FileSource.open(path)
        self.reads = 0

    @property
    def size(self) -> int:
        return self.inner.size

    def pread(self, offset: int, size: int) -> bytes:
        self.reads += 1
        return self.inner.pread(offset, size)


def test_not_squashfs(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.raises(UnsupportedImage, match="not a SquashFS image"):
        SquashFS.open(str(junk))
    junk.write_bytes(b"hsqs")
    with pytest.raises(UnsupportedImage, match="less than a superblock"):
        SquashFS.open(str(junk))


def test_wrong_version_and_truncation(corpus, tmp_path):
    data = bytearray(corpus.image("mk-gzip").read_bytes())
    v3 = tmp_path / "v3"
    v3.write_bytes(data[:28] + struct.pack("<H", 3) + data[30:])
    with pytest.raises(UnsupportedImage, match=r"version 3\.0"):
        SquashFS.open(str(v3))
    short = tmp_path / "short"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage, match="truncated"):
        SquashFS.open(str(short))


def test_open_reads_a_handful_of_blocks(corpus):
    source = CountingSource(corpus.image("mk-bigdir"))
    SquashFS(source)
    assert source.reads <= 12  # superblock, table location lists, root inode block


def test_lookup_and_resume_in_a_huge_directory_use_the_index(corpus):
    source = CountingSource(corpus.image("mk-bigdir"))
    fs = SquashFS(source)
    big = fs.lookup(fs.root_ino, b"big")
    before = source.reads
    st = fs.lookup(big.ino, b"054321" + b"-x" * (54321 % 7))
    assert st is not None and stat.S_ISREG(st.mode)
    assert fs.lookup(big.ino, b"054321-missing") is None
    assert source.reads - before <= 12, "a lookup must not scan the whole listing"
    first = list(zip(range(60_000), fs.readdir(big.ino), strict=False))
    cookie = first[-1][1][2]
    before = source.reads
    name, _, _ = next(fs.readdir(big.ino, cookie))
    assert name == b"060000" + b"-x" * (60000 % 7)
    assert source.reads - before <= 12, "resuming readdir must not re-read the listing"


# --- the interface ------------------------------------------------------------------------


def by_path(fs: SquashFS) -> dict[bytes, Stat]:
    return dict(walk(fs))


def test_errors_carry_the_errno_a_filesystem_answers(open_image):
    fs = open_image("mk-gzip")
    paths = by_path(fs)
    regular = paths[b"/sizes/one"].ino
    with pytest.raises(NotADirectory) as e:
        fs.lookup(regular, b"x")
    assert e.value.errno == errno.ENOTDIR
    with pytest.raises(NotADirectory):
        list(fs.readdir(regular))
    with pytest.raises(IsADirectory) as e:
        fs.read(fs.root_ino, 0, 1)
    assert e.value.errno == errno.EISDIR
    with pytest.raises(NotARegularFile):
        fs.read(paths[b"/special/fifo"].ino, 0, 1)
    with pytest.raises(NotASymlink) as e:
        fs.readlink(regular)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(NoSuchAttribute) as e:
        fs.getxattr(regular, b"user.nothing")
    assert e.value.errno == errno.ENODATA
    assert CorruptImage("x").errno == errno.EIO


def test_listings_kept_for_runs_of_lookups_are_bounded(open_image, monkeypatch):
    monkeypatch.setattr(reader, "_LISTINGS_BUDGET", 8 * 500)
    fs = open_image("mk-gzip")
    dirs = [st.ino for _, st in walk(fs) if stat.S_ISDIR(st.mode)]
    assert len(dirs) > 8
    for ino in dirs:
        assert list(fs.readdir(ino)) == list(fs.readdir(ino))  # the second from the kept listing
    assert 0 < len(fs._listings) <= 8
    assert fs._listings_cost == sum(listing.cost() for listing in fs._listings.values()) <= 8 * 500
    big = open_image("mk-bigdir")  # a listing costing over an eighth of the budget is not kept
    ino = big.lookup(big.root_ino, b"big").ino
    assert big.lookup(ino, b"000001-x") is not None and ino not in big._listings
    monkeypatch.setattr(reader, "_LISTINGS_BUDGET", 2 << 20)
    big = open_image("mk-bigdir")
    ino = big.lookup(big.root_ino, b"big").ino
    assert big.lookup(ino, b"000001-x") is not None and ino in big._listings


def test_inode_numbers_without_an_export_table_are_learned(open_image):
    exportable = open_image("mk-gzip")
    assert exportable.getattr(exportable.superblock.inode_count).ino == exportable.superblock.inode_count
    fs = open_image("mk-gzip-4k-raw")  # made with -no-exports
    with pytest.raises(NotFound) as e:
        fs.getattr(1 if fs.root_ino != 1 else 2)
    assert e.value.errno == errno.ENOENT
    for _, st in walk(fs):
        assert fs.getattr(st.ino) == st


@pytest.mark.parametrize("name", ["mk-gzip-4k-raw", "gen-gzip-4k"])
def test_readdir_resumes_from_every_cookie(name, open_image):
    fs = open_image(name)
    frags = fs.lookup(fs.root_ino, b"frags")
    full = list(fs.readdir(frags.ino))
    assert len(full) == 1300
    assert [n for n, _, _ in full] == sorted(n for n, _, _ in full)
    cookies = [c for _, _, c in full]
    assert min(cookies) > 2 and len(set(cookies)) == len(cookies)
    for i in range(0, len(full), 37):
        assert list(fs.readdir(frags.ino, full[i][2])) == full[i + 1 :]
    assert list(fs.readdir(frags.ino, cookies[-1])) == []


def test_byte_ranges_match_the_source_tree(corpus, open_image):
    fs = open_image("mk-zstd")
    tree = corpus.tree("main")
    rng = random.Random(1)
    for rel in (b"sizes/4096+1", b"sizes/1048576+0", b"sparse/middle", b"bin/busybox", b"frags/s0007"):
        data = (Path(os.fsdecode(bytes(tree))) / os.fsdecode(rel)).read_bytes()
        ino = resolve(fs, b"/" + rel).ino
        for _ in range(40):
            offset = rng.randrange(0, len(data) + 10)
            size = rng.choice([0, 1, 4095, 4096, 131072, 300_000, rng.randrange(1, 200_000)])
            assert fs.read(ino, offset, size) == data[offset : offset + size]
        assert fs.read(ino, len(data) + 5, 100) == b""


def test_resolve_follows_symlinks_inside_the_image(open_image):
    fs = open_image("mk-gzip")
    busybox = resolve(fs, b"/bin/busybox")
    assert resolve(fs, b"/links/absolute") == busybox  # "/bin/busybox" means the image's, not the host's
    assert resolve(fs, b"/pdev/sh") == busybox
    assert stat.S_ISLNK(resolve(fs, b"/links/absolute", follow_last=False).mode)
    assert resolve(fs, b"links/to-dir/a") == resolve(fs, b"/links/a")
    assert resolve(fs, b"/links/../../../links/./a") == resolve(fs, b"/links/a")
    assert resolve(fs, b"/").ino == fs.root_ino
    with pytest.raises(SymlinkLoop) as e:
        resolve(fs, b"/links/loop-a")
    assert e.value.errno == errno.ELOOP
    with pytest.raises(NotFound):
        resolve(fs, b"/links/dangling")
    with pytest.raises(NotFound):
        resolve(fs, b"/no/such/path")
    with pytest.raises(NotADirectory):
        resolve(fs, b"/sizes/one/")
    with pytest.raises(NotADirectory):
        resolve(fs, b"/sizes/one/x")


def test_compressor_options_are_parsed(open_image):
    assert open_image("mk-xz-bcj").codec.options == {"dict_size": 65536, "filters": 1}
    assert open_image("mk-lz4-hc").codec.options == {"version": 1, "hc": 1}
    assert open_image("mk-gzip-1m").codec.options == {
        "compression_level": 1,
        "window_size": 10,
        "strategies": 3,
    }
    assert open_image("mk-zstd").codec.options == {"compression_level": 19}
    assert open_image("mk-lzo").codec.options == {"algorithm": 4, "compression_level": 9}


def test_statfs(open_image):
    fs = open_image("mk-gzip")
    figures = fs.statfs()
    assert figures.block_size == 131072 and figures.name_max == 256
    assert figures.inodes == fs.superblock.inode_count
    assert (
        (figures.blocks - 1) * figures.block_size < figures.bytes_used <= figures.blocks * figures.block_size
    )


# --- threads and caches -------------------------------------------------------------------


def digests(fs: SquashFS, inos: list[int], chunk: int) -> dict[int, str]:
    out = {}
    for ino in inos:
        h = hashlib.sha256()
        offset = 0
        while data := fs.read(ino, offset, chunk):
            h.update(data)
            offset += len(data)
        out[ino] = h.hexdigest()
    return out


@pytest.mark.parametrize("name", ["mk-gzip", "mk-xz-bcj", "mk-zstd", "mk-lz4-hc"])
def test_many_threads_read_the_same_bytes(name, open_image):
    reference = open_image(name)
    inos = [st.ino for _, st in walk(reference) if stat.S_ISREG(st.mode) and st.size > 1000][:300]
    want = digests(reference, inos, 1 << 20)
    shared = open_image(name, cache_bytes=2 << 20)  # small: threads evict each other's blocks
    for _ in walk(shared):
        pass  # learn the inode numbers (mk-gzip has an export table, the others may not)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda k: digests(shared, inos[k::4] + inos, 65536), range(8)))
    for got in results:
        assert got == {i: want[i] for i in got}


def test_cache_loads_once_for_concurrent_askers_and_evicts_by_cost():
    cache = LruCache(100)
    calls = []
    gate = threading.Event()

    def slow() -> bytes:
        calls.append(1)
        gate.wait(5)
        return b"v" * 40

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(cache.get_or_load, "k", slow, len) for _ in range(6)]
        while not calls:
            pass
        gate.set()
        assert {f.result() for f in futures} == {b"v" * 40}
    assert len(calls) == 1
    cache.get_or_load("a", lambda: b"a" * 40, len)
    cache.get_or_load("b", lambda: b"b" * 40, len)  # k is the oldest: evicted
    assert cache.used == 80 and len(cache) == 2
    cache.get_or_load("huge", lambda: b"h" * 1000, len)  # larger than the cache: not kept
    assert cache.used == 80


def test_cache_hits_without_the_lock_stay_right_while_other_threads_evict():
    cache = LruCache(10 * 8)  # room for ten of the forty 8-byte values: constant eviction
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, inside the hit path too
    wrong: list[tuple[int, bytes]] = []

    def ask(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(30_000):
            key = rng.randrange(40)
            value = cache.get_or_load(key, lambda key=key: key.to_bytes(8, "little"), len)
            if value != key.to_bytes(8, "little"):
                wrong.append((key, value))

    try:
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(ask, seed) for seed in range(4)]:
                done.result()  # a KeyError from a value evicted mid-hit would surface here
    finally:
        sys.setswitchinterval(before)
    assert not wrong
    assert cache.used == sum(cost for _, cost in cache._items.values()) <= 80


def test_cache_does_not_keep_failures():
    cache = LruCache(100)

    def broken() -> bytes:
        raise CorruptImage("bad block")

    with pytest.raises(CorruptImage):
        cache.get_or_load("k", broken, len)
    assert cache.get_or_load("k", lambda: b"ok", len) == b"ok"


# --- codecs -------------------------------------------------------------------------------


def test_gzip_without_libdeflate_reads_the_same(open_image):
    fast = open_image("mk-gzip-1m")
    slow = open_image("mk-gzip-1m", use_libdeflate=False)
    regular = [st.ino for _, st in walk(fast) if stat.S_ISREG(st.mode)]
    assert digests(slow, regular, 1 << 20) == digests(fast, regular, 1 << 20)


def test_missing_binding_names_the_package(monkeypatch, corpus):
    real = codecs.importlib.import_module

    def no_lzo(name: str):
        if name == "lzallright":
            raise ImportError("No module named 'lzallright'")
        return real(name)

    monkeypatch.setattr(codecs.importlib, "import_module", no_lzo)
    with pytest.raises(MissingCodec, match="pip install lzallright"):
        SquashFS.open(str(corpus.image("mk-lzo")))


def bombs(bound: int) -> dict[int, bytes]:
    """Blocks of each codec that expand to twice ``bound``."""
    plain = b"A" * (2 * bound)
    return {
        codecs.GZIP: zlib.compress(plain),
        codecs.XZ: lzma.compress(plain, check=lzma.CHECK_CRC32),
        codecs.LZMA: lzma.compress(plain, format=lzma.FORMAT_ALONE),
        codecs.LZO: lzallright.LZOCompressor().compress(plain),
        codecs.LZ4: lz4.block.compress(plain, store_size=False),
        codecs.ZSTD: zstandard.ZstdCompressor().compress(plain),
        -codecs.ZSTD: zstandard.ZstdCompressor(write_content_size=False).compress(plain),
    }


@pytest.mark.parametrize("bound", [8192, 131072])
def test_decompression_bombs_are_refused(bound):
    for compressor, block in bombs(bound).items():
        for kw in [{}, {"use_libdeflate": False}] if compressor == codecs.GZIP else [{}]:
            codec = codecs.make_codec(abs(compressor), None, bound, **kw)
            with pytest.raises(CorruptImage):
                codec.decompress(block, bound)
            with pytest.raises(CorruptImage):
                codec.decompress(block[: len(block) // 2], 4 * bound)  # truncated


def test_unknown_compressor_and_bad_options():
    with pytest.raises(UnsupportedImage, match="unknown compressor id 9"):
        codecs.make_codec(9, None, 4096)
    with pytest.raises(CorruptImage, match="dictionary size"):
        codecs.make_codec(codecs.XZ, struct.pack("<II", 100_000, 0), 131072)
    with pytest.raises(CorruptImage, match="takes none"):
        codecs.make_codec(codecs.LZMA, b"\0" * 8, 131072)
    with pytest.raises(UnsupportedImage, match="lz4 format version 2"):
        codecs.make_codec(codecs.LZ4, struct.pack("<II", 2, 0), 131072)
    with pytest.raises(CorruptImage, match="too short"):
        codecs.make_codec(codecs.GZIP, b"\1", 131072)


# --- the byte source and listings ---------------------------------------------------------


def test_file_source_checks_bounds(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(bytes(range(100)))
    with FileSource.open(f, 10, 50) as source:
        assert source.size == 50
        assert source.pread(0, 3) == bytes([10, 11, 12])
        with pytest.raises(CorruptImage, match="outside"):
            source.pread(48, 3)
    with pytest.raises(CorruptImage, match="does not fit"):
        FileSource.open(f, 90, 20)


def test_format_long_and_quoting():
    dev = Stat(
        ino=5,
        mode=stat.S_IFCHR | 0o600,
        nlink=1,
        uid=100000,
        gid=200000,
        size=0,
        mtime=0,
        rdev=os.makedev(4095, 1048575),
        blocks=0,
    )
    assert format_long(dev, b"max") == "crw-------   1 100000 200000 4095, 1048575 1970-01-01 00:00 max"
    link = Stat(
        ino=6, mode=stat.S_IFLNK | 0o777, nlink=1, uid=0, gid=0, size=4, mtime=2**32 - 1, rdev=0, blocks=0
    )
    assert format_long(link, b"l", b"../x") == (
        "lrwxrwxrwx   1     0     0          4 2106-02-07 06:28 l -> ../x"
    )
    assert quote_name(b"new\nline") == "new\\nline"
    assert quote_name(b"\xff\xfe-x") == "\\377\\376-x"
    assert quote_name("日本語 x".encode()) == "日本語\\ x"
    assert quote_name(b"a\x01") == "a\\001"
