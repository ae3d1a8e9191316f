"""Extended attributes: an id table of (key/value stream reference, count, size) per attribute set.

An inode stores an index into the xattr id table; the entry points at ``count`` key/value
pairs in metadata blocks after ``kv_start``. Keys store a prefix id (user., trusted.,
security.) and the rest of the name; a value is either inline or, flagged in the key, an
8-byte reference to the first copy of an identical value elsewhere (out of line).
"""

from __future__ import annotations

import struct

from siffs.squashfs.cache import LruCache
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.metadata import Cursor, MetadataReader
from siffs.squashfs.superblock import NO_TABLE, Superblock
from siffs.squashfs.table import LookupTable

PREFIXES = {0: b"user.", 1: b"trusted.", 2: b"security."}
OUT_OF_LINE = 0x0100
PREFIX_MASK = 0x00FF
#: Linux limits (XATTR_NAME_MAX, XATTR_SIZE_MAX, and the 64 KiB listxattr buffer that bounds
#: how many names one inode can have); larger claims are damage, not attributes.
MAX_NAME = 255
MAX_VALUE = 1 << 16
MAX_PAIRS = 1 << 15

_TABLE_HEADER = struct.Struct("<QII")  # kv_start, count, unused
_ID = struct.Struct("<QII")  # kv reference, pair count, total size
_KEY = struct.Struct("<HH")  # type, name size
_VALUE_SIZE = struct.Struct("<I")
_REF = struct.Struct("<Q")

Pairs = tuple[tuple[bytes, bytes], ...]


def _pairs_cost(pairs: Pairs) -> int:
    return 100 + sum(100 + len(k) + len(v) for k, v in pairs)


class XattrTable:
    """Reads attribute sets by xattr index; an image without xattrs has an empty table."""

    def __init__(self, meta: MetadataReader, sb: Superblock, cache: LruCache) -> None:
        self._meta = meta
        self._cache = cache
        self._ids: LookupTable | None = None
        self._kv_start = 0
        if sb.xattr_table == NO_TABLE:
            return
        if sb.xattr_table + _TABLE_HEADER.size > sb.bytes_used:
            raise CorruptImage("the xattr table runs past the end of the image; it is damaged")
        kv_start, count, _ = _TABLE_HEADER.unpack(meta.source.pread(sb.xattr_table, _TABLE_HEADER.size))
        if kv_start >= sb.xattr_table:
            raise CorruptImage(f"xattr values start at {kv_start}, after their table; the image is damaged")
        self._kv_start = kv_start
        self._ids = LookupTable(meta, sb.xattr_table + _TABLE_HEADER.size, count, _ID, "xattr id")

    @property
    def present(self) -> bool:
        """Whether the image has an xattr table (without one, inodes' xattr indexes are ignored)."""
        return self._ids is not None

    def stored_size(self, index: int) -> int:
        """The uncompressed size of attribute set ``index`` (the kernel counts it in ``st_blocks``)."""
        if self._ids is None:
            raise CorruptImage("an inode has extended attributes but the image has no xattr table")
        return int(self._ids.get(index)[2])

    def pairs(self, index: int | None) -> Pairs:
        """(full name, value) pairs of attribute set ``index``; None means the inode has none."""
        if index is None:
            return ()
        return self._cache.get_or_load(("x", index), lambda: self._load(index), _pairs_cost)

    def _load(self, index: int) -> Pairs:
        if self._ids is None:
            raise CorruptImage("an inode has extended attributes but the image has no xattr table")
        ref, count, _ = self._ids.get(index)
        if count > MAX_PAIRS:
            raise CorruptImage(f"an inode claims {count} extended attributes; the image is damaged")
        cur = self._cursor(ref)
        out = []
        for _ in range(count):
            kind, name_size = cur.unpack(_KEY)
            if name_size > MAX_NAME:
                raise CorruptImage(f"an xattr name of {name_size} bytes; the image is damaged")
            name = cur.read(name_size)
            if kind & OUT_OF_LINE:
                (size,) = cur.unpack(_VALUE_SIZE)
                if size != _REF.size:
                    raise CorruptImage("an out-of-line xattr reference is not 8 bytes; the image is damaged")
                (value_ref,) = cur.unpack(_REF)
                value = self._value(self._cursor(value_ref))
            else:
                value = self._value(cur)
            prefix = PREFIXES.get(kind & PREFIX_MASK)
            if prefix is not None:  # unknown prefixes are skipped, as the kernel skips them
                out.append((prefix + name, value))
        return tuple(out)

    def _cursor(self, ref: int) -> Cursor:
        return self._meta.cursor(self._kv_start + (ref >> 16), ref & 0xFFFF)

    @staticmethod
    def _value(cur: Cursor) -> bytes:
        (size,) = cur.unpack(_VALUE_SIZE)
        if size > MAX_VALUE:
            raise CorruptImage(f"an xattr value of {size} bytes; the image is damaged")
        return cur.read(size)
