"""Mutation fuzzer for the SquashFS reader: damaged and hostile images must only ever raise
``SquashfsError`` (in practice ``CorruptImage``), never hang and never allocate without bound.

Base images are small (about 150 entries) and made here from a generated tree with several
packers and codecs, one of them with uncompressed metadata so that structured lies land on
real fields. Each case applies one mutation, chosen and parametrised by a generator seeded
with the case number (so ``--case N`` replays case N exactly), then opens the image from
memory and exercises the whole interface: walk, getattr, lookup of every entry (also on a
second reader that only looks names up, as a cold mount does), reads of every file (bounded),
readlink, resolve, xattrs, statfs; and a third reader served through the FUSE layer's C handlers
(``Handlers.call``, as the binding calls them), which resolve every path by lookups and read its
attributes and link target as C values (``_tree.h``): they must answer or decline, never raise.

Mutations: bit flips, random bytes, truncation, superblock field lies, table pointer lies,
metadata header lies, u16/u32/u64 lies anywhere in the tables, and targeted lies on real
structures: directory loops (an entry pointing back at the root), inode references out of
range, huge file sizes, symlink sizes, directory index counts, block-list sizes, inode
types, id indexes, and decompression bombs in data and metadata blocks.

    python -m tests.squashfs.fuzz --cases 100000            # prints cases/s and outcome counts
    python -m tests.squashfs.fuzz --case 1234 --verbose      # replay one case
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import stat
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from siffs.fs import binding
from siffs.fs.operations import ReadOnlyOperations
from siffs.squashfs import CorruptImage, SquashFS, SquashfsError, XattrsUnsupported, resolve, walk
from siffs.squashfs.superblock import Flags
from tests.fuzz.limits import MEMORY_MIB, SECONDS, Limited
from tests.support.squashfs_corpus import Spec, pack

CHUNK = 65536
FAST = binding.Features(fast_ops=True)


class BytesSource:
    """A ByteSource over an image in memory (also shows the reader needs nothing but the protocol)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self._data):
            raise CorruptImage(f"read {offset}+{size} outside {len(self._data)} bytes")
        return self._data[offset : offset + size]


def build_tree(root: Path) -> Path:
    """A small tree with every structure the reader parses."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    for size in (0, 1, 4095, 4096, 4097, 20000, 70000):
        (root / f"f{size}").write_bytes(rng.randbytes(size // 2) + bytes(size - size // 2))
    (root / "text").write_bytes(b"hello squashfs\n" * 3000)
    with open(root / "sparse", "wb") as f:
        f.truncate(50000)
        f.seek(30000)
        f.write(b"x" * 100)
    os.link(root / "text", root / "hard")
    os.symlink("text", root / "sym")
    os.symlink("/sub/deeper", root / "abs")
    os.mkfifo(root / "fifo")
    sub = root / "sub"
    (sub / "deeper").mkdir(parents=True)
    (sub / "deeper" / "leaf").write_bytes(b"leaf")
    for i in range(100):  # > 8 KiB of listing: the directory gets an index
        (sub / f"{i:03d}-{'n' * 90}").write_bytes(bytes([i]) * (i * 37))
    for name in ("text", "f1"):
        os.setxattr(root / name, "user.shared", b"same value")  # shared: stored out of line
        os.setxattr(root / name, f"user.{name}", name.encode() * 10)
    os.setxattr(sub, "user.dir", b"d")
    return root


BASES = (
    Spec(
        "raw",
        "fuzz",
        "mksquashfs",
        ("-b", "4K", "-noI", "-noD", "-noF", "-noX", "-exports", "-p", "dev c 600 0 0 1 3"),
    ),
    Spec("gzip", "fuzz", "mksquashfs", ("-b", "4K", "-exports", "-p", "dev b 600 70000 0 8 1")),
    Spec("zstd", "fuzz", "gensquashfs", ("-c", "zstd", "-b", "4096", "--exportable")),
    Spec("xz", "fuzz", "mksquashfs", ("-comp", "xz", "-b", "8K", "-no-exports")),
    Spec("lz4", "fuzz", "mksquashfs", ("-comp", "lz4", "-b", "4K", "-tailends")),
    Spec("lzo", "fuzz", "gensquashfs", ("-c", "lzo", "-b", "4096")),
)


@dataclass
class Base:
    """A base image and the positions of its real structures, for targeted mutations."""

    name: str
    data: bytes
    raw_meta: bool  # metadata uncompressed: file positions of records are known
    inodes: list[tuple[int, int, int]] = field(default_factory=list)  # (file position, inode type, ino)
    listings: list[int] = field(default_factory=list)  # file positions of first directory headers
    block_lists: list[int] = field(default_factory=list)  # file positions of block-size lists
    data_blocks: list[tuple[int, int]] = field(default_factory=list)  # (position, length) of zlib blocks
    meta_blocks: list[int] = field(default_factory=list)  # positions of metadata block headers
    root_ref: int = 0


def _file_pos(table: int, block: int, offset: int) -> int | None:
    """Where a record of an uncompressed metadata table lies in the file (None if it may straddle)."""
    return table + block + 2 + offset if offset + 64 <= 8192 else None


def _zlib_blocks(data: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(position, length) of the complete zlib streams found in ``data[start:end]``."""
    blocks = []
    pos = start
    while (pos := data.find(b"\x78", pos, end - 1)) >= 0:
        if data[pos + 1] in (0x01, 0x5E, 0x9C, 0xDA):
            d = zlib.decompressobj()
            with contextlib.suppress(zlib.error):
                d.decompress(data[pos:end])
                if d.eof:
                    length = end - pos - len(d.unused_data)
                    blocks.append((pos, length))
                    pos += length
                    continue
        pos += 1
    return blocks


