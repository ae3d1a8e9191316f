"""The one interface the filesystem layer uses: an inode-based, thread-safe SquashFS reader.

Shaped like pyfuse3's operations (lookup by parent inode and name, getattr, readdir from a
cookie, read, readlink, xattrs, statfs), so the FUSE layer stays a thin translation.
Inode numbers are the image's own (as the kernel shows them): hard links share one.

Opening reads the superblock, the small location lists of the lookup tables and the root
inode, and nothing else; no tree scan. SquashFS has no inode-number index unless the image
was made exportable, so without an export table the reader learns each inode's on-disk
reference when a lookup or readdir returns it; FUSE only ever asks about inodes it was
given that way. The image is immutable, so everything decoded may be cached; the caches
are bounded, and no single call does more work than the structures it reads can justify.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import Any, NamedTuple, ParamSpec, TypeVar

from siffs import native
from siffs.squashfs import directory, metadata
from siffs.squashfs.cache import LruCache
from siffs.squashfs.codecs import Codec, make_codec
from siffs.squashfs.data import FRAGMENT_RECORD, DataReader
from siffs.squashfs.errors import (
    CorruptImage,
    IsADirectory,
    NoSuchAttribute,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
    NotFound,
    UnsupportedImage,
    XattrsUnsupported,
)
from siffs.squashfs.inode import Inode, InodeDecoder, Stat
from siffs.squashfs.source import ByteSource, FileSource
from siffs.squashfs.superblock import NO_TABLE, SIZE, Flags, Superblock
from siffs.squashfs.table import LookupTable
from siffs.squashfs.xattr import XattrTable

P = ParamSpec("P")
R = TypeVar("R")

#: Cache cost charged per decoded inode (the records and their dict slot).
_INODE_COST = 400
_ID_RECORD = struct.Struct("<I")
_EXPORT_RECORD = struct.Struct("<Q")
#: An inode reference has 48 bits (block start << 16 | offset in the block). The bits above it,
#: in the table of known inodes, say what an xattr request needs (none, unsupported, or the
#: attribute set's index + _XATTR_BASE): xattr requests, which the kernel never caches, then
#: need no inode decoded, even after the inode left the cache.
_REF_BITS = 48
_REF_MASK = (1 << _REF_BITS) - 1
_NO_XATTRS, _XATTRS_UNSUPPORTED, _XATTR_BASE = 1, 2, 3
#: Bytes of directory listings kept ready (a listing costs a few hundred bytes and its index; its
#: segments are in the cache). Enough for a few thousand directories: a walk comes back to a
#: directory after a whole subtree, and a listing made again (for readdir, and for lookups in a
#: directory with an index: those without one need no listing in C, see _tree.c) costs a Python
#: call path of ~5 us, and a lookup in a directory with an index that is not kept goes through
#: that Python path every time. A listing is counted with its index (100 bytes and the name per
#: index entry: ~30 KiB for a directory of 10,000 entries); one costing more than an eighth of
#: the budget is not kept.
_LISTINGS_BUDGET = 2 << 20
#: Bytes of listings without an index that the C lookup keeps (_tree.c: their bytes, not
#: Segments, checked once and searched in place; emptied when full). A listing is a few hundred
#: bytes (about 20 per entry), so this holds the directories of a large tree's hot paths.
_C_LISTINGS_BUDGET = 2 << 20


class FsStats(NamedTuple):
    """What ``statfs`` shows, as the kernel's squashfs driver reports it (nothing is free)."""

    block_size: int
    blocks: int
    bytes_used: int
    inodes: int
    name_max: int = directory.MAX_NAME


