"""Crash-safe local writes: whatever happens, a reader sees the old file or the whole new one.

Every output of the delta stage (index, control file, assembled image, chunk) is written to a
temporary name in the target directory, flushed to disk, renamed over the target, and the
directory is flushed too, so a crash, a full disk or Ctrl-C never leaves a half-written file
under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading
from collections.abc import Iterator

from siffs.delta.errors import DeltaIOError
from siffs.sif.durable import fsync_directory


def describe(exc: OSError, path: str) -> DeltaIOError:
    """One line for a failed local write or read, saying what to do for the common causes."""
    if exc.errno == errno.ENOSPC:
        return DeltaIOError(f"{path}: disk full: free space on that filesystem and retry")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DeltaIOError(f"{path}: not writable ({exc.strerror}): choose another destination")
    return DeltaIOError(f"{path}: {exc.strerror or exc}")


def temp_name(path: str, tag: str = "tmp") -> str:
    """A hidden name beside ``path`` that only this process uses."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}.{tag}")


@contextlib.contextmanager
def atomic_output(path: str, mode: int = 0o644) -> Iterator[int]:
    """A file descriptor to write ``path``'s new content into; renamed over ``path`` only on success."""
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise describe(exc, path) from None
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_directory(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise describe(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write a small file crash-safely (``mode``: 0o600 for what only its owner may read)."""
    with atomic_output(path, mode) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


class Journal:
    """The partial download of one destination: an append-only file of (32-byte key, data) records.

    Why one file and no fsync: a pull fetches thousands of small chunks, and a file (or an fsync)
    per chunk would cost more than the download. A crash can only lose or truncate the last
    records, and every record is checked against the index or control file before it is used,
    so a damaged record costs a fetch, never wrong bytes.
    """

    _HEAD = struct.Struct("<32sQ")

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.records: dict[bytes, tuple[int, int]] = {}
        with contextlib.suppress(OSError), open(path, "rb") as f:
            offset = 0
            while len(head := f.read(self._HEAD.size)) == self._HEAD.size:
                key, size = self._HEAD.unpack(head)
                if f.seek(size, os.SEEK_CUR) > os.fstat(f.fileno()).st_size:
                    break  # the last record was cut short
                self.records[key] = (offset + self._HEAD.size, size)
                offset += self._HEAD.size + size

    def read(self, key: bytes) -> bytes | None:
        where = self.records.get(key)
        if where is None:
            return None
        with open(self.path, "rb") as f:
            return os.pread(f.fileno(), where[1], where[0])

    def add(self, key: bytes, data: bytes) -> None:
        with self._lock:
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.write(self._fd, self._HEAD.pack(key, len(data)) + data)
                self.records[key] = (os.lseek(self._fd, 0, os.SEEK_CUR) - len(data), len(data))
            except OSError as exc:
                raise describe(exc, self.path) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
