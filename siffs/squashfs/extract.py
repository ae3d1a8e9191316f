"""Copy an image's tree into a directory (``siffs sandbox``), never writing outside it.

A hostile image may name an entry "..", put a "/" in a name, list one name twice (a symlink,
then a directory through which later entries would be written), loop a directory into its
own ancestor, or point symlinks anywhere. So every name must be one path component, every
entry is created relative to the target's descriptor with exclusive creation and without
following a final symlink, and a directory is only ever entered if this code created it —
so no path is resolved through anything the image made. Whatever breaks these rules stops
the extraction with ``CorruptImage``.

What an unprivileged user cannot make is skipped and counted: device nodes, owners other than
the caller's, attributes outside ``user.*``. Directory modes and all times are
applied last, deepest first, so read-only directories can still be filled. The same image
always gives the same tree.

An image nobody vouched for must not hand out privileges: unless ``keep_privileged``, the
setuid and setgid bits of files and all device nodes are left out (and counted), since
root extracting such an image would otherwise create a setuid-root shell or a raw disk
device on the say-so of whoever wrote the image.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from siffs.squashfs.errors import CorruptImage, XattrsUnsupported
from siffs.squashfs.inode import Stat
from siffs.squashfs.listing import quote_name
from siffs.squashfs.reader import SquashFS

_CHUNK = 1 << 20
_PRIVILEGE_BITS = stat.S_ISUID | stat.S_ISGID
#: Called with (bytes written so far, bytes to write in total).
Progress = Callable[[int, int], None]


@dataclass
class Report:
    """What was made, and what was left out because this user cannot make it."""

    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hard_links: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    #: Privileges left out of an unverified image (``keep_privileged`` off).
    dropped: dict[str, int] = field(default_factory=dict)

    def skip(self, what: str) -> None:
        self.skipped[what] = self.skipped.get(what, 0) + 1

    def drop(self, what: str) -> None:
        self.dropped[what] = self.dropped.get(what, 0) + 1


def _join(parent: bytes, name: bytes) -> bytes:
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise CorruptImage(f"the image holds an entry named {quote_name(name)}: refusing to extract it")
    return name if not parent else parent + b"/" + name


class _Extractor:
    def __init__(self, fs: SquashFS, root_fd: int, progress: Progress | None, keep_privileged: bool) -> None:
        self.fs = fs
        self.keep_privileged = keep_privileged
        self.root = root_fd
        self.progress = progress
        self.report = Report()
        self.privileged = os.geteuid() == 0
        self.first_copy: dict[int, bytes] = {}  # hard-linked inode -> where it was first written
        self.created: list[tuple[bytes, bool]] = []  # (path, is a directory), in creation order
        self.total = 0
        self.done = 0

    def run(self) -> Report:
        directories = self._walk()
        for path, st in reversed(directories):  # deepest last created first
            self._finish_directory(path, st)
        return self.report

    def _walk(self) -> list[tuple[bytes, Stat]]:
        """Create every entry; returns the directories (with the root) in creation order."""
        root = self.fs.getattr(self.fs.root_ino)
        listings: list[tuple[bytes, list[tuple[bytes, Stat]]]] = []
        directories = [(b"", root)]
        seen = {root.ino}
        pending = [(b"", root.ino)]
        # First the tree's shape (metadata only), so progress has a total to count toward.
        while pending:
            path, ino = pending.pop()
            entries = [(name, st) for name, st, _ in self.fs.readdir(ino)]
            listings.append((path, entries))
            for name, st in entries:
                if stat.S_ISDIR(st.mode):
                    if st.ino in seen:
                        raise CorruptImage(f"directory loop at {quote_name(_join(path, name))}: refusing")
                    seen.add(st.ino)
                    pending.append((_join(path, name), st.ino))
                elif stat.S_ISREG(st.mode):
                    self.total += st.size
        for path, entries in listings:
            for name, st in entries:
                child = _join(path, name)
                try:
                    if stat.S_ISDIR(st.mode):
                        os.mkdir(child, 0o700, dir_fd=self.root)
                        directories.append((child, st))
                        self.report.directories += 1
                    else:
                        self._make(child, st)
                    self.created.append((child, stat.S_ISDIR(st.mode)))
                except FileExistsError:
                    raise CorruptImage(f"the image lists {quote_name(child)} twice: refusing") from None
        return directories

    def undo(self) -> None:
        """Remove what a failed extraction made, newest first (best effort)."""
        for path, is_dir in reversed(self.created):
            try:
                if is_dir:
                    os.chmod(path, 0o700, dir_fd=self.root)  # a directory this code made
                    os.rmdir(path, dir_fd=self.root)
                else:
                    os.unlink(path, dir_fd=self.root)
            except OSError:
                continue  # the error that stopped the extraction is the one to report

    def _make(self, path: bytes, st: Stat) -> None:
        first = self.first_copy.get(st.ino)
        if first is not None:
            os.link(first, path, src_dir_fd=self.root, dst_dir_fd=self.root, follow_symlinks=False)
            self.report.hard_links += 1
            return
        if stat.S_ISREG(st.mode):
            self._copy(path, st)
        elif stat.S_ISLNK(st.mode):
            os.symlink(self.fs.readlink(st.ino), path, dir_fd=self.root)
            self.report.symlinks += 1
        elif stat.S_ISFIFO(st.mode) or stat.S_ISSOCK(st.mode):  # anyone may make these two
            os.mknod(path, stat.S_IFMT(st.mode) | 0o600, dir_fd=self.root)
        elif not self.privileged:
            self.report.skip("device nodes")
            return
        elif not self.keep_privileged:
            self.report.drop("device nodes")
            return
        else:
            os.mknod(path, st.mode, st.rdev, dir_fd=self.root)
        if st.nlink > 1:
            self.first_copy[st.ino] = path
        self._owner(path, st)
        if not stat.S_ISLNK(st.mode):  # a symlink's mode and xattrs are not the user's to set
            # By path under the target's descriptor: opening a FIFO or a device could block or fail.
            self._metadata(f"/proc/self/fd/{self.root}/{os.fsdecode(path)}", st)
        ns = st.mtime * 1_000_000_000
        os.utime(path, ns=(ns, ns), dir_fd=self.root, follow_symlinks=False)

    def _copy(self, path: bytes, st: Stat) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.root)
        try:
            for offset in range(0, st.size, _CHUNK):
                data = self.fs.read(st.ino, offset, _CHUNK)
                if any(data):  # all-zero chunks stay holes
                    os.pwrite(fd, data, offset)
                self.done += len(data)
                if self.progress is not None:
                    self.progress(self.done, self.total)
            os.ftruncate(fd, st.size)
        finally:
            os.close(fd)
        self.report.files += 1
        self.report.bytes += st.size

    def _owner(self, path: bytes, st: Stat) -> None:
        if self.privileged:
            os.chown(path, st.uid, st.gid, dir_fd=self.root, follow_symlinks=False)
        elif (st.uid, st.gid) != (os.geteuid(), os.getegid()):
            self.report.skip("owners")

    def _metadata(self, target: int | str, st: Stat) -> None:
        """Extended attributes, then the mode (last: it may take away write permission).

        ``target`` is an open directory or the path of something this code just created.
        """
        try:
            names = self.fs.listxattr(st.ino)
        except XattrsUnsupported:
            names = []
        for name in names:
            try:
                os.setxattr(target, name, self.fs.getxattr(st.ino, name))
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.report.skip(name.split(b".")[0].decode("ascii", "replace") + ".* attributes")
        mode = stat.S_IMODE(st.mode)
        if not self.keep_privileged and not stat.S_ISDIR(st.mode) and mode & _PRIVILEGE_BITS:
            mode &= ~_PRIVILEGE_BITS
            self.report.drop("setuid/setgid files")
        os.chmod(target, mode)

    def _finish_directory(self, path: bytes, st: Stat) -> None:
        fd = os.open(path or b".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root)
        try:
            if self.privileged:
                os.chown(fd, st.uid, st.gid)
            self._metadata(fd, st)
            ns = st.mtime * 1_000_000_000
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)


def extract(
    fs: SquashFS, target: str, progress: Progress | None = None, *, keep_privileged: bool = True
) -> Report:
    """Copy the tree of ``fs`` into directory ``target`` (created if missing; must be empty).

    ``keep_privileged`` off leaves out setuid/setgid bits and device nodes (see above). On
    failure, what was extracted so far is removed again.
    """
    os.makedirs(target, exist_ok=True)
    root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.listdir(root_fd):
            raise FileExistsError(errno.ENOTEMPTY, "the target directory is not empty", target)
        extractor = _Extractor(fs, root_fd, progress, keep_privileged)
        try:
            return extractor.run()
        except BaseException:
            extractor.undo()
            raise
    finally:
        os.close(root_fd)
