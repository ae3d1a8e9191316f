"""casync blob indexes (``.caibx``): read with casync's checks, written byte-identical to ``casync make``.

The index is the only thing a puller trusts about layout: chunk ends and ids, in blob order. Reading
is bounded by the file's size, never by a field value, so a hostile index cannot make siffs allocate.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from siffs.delta.chunker import SIZE_LIMIT, ChunkSizes
from siffs.delta.errors import IndexFormatError, UnsupportedFormatError

_HEADER = struct.Struct("<QQQQQQQQ")
_ITEM = struct.Struct("<Q32s")
_TAIL = struct.Struct("<QQQQQ")
HEADER_SIZE = _HEADER.size  # 64: the INDEX object (48 bytes) and the TABLE object's header
_INDEX_TYPE = 0x96824D9C7B129FF9
_TABLE_TYPE = 0xE75B9E112F17417D
_TAIL_MARKER = 0x4B4F050E5549ECD1
_UNKNOWN_SIZE = 0xFFFFFFFFFFFFFFFF

SHA512_256 = 0x2000000000000000
_KNOWN_FLAGS = 0xF0000001FFFFFFFF
#: What ``casync make`` writes for a blob: the digest bit plus its two default "exclude" bits.
_CASYNC_BLOB_FLAGS = 0x9000000000000000


@dataclass(frozen=True)
class Chunk:
    """One chunk of the blob: where it starts, how long it is, and its id (digest of its bytes)."""

    offset: int
    size: int
    id: bytes

    @property
    def name(self) -> str:
        return self.id.hex()


@dataclass(frozen=True)
class BlobIndex:
    """A parsed ``.caibx``: the chunk sizes, the digest, and the chunks in blob order."""

    sizes: ChunkSizes
    sha512_256: bool
    chunks: tuple[Chunk, ...]
    flags: int = 0

    @property
    def blob_size(self) -> int:
        return self.chunks[-1].offset + self.chunks[-1].size if self.chunks else 0

    @property
    def digest_name(self) -> str:
        return "sha512_256" if self.sha512_256 else "sha256"

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        """The id of a chunk's uncompressed bytes, with this index's digest."""
        return hashlib.new(self.digest_name, data).digest()


def parse(data: bytes, *, what: str = "index") -> BlobIndex:
    """Parse and check an index held in memory (an index is 40 bytes per chunk: small)."""

    def bad(rule: str) -> IndexFormatError:
        return IndexFormatError(f"corrupt {what}: {rule}")

    if len(data) < HEADER_SIZE + _TAIL.size:
        raise bad(f"{len(data)} bytes is shorter than the smallest index (104 bytes)")
    size, kind, flags, smin, savg, smax, tsize, ttype = _HEADER.unpack_from(data)
    if size != 48 or kind != _INDEX_TYPE:
        raise bad("no casync index header (wrong size or type)")
    if tsize != _UNKNOWN_SIZE or ttype != _TABLE_TYPE:
        raise bad("no chunk table after the header")
    if flags & ~_KNOWN_FLAGS:
        raise UnsupportedFormatError(f"{what} has unknown feature flags {flags:#018x}")
    if flags & 0x1FFFFFFFF:
        raise UnsupportedFormatError(f"{what} is an archive index (.caidx): use a blob index (.caibx)")
    if not 1 <= smin <= savg <= smax <= SIZE_LIMIT:
        raise bad(f"chunk sizes {smin}:{savg}:{smax} break 1 <= min <= avg <= max <= 128 MiB")
    if (len(data) - HEADER_SIZE - _TAIL.size) % _ITEM.size:
        raise bad(f"size {len(data)} is not 104 + 40 * chunks")
    count = (len(data) - HEADER_SIZE - _TAIL.size) // _ITEM.size
    tail = _TAIL.unpack_from(data, HEADER_SIZE + count * _ITEM.size)
    if tail != (0, 0, 48, 16 + _ITEM.size * count + _TAIL.size, _TAIL_MARKER):
        raise bad("table tail missing or wrong (truncated, or bytes after the table)")
    chunks: list[Chunk] = []
    start = 0
    for end, chunk_id in _ITEM.iter_unpack(data[HEADER_SIZE : HEADER_SIZE + count * _ITEM.size]):
        if end <= start:
            raise bad(f"chunk {len(chunks)} ends at {end}, not after the previous end {start}")
        if end - start > smax:
            raise bad(f"chunk {len(chunks)} is {end - start} bytes, above the maximum {smax}")
        chunks.append(Chunk(start, end - start, chunk_id))
        start = end
    return BlobIndex(ChunkSizes(smin, savg, smax), bool(flags & SHA512_256), tuple(chunks), flags)


def read(path: str) -> BlobIndex:
    with open(path, "rb") as f:
        return parse(f.read(), what=f"index {path}")


def encode(sizes: ChunkSizes, sha512_256: bool, ends_and_ids: Iterable[tuple[int, bytes]]) -> bytes:
    """The index bytes ``casync make`` writes for these chunks (``ends_and_ids``: cumulative end, id)."""
    items = b"".join(_ITEM.pack(end, chunk_id) for end, chunk_id in ends_and_ids)
    count = len(items) // _ITEM.size
    flags = _CASYNC_BLOB_FLAGS | (SHA512_256 if sha512_256 else 0)
    header = _HEADER.pack(48, _INDEX_TYPE, flags, sizes.min, sizes.avg, sizes.max, _UNKNOWN_SIZE, _TABLE_TYPE)
    tail = _TAIL.pack(0, 0, 48, 16 + _ITEM.size * count + _TAIL.size, _TAIL_MARKER)
    return header + items + tail


def to_bytes(index: BlobIndex) -> bytes:
    return encode(index.sizes, index.sha512_256, ((c.offset + c.size, c.id) for c in index.chunks))
