"""Directory listings: runs of entries behind headers, sorted by name, with an optional index.

A listing is a byte stream in the directory table: a header (entry count, inode-table
block, base inode number) followed by up to 256 entries that store their inode as an
offset in that block and a delta to the base number. Positions in this module are
*linear* offsets into the listing, as if its metadata blocks were laid end to end; they
double as readdir cookies (+3, see :func:`entries`) because they are stable and a
position can be found again through the directory index without scanning from the start.

Extended directories carry an index: for each metadata block the listing crosses, the
linear offset and block of the header there and the first name after it. Lookups and
readdir resumption jump to the right header with it, so a 100 000-entry directory is never
scanned whole for one name.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from siffs.squashfs import metadata
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.inode import DirLocation
from siffs.squashfs.metadata import MetadataReader

_HEADER = struct.Struct("<IIi")  # count - 1, inode-table block, base inode number
_ENTRY = struct.Struct("<HhHH")  # offset in that block, inode number delta, type, name size - 1
_INDEX = struct.Struct("<III")
#: Limits the kernel enforces too: entries per header run, bytes per name.
MAX_RUN = 256
MAX_NAME = 256
#: The stored directory size counts 3 bytes more than the listing (the kernel's "." and ".."
#: positions); cookies use the same shift, so they never collide with 0, 1 and 2.
SIZE_BIAS = 3


@dataclass(frozen=True, slots=True)
class Index:
    """A directory's index: linear header offsets, their metadata blocks, first names (all sorted)."""

    offsets: tuple[int, ...]
    blocks: tuple[int, ...]
    names: tuple[bytes, ...]

    def cost(self) -> int:
        """Bytes this index holds, for the cache budget."""
        return 100 + 80 * len(self.names) + sum(len(n) for n in self.names)


def read_index(meta: MetadataReader, loc: DirLocation) -> Index:
    """Read the ``loc.index_count`` index entries stored after the directory inode."""
    cur = meta.cursor(*loc.index_at)
    offsets, blocks, names = [], [], []
    for _ in range(loc.index_count):
        offset, block, name_size = cur.unpack(_INDEX)
        if name_size + 1 > MAX_NAME:
            raise CorruptImage(f"directory index name of {name_size + 1} bytes; the image is damaged")
        offsets.append(offset)
        blocks.append(block)
        names.append(cur.read(name_size + 1))
    return Index(tuple(offsets), tuple(blocks), tuple(names))


@dataclass(frozen=True, slots=True)
class Entry:
    """One directory entry: its name, inode reference and the cookie that resumes after it.

    The entry's own inode number and type are not kept: the inode itself is authoritative
    (the kernel, too, takes ``st_ino`` and the type from the inode).
    """

    name: bytes
    inode_ref: int
    cookie: int


class Listing:
    """Reads one directory's listing; ``index`` may be empty (basic directories have none)."""

    def __init__(self, meta: MetadataReader, directory_table: int, loc: DirLocation, index: Index) -> None:
        self._meta = meta
        self._table = directory_table
        self._loc = loc
        self._index = index
        self._length = max(0, loc.size - SIZE_BIAS)

    def _header_at(self, i: int) -> tuple[int, int, int]:
        """(block position, offset in block, linear offset) of the header named by index entry ``i``,
        or of the first header when ``i`` is -1."""
        if i < 0:
            return self._table + self._loc.block, self._loc.offset, 0
        linear = self._index.offsets[i]
        if linear >= self._length:
            raise CorruptImage(f"directory index points at byte {linear} of a {self._length}-byte listing")
        return self._table + self._index.blocks[i], (self._loc.offset + linear) % metadata.SIZE, linear

    def entries(self, cookie: int = 0) -> Iterator[Entry]:
        """Entries in listing order, starting after the entry whose cookie is ``cookie`` (0: from the top)."""
        want = max(0, cookie - SIZE_BIAS)
        return self._scan(bisect.bisect_right(self._index.offsets, want) - 1, want)

    def find(self, name: bytes) -> Entry | None:
        """The entry called ``name``, reading only from the last index entry whose name is <= it."""
        i = bisect.bisect_right(self._index.names, name) - 1
        for entry in self._scan(i, 0):
            if entry.name == name:
                return entry
            if entry.name > name:  # listings are sorted by strcmp, which is bytes order
                return None
        return None

    def _scan(self, start_index: int, want: int) -> Iterator[Entry]:
        """Walk header runs from index entry ``start_index``; yield entries at linear offset >= ``want``."""
        if self._length == 0:
            return
        pos, offset, linear = self._header_at(start_index)
        cur = self._meta.cursor(pos, offset)
        end = self._length
        while linear < end:
            count, inode_block, _base = cur.unpack(_HEADER)
            linear += _HEADER.size
            if count + 1 > MAX_RUN:
                raise CorruptImage(f"directory header announces {count + 1} entries (at most {MAX_RUN})")
            for _ in range(count + 1):
                if linear >= end:
                    raise CorruptImage("a directory listing runs past its stated size; the image is damaged")
                offset, _delta, _kind, name_size = cur.unpack(_ENTRY)
                if name_size + 1 > MAX_NAME:
                    raise CorruptImage(f"directory entry name of {name_size + 1} bytes; the image is damaged")
                entry_start = linear
                linear += _ENTRY.size + name_size + 1
                if entry_start < want:
                    cur.skip(name_size + 1)
                    continue
                name = cur.read(name_size + 1)
                yield Entry(name, (inode_block << 16) | offset, linear + SIZE_BIAS)
