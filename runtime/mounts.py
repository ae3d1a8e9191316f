"""Mount primitives for an unprivileged mount namespace, with the kernel's rules built in.

The rule that bites: flags of a mount made outside the user namespace (``nosuid,nodev`` of a
FUSE mount, ``ro`` of a read-only bind) are *locked*, and a remount that omits one fails
EPERM (runtime.md §5 step 10). Every remount therefore repeats the flags the mount already
has, read from ``statvfs``.
"""

from __future__ import annotations

import os

from runtime import libc
from runtime.errors import MountFailed

_STATVFS_TO_MS = (
    (os.ST_RDONLY, libc.MS_RDONLY),
    (os.ST_NOSUID, libc.MS_NOSUID),
    (os.ST_NODEV, libc.MS_NODEV),
    (os.ST_NOEXEC, libc.MS_NOEXEC),
    (os.ST_NODIRATIME, libc.MS_NODIRATIME),
)


def current_flags(path: str) -> int:
    """The mount flags of ``path``'s mount as ``MS_*`` bits, atime mode included."""
    f_flag = os.statvfs(path).f_flag
    flags = 0
    for st, ms in _STATVFS_TO_MS:
        if f_flag & st:
            flags |= ms
    if f_flag & os.ST_NOATIME:
        flags |= libc.MS_NOATIME
    elif f_flag & os.ST_RELATIME:
        flags |= libc.MS_RELATIME
    else:
        flags |= libc.MS_STRICTATIME
    return flags


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    try:
        libc.mount(source, target, fstype, flags, data)
    except OSError as exc:
        what = fstype or ("bind of " + (source or "?"))
        raise MountFailed(f"cannot mount {what} on {target}: {exc.strerror}") from None


def bind(
    source: str, target: str, recursive: bool = True, readonly: bool = False, secure: bool = False
) -> None:
    """Bind ``source`` at ``target``, then tighten it (read-only; nosuid,nodev) keeping locked flags."""
    _mount(source, target, None, libc.MS_BIND | (libc.MS_REC if recursive else 0))
    extra = (libc.MS_RDONLY if readonly else 0) | (libc.MS_NOSUID | libc.MS_NODEV if secure else 0)
    if extra:
        remount(target, extra)


def remount(target: str, extra: int) -> None:
    flags = current_flags(target) | extra
    _mount(None, target, None, libc.MS_REMOUNT | libc.MS_BIND | flags)


def tmpfs(
    target: str, mode: int, flags: int = libc.MS_NOSUID | libc.MS_NODEV, size: str | None = None
) -> None:
    data = f"mode={mode:o}" + (f",size={size}" if size else "")
    _mount("tmpfs", target, "tmpfs", flags, data)


def overlay(target: str, lowers: list[str], upper: str | None = None, work: str | None = None) -> None:
    """An overlay of ``lowers`` (the first wins where several have a path), writable into ``upper``.

    Without an upper layer it is read-only. The merged root takes the upper directory's owner,
    so the user can create files at the top of a tree whose directories belong to root.
    """
    data = "lowerdir=" + ":".join(lowers)
    if upper is None:
        _mount("overlay", target, "overlay", libc.MS_RDONLY, data)
    else:
        _mount(
            "overlay",
            target,
            "overlay",
            libc.MS_NOSUID | libc.MS_NODEV,
            f"{data},upperdir={upper},workdir={work}",
        )


def proc(target: str) -> None:
    _mount("proc", target, "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)


def devpts(target: str) -> None:
    _mount("devpts", target, "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")


def make_private(target: str = "/") -> None:
    """Nothing mounted from now on under ``target`` propagates (to the host, for "/": §5 step 5)."""
    _mount(None, target, None, libc.MS_REC | libc.MS_PRIVATE)


def make_shared(target: str) -> None:
    """``target`` becomes a mount of its own whose submounts propagate between its copies."""
    bind(target, target, recursive=False)
    _mount(None, target, None, libc.MS_SHARED)


def pivot_into(new_root: str, put_old: str | None = None) -> None:
    """Make ``new_root`` the root; the old root stays under ``put_old`` or, if None, is detached."""
    os.chdir(new_root)
    try:
        libc.pivot_root(".", put_old or ".")
        if put_old is None:
            libc.umount2(".", libc.MNT_DETACH)
    except OSError as exc:
        raise MountFailed(f"cannot switch to the container root: {exc.strerror}") from None
    os.chdir("/")
