"""The kernel's squashfs driver is the oracle: every path of every corpus image must look the
same through siffs as through ``mount -t squashfs`` (lstat fields, inode numbers, bytes,
symlink targets, xattrs, statfs), also when the image sits at an offset inside a bigger file."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from siffs.squashfs import FileSource, SquashFS, SquashfsError, resolve, walk
from tests.support.squashfs_corpus import SIF_OFFSET, SPECS, wrap_at_offset

CHUNK = 1 << 20
FIELDS = ("ino", "mode", "nlink", "uid", "gid", "size", "mtime", "rdev", "blocks")
MAIN = [name for name, spec in SPECS.items() if spec.tree == "main"]


def kernel_tree(mnt: Path) -> dict[bytes, os.stat_result]:
    """lstat of every path under ``mnt``, keyed like ``siffs.squashfs.walk`` keys them."""
    root = bytes(mnt)
    out = {b"/": os.lstat(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[b"/" + os.path.relpath(path, root)] = os.lstat(path)
    return out


def kernel_listxattr(path: bytes) -> list[bytes]:
    return [os.fsencode(n) for n in os.listxattr(path, follow_symlinks=False)]


def listed_xattrs(list_names: Callable[[Any], list[bytes]], target: Any) -> list[bytes] | int:
    """The names, or the errno (EOPNOTSUPP for some inodes of an image without an xattr table)."""
    try:
        return list_names(target)
    except (OSError, SquashfsError) as e:
        return e.errno


def same_bytes(fs: SquashFS, ino: int, path: bytes, size: int) -> None:
    with open(path, "rb") as f:
        offset = 0
        while True:
            want = f.read(CHUNK)
            got = fs.read(ino, offset, CHUNK)
            assert got == want, f"{path!r}: bytes differ at {offset}"
            if not want:
                break
            offset += len(want)
    assert offset == size


def compare(fs: SquashFS, mnt: Path, *, check_lookup: bool = True) -> int:
    """Assert siffs' view of the image equals the kernel's at ``mnt``; return the paths compared."""
    kernel = kernel_tree(mnt)
    ours = dict(walk(fs))
    assert sorted(ours) == sorted(kernel)
    for path, k in kernel.items():
        st = ours[path]
        want = tuple(int(getattr(k, "st_" + f)) for f in FIELDS)
        got = tuple(getattr(st, f) for f in FIELDS)
        assert got == want, path
        real = bytes(mnt) + path
        if stat.S_ISREG(k.st_mode):
            same_bytes(fs, st.ino, real, k.st_size)
        elif stat.S_ISLNK(k.st_mode):
            assert fs.readlink(st.ino) == os.readlink(real), path
        names = listed_xattrs(kernel_listxattr, real)
        assert listed_xattrs(fs.listxattr, st.ino) == names, path
        for name in names if isinstance(names, list) else []:
            assert fs.getxattr(st.ino, name) == os.getxattr(real, name, follow_symlinks=False), (path, name)
        if check_lookup and path != b"/":
            assert resolve(fs, path, follow_last=False) == st, path
    vfs = os.statvfs(mnt)
    sfs = fs.statfs()
    assert (sfs.block_size, sfs.blocks, sfs.inodes) == (vfs.f_bsize, vfs.f_blocks, vfs.f_files)
    assert (sfs.name_max, vfs.f_bfree, vfs.f_ffree) == (vfs.f_namemax, 0, 0)
    return len(kernel)


@pytest.mark.root
@pytest.mark.parametrize("name", MAIN)
def test_matches_kernel(name, kernel, open_image):
    with kernel(name) as mnt:
        assert compare(open_image(name), mnt) > 2500


@pytest.mark.root
@pytest.mark.parametrize("name", ["mk-gzip", "mk-lz4-4k"])
def test_matches_kernel_with_nothing_cached(name, kernel, open_image):
    # Nothing decoded stays cached: xattr requests are answered from what the reader keeps per
    # known inode (its reference and xattr code), not from a cached inode. mk-lz4-4k has no
    # xattr table (EOPNOTSUPP for some inodes, an empty list for others).
    with kernel(name) as mnt:
        assert compare(open_image(name, cache_bytes=0), mnt) > 2500


@pytest.mark.root
@pytest.mark.parametrize("name", ["mk-gzip", "gen-zstd"])
def test_matches_kernel_at_offset(name, kernel, corpus):
    image = wrap_at_offset(corpus.image(name), corpus.workdir / f"{name}-siffs-at.img", SIF_OFFSET)
    size = corpus.image(name).stat().st_size
    with kernel(name, SIF_OFFSET) as mnt, FileSource.open(image, SIF_OFFSET, size) as source:
        assert compare(SquashFS(source), mnt, check_lookup=False) > 2500


@pytest.mark.root
@pytest.mark.slow
def test_hundred_thousand_entry_directory(kernel, open_image):
    fs = open_image("mk-bigdir")
    with kernel("mk-bigdir") as mnt:
        assert compare(fs, mnt, check_lookup=False) == 100_003


@pytest.mark.root
@pytest.mark.slow
def test_file_over_4gib(kernel, open_image):
    fs = open_image("mk-huge")
    with kernel("mk-huge") as mnt:
        assert compare(fs, mnt) == 2
        assert fs.lookup(fs.root_ino, b"huge").size > 1 << 32