def survey(name: str, data: bytes) -> Base:
    """Find the real structures of a base image through the public reader interface."""
    fs = SquashFS(BytesSource(data))
    sb = fs.superblock
    base = Base(name, data, bool(sb.flags & Flags.UNCOMPRESSED_INODES), root_ref=sb.root_inode_ref)
    pos = sb.inode_table
    while pos < sb.directory_table:
        base.meta_blocks.append(pos)
        pos += 2 + (struct.unpack_from("<H", data, pos)[0] & 0x7FFF)
    if sb.compressor == 1:
        base.data_blocks = _zlib_blocks(data, 96, sb.inode_table)
    if not base.raw_meta:
        return base
    for _, st in walk(fs):
        inode = fs.inode(st.ino)
        pos = _file_pos(sb.inode_table, inode.ref >> 16, inode.ref & 0xFFFF)
        if pos is not None:
            base.inodes.append((pos, struct.unpack_from("<H", data, pos)[0], st.ino))
        if inode.dir is not None and inode.stat.size > 3:
            pos = _file_pos(sb.directory_table, inode.dir.block, inode.dir.offset)
            if pos is not None:
                base.listings.append(pos)
        if inode.file is not None and inode.file.block_count:
            block_pos, offset = inode.file.sizes_at
            if offset + 4 * inode.file.block_count <= 8192:
                base.block_lists.append(block_pos + 2 + offset)
    return base


# --- mutations ----------------------------------------------------------------------------

Mutation = Callable[[Base, bytearray, random.Random], str]

LIES32 = (
    0,
    1,
    2,
    3,
    0x7F,
    0xFF,
    0x100,
    0xFFF,
    0x1000,
    0x1FFF,
    0x2000,
    0xFFFF,
    0x10000,
    0x1000000,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
)


def _lie32(rng: random.Random, data: bytearray) -> int:
    return rng.choice((*LIES32, len(data), len(data) - 1, len(data) + 1, rng.getrandbits(32)))


def _lie64(rng: random.Random, data: bytearray) -> int:
    return rng.choice(
        (0, 1, len(data), len(data) - 1, 2**32, 2**48, 2**63 - 1, 2**64 - 1, rng.getrandbits(64))
    )


def _put(data: bytearray, pos: int, fmt: str, value: int) -> None:
    if 0 <= pos <= len(data) - struct.calcsize(fmt):
        struct.pack_into(fmt, data, pos, value & ((1 << (8 * struct.calcsize(fmt))) - 1))


def bit_flips(base: Base, data: bytearray, rng: random.Random) -> str:
    lo = 0 if rng.random() < 0.2 else min(96, len(data) - 1)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        pos = rng.randrange(lo, len(data))
        data[pos] ^= 1 << rng.randrange(8)
    return "bit_flips"


def random_bytes(base: Base, data: bytearray, rng: random.Random) -> str:
    pos = rng.randrange(len(data))
    n = rng.choice((1, 2, 4, 8, 64))
    data[pos : pos + n] = rng.choice((bytes(n), b"\xff" * n, rng.randbytes(n)))
    return "random_bytes"


def truncate(base: Base, data: bytearray, rng: random.Random) -> str:
    del data[rng.choice((rng.randrange(len(data)), len(data) - rng.randrange(1, 5000), 95, 96, 200)) :]
    return "truncate"


