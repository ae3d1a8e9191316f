"""``siffs ls`` and ``siffs cat``: peek inside an image without mounting it."""

from __future__ import annotations

import argparse
import stat
import sys

from siffs.cli import encrypted, trust
from siffs.cli.common import write_bytes
from siffs.open.image import OpenedTree, OpenRequest, open_partition
from siffs.squashfs.errors import IsADirectory, NotARegularFile
from siffs.squashfs.inode import Stat
from siffs.squashfs.listing import format_long, quote_name
from siffs.squashfs.paths import resolve
from siffs.squashfs.reader import SquashFS

_CHUNK = 1 << 20


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ls", help="list a directory inside an image (like ls)")
    p.add_argument("image", help="SIF file (or a bare SquashFS file)")
    p.add_argument("path", nargs="?", default="/", help="path inside the image (default /)")
    p.add_argument("-l", dest="long", action="store_true", help="long listing: mode, links, ids, size, time")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories recursively")
    p.add_argument("--partition", type=int, metavar="ID", help="read this partition instead of the primary")
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("cat", help="write files from inside an image to standard output")
    p.add_argument("image", help="SIF file (or a bare SquashFS file)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="path inside the image (symlinks are followed)")
    p.add_argument("--partition", type=int, metavar="ID", help="read this partition instead of the primary")
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_cat)


def _line(tree: SquashFS, st: Stat, name: bytes, long: bool) -> str:
    if not long:
        return quote_name(name)
    target = tree.readlink(st.ino) if stat.S_ISLNK(st.mode) else None
    return format_long(st, name, target)


def _list_dir(tree: SquashFS, path: bytes, ino: int, *, long: bool, recursive: bool) -> None:
    # Iterative so that a deep (or hostile, self-containing) tree cannot exhaust the stack.
    pending = [(path, ino)]
    seen = {ino}
    out: list[str] = []
    first = True
    while pending:
        path, ino = pending.pop()
        if recursive:
            out.append(("" if first else "\n") + quote_name(path) + ":")
        first = False
        subdirs = []
        for name, st, _ in tree.readdir(ino):
            out.append(_line(tree, st, name, long))
            if recursive and stat.S_ISDIR(st.mode) and st.ino not in seen:
                seen.add(st.ino)
                subdirs.append((path.rstrip(b"/") + b"/" + name, st.ino))
        pending.extend(reversed(subdirs))
        sys.stdout.write("".join(line + "\n" for line in out))
        out.clear()


def _peek(args: argparse.Namespace) -> OpenedTree:
    """The partition's tree, unverified (peeking is not exposing: nothing is served or run)."""
    return open_partition(OpenRequest(args.image, args.partition, trust=None), trust.hooks(args))


def cmd_ls(args: argparse.Namespace) -> None:
    opened = _peek(args)
    try:
        path = args.path.encode("utf-8", "surrogateescape")
        st = resolve(opened.tree, path, follow_last=not args.long)
        if stat.S_ISDIR(st.mode):
            _list_dir(opened.tree, path, st.ino, long=args.long, recursive=args.recursive)
        else:
            sys.stdout.write(_line(opened.tree, st, path, args.long) + "\n")
    finally:
        opened.close()


def cmd_cat(args: argparse.Namespace) -> None:
    opened = _peek(args)
    try:
        for raw in args.paths:
            path = raw.encode("utf-8", "surrogateescape")
            st = resolve(opened.tree, path)
            if stat.S_ISDIR(st.mode):
                raise IsADirectory(f"{raw}: is a directory")
            if not stat.S_ISREG(st.mode):
                raise NotARegularFile(f"{raw}: not a regular file")
            for offset in range(0, st.size, _CHUNK):
                write_bytes(opened.tree.read(st.ino, offset, _CHUNK))
    finally:
        opened.close()
