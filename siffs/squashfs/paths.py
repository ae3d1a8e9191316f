"""Paths on top of the inode interface: resolve a path inside the image, walk a tree.

The FUSE layer never needs these (the kernel resolves paths one lookup at a time); the
CLI (``siffs ls``, ``siffs cat``), tests, fuzzer and benchmark do. Both are iterative and
bounded on hostile images: symlinks resolve inside the image (an absolute target starts
again at the image root, never the host's), at most ``MAX_SYMLINKS`` of them per path,
and a walk visits each directory inode once, so a directory that contains its own
ancestor cannot make it loop.
"""

from __future__ import annotations

import stat
from collections import deque
from collections.abc import Iterator

from siffs.squashfs.errors import NotADirectory, NotFound, SymlinkLoop
from siffs.squashfs.inode import Stat
from siffs.squashfs.listing import quote_name
from siffs.squashfs.reader import SquashFS

#: As Linux (MAXSYMLINKS): more links than this in one resolution is treated as a loop.
MAX_SYMLINKS = 40


def _components(path: bytes) -> list[bytes]:
    return [c for c in path.split(b"/") if c and c != b"."]


def resolve(fs: SquashFS, path: bytes, follow_last: bool = True) -> Stat:
    """Attributes of ``path`` inside the image, resolved from the image root.

    ``follow_last=False`` answers for a final symlink itself (``lstat``); a trailing slash
    always follows, as in POSIX. Raises ``NotFound``, ``NotADirectory`` or ``SymlinkLoop``.
    """
    if path.endswith(b"/"):
        follow_last = True
    shown = quote_name(path)  # for messages: printable whatever bytes the path holds
    todo = deque(_components(path))
    stack = [fs.root_ino]  # the directories walked through, for ".."
    links = 0
    current = fs.getattr(fs.root_ino)
    while todo:
        name = todo.popleft()
        if name == b"..":
            if len(stack) > 1:
                stack.pop()
            current = fs.getattr(stack[-1])
            continue
        if not stat.S_ISDIR(current.mode):
            raise NotADirectory(f"{shown}: a component before {quote_name(name)} is not a directory")
        found = fs.lookup(stack[-1], name)
        if found is None:
            raise NotFound(f"{shown}: no such file or directory in the image")
        if stat.S_ISLNK(found.mode) and (todo or follow_last):
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoop(f"{shown}: too many levels of symbolic links")
            target = fs.readlink(found.ino)
            if target.startswith(b"/"):
                del stack[1:]
            todo.extendleft(reversed(_components(target)))
            current = fs.getattr(stack[-1])
            continue
        stack.append(found.ino)
        current = found
    if path.endswith(b"/") and not stat.S_ISDIR(current.mode):
        raise NotADirectory(f"{shown}: not a directory")
    return current


def walk(fs: SquashFS, top: bytes = b"/") -> Iterator[tuple[bytes, Stat]]:
    """(path, attributes) of ``top`` and everything below it, in ``ls -R`` order.

    A directory's entries come together, in listing order, then its subdirectories in
    turn, depth first (no recursion, so depth is no risk). ``top`` is resolved following
    symlinks; below it, symlinks are reported, not followed. Each directory inode is listed
    once, however many entries lead to it.
    """
    root = resolve(fs, top)
    prefix = b"/" + b"/".join(_components(top))
    yield prefix, root
    if not stat.S_ISDIR(root.mode):
        return
    seen = {root.ino}
    pending: list[tuple[bytes, int]] = [(prefix.rstrip(b"/"), root.ino)]
    while pending:
        base, ino = pending.pop()
        subdirs = []
        for name, st, _ in fs.readdir(ino):
            path = base + b"/" + name
            yield path, st
            if stat.S_ISDIR(st.mode) and st.ino not in seen:
                seen.add(st.ino)
                subdirs.append((path, st.ino))
        pending.extend(reversed(subdirs))