SUPERBLOCK_FIELDS = (
    (4, "<I"),
    (12, "<I"),
    (16, "<I"),
    (20, "<H"),
    (22, "<H"),
    (24, "<H"),
    (26, "<H"),
    (32, "<Q"),
    (40, "<Q"),
    (48, "<Q"),
    (56, "<Q"),
    (64, "<Q"),
    (72, "<Q"),
    (80, "<Q"),
    (88, "<Q"),
)


def superblock_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    pos, fmt = rng.choice(SUPERBLOCK_FIELDS)
    _put(data, pos, fmt, _lie64(rng, data) if fmt == "<Q" else _lie32(rng, data))
    return "superblock_lie"


def metadata_header_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    pos = rng.choice(base.meta_blocks)
    _put(data, pos, "<H", rng.choice((0, 1, 0x7FFF, 0x8000, 0x8001, 0x9FFF, 0xFFFF, rng.getrandbits(16))))
    return "metadata_header_lie"


def int_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    pos = rng.randrange(96, len(data))
    fmt = rng.choice(("<H", "<I", "<I", "<Q"))
    _put(data, pos, fmt, _lie64(rng, data) if fmt == "<Q" else _lie32(rng, data))
    return "int_lie"


def inode_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    """A lie in a real inode: type, id index, inode number, or a type-specific size or count."""
    if not base.inodes:
        return int_lie(base, data, rng)
    pos, kind, _ = rng.choice(base.inodes)
    basic = (kind - 1) % 7 + 1
    choices = [
        (0, "<H", rng.randrange(20)),
        (4, "<H", rng.choice((0xFFFF, 7, 1000))),
        (12, "<I", rng.choice((0, 0xFFFFFFFF, 10**6))),
    ]
    if kind == 2:  # basic file: blocks start, fragment, fragment offset, size
        choices += [
            (16, "<I", _lie32(rng, data)),
            (20, "<I", _lie32(rng, data)),
            (24, "<I", _lie32(rng, data)),
            (28, "<I", rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 10**8, _lie32(rng, data)))),
        ]
    elif kind == 9:  # extended file: start, size, sparse, nlink, fragment, offset, xattr
        choices += [
            (16, "<Q", _lie64(rng, data)),
            (24, "<Q", rng.choice((2**63, 2**40, 2**64 - 1))),
            (32, "<Q", _lie64(rng, data)),
            (44, "<I", _lie32(rng, data)),
            (52, "<I", _lie32(rng, data)),
        ]
    elif basic == 1:  # directory: size, start, index count, offset, parent
        extended = kind == 8
        choices += [
            (20 if extended else 24, "<I" if extended else "<H", rng.choice((0, 3, 4, 0xFFFF, 10**6))),
            (24 if extended else 16, "<I", _lie32(rng, data)),
            (32 if extended else 26, "<H", rng.choice((0, 1, 0x1FFF, 0xFFFF))),
        ]
        if extended:
            choices += [(32, "<H", rng.choice((1, 2, 100, 0xFFFF))), (36, "<I", _lie32(rng, data))]
    elif basic == 3:  # symlink target size
        choices += [(20, "<I", rng.choice((0, 4096, 65536, 65537, 0xFFFFFFFF)))]
    elif basic in (4, 5):
        choices += [(20, "<I", _lie32(rng, data))]
    offset, fmt, value = rng.choice(choices)
    _put(data, pos + offset, fmt, value)
    return "inode_lie"


def directory_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    """A loop (first entry -> the root directory), or a header/entry field out of range."""
    if not base.listings:
        return int_lie(base, data, rng)
    pos = rng.choice(base.listings)
    what = rng.randrange(4)
    if what == 0:
        _put(data, pos + 4, "<I", base.root_ref >> 16)
        _put(data, pos + 12, "<H", base.root_ref & 0xFFFF)
        _put(data, pos + 16, "<H", 1)
        return "directory_loop"
    if what == 1:
        _put(data, pos, "<I", rng.choice((255, 256, 0xFFFF, 0xFFFFFFFF)))  # entry count
    elif what == 2:
        _put(data, pos + 4, "<I", _lie32(rng, data))  # inode block out of range
        _put(data, pos + 12, "<H", rng.getrandbits(16))
    else:
        _put(data, pos + 18, "<H", rng.choice((255, 256, 0xFFFF)))  # name size
    return "directory_lie"


