"""Regular-file contents: data blocks, sparse blocks and fragment tails.

A file is ``block_count`` blocks stored back to back from ``blocks_start`` (each with its
on-disk size in a list after the inode; bit 24 set = stored uncompressed, size 0 = a
sparse block of zeros) and, optionally, a tail packed into a shared fragment block.
Decompressed blocks are cached by on-disk position, so files that share blocks (the
packer's de-duplication) share cache entries too.

``_data.c`` reads a file whose inode and block list lie in one metadata block straight from the
caches (most reads); anything else, and every error, is left to the Python code here, its
fallback and its oracle in the tests.
"""

from __future__ import annotations

import itertools
import struct
import sys
from array import array
from collections.abc import Callable

from siffs import native
from siffs.squashfs.cache import LruCache
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.inode import FileLocation
from siffs.squashfs.metadata import MetadataReader
from siffs.squashfs.superblock import Superblock
from siffs.squashfs.table import LookupTable

UNCOMPRESSED = 1 << 24
SIZE_MASK = UNCOMPRESSED - 1
FRAGMENT_RECORD = struct.Struct("<QII")  # start, on-disk size word, unused
#: A metadata block of 8 KiB takes at least 3 bytes on disk (2-byte header, 1 byte of data),
#: so a list in the inode table can never be longer than this many times the table.
_EXPANSION = 8192 // 3 + 1

#: (inode reference, offset, size) -> the bytes, or None to leave the read to :meth:`DataReader.read`.
NativeRead = Callable[[int, int, int], bytes | None]


def block_cost(block: bytes) -> int:
    """What a cached data or fragment block costs against the cache budget."""
    return len(block) + 64


class BlockList:
    """On-disk size words of a file's blocks and where each block starts (a prefix sum)."""

    __slots__ = ("sizes", "starts")

    def __init__(self, blocks_start: int, raw: bytes, limit: int) -> None:
        self.sizes = array("I")
        self.sizes.frombytes(raw)
        if sys.byteorder == "big":
            self.sizes.byteswap()
        starts = list(itertools.accumulate((s & SIZE_MASK for s in self.sizes), initial=blocks_start))
        if starts[-1] > limit:  # (an extended inode's 64-bit start can even overflow the array)
            raise CorruptImage(
                f"a file's blocks run to byte {starts[-1]}, past the end of the image ({limit}); "
                "the image is damaged"
            )
        self.starts = array("Q", starts)

    def cost(self) -> int:
        """Bytes held, for the cache budget."""
        return 100 + 4 * len(self.sizes) + 8 * len(self.starts)


