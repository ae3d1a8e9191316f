"""Per-block digests of verified objects, and a reader that serves only verified bytes.

A signature vouches for an object's bytes at the moment they were hashed. A mount keeps
reading the file for hours, and the file may change under it. So while an object is hashed
for verification, the same pass records the SHA-256 of every fixed-size block (aligned to the
object start); later reads go through ``VerifiedObjectReader``, which re-hashes each block it
reads from the file and refuses any block that differs from what was verified.

Speed: the object digest and the block digests are computed from one read of each chunk.
Hashing twice would halve the throughput, so the block digests of a chunk are computed on a
worker thread while the main thread feeds the same buffer to the object digest and then reads
the next chunk into a second buffer (``hashlib`` releases the GIL on large inputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from siffs.integrity.digest import new_hasher
from siffs.integrity.errors import ReadOutsideObjectError, TamperedBlockError, VerificationError

if TYPE_CHECKING:  # the hashing thread's pool is imported only to hash (with logging, ~5 ms)
    from concurrent.futures import Future

BLOCK_SIZE = 64 * 1024
READ_SIZE = 8 * 1024 * 1024
DIGEST_SIZE = 32
#: Verified blocks a reader keeps (512 KiB): see VerifiedObjectReader.
KEPT_BLOCKS = 8

#: Called with (bytes hashed so far, bytes to hash in total).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BlockTable:
    """SHA-256 of each ``block_size`` block of an object of ``object_size`` bytes (last one short)."""

    object_size: int
    block_size: int
    digests: bytes

    def __post_init__(self) -> None:
        blocks = -(-self.object_size // self.block_size)
        if self.block_size <= 0 or len(self.digests) != blocks * DIGEST_SIZE:
            raise ValueError("block table does not match the object size")

    def digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]


class Extent(NamedTuple):
    """Where an object's bytes are in the file."""

    offset: int
    size: int


def hash_extents(
    fd: int,
    extents: Sequence[Extent],
    algorithm: str,
    *,
    record_blocks: bool = True,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> tuple[bytes, list[BlockTable]]:
    """Digest of the concatenated extents and, if asked, each extent's block table, in one read.

    ``done``/``total`` place this call within a larger job for ``progress``.
    """
    h = new_hasher(algorithm)
    largest = max((e.size for e in extents), default=0)
    # Small objects (signatures' neighbours, metadata) need neither big buffers nor a thread.
    multi_chunk = largest > READ_SIZE
    buffers = (bytearray(min(largest, READ_SIZE)), bytearray(READ_SIZE if multi_chunk else 0))
    tables: list[BlockTable] = []
    with contextlib.ExitStack() as stack:
        pool = None
        if record_blocks and multi_chunk:
            # Imported here: a verification answered from the block-table cache never hashes.
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1, thread_name_prefix="siffs-blocks"))
        for extent in extents:
            starts = range(0, extent.size, READ_SIZE)
            digests: list[bytes] = []
            current = _read_chunk(fd, buffers[0], extent, 0)
            for i, start in enumerate(starts):
                blocks: Future[bytes] | None = pool.submit(_block_digests, current) if pool else None
                h.update(current)
                following = _read_chunk(fd, buffers[(i + 1) % 2], extent, start + READ_SIZE)
                if blocks is not None:
                    digests.append(blocks.result())
                elif record_blocks:
                    digests.append(_block_digests(current))
                done += len(current)
                if progress is not None:
                    progress(done, total)
                current = following
            if record_blocks:
                tables.append(BlockTable(extent.size, BLOCK_SIZE, b"".join(digests)))
    return h.digest(), tables


def _read_chunk(fd: int, buffer: bytearray, extent: Extent, start: int) -> memoryview:
    """Bytes ``start`` to ``start + READ_SIZE`` of the extent (fewer at its end; none past it)."""
    view = memoryview(buffer)[: max(0, min(READ_SIZE, extent.size - start))]
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], extent.offset + start + got)
        if n == 0:
            raise VerificationError(
                f"the image file ends at byte {extent.offset + start + got}: it was truncated"
            )
        got += n
    return view


def _block_digests(view: memoryview) -> bytes:
    sha256 = hashlib.sha256
    return b"".join(sha256(view[i : i + BLOCK_SIZE]).digest() for i in range(0, len(view), BLOCK_SIZE))


class VerifiedObjectReader:
    """Reads an object's bytes, checking every block against the table recorded at verification.

    The shape (``pread(offset, size) -> bytes`` relative to the object, and ``size``) is what
    the SquashFS layer takes as its byte source. Thread-safe: ``os.pread`` has no file position,
    and the kept blocks change under a lock.

    The last ``KEPT_BLOCKS`` blocks of small reads are kept, as verified: metadata is read in
    pieces of a few KiB (a block's 2-byte header, then the block, then its neighbour), each inside
    the same 64 KiB or across two, and hashing whole blocks for each piece cost three times the rest
    of a cold lookup. A read of at most two blocks takes each from the kept ones or reads, checks
    and keeps it (a metadata block across a boundary then costs no hashing of its neighbours
    again); a larger read (data blocks) is checked whole and not kept, so it does not push the
    metadata out. Bytes kept were checked when read, so serving them again serves verified bytes.
    """

    def __init__(self, fd: int, object_offset: int, object_size: int, table: BlockTable) -> None:
        if table.object_size != object_size:
            raise ValueError("block table was recorded for an object of another size")
        self.fd = fd
        self.object_offset = object_offset
        self.size = object_size
        self.table = table
        self._kept: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` verified bytes at ``offset``, as the ``ByteSource`` protocol promises."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ReadOutsideObjectError(
                f"the image points at bytes {offset}..{offset + size} outside its {self.size}-byte object; "
                "it is damaged"
            )
        end = offset + size
        if size == 0:
            return b""
        bs = self.table.block_size
        first, last = offset // bs, (end - 1) // bs
        start = first * bs
        if first == last:
            return self._block(first)[offset - start : end - start]
        if last == first + 1:
            return self._block(first)[offset - start :] + self._block(last)[: end - start - bs]
        data = self._checked(first, last)
        if start == offset and len(data) == size:
            return data
        return data[offset - start : end - start]

    def _block(self, index: int) -> bytes:
        """Block ``index``, kept or read, checked and kept."""
        kept = self._kept.get(index)
        if kept is not None:
            return kept
        data = self._checked(index, index)
        with self._lock:
            if len(self._kept) >= KEPT_BLOCKS:
                del self._kept[next(iter(self._kept))]  # the oldest
            self._kept[index] = data
        return data

    def _checked(self, first: int, last: int) -> bytes:
        """Blocks ``first`` to ``last`` read from the file, each checked against the table."""
        bs = self.table.block_size
        start, stop = first * bs, min((last + 1) * bs, self.size)
        data = os.pread(self.fd, stop - start, self.object_offset + start)
        if len(data) != stop - start:
            raise TamperedBlockError(
                f"object bytes {start}-{stop} cannot be read: the image file was truncated after verification"
            )
        view = memoryview(data)
        for index in range(first, last + 1):
            block = view[(index - first) * bs : (index - first + 1) * bs]
            if hashlib.sha256(block).digest() != self.table.digest(index):
                raise TamperedBlockError(
                    f"block {index} (object bytes {index * bs}-{index * bs + len(block)}) "
                    "changed since the image was verified"
                )
        return data
