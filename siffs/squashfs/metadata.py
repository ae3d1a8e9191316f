"""Metadata blocks (8 KiB units, each behind a 2-byte header) and a cursor that reads across them.

Inodes, directory listings and lookup tables are byte streams chopped into separately
compressed 8 KiB blocks; a record may straddle two blocks. A reference to a record is
the on-disk position of its block plus an offset into the decompressed block. Blocks are
cached (decompressed) because the same inode block serves dozens of neighbouring inodes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from siffs.squashfs.cache import LruCache
from siffs.squashfs.codecs import Codec
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.source import ByteSource, FileSource

SIZE = 8192
_HEADER = struct.Struct("<H")
_UNCOMPRESSED = 0x8000
#: Cache cost of a block beyond its bytes (tuple, ints, dict slot): keeps the byte budget honest.
_OVERHEAD = 160

Block = tuple[bytes, int]  # decompressed bytes, position of the next block


def block_cost(block: Block) -> int:
    """What a cached metadata block costs against the cache budget."""
    return len(block[0]) + _OVERHEAD


class MetadataReader:
    """Reads, decompresses and caches metadata blocks of one image.

    ``limit`` is the end of the image (``bytes_used``): no block may extend past it, so a
    chain of blocks always ends and every position read was checked first. The source,
    codec, cache and limit are public so the tables built on metadata share them.
    """

    def __init__(self, source: ByteSource, codec: Codec, cache: LruCache, limit: int) -> None:
        self.source = source
        self.codec = codec
        self.limit = limit
        self.cache = cache
        #: What the native readers load blocks through (_caches.h): :meth:`block`, or, when the
        #: bytes come straight from a file, (block, source, its offset in the file, the end of the
        #: image, the codec's decompress, the cache's put, a block's cost beyond its bytes), with
        #: which they load a block themselves as :meth:`_load` does (``_fd`` read per load, so a
        #: closed source goes to :meth:`block`, which raises). A stage in between (verification,
        #: decryption) is read through Python only.
        self.loader: Callable[[int], Block] | tuple[object, ...] = self.block
        if type(source) is FileSource:
            end = min(limit, source.size)
            self.loader = (self.block, source, source.offset, end, codec.decompress, cache.put, _OVERHEAD)

    def block(self, pos: int) -> Block:
        """The decompressed metadata block at partition offset ``pos``, and where the next one starts."""
        return self.cache.get_or_load(("m", pos), lambda: self._load(pos), block_cost)

    def _load(self, pos: int) -> Block:
        if not 0 <= pos <= self.limit - _HEADER.size:
            raise CorruptImage(f"a metadata block at byte {pos} lies outside the image; it is damaged")
        (header,) = _HEADER.unpack(self.source.pread(pos, _HEADER.size))
        size = header & ~_UNCOMPRESSED
        start = pos + _HEADER.size
        if not 0 < size <= SIZE or start + size > self.limit:
            raise CorruptImage(f"the metadata block at byte {pos} claims {size} bytes; the image is damaged")
        raw = self.source.pread(start, size)
        data = raw if header & _UNCOMPRESSED else self.codec.decompress(raw, SIZE)
        return data, start + size

    def cursor(self, pos: int, offset: int) -> Cursor:
        """A cursor at ``offset`` bytes into the decompressed block at ``pos``."""
        return Cursor(self, pos, offset)


class Cursor:
    """A read position in a stream of metadata blocks: (block position, offset in that block).

    Reads that fit in the current block are one slice; reads that straddle a boundary move
    on to the next block, which is what the format requires of records.
    """

    __slots__ = ("_data", "_next", "_reader", "block_pos", "offset")

    def __init__(self, reader: MetadataReader, pos: int, offset: int) -> None:
        self._reader = reader
        self.block_pos = pos
        self._data, self._next = reader.block(pos)
        if offset > len(self._data):
            raise CorruptImage(f"offset {offset} is past the end of the metadata block at byte {pos}")
        self.offset = offset

    @property
    def position(self) -> tuple[int, int]:
        """(block position, offset): pass both to ``MetadataReader.cursor`` to come back here."""
        return self.block_pos, self.offset

    def _advance(self) -> None:
        self.block_pos = self._next
        self._data, self._next = self._reader.block(self._next)
        self.offset = 0

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes; the caller has checked that ``n`` is a sane size."""
        end = self.offset + n
        if end <= len(self._data):
            out = self._data[self.offset : end]
            self.offset = end
            return out
        parts = []
        while n > 0:
            if self.offset == len(self._data):
                self._advance()
            take = min(n, len(self._data) - self.offset)
            parts.append(self._data[self.offset : self.offset + take])
            self.offset += take
            n -= take
        return b"".join(parts)

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        """Read one fixed-size record."""
        end = self.offset + fmt.size
        if end <= len(self._data):
            values = fmt.unpack_from(self._data, self.offset)
            self.offset = end
            return values
        return fmt.unpack(self.read(fmt.size))

    def skip(self, n: int) -> None:
        """Move ``n`` bytes forward without keeping them."""
        while n > 0:
            if self.offset == len(self._data):
                self._advance()
            take = min(n, len(self._data) - self.offset)
            self.offset += take
            n -= take
