"""One tree made of several: every partition of an image side by side, plus its other objects.

``siffs mount --all`` shows each SquashFS partition as a subdirectory and the image's
other objects (definition file, labels, environment, SBOM, signatures, ...) as read-only
files in one more directory. This module knows nothing of SIF: the caller hands it named
trees and named byte ranges, and it numbers everything into one inode space.

Numbering: the composite root is 1 and its virtual entries are small numbers; inode ``i``
of the ``k``-th tree (k >= 1) becomes ``k << 40 | i``. SquashFS inode numbers are 32-bit,
so the spaces never meet, and a tree's hard links stay hard links.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from siffs.fs.operations import Attributes, FsFigures, Tree
from siffs.squashfs.inode import Stat

ROOT = 1
_SHIFT = 40
_MASK = (1 << _SHIFT) - 1
_DIR_MODE = stat.S_IFDIR | 0o555
_FILE_MODE = stat.S_IFREG | 0o444


@dataclass(frozen=True)
class ObjectFile:
    """A read-only file whose bytes come from ``read(offset, size)``."""

    name: bytes
    size: int
    read: Callable[[int, int], bytes]
    mtime: int = 0


@dataclass(frozen=True)
class _Figures:
    block_size: int
    blocks: int
    inodes: int
    name_max: int


def _error(code: int, message: str) -> OSError:
    return OSError(code, message)


class CompositeTree:
    """``trees`` as top-level directories and ``files`` in the directory ``files_dir``."""

    def __init__(
        self,
        trees: Sequence[tuple[bytes, Tree]],
        files: Sequence[ObjectFile],
        files_dir: bytes = b"sif-objects",
        mtime: int = 0,
    ) -> None:
        self._trees = [tree for _, tree in trees]
        self._mtime = mtime
        # Virtual inodes: 1 the root, 2 the objects directory, 3.. the object files.
        self._files_dir_ino = 2
        self._files = {3 + i: f for i, f in enumerate(files)}
        self._root_entries: list[tuple[bytes, int]] = [
            (name, self._outer(k, tree.root_ino)) for k, (name, tree) in enumerate(trees, start=1)
        ]
        self._root_entries.append((files_dir, self._files_dir_ino))
        self._file_entries = [(f.name, ino) for ino, f in self._files.items()]

    @property
    def root_ino(self) -> int:
        return ROOT

    # -- numbering ----------------------------------------------------------------------

    @staticmethod
    def _outer(k: int, ino: int) -> int:
        return k << _SHIFT | ino

    def _split(self, ino: int) -> tuple[Tree, int] | None:
        k = ino >> _SHIFT
        if k == 0:
            return None
        if k > len(self._trees):
            raise _error(errno.ENOENT, f"inode {ino} does not exist")
        return self._trees[k - 1], ino & _MASK

    def _lift(self, ino: int, a: Attributes) -> Attributes:
        outer = self._outer(ino >> _SHIFT, a.ino)
        return Stat(outer, a.mode, a.nlink, a.uid, a.gid, a.size, a.mtime, a.rdev, a.blocks)

    def _virtual(self, ino: int) -> Stat:
        if ino == ROOT:
            return Stat(ROOT, _DIR_MODE, 2 + len(self._root_entries), 0, 0, 0, self._mtime, 0, 0)
        if ino == self._files_dir_ino:
            return Stat(ino, _DIR_MODE, 2, 0, 0, 0, self._mtime, 0, 0)
        f = self._files.get(ino)
        if f is None:
            raise _error(errno.ENOENT, f"inode {ino} does not exist")
        return Stat(ino, _FILE_MODE, 1, 0, 0, f.size, f.mtime, 0, (f.size + 511) // 512)

    def _children(self, ino: int) -> list[tuple[bytes, int]]:
        if ino == ROOT:
            return self._root_entries
        if ino == self._files_dir_ino:
            return self._file_entries
        raise _error(errno.ENOTDIR, f"inode {ino} is not a directory")

    # -- the Tree interface -------------------------------------------------------------

    def getattr(self, ino: int) -> Attributes:
        inner = self._split(ino)
        if inner is None:
            return self._virtual(ino)
        tree, i = inner
        return self._lift(ino, tree.getattr(i))

    def lookup(self, parent: int, name: bytes) -> Attributes | None:
        inner = self._split(parent)
        if inner is not None:
            tree, i = inner
            found = tree.lookup(i, name)
            return None if found is None else self._lift(parent, found)
        for entry_name, ino in self._children(parent):
            if entry_name == name:
                return self.getattr(ino)
        return None

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Attributes, int]]:
        inner = self._split(ino)
        if inner is not None:
            tree, i = inner
            for name, a, cookie in tree.readdir(i, start):
                yield name, self._lift(ino, a), cookie
            return
        for cookie, (name, child) in enumerate(self._children(ino), start=1):
            if cookie > start:
                yield name, self.getattr(child), cookie

    def read(self, ino: int, offset: int, size: int) -> bytes:
        inner = self._split(ino)
        if inner is not None:
            tree, i = inner
            return tree.read(i, offset, size)
        f = self._files.get(ino)
        if f is None:
            raise _error(errno.EISDIR, f"inode {ino} is a directory")
        if offset >= f.size:
            return b""
        return f.read(offset, min(size, f.size - offset))

    def readlink(self, ino: int) -> bytes:
        inner = self._split(ino)
        if inner is None:
            raise _error(errno.EINVAL, f"inode {ino} is not a symbolic link")
        tree, i = inner
        return tree.readlink(i)

    def listxattr(self, ino: int) -> list[bytes]:
        inner = self._split(ino)
        return [] if inner is None else inner[0].listxattr(inner[1])

    def getxattr(self, ino: int, name: bytes) -> bytes:
        inner = self._split(ino)
        if inner is None:
            raise _error(errno.ENODATA, f"inode {ino} has no extended attribute {name!r}")
        return inner[0].getxattr(inner[1], name)

    def statfs(self) -> FsFigures:
        figures = [t.statfs() for t in self._trees]
        block = max((f.block_size for f in figures), default=4096)
        blocks = sum(f.blocks * f.block_size for f in figures) // block
        files = sum(f.inodes for f in figures) + len(self._files) + 2
        return _Figures(block, blocks, files, 256)