def block_list_lie(base: Base, data: bytearray, rng: random.Random) -> str:
    if not base.block_lists:
        return int_lie(base, data, rng)
    pos = rng.choice(base.block_lists)
    _put(data, pos, "<I", rng.choice((0, 0xFFFFFF, 0x1000000, 0x1FFFFFF, 4097, 1 << 20, _lie32(rng, data))))
    return "block_list_lie"


def _bomb(size: int, room: int) -> bytes | None:
    """A zlib stream that expands to ``size`` bytes, padded to ``room`` (None if it does not fit)."""
    stream = zlib.compress(b"\0" * size, 9)
    return stream + bytes(room - len(stream)) if len(stream) <= room else None


def bomb(base: Base, data: bytearray, rng: random.Random) -> str:
    """Replace a compressed data or metadata block by one that expands far past its bound."""
    if base.name != "gzip":
        return bit_flips(base, data, rng)
    if rng.random() < 0.5 and base.data_blocks:
        pos, room = rng.choice(base.data_blocks)
        payload = _bomb(rng.choice((4097, 8192, 1 << 20, 64 << 20)), room)
        if payload is not None:
            data[pos : pos + room] = payload
            return "data_bomb"
    pos = rng.choice(base.meta_blocks)
    (header,) = struct.unpack_from("<H", data, pos)
    room = header & 0x7FFF
    payload = _bomb(rng.choice((8193, 65536, 16 << 20)), room)
    if header & 0x8000 or payload is None:
        return bit_flips(base, data, rng)
    data[pos + 2 : pos + 2 + room] = payload
    return "metadata_bomb"


MUTATIONS: tuple[Mutation, ...] = (
    bit_flips,
    bit_flips,
    random_bytes,
    truncate,
    superblock_lie,
    metadata_header_lie,
    int_lie,
    int_lie,
    inode_lie,
    inode_lie,
    inode_lie,
    directory_lie,
    directory_lie,
    block_list_lie,
    bomb,
)


# --- running ------------------------------------------------------------------------------