class DataReader:
    """Reads byte ranges of regular files, one decompressed block at a time through the data cache."""

    def __init__(
        self,
        meta: MetadataReader,
        sb: Superblock,
        fragments: LookupTable | None,
        meta_cache: LruCache,
        data_cache: LruCache,
    ) -> None:
        self._source = meta.source
        self._codec = meta.codec
        self._sb = sb
        self._meta = meta
        self._fragments = fragments
        self._meta_cache = meta_cache
        self._data_cache = data_cache
        self._zeros = bytes(sb.block_size)
        self._max_list = (sb.directory_table - sb.inode_table) * _EXPANSION
        self.native: NativeRead | None = None
        module = native.load("siffs.squashfs._data", abi=1)
        if module is not None:
            layout = (
                sb.inode_table,
                sb.directory_table - sb.inode_table,
                sb.block_size,
                meta.limit,
                self._max_list,
                fragments.count if fragments is not None else 0,
                fragments.blocks if fragments is not None else (),
            )
            reader = module.FileReader(meta_cache.table, data_cache.table, meta.loader, self._block, layout)
            self.native = reader.read

    def read(self, inode_ref: int, loc: FileLocation, file_size: int, offset: int, size: int) -> bytes:
        """Bytes ``offset`` to ``offset + size`` of the file (fewer at its end); work grows with ``size``."""
        end = min(file_size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        bs = self._sb.block_size
        blocks = self._block_list(inode_ref, loc) if offset // bs < loc.block_count else None
        parts: list[memoryview] = []
        for i in range(offset // bs, (end - 1) // bs + 1):
            base = i * bs
            expected = min(bs, file_size - base)
            if i < loc.block_count:
                assert blocks is not None
                data = self._data_block(blocks.starts[i], blocks.sizes[i], expected)
            else:
                data = self._tail(loc, expected)
            parts.append(memoryview(data)[max(offset, base) - base : min(end, base + bs) - base])
        return b"".join(parts)

    def stored_extents(self, inode_ref: int, loc: FileLocation, file_size: int) -> list[tuple[int, int, int]]:
        """(file offset, source offset, length) of each part of the file stored verbatim.

        Blocks and a fragment tail flagged uncompressed are copies of the file's bytes; compressed
        and sparse parts are left out. Whole-file tools use this to find an embedded file's bytes
        (the ciphertext of an encrypted payload) inside the image without reading them.
        """
        bs = self._sb.block_size
        found = []
        if loc.block_count:
            blocks = self._block_list(inode_ref, loc)
            for i in range(loc.block_count):
                word = blocks.sizes[i]
                length = min(bs, file_size - i * bs)
                if word & UNCOMPRESSED and word & SIZE_MASK == length:
                    found.append((i * bs, blocks.starts[i], length))
        tail = file_size - loc.block_count * bs
        if tail > 0 and loc.fragment is not None and self._fragments is not None:
            start, word, _ = self._fragments.get(loc.fragment)
            if word & UNCOMPRESSED and loc.fragment_offset + tail <= word & SIZE_MASK:
                found.append((loc.block_count * bs, start + loc.fragment_offset, tail))
        return found

    def _block_list(self, inode_ref: int, loc: FileLocation) -> BlockList:
        def load() -> BlockList:
            if 4 * loc.block_count > self._max_list:
                raise CorruptImage(
                    f"a file claims {loc.block_count} blocks, more than its inode table can list; "
                    "the image is damaged"
                )
            raw = self._meta.cursor(*loc.sizes_at).read(4 * loc.block_count)
            return BlockList(loc.blocks_start, raw, self._meta.limit)

        return self._meta_cache.get_or_load(("b", inode_ref), load, BlockList.cost)

    def _data_block(self, start: int, word: int, expected: int) -> bytes | memoryview:
        """Block stored at ``start`` with size word ``word``, at least ``expected`` bytes long.

        A block that unpacks short is zero-filled, as the kernel does; 0 on disk is all zeros.
        """
        if word & SIZE_MASK == 0:
            return memoryview(self._zeros)[:expected]
        data = self._block(start, word)
        if len(data) < expected:
            return data + bytes(expected - len(data))
        return data

    def _block(self, start: int, word: int) -> bytes:
        """The decompressed data or fragment block stored at ``start``, through the data cache."""
        return self._data_cache.get_or_load(("d", start, word), lambda: self._load(start, word), block_cost)

    def _load(self, start: int, word: int) -> bytes:
        """Read and decompress one data or fragment block."""
        size = word & SIZE_MASK
        if size > self._sb.block_size or word & ~(SIZE_MASK | UNCOMPRESSED):
            raise CorruptImage(
                f"a data block at byte {start} claims {size} bytes on disk; the image is damaged"
            )
        raw = self._source.pread(start, size)
        if word & UNCOMPRESSED:
            return raw
        return self._codec.decompress(raw, self._sb.block_size)

    def _tail(self, loc: FileLocation, expected: int) -> bytes | memoryview:
        """The file's last ``expected`` bytes, cut out of its fragment block."""
        if loc.fragment is None or self._fragments is None:
            raise CorruptImage("a file's size needs a fragment it does not have; the image is damaged")
        start, word, _ = self._fragments.get(loc.fragment)
        if word & SIZE_MASK == 0:
            raise CorruptImage(f"fragment {loc.fragment} has no data; the image is damaged")
        block = self._block(start, word)
        if loc.fragment_offset + expected > len(block):
            raise CorruptImage(
                f"a file's tail lies past the end of fragment {loc.fragment}; the image is damaged"
            )
        return memoryview(block)[loc.fragment_offset : loc.fragment_offset + expected]
