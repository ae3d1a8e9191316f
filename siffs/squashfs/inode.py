"""Inodes: the 14 on-disk inode types decoded into one attribute record plus where the content is.

The records are named tuples, immutable like the image (decoded inodes may be cached and shared
between threads): a frozen dataclass sets each field through ``object.__setattr__``, and
building the three records of an inode that way cost more than decoding it (2.5 µs per record
against 0.3 µs for a tuple; a cold walk decodes every inode once).

Attributes follow the kernel driver field for field, because the kernel is the oracle:
the mode keeps only the permission bits of the stored mode and takes the type from the
inode type; directory sizes are the stored listing size (3 bytes more than the listing);
``st_blocks`` is derived from the size (minus sparse bytes for extended files) for regular
files and 0 for everything else, plus what the inode's xattrs take; device numbers are
decoded the way Linux packs them.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Sequence
from typing import NamedTuple

from siffs import native
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.metadata import MetadataReader
from siffs.squashfs.superblock import Superblock
from siffs.squashfs.xattr import XattrTable

#: Basic inode types; the extended variant of type ``t`` is ``t + 7``.
DIR, FILE, SYMLINK, BLKDEV, CHRDEV, FIFO, SOCKET = range(1, 8)
FORMAT = {
    DIR: stat.S_IFDIR,
    FILE: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    BLKDEV: stat.S_IFBLK,
    CHRDEV: stat.S_IFCHR,
    FIFO: stat.S_IFIFO,
    SOCKET: stat.S_IFSOCK,
}
NO_FRAGMENT = 0xFFFFFFFF
NO_XATTR = 0xFFFFFFFF
#: Longest symlink target accepted. Linux stores at most 4095 bytes; the margin covers other
#: packers, the cap keeps a lying size from making us read (and allocate) the whole table.
MAX_TARGET = 1 << 16

_HEADER = struct.Struct("<HHHHII")
_DIR = struct.Struct("<IIHHI")
_XDIR = struct.Struct("<IIIIHHI")
_FILE = struct.Struct("<IIII")
_XFILE = struct.Struct("<QQQIIII")
_LINK = struct.Struct("<II")
_DEV = struct.Struct("<II")
_IPC = struct.Struct("<I")
_XATTR = struct.Struct("<I")


class Stat(NamedTuple):
    """What ``lstat`` shows for an inode of the image (``blocks`` in 512-byte units, as the kernel)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime: int
    rdev: int
    blocks: int


class DirLocation(NamedTuple):
    """Where a directory's listing is: ``block`` relative to the directory table, ``offset`` in it.

    ``size`` is the stored size, 3 more than the listing; ``index_at`` is the metadata position
    (block, offset) of ``index_count`` directory-index entries right after the inode.
    """

    block: int
    offset: int
    size: int
    parent: int
    index_count: int
    index_at: tuple[int, int]


class FileLocation(NamedTuple):
    """Where a regular file's data is: ``block_count`` full-size-or-last blocks from ``blocks_start``
    (on-disk sizes listed at metadata position ``sizes_at``), then an optional fragment tail."""

    blocks_start: int
    block_count: int
    sizes_at: tuple[int, int]
    fragment: int | None
    fragment_offset: int


class Inode(NamedTuple):
    """A decoded inode: attributes, where it is (``ref``), xattr index (None if none) and what
    its type carries."""

    stat: Stat
    ref: int
    xattr: int | None
    extended: bool = False
    dir: DirLocation | None = None
    file: FileLocation | None = None
    target: bytes | None = None