def exercise(image: bytes) -> None:
    """Use every part of the interface on ``image``; raises whatever the reader raises.

    No caps: every entry is visited and every file read whole, so a reader that loops or
    does unbounded work shows as a case over the time limit, not as a harness that stopped
    early. Reads also start mid-file and past the end.
    """
    fs = SquashFS(BytesSource(image), cache_bytes=4 << 20)
    # A second reader only ever looks names up, as a cold mount's first requests do: each
    # directory's first lookup there takes the path that parses its listing in C.
    cold = SquashFS(BytesSource(image), cache_bytes=4 << 20)
    served = ReadOnlyOperations(SquashFS(BytesSource(image), cache_bytes=4 << 20), features=FAST)
    handlers = getattr(served, "fast_handlers", None)  # None: the C handlers are not built
    fs.statfs()
    for path, st in walk(fs):
        fs.getattr(st.ino)
        try:
            names = fs.listxattr(st.ino)
        except XattrsUnsupported:  # the kernel's answer on an image without xattrs: not a failure
            names = []
        for name in names:
            fs.getxattr(st.ino, name)
        if stat.S_ISREG(st.mode):
            offset = 0
            while data := fs.read(st.ino, offset, CHUNK):
                offset += len(data)
            fs.read(st.ino, st.size // 2, 5000)
            fs.read(st.ino, st.size + 1, 10)
        elif stat.S_ISLNK(st.mode):
            fs.readlink(st.ino)
        if path != b"/":
            # a mutated symlink may dangle or loop: that is an answer, not a failure
            with contextlib.suppress(SquashfsError):
                resolve(fs, path, follow_last=stat.S_ISLNK(st.mode))
            with contextlib.suppress(SquashfsError):
                resolve(cold, path, follow_last=False)
            if handlers is not None:
                through_handlers(handlers.call, path)


def through_handlers(call: Callable[..., tuple[int, object]], path: bytes) -> None:
    """Resolve ``path`` with the C handlers' lookups, then its getattr, readlink and listing (a request
    the handler answers: 0 or an errno; one it declines: -1; anything else, or an exception, is a
    bug)."""
    ino = 1
    for name in path.split(b"/")[1:]:
        if b"\0" in name:
            return  # a damaged name the kernel cannot ask for: requests carry C strings
        res, entry = call("lookup", ino, name)
        if res != 0 or not isinstance(entry, tuple):
            return
        ino = entry[0]
    for op in ("getattr", "readlink", "readdir"):
        res, value = call(op, ino)
        if not isinstance(res, int) or res < -1:
            raise AssertionError(f"{op} answered {res!r}")
    if res == 0 and isinstance(value, list) and len(value) > 3:  # a listing, resumed mid-way
        res, _ = call("readdir", ino, b"", value[2][2], 2)
        if not isinstance(res, int) or res < -1:
            raise AssertionError(f"readdir from a cookie answered {res!r}")


@dataclass
class Outcome:
    case: int
    mutation: str
    result: str
    detail: str = ""


def mutate(bases: list[Base], seed: int, case: int) -> tuple[str, bytes]:
    """Case ``case`` of run ``seed``: which base and mutation, and the mutated image."""
    rng = random.Random(seed * 1_000_003 + case)
    base = rng.choice(bases)
    data = bytearray(base.data)
    mutation = rng.choice(MUTATIONS)(base, data, rng)
    return f"{base.name}:{mutation}", bytes(data)


def run_case(bases: list[Base], seed: int, case: int, runner: Limited) -> Outcome:
    """One case, run by ``runner`` (a child under a memory and time limit)."""
    mutation, data = mutate(bases, seed, case)
    r = runner(data)
    if not r.error:
        return Outcome(case, mutation, "ok")
    result = r.error if r.expected else f"BUG {r.error}"
    return Outcome(case, mutation, result, r.detail)


def limited_exercise(memory_mib: int = MEMORY_MIB, seconds: float = SECONDS) -> Limited:
    """The reader exercised in a child under limits; only ``SquashfsError`` is an expected answer."""
    return Limited(exercise, (SquashfsError,), memory_mib=memory_mib, seconds=seconds)


def build_bases(workdir: Path) -> list[Base]:
    tree = build_tree(workdir / "tree")
    bases = []
    for spec in BASES:
        image = pack(spec, tree, workdir / f"{spec.name}.sqfs")
        bases.append(survey(spec.name, image.read_bytes()))
    return bases


def fuzz(
    cases: int,
    seed: int = 0,
    start: int = 0,
    bases: list[Base] | None = None,
    report: Callable[[str], None] | None = None,
    runner: Limited | None = None,
) -> tuple[collections.Counter[str], list[Outcome]]:
    """Run ``cases`` cases, each in a child under limits; return outcome counts and the bugs."""
    if bases is None:
        with tempfile.TemporaryDirectory() as tmp:
            bases = build_bases(Path(tmp))
    counts: collections.Counter[str] = collections.Counter()
    bugs: list[Outcome] = []
    t0 = time.perf_counter()
    with runner or limited_exercise() as run:
        for case in range(start, start + cases):
            outcome = run_case(bases, seed, case, run)
            counts[outcome.result] += 1
            counts[f"{outcome.mutation.split(':')[1]} -> {outcome.result}"] += 1
            if outcome.result.startswith("BUG"):
                bugs.append(outcome)
                if report:
                    report(f"case {case} ({outcome.mutation}): {outcome.detail}")
            if report and (case - start + 1) % 5000 == 0:
                elapsed = time.perf_counter() - t0
                totals = {k: v for k, v in counts.items() if "->" not in k}
                report(f"{case - start + 1} cases, {(case - start + 1) / elapsed:.0f}/s, {totals}")
    return counts, bugs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first case number")
    ap.add_argument("--case", type=int, help="replay this one case and show its outcome")
    ap.add_argument(
        "--memory-mib", type=int, default=MEMORY_MIB, help="address space per case (above the start)"
    )
    ap.add_argument("--seconds", type=float, default=SECONDS, help="time limit per case")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bases = build_bases(Path(tmp))
    with limited_exercise(a.memory_mib, a.seconds) as runner:
        if a.case is not None:
            outcome = run_case(bases, a.seed, a.case, runner)
            print(f"case {a.case}: {outcome.mutation} -> {outcome.result}")
            if a.verbose or outcome.result.startswith("BUG"):
                print(outcome.detail)
            return
        t0 = time.perf_counter()
        counts, bugs = fuzz(a.cases, a.seed, a.start, bases, lambda s: print(s, flush=True), runner)
    elapsed = time.perf_counter() - t0
    print(f"{a.cases} cases in {elapsed:.0f} s: {a.cases / elapsed:.0f} cases/s")
    print(f"limits per case: {a.memory_mib} MiB of address space above the start, {a.seconds:g} s")
    for result, n in sorted(counts.items(), key=lambda kv: ("->" in kv[0], kv[0])):
        print(f"  {result:40} {n}")
    sys.exit(1 if bugs else 0)


if __name__ == "__main__":
    main()
