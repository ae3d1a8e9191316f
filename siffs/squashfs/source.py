"""Where the reader's bytes come from: a partition-relative ``pread``, nothing else.

A SquashFS partition lives at an offset inside a SIF file, and the integrity layer will
later wrap the source so that every read is checked against a per-block digest table.
So the reader never touches a file itself: every raw read goes through a
:class:`ByteSource`, whose offsets are relative to the start of the partition.
"""

from __future__ import annotations

import os
from types import TracebackType

from siffs.source import ByteSource
from siffs.squashfs.errors import CorruptImage

__all__ = ["ByteSource", "FileSource"]  # ByteSource lives in siffs.source; re-exported for old importers


class FileSource:
    """A byte range of an open file, read with ``os.pread``.

    ``os.pread`` keeps no file position, so threads share the descriptor without locks
    (a seek+read pair on a shared handle would interleave), and nothing is loaded up front.
    The descriptor is closed by :meth:`close` only when :meth:`open` created it.
    """

    def __init__(self, fd: int, offset: int = 0, length: int | None = None) -> None:
        file_size = os.fstat(fd).st_size
        if length is None:
            length = file_size - offset
        if offset < 0 or length < 0 or offset + length > file_size:
            raise CorruptImage(
                f"partition at byte {offset} of length {length} does not fit in a file of {file_size} bytes; "
                "the file is truncated or the offset is wrong"
            )
        self._fd = fd
        self._offset = offset
        self._length = length
        self._owned = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], offset: int = 0, length: int | None = None) -> FileSource:
        """Open ``path`` read-only and return a source that closes it on :meth:`close`."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            source = cls(fd, offset, length)
        except BaseException:
            os.close(fd)
            raise
        source._owned = True
        return source

    @property
    def size(self) -> int:
        """Length of the partition in bytes."""
        return self._length

    @property
    def offset(self) -> int:
        """Where the partition starts in the file."""
        return self._offset

    def pread(self, offset: int, size: int) -> bytes:
        """Read exactly ``size`` bytes at partition offset ``offset``."""
        if offset < 0 or size < 0 or offset + size > self._length:
            raise CorruptImage(
                f"the image points at bytes {offset}..{offset + size} outside its {self._length} bytes; "
                "it is truncated or damaged"
            )
        data = os.pread(self._fd, size, self._offset + offset)
        if len(data) != size:
            # Regular files only read short at end of file: the file shrank after opening.
            raise CorruptImage(f"short read at byte {offset}: the image file was truncated while open")
        return data

    def close(self) -> None:
        """Close the descriptor if this source opened it."""
        if self._owned and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