class SquashFS:
    """A SquashFS 4.0 image read through ``source``; every method is safe to call from several threads.

    ``cache_bytes`` bounds the decompressed data kept: half for metadata (blocks, directory
    indexes, block lists, xattrs; decoded inodes too when they are decoded in Python), the rest
    for data blocks.
    """

    def __init__(self, source: ByteSource, *, cache_bytes: int = 64 << 20, **codec_args: Any) -> None:
        self._owned: FileSource | None = None
        if source.size < SIZE:
            raise UnsupportedImage(f"not a SquashFS image: {source.size} bytes, less than a superblock")
        self.superblock = sb = Superblock.parse(source.pread(0, SIZE), source.size)
        self.codec: Codec = make_codec(sb.compressor, self._options(source, sb), sb.block_size, **codec_args)
        self._meta_cache = LruCache(cache_bytes // 2)
        self._data_cache = LruCache(cache_bytes - cache_bytes // 2)
        self._meta = metadata.MetadataReader(source, self.codec, self._meta_cache, sb.bytes_used)
        meta = self._meta
        # The id table is tiny (few images have more than a handful of owners) and every inode
        # needs two entries: read it whole, once.
        ids = LookupTable(meta, sb.id_table, sb.id_count, _ID_RECORD, "id")
        self._ids = tuple(ids.get(i)[0] for i in range(sb.id_count))
        fragments = None
        if sb.fragment_count and sb.fragment_table != NO_TABLE:
            fragments = LookupTable(meta, sb.fragment_table, sb.fragment_count, FRAGMENT_RECORD, "fragment")
        self._export: LookupTable | None = None
        if sb.export_table != NO_TABLE:
            self._export = LookupTable(meta, sb.export_table, sb.inode_count, _EXPORT_RECORD, "export")
        self._xattrs = XattrTable(meta, sb, self._meta_cache)
        self._data = DataReader(meta, sb, fragments, self._meta_cache, self._data_cache)
        self._decode = InodeDecoder(meta, sb, self._ids, self._xattrs)
        # inode number -> on-disk reference and xattr code (see _REF_BITS), learned from lookups
        # and listings. Plain dict reads and writes are atomic under the GIL, and a race only
        # stores the same value.
        self._refs: dict[int, int] = {}
        self._listings: dict[int, directory.Listing] = {}
        self._listings_cost = 0
        #: The C methods' Tree (siffs/squashfs/_tree.c), whose capsule the FUSE layer's C handlers
        #: use for answers without Python objects (_tree.h); None where they are not built.
        self.native_tree: object | None = None
        root = self._inode_at(sb.root_inode_ref)
        if root.dir is None:
            raise CorruptImage("the root inode is not a directory; the image is damaged")
        self.root_ino = root.stat.ino
        self._answer_in_c()

    def _answer_in_c(self) -> None:
        """Serve lookup, getattr, readlink, listxattr, getxattr and read from C (_tree.c) where built.

        The methods below stay the fallback for everything but the common case, and the oracle
        in the tests. The C methods hold bound methods of this reader (a reference cycle, freed
        by the garbage collector).
        """
        module = native.load("siffs.squashfs._tree", abi=3)
        decoder, read = self._decode.decoder, self._data.native
        find = directory.native_find
        if module is None or decoder is None or read is None or find is None:
            return
        cls = type(self)
        fallbacks = tuple(
            getattr(cls, name).__get__(self)
            for name in ("lookup", "getattr", "readlink", "listxattr", "read", "_inode_at", "getxattr")
        )
        fields = Inode._fields
        indices = (fields.index(f) for f in ("stat", "xattr", "extended", "dir", "target"))
        tree = module.Tree(
            refs=self._refs,
            listings=self._listings,
            find=find,
            decoder=decoder,
            read=read,
            fallbacks=fallbacks,
            layout=(*indices, self.superblock.xattr_table == NO_TABLE),
            basic=(
                self._meta_cache.table,
                self.superblock.directory_table,
                self._meta.loader,
                _C_LISTINGS_BUDGET,
            ),
        )
        self.native_tree = tree
        self.lookup = tree.lookup  # type: ignore[method-assign]
        self.getattr = tree.getattr  # type: ignore[method-assign]
        self.readlink = tree.readlink  # type: ignore[method-assign]
        self.listxattr = tree.listxattr  # type: ignore[method-assign]
        self.read = tree.read  # type: ignore[method-assign]
        self.getxattr = tree.getxattr  # type: ignore[method-assign]

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], offset: int = 0, length: int | None = None, **kw: Any
    ) -> SquashFS:
        """Open the image at ``offset`` in file ``path``; :meth:`close` closes the file."""
        source = FileSource.open(path, offset, length)
        try:
            fs = cls(source, **kw)
        except BaseException:
            source.close()
            raise
        fs._owned = source
        return fs

    def close(self) -> None:
        """Close the file if :meth:`open` opened it (a caller's source stays the caller's)."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> SquashFS:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _options(source: ByteSource, sb: Superblock) -> bytes | None:
        """The compressor options block right after the superblock: one uncompressed metadata block."""
        if not sb.flags & Flags.COMPRESSOR_OPTIONS:
            return None
        (header,) = struct.unpack("<H", source.pread(SIZE, 2))
        size = header & 0x7FFF
        if not header & 0x8000 or not 0 < size <= 64 or SIZE + 2 + size > sb.inode_table:
            raise CorruptImage(f"bad compressor options block (header {header:#06x}); the image is damaged")
        return source.pread(SIZE + 2, size)

    # --- inodes ---------------------------------------------------------------------------

    def _inode_at(self, ref: int) -> Inode:
        if ref >> _REF_BITS:
            raise CorruptImage(f"inode reference {ref:#x} has more than 48 bits; the image is damaged")
        decode = self._decode
        if decode.native is not None:
            # Decoding again from the cached metadata block (~2 us with the C decoder) costs less
            # than keeping decoded inodes in the LRU (a miss there costs ~3 us on top of the
            # decoding), and the memory stays with the blocks: the kernel caches attributes anyway.
            inode = decode(ref)
        else:
            inode = self._meta_cache.get_or_load(("i", ref), lambda: decode(ref), _inode_cost)
        if inode.stat.ino not in self._refs:
            self._refs[inode.stat.ino] = ref | self._xattr_code(inode) << _REF_BITS
        return inode

    def _xattr_code(self, inode: Inode) -> int:
        """What listxattr answers for ``inode``, in the form kept beside its reference."""
        if self.superblock.xattr_table == NO_TABLE and (
            inode.extended or inode.dir is not None or inode.target is not None
        ):
            return _XATTRS_UNSUPPORTED
        return _NO_XATTRS if inode.xattr is None else _XATTR_BASE + inode.xattr

    def _ref(self, ino: int) -> int:
        known = self._refs.get(ino)
        if known is not None:
            return known & _REF_MASK
        if self._export is None or not 1 <= ino <= self.superblock.inode_count:
            raise NotFound(f"inode {ino} is not known yet; reach it by lookup or readdir first")
        ref = int(self._export.get(ino - 1)[0])
        return ref

    def _inode(self, ino: int) -> Inode:
        inode = self._inode_at(self._ref(ino))
        if inode.stat.ino != ino:
            raise CorruptImage(
                f"the export table sends inode {ino} to inode {inode.stat.ino}; the image is damaged"
            )
        return inode

    def _directory(self, ino: int) -> directory.Listing:
        """Directory ``ino``'s listing; the last few are kept, as lookups come in runs per directory."""
        listing = self._listings.get(ino)
        if listing is not None:
            return listing
        inode = self._inode(ino)
        loc = inode.dir
        if loc is None:
            raise NotADirectory(f"inode {ino} is not a directory")
        index = directory.Index((), (), ())
        if loc.index_count:
            index = self._meta_cache.get_or_load(
                ("n", inode.ref), lambda: directory.read_index(self._meta, loc), directory.Index.cost
            )
        listing = directory.Listing(self._meta, self.superblock.directory_table, loc, index, self._meta_cache)
        cost = listing.cost()
        if cost <= _LISTINGS_BUDGET // 8:
            if self._listings_cost + cost > _LISTINGS_BUDGET:
                # Cheaper than an LRU's bookkeeping on every hit (the C lookup reads a plain dict),
                # for objects this cheap to remake.
                self._listings.clear()
                self._listings_cost = 0
            self._listings[ino] = listing
            self._listings_cost += cost
        return listing

    # --- the interface --------------------------------------------------------------------

    def getattr(self, ino: int) -> Stat:
        """Attributes of inode ``ino``."""
        return self._inode(ino).stat

    def inode(self, ino: int) -> Inode:
        """The decoded inode with its on-disk locations, for inspection tools, tests and the fuzzer."""
        return self._inode(ino)

    def lookup(self, parent: int, name: bytes) -> Stat | None:
        """Attributes of entry ``name`` in directory ``parent``, or None if there is none.

        Uses the directory index, so the cost is one index interval (about one metadata block
        of entries), whatever the size of the directory.
        """
        listing = self._directory(parent)
        ref = listing.find(name)
        return None if ref is None else self._inode_at(ref).stat

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Stat, int]]:
        """(name, attributes, cookie) for each entry after cookie ``start`` (0: from the first entry).

        No "." or "..": the FUSE layer adds them. Cookies are > 2, so 1 and 2 stay free for
        those. Resuming from a cookie jumps through the directory index, not from the top.
        """
        listing = self._directory(ino)
        for name, ref, cookie in listing.entries(start):
            yield name, self._inode_at(ref).stat, cookie

    def read(self, ino: int, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of regular file ``ino`` from ``offset`` (fewer at the end of the file)."""
        fast = self._data.native
        if fast is not None:
            known = self._refs.get(ino)
            if known is not None:  # a reference learned from its decoded inode: ``ino`` is the file there
                got = fast(known & _REF_MASK, offset, size)
                if got is not None:
                    return got
        inode = self._inode(ino)
        if inode.file is None:
            if inode.dir is not None:
                raise IsADirectory(f"inode {ino} is a directory")
            raise NotARegularFile(f"inode {ino} is not a regular file")
        return self._data.read(inode.ref, inode.file, inode.stat.size, offset, size)

    def stored_extents(self, ino: int) -> list[tuple[int, int, int]]:
        """(file offset, image offset, length) of the parts of regular file ``ino`` stored uncompressed."""
        inode = self._inode(ino)
        if inode.file is None:
            raise NotARegularFile(f"inode {ino} is not a regular file")
        return self._data.stored_extents(inode.ref, inode.file, inode.stat.size)

    def readlink(self, ino: int) -> bytes:
        """Target of symbolic link ``ino``, as stored (bytes, not necessarily UTF-8)."""
        target = self._inode(ino).target
        if target is None:
            raise NotASymlink(f"inode {ino} is not a symbolic link")
        return target

    def listxattr(self, ino: int) -> list[bytes]:
        """Full names (with their ``user.``/``trusted.``/``security.`` prefix) of the inode's xattrs.

        On an image without an xattr table the kernel answers EOPNOTSUPP for the inodes it gives
        xattr operations (directories, symlinks, every extended inode) and an empty list for the
        others (basic files, devices, FIFOs, sockets): so does this, with ``XattrsUnsupported``.
        """
        code = self._xattr_code_of(ino)
        if code == _XATTRS_UNSUPPORTED:
            raise XattrsUnsupported(f"the image has no extended attributes (inode {ino})")
        return [name for name, _ in self._xattrs.pairs(None if code == _NO_XATTRS else code - _XATTR_BASE)]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """Value of extended attribute ``name``; ``NoSuchAttribute`` if the inode has none of that name."""
        code = self._xattr_code_of(ino)
        if code >= _XATTR_BASE:
            for key, value in self._xattrs.pairs(code - _XATTR_BASE):
                if key == name:
                    return value
        raise NoSuchAttribute(f"inode {ino} has no extended attribute {name!r}")

    def _xattr_code_of(self, ino: int) -> int:
        """The xattr code of inode ``ino``, decoding the inode only if it was never seen."""
        known = self._refs.get(ino)
        if known is None:
            self._inode(ino)  # learns it (or raises NotFound / CorruptImage)
            known = self._refs[ino]
        return known >> _REF_BITS

    def statfs(self) -> FsStats:
        """Filesystem figures, as ``statfs`` on the kernel mount shows them."""
        sb = self.superblock
        return FsStats(
            block_size=sb.block_size,
            blocks=((sb.bytes_used - 1) >> sb.block_log) + 1,
            bytes_used=sb.bytes_used,
            inodes=sb.inode_count,
        )


def _inode_cost(inode: Inode) -> int:
    return _INODE_COST + len(inode.target or b"")
