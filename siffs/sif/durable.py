"""Writes that survive a crash: after a kill or a power cut a file is its old self or its new one.

A rename is atomic, but only the order of what reaches the disk makes it safe: the new file's
bytes must be on disk (``fsync``) before the rename, and the rename itself is only durable once
the directory is synced. Every file siffs replaces is written as a :class:`NewFile`; in-place
SIF edits order their own writes (see ``create``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from types import TracebackType


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename or a creation in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NewFile:
    """A file that gets its name only once it is complete and on disk (``commit``).

    It starts unnamed (``O_TMPFILE``), so a process killed while writing leaves nothing behind;
    where the filesystem cannot do that (NFS, for one) it starts as a hidden temporary beside
    the target, removed on any failure short of a kill. ``fd`` is open for reading and writing.
    """

    def __init__(self, target: str | os.PathLike[str], mode: int = 0o600) -> None:
        self.target = Path(os.path.abspath(target))
        self._temporary = self.target.with_name(f".{self.target.name}.{os.getpid()}.tmp")
        self._named = False
        try:
            self.fd = os.open(self.target.parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self.fd = os.open(self._temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            self._named = True

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self) -> None:
        """Sync the content, then name it ``target`` (replacing it) and sync the directory."""
        os.fsync(self.fd)
        if not self._named:
            # linkat(AT_SYMLINK_FOLLOW) (which a directory descriptor makes Python use) names the
            # file behind the /proc link; plain link() would try to link the link itself.
            directory = os.open(self.target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(f"/proc/self/fd/{self.fd}", self._temporary.name, dst_dir_fd=directory)
            finally:
                os.close(directory)
            self._named = True
        os.replace(self._temporary, self.target)
        self._named = False
        fsync_directory(self.target.parent)

    def close(self) -> None:
        """Release the file; an uncommitted one disappears."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._named:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temporary)
            self._named = False

    def __enter__(self) -> NewFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def replace_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Give ``path`` the content ``data``, crash-safely."""
    with NewFile(path, mode) as new:
        new.write(data)
        new.commit()
