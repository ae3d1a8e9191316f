"""Lookup tables: arrays of fixed-size records kept in metadata blocks (ids, fragments, exports, xattr ids).

The superblock points at an uncompressed list of metadata-block positions; record ``i``
is in block ``i * size // 8192`` of that list, at offset ``i * size % 8192``. One class
serves all four tables so that the bounds checks exist once.
"""

from __future__ import annotations

import struct
from typing import Any

from siffs.squashfs import metadata
from siffs.squashfs.errors import CorruptImage


class LookupTable:
    """``count`` records of ``record`` format; the location list is read when the table is made."""

    def __init__(
        self, meta: metadata.MetadataReader, list_pos: int, count: int, record: struct.Struct, name: str
    ) -> None:
        self.count = count
        self._meta = meta
        self._record = record
        self._name = name
        nblocks = -(-count * record.size // metadata.SIZE)
        if list_pos + 8 * nblocks > meta.limit:
            raise CorruptImage(
                f"the {name} table ({count} entries) runs past the end of the image; it is damaged"
            )
        #: Where each metadata block of the table starts (native readers index them too).
        self.blocks: tuple[int, ...] = struct.unpack(f"<{nblocks}Q", meta.source.pread(list_pos, 8 * nblocks))

    def get(self, index: int) -> tuple[Any, ...]:
        """Record ``index``, or ``CorruptImage`` when the image refers to one that does not exist."""
        if not 0 <= index < self.count:
            raise CorruptImage(
                f"the image refers to {self._name} entry {index}, the table has {self.count}; it is damaged"
            )
        where = index * self._record.size
        data, _ = self._meta.block(self.blocks[where // metadata.SIZE])
        offset = where % metadata.SIZE
        if offset + self._record.size > len(data):
            raise CorruptImage(f"{self._name} table block is short; the image is damaged")
        return self._record.unpack_from(data, offset)
