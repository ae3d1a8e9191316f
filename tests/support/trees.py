"""Snapshot a mounted tree (kernel or FUSE) through the ordinary system calls, to compare two."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def _xattrs(path: str) -> dict[str, bytes] | str:
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError as exc:  # e.g. EOPNOTSUPP from an image without an xattr table
        return errno.errorcode[exc.errno or 0]
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in names}


def _facts(path: str, with_data: bool) -> tuple[int, dict[str, Any]]:
    st = os.lstat(path)
    facts: dict[str, Any] = {
        "mode": st.st_mode,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "size": st.st_size,
        "nlink": st.st_nlink,
        "mtime": st.st_mtime_ns,
        "rdev": st.st_rdev,
        "blocks": st.st_blocks,
        "blksize": st.st_blksize,
        "xattrs": _xattrs(path),
    }
    if stat.S_ISLNK(st.st_mode):
        facts["target"] = os.readlink(path)
    elif stat.S_ISREG(st.st_mode) and with_data:
        with open(path, "rb") as f:
            facts["sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    return st.st_ino, facts


def snapshot(root: Path, *, with_data: bool = True) -> dict[str, Any]:
    """Every path's lstat fields, data digest, link target and xattrs; inode identity as groups."""
    ino, facts = _facts(str(root), with_data)
    entries = {"/": facts}
    by_inode: dict[int, list[str]] = {ino: ["/"]}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(path, root)
            ino, entries[rel] = _facts(path, with_data)
            by_inode.setdefault(ino, []).append(rel)
    links = sorted(sorted(paths) for paths in by_inode.values() if len(paths) > 1)
    return {"entries": entries, "hard_links": links}


def assert_same_tree(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(actual["entries"]) == sorted(expected["entries"])
    for path, facts in expected["entries"].items():
        assert actual["entries"][path] == facts, path
    assert actual["hard_links"] == expected["hard_links"]
