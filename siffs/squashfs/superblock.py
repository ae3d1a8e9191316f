"""The 96-byte SquashFS 4.0 superblock: where everything else is, checked before it is used.

Every later read trusts these offsets only as far as this module checked them: the tables
lie inside ``bytes_used``, which lies inside the byte source, and the block size is one the
format allows, since it bounds every data-block decompression.
"""

# No ``from __future__ import annotations`` here: typing.NamedTuple compiles a string annotation
# (ForwardRef) for each field, ~15 us each, 16 fields on every start; these annotations are objects.
import struct
from enum import IntFlag
from typing import NamedTuple

from siffs.squashfs.errors import CorruptImage, UnsupportedImage

SIZE = 96
MAGIC = b"hsqs"
#: Absent optional tables (xattr, fragment, export) are marked with all bits set.
NO_TABLE = 0xFFFFFFFFFFFFFFFF
_STRUCT = struct.Struct("<4sIIIIHHHHHHQQQQQQQQ")


class Flags(IntFlag):
    """Superblock flags. Only COMPRESSOR_OPTIONS changes how the image is read (as in the kernel);
    the others record how it was packed and are shown by ``siffs inspect``."""

    UNCOMPRESSED_INODES = 0x0001
    UNCOMPRESSED_DATA = 0x0002
    CHECK = 0x0004
    UNCOMPRESSED_FRAGMENTS = 0x0008
    NO_FRAGMENTS = 0x0010
    ALWAYS_FRAGMENTS = 0x0020
    DUPLICATES = 0x0040
    EXPORTABLE = 0x0080
    UNCOMPRESSED_XATTRS = 0x0100
    NO_XATTRS = 0x0200
    COMPRESSOR_OPTIONS = 0x0400
    UNCOMPRESSED_IDS = 0x0800


class Superblock(NamedTuple):
    """The parsed superblock; table positions are relative to the partition start.

    A named tuple, as the reader's other records: defining a dataclass compiles its methods
    (~0.6 ms), which every ``siffs run`` and ``siffs mount`` paid before its mount.
    """

    inode_count: int
    mkfs_time: int
    block_size: int
    fragment_count: int
    compressor: int
    block_log: int
    flags: Flags
    id_count: int
    root_inode_ref: int
    bytes_used: int
    id_table: int
    xattr_table: int
    inode_table: int
    directory_table: int
    fragment_table: int
    export_table: int

    @classmethod
    def parse(cls, raw: bytes, source_size: int) -> "Superblock":
        """Parse and check the first 96 bytes of a partition of ``source_size`` bytes."""
        if len(raw) < SIZE:
            raise UnsupportedImage(f"not a SquashFS image: only {len(raw)} bytes, a superblock needs {SIZE}")
        (
            magic,
            inodes,
            mkfs_time,
            block_size,
            fragments,
            compressor,
            block_log,
            flags,
            ids,
            major,
            minor,
            root,
            bytes_used,
            id_table,
            xattr_table,
            inode_table,
            dir_table,
            frag_table,
            export_table,
        ) = _STRUCT.unpack_from(raw)
        if magic != MAGIC:
            hint = " (a big-endian SquashFS 3.x or older, not supported)" if magic == MAGIC[::-1] else ""
            raise UnsupportedImage(f"not a SquashFS image: magic {magic!r}, expected {MAGIC!r}{hint}")
        if (major, minor) != (4, 0):
            raise UnsupportedImage(f"SquashFS version {major}.{minor} is not supported; only 4.0 is")

        def bad(what: str) -> CorruptImage:
            return CorruptImage(f"bad SquashFS superblock: {what}; the image is damaged")

        if not 12 <= block_log <= 20 or block_size != 1 << block_log:
            raise bad(
                f"block size {block_size} with log {block_log} (must be a power of two, 4 KiB to 1 MiB)"
            )
        if bytes_used > source_size:
            raise CorruptImage(
                f"the image is truncated: {bytes_used} bytes used, {source_size} in the partition"
            )
        if inodes == 0 or ids == 0:
            raise bad(f"{inodes} inodes and {ids} ids (each must be at least 1)")
        if not SIZE <= inode_table < dir_table < bytes_used:
            raise bad(
                f"inode table at {inode_table}, directory table at {dir_table}, {bytes_used} bytes used"
            )
        if not (root >> 16) < dir_table - inode_table:
            raise bad(f"root inode reference {root:#x} outside the inode table")
        if id_table >= bytes_used:
            raise bad(f"id table at {id_table} beyond the {bytes_used} bytes used")
        for name, where in (("xattr", xattr_table), ("fragment", frag_table), ("export", export_table)):
            if where != NO_TABLE and where >= bytes_used:
                raise bad(f"{name} table at {where} beyond the {bytes_used} bytes used")
        return cls(
            inode_count=inodes,
            mkfs_time=mkfs_time,
            block_size=block_size,
            fragment_count=fragments,
            compressor=compressor,
            block_log=block_log,
            flags=Flags(flags),
            id_count=ids,
            root_inode_ref=root,
            bytes_used=bytes_used,
            id_table=id_table,
            xattr_table=xattr_table,
            inode_table=inode_table,
            directory_table=dir_table,
            fragment_table=frag_table,
            export_table=export_table,
        )