def linux_rdev(raw: int) -> int:
    """Turn the stored Linux device number (the kernel's "new" encoding) into a ``st_rdev`` value."""
    major = (raw & 0xFFF00) >> 8
    minor = (raw & 0xFF) | ((raw >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def read_inode(
    meta: MetadataReader, sb: Superblock, ids: Sequence[int], xattrs: XattrTable, ref: int
) -> Inode:
    """Decode the inode at reference ``ref`` (inode-table block << 16 | offset); ``ids`` is the id table."""
    block = ref >> 16
    if block >= sb.directory_table - sb.inode_table:
        raise CorruptImage(f"inode reference {ref:#x} points outside the inode table; the image is damaged")
    cur = meta.cursor(sb.inode_table + block, ref & 0xFFFF)
    kind, perm, uid_index, gid_index, mtime, ino = cur.unpack(_HEADER)
    if not 1 <= ino <= sb.inode_count:
        raise CorruptImage(f"inode number {ino} outside 1..{sb.inode_count}; the image is damaged")
    if not 1 <= kind <= 14:
        raise CorruptImage(f"unknown inode type {kind} (inode {ino}); the image is damaged")
    basic = (kind - 1) % 7 + 1
    extended = kind > 7
    if uid_index >= len(ids) or gid_index >= len(ids):
        raise CorruptImage(f"inode {ino} owner ids {uid_index}/{gid_index} beyond the {len(ids)} ids")
    uid = ids[uid_index]
    gid = ids[gid_index]
    mode = (perm & 0o7777) | FORMAT[basic]
    xattr: int | None = None  # an index into the xattr id table
    size = rdev = blocks = 0
    dir_loc = file_loc = target = None

    if basic == DIR:
        if extended:
            nlink, size, start, parent, index_count, offset, xattr = cur.unpack(_XDIR)
        else:
            start, nlink, size, offset, parent = cur.unpack(_DIR)
            index_count = 0
        dir_loc = DirLocation(start, offset, size, parent, index_count, cur.position)
    elif basic == FILE:
        if extended:
            blocks_start, size, sparse, nlink, fragment, frag_offset, xattr = cur.unpack(_XFILE)
            blocks = max(0, size - sparse + 511) >> 9
        else:
            blocks_start, fragment, frag_offset, size = cur.unpack(_FILE)
            nlink = 1
            blocks = (size + 511) >> 9
        has_fragment = fragment != NO_FRAGMENT
        count = size // sb.block_size if has_fragment else -(-size // sb.block_size)
        file_loc = FileLocation(
            blocks_start, count, cur.position, fragment if has_fragment else None, frag_offset
        )
    elif basic == SYMLINK:
        nlink, size = cur.unpack(_LINK)
        if size > MAX_TARGET:
            raise CorruptImage(f"symlink inode {ino} claims a {size}-byte target; the image is damaged")
        target = cur.read(size)
        if extended:
            xattr = cur.unpack(_XATTR)[0]
    elif basic in (BLKDEV, CHRDEV):
        nlink, raw_rdev = cur.unpack(_DEV)
        rdev = linux_rdev(raw_rdev)
        if extended:
            xattr = cur.unpack(_XATTR)[0]
    else:
        (nlink,) = cur.unpack(_IPC)
        if extended:
            xattr = cur.unpack(_XATTR)[0]

    if xattr == NO_XATTR or not xattrs.present:
        xattr = None  # none, or (as in the kernel) an index into a table the image does not have
    if xattr is not None:
        blocks += ((xattrs.stored_size(xattr) - 1) >> 9) + 1
    st = Stat(
        ino=ino, mode=mode, nlink=nlink, uid=uid, gid=gid, size=size, mtime=mtime, rdev=rdev, blocks=blocks
    )
    return Inode(st, ref, xattr, extended, dir_loc, file_loc, target)


#: (decompressed metadata block, offset of the inode in it, the block's position, reference) ->
#: the inode, or None to leave it to :func:`read_inode` (see _inode.c).
NativeDecode = Callable[[bytes, int, int, int], Inode | None]


class InodeDecoder:
    """Decodes one image's inodes by reference: in C when the inode lies whole in its metadata
    block and is well-formed (siffs/squashfs/_inode.c), else with :func:`read_inode`, which follows
    a record into the next block and raises the precise error for a damaged one."""

    def __init__(self, meta: MetadataReader, sb: Superblock, ids: Sequence[int], xattrs: XattrTable) -> None:
        self._meta = meta
        self._sb = sb
        self._ids = ids
        self._xattrs = xattrs
        self.native: NativeDecode | None = None
        #: The C decoder fetching the block itself (None when not built); None from it: use __call__.
        self.by_ref: Callable[[int], Inode | None] | None = None
        #: The C decoder itself (for the reader's C methods, which also take its C values), or None.
        self.decoder: object | None = None
        module = native.load("siffs.squashfs._inode", abi=1)
        if module is not None:
            stored_size = xattrs.stored_size if xattrs.present else None
            types = (Stat, DirLocation, FileLocation, Inode)
            cache = (meta.cache.table, meta.loader, sb.inode_table, sb.directory_table - sb.inode_table)
            decoder = module.Decoder(
                types, sb.inode_count, sb.block_size, tuple(ids), stored_size, cache=cache
            )
            self.native = decoder.decode
            self.by_ref = decoder.decode_ref  # decode, with the block fetched from the cache in C
            self.decoder = decoder

    def __call__(self, ref: int) -> Inode:
        """The inode at reference ``ref`` (inode-table block << 16 | offset)."""
        by_ref = self.by_ref
        if by_ref is not None:
            inode = by_ref(ref)
            if inode is not None:
                return inode
        return read_inode(self._meta, self._sb, self._ids, self._xattrs, ref)
