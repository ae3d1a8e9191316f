#!/usr/bin/env python3
"""A siffs mount whose reader costs nothing: the floor under the per-request rows.

    .venv/bin/python bench/floor_mount.py IMAGE MOUNT_POINT     (then: umount MOUNT_POINT)

Decodes the whole image into memory first (every attribute, listing, link target, extended
attribute and file content, through siffs' reader), then serves that with siffs' own request
handlers (``ReadOnlyOperations``) on the same binding and loop as ``siffs mount``. A request
then costs only the kernel, the binding, the handler and copying the answer: what any reader
written in Python behind this binding pays at least. Where this floor is itself below a
target against squashfuse_ll, no Python reader can meet the target; where it is above, the
gap to siffs is the reader's decoding. As a peer of the harness (one run, same workloads):

    bench/mount_bench.sh --runs 3 --pin split --peers squashfuse_ll,siffs \\
        --peer "floor=$PWD/.venv/bin/python $PWD/bench/floor_mount.py {sif} {mnt}::umount {mnt}" IMAGE

Its mount row is the time to decode the image, not a start-up figure. Needs a few times the
image's unpacked size in memory (the rootfs bench image: about 1 GiB).
"""

from __future__ import annotations

import bisect
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

here = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(here))

from siffs.open.mount import fuse_options  # noqa: E402
from siffs.sif import Image  # noqa: E402
from siffs.squashfs import SquashFS, SquashfsError  # noqa: E402
from siffs.squashfs.inode import Stat  # noqa: E402
from siffs.squashfs.reader import FsStats  # noqa: E402


class MemoryTree:
    """Everything the FUSE layer can ask of ``fs``, answered from memory (the ``Tree`` interface)."""

    def __init__(self, fs: SquashFS) -> None:
        self.root_ino = fs.root_ino
        self._stats = fs.statfs()
        self._attrs: dict[int, Stat] = {self.root_ino: fs.getattr(self.root_ino)}
        self._entries: dict[tuple[int, bytes], Stat] = {}
        self._listings: dict[int, tuple[list[int], list[tuple[bytes, Stat, int]]]] = {}
        self._contents: dict[int, bytes] = {}
        self._targets: dict[int, bytes] = {}
        self._xattrs: dict[int, list[tuple[bytes, bytes]] | SquashfsError] = {}
        todo = [self.root_ino]
        while todo:
            ino = todo.pop()
            listing = list(fs.readdir(ino))
            self._listings[ino] = ([cookie for _, _, cookie in listing], listing)
            for name, a, _ in listing:
                self._entries[ino, name] = a
                if a.ino in self._attrs:
                    continue  # a hard link seen before
                self._attrs[a.ino] = a
                if stat.S_ISDIR(a.mode):
                    todo.append(a.ino)
                elif stat.S_ISREG(a.mode):
                    self._contents[a.ino] = fs.read(a.ino, 0, a.size)
                elif stat.S_ISLNK(a.mode):
                    self._targets[a.ino] = fs.readlink(a.ino)
        for ino in self._attrs:
            try:
                self._xattrs[ino] = [(n, fs.getxattr(ino, n)) for n in fs.listxattr(ino)]
            except SquashfsError as e:  # as the reader answers: no xattrs on this image for this kind
                self._xattrs[ino] = e

    def getattr(self, ino: int) -> Stat:
        return self._attrs[ino]

    def lookup(self, parent: int, name: bytes) -> Stat | None:
        return self._entries.get((parent, name))

    def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[bytes, Stat, int]]:
        cookies, listing = self._listings[ino]
        return iter(listing[bisect.bisect_right(cookies, start) :])

    def read(self, ino: int, offset: int, size: int) -> bytes:
        return self._contents[ino][offset : offset + size]

    def readlink(self, ino: int) -> bytes:
        return self._targets[ino]

    def _pairs(self, ino: int) -> list[tuple[bytes, bytes]]:
        found = self._xattrs[ino]
        if isinstance(found, SquashfsError):
            raise found
        return found

    def listxattr(self, ino: int) -> list[bytes]:
        return [name for name, _ in self._pairs(ino)]

    def getxattr(self, ino: int, name: bytes) -> bytes:
        for key, value in self._pairs(ino):
            if key == name:
                return value
        raise OSError(61, "no such attribute")  # ENODATA, as the reader's NoSuchAttribute carries

    def statfs(self) -> FsStats:
        return self._stats


def main() -> int:
    image, mount_point = sys.argv[1:3]
    with Image.open(image) as sif:
        part = sif.primary_partition()
        offset, length = part.offset, part.size
    with SquashFS.open(image, offset, length) as fs:
        tree = MemoryTree(fs)
    ready_r, ready_w = os.pipe()
    if os.fork():  # the command returns once the mount is live, as `siffs mount` does
        os.close(ready_w)
        return 0 if os.read(ready_r, 1) == b"1" else 1
    os.close(ready_r)
    os.setsid()
    import pyfuse3  # noqa: PLC0415 - in the daemon only

    from siffs.fs.operations import ReadOnlyOperations  # noqa: PLC0415

    pyfuse3.init(ReadOnlyOperations(tree), mount_point, fuse_options(image, frozenset()))
    os.write(ready_w, b"1")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        if hasattr(pyfuse3, "main_sync"):  # the patched binding: siffs' own loop
            pyfuse3.main_sync()
        else:  # stock pyfuse3: its trio loop, as siffs uses there
            import trio  # noqa: PLC0415

            trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
