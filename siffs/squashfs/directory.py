"""Directory listings: runs of entries behind headers, sorted by name, with an optional index.

A listing is a byte stream in the directory table: a header (entry count, inode-table
block, base inode number) followed by up to 256 entries that store their inode as an
offset in that block and a delta to the base number. Positions in this module are
*linear* offsets into the listing, as if its metadata blocks were laid end to end; they
double as readdir cookies (+3, see :func:`entries`) because they are stable and a
position can be found again through the directory index without scanning from the start.

Extended directories carry an index: for each metadata block the listing crosses, the
linear offset and block of the header there and the first name after it. The index cuts
the listing into segments of about one metadata block; a lookup or a resumed readdir
parses (and caches) only the segment it needs, so a 100 000-entry directory is never
scanned whole for one name.
"""

from __future__ import annotations

import bisect
import itertools
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

from siffs import native
from siffs.squashfs import metadata
from siffs.squashfs.cache import LruCache
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.inode import DirLocation
from siffs.squashfs.metadata import MetadataReader

#: (data, linear offset, listing length) -> (names, refs, starts, cookies), or None to leave the
#: segment to the Python parser (see _directory.c).
NativeParser = Callable[
    [bytes, int, int], tuple[tuple[bytes, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None
]

_HEADER = struct.Struct("<IIi")  # count - 1, inode-table block, base inode number
_ENTRY = struct.Struct("<HhHH")  # offset in that block, inode number delta, type, name size - 1
_INDEX = struct.Struct("<III")
#: Limits the kernel enforces too: entries per header run, bytes per name.
MAX_RUN = 256
MAX_NAME = 256
#: The stored directory size counts 3 bytes more than the listing (the kernel's "." and ".."
#: positions); cookies use the same shift, so they never collide with 0, 1 and 2.
SIZE_BIAS = 3
#: Segments up to this size are copied out whole and parsed by the native parser; a packer's
#: segments are about one metadata block (a basic directory's whole listing is at most 64 KiB).
#: Longer ones, which only a damaged or unusual image has, stay with the streaming Python parser.
NATIVE_SEGMENT_MAX = 1 << 16


#: (cache table, segment key without the number, index first names, metadata block loader, cache
#: store, name, segment loader) -> the entry's inode reference or None: Listing.find in C, which
#: also parses and stores a listing without an index itself (see _directory.c). Without a segment
#: loader, a segment it would not parse gives NotImplemented (the reader's C lookup then asks Python).
NativeFind = Callable[
    [
        object,
        tuple[object, ...],
        tuple[bytes, ...],
        object,  # MetadataReader.loader, or None
        Callable[[object, "Segment", int], "Segment"] | None,
        bytes,
        Callable[[int], "Segment"] | None,
    ],
    int | None,  # (or NotImplemented, as said: never for a caller that passes a loader)
]


def _native() -> tuple[NativeParser, NativeFind] | tuple[None, None]:
    """siffs.squashfs._directory's parse_segment and find, unless not built or SIFFS_NO_NATIVE=1."""
    module = native.load("siffs.squashfs._directory", abi=1)
    if module is None:
        return None, None
    module.set_segment_type(Segment)
    return module.parse_segment, module.find


class Index(NamedTuple):
    """A directory's index: linear header offsets, their metadata blocks, first names (all sorted)."""

    offsets: tuple[int, ...]
    blocks: tuple[int, ...]
    names: tuple[bytes, ...]

    def cost(self) -> int:
        """Bytes this index holds, for the cache budget."""
        return 100 + 80 * len(self.names) + sum(map(len, self.names))


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
    # Offsets must rise strictly inside the listing: then the segments partition it, and
    # listing a directory parses each of its bytes once, whatever a hostile index claims.
    length = loc.size - SIZE_BIAS
    if any(b <= a for a, b in itertools.pairwise(offsets)) or (offsets and offsets[-1] >= length):
        raise CorruptImage(
            "a directory index is out of order or points past its listing; the image is damaged"
        )
    return Index(tuple(offsets), tuple(blocks), tuple(names))


class Segment(NamedTuple):
    """The entries from one index point to the next, parsed once and cached.

    Parallel tuples: names, inode references, linear start offsets and resume cookies.
    A segment spans about one metadata block (the packer indexes each block crossing),
    so parsing one is cheap and a lookup or resumed readdir never parses more than that.
    """

    names: tuple[bytes, ...]
    refs: tuple[int, ...]
    starts: tuple[int, ...]
    cookies: tuple[int, ...]

    def cost(self) -> int:
        """Bytes this segment holds, for the cache budget."""
        return 100 + 150 * len(self.names) + sum(map(len, self.names))


class Listing:
    """One directory's listing, read segment by segment through ``cache`` under ``key``.

    ``index`` may be empty (basic directories have none): the whole listing is then one
    segment, which the format bounds to 64 KiB for basic directories.
    """

    __slots__ = ("_cache", "_index", "_key", "_length", "_loc", "_meta", "_table", "find_args", "spans")

    def __init__(
        self, meta: MetadataReader, directory_table: int, loc: DirLocation, index: Index, cache: LruCache
    ) -> None:
        self._meta = meta
        self._table = directory_table
        self._loc = loc
        self._index = index
        self._cache = cache
        self._length = max(0, loc.size - SIZE_BIAS)
        # Segment i is cached under self._key + (i,). Empty directories share their location with
        # the next listing: the length tells them apart.
        self._key = ("s", directory_table + loc.block, loc.offset, self._length)
        #: What ``native_find`` takes before the name (read by the reader's C lookup, _tree.c).
        self.find_args = (cache.table, self._key, index.names, meta.loader, cache.put)
        #: Where each index interval starts (directory table, index offsets, index blocks), for
        #: the reader's C lookup, which keeps an interval's bytes where ``find`` keeps a Segment.
        self.spans = (directory_table, index.offsets, index.blocks)

    def cost(self) -> int:
        """Bytes a kept listing holds outside the cache's budget: itself and its index."""
        return 400 + self._index.cost()

    def entries(self, cookie: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode reference, cookie) in listing order, after the entry whose cookie is ``cookie``.

        Cookie 0 starts at the first entry.
        """
        want = max(0, cookie - SIZE_BIAS)
        first = bisect.bisect_right(self._index.offsets, want) - 1
        for i in range(first, len(self._index.offsets)):
            seg = self._segment(i)
            j = bisect.bisect_left(seg.starts, want) if i == first else 0
            yield from zip(seg.names[j:], seg.refs[j:], seg.cookies[j:], strict=True)

    def find(self, name: bytes) -> int | None:
        """Inode reference of entry ``name``, parsing only the segment whose range holds it."""
        if native_find is not None:
            return native_find(*self.find_args, name, self._segment)
        seg = self._segment(bisect.bisect_right(self._index.names, name) - 1)
        try:
            return seg.refs[seg.names.index(name)]
        except ValueError:
            return None

    def _segment(self, i: int) -> Segment:
        """Segment ``i``: from index entry ``i`` (-1: the listing start) to the next one."""
        return self._cache.get_or_load((*self._key, i), lambda: self._parse(i), Segment.cost)

    def _parse(self, i: int) -> Segment:
        if i < 0:
            pos, offset, linear = self._table + self._loc.block, self._loc.offset, 0
        else:
            linear = self._index.offsets[i]
            pos, offset = self._table + self._index.blocks[i], (self._loc.offset + linear) % metadata.SIZE
        end = self._index.offsets[i + 1] if i + 1 < len(self._index.offsets) else self._length
        if native_parse is not None and 0 < end - linear <= NATIVE_SEGMENT_MAX:
            parsed = native_parse(self._meta.cursor(pos, offset).read(end - linear), linear, self._length)
            if parsed is not None:
                return Segment(*parsed)
        names: list[bytes] = []
        refs: list[int] = []
        starts: list[int] = []
        cookies: list[int] = []
        if linear < end:
            cur = self._meta.cursor(pos, offset)
        while linear < end:
            count, inode_block, _base = cur.unpack(_HEADER)
            linear += _HEADER.size
            if count + 1 > MAX_RUN:
                raise CorruptImage(f"directory header announces {count + 1} entries (at most {MAX_RUN})")
            for _ in range(count + 1):
                if linear >= self._length:
                    raise CorruptImage("a directory listing runs past its stated size; the image is damaged")
                entry_offset, _delta, _kind, name_size = cur.unpack(_ENTRY)
                if name_size + 1 > MAX_NAME:
                    raise CorruptImage(f"directory entry name of {name_size + 1} bytes; the image is damaged")
                starts.append(linear)
                names.append(cur.read(name_size + 1))
                refs.append((inode_block << 16) | entry_offset)
                linear += _ENTRY.size + name_size + 1
                cookies.append(linear + SIZE_BIAS)
        return Segment(tuple(names), tuple(refs), tuple(starts), tuple(cookies))


#: The native segment parser and name search, or None: the Python code here then does all the work.
native_parse, native_find = _native()
