"""Check a mount point before mounting, and find siffs mounts in the mount table.

The checks run in the calling process, before any daemon starts, so that the usual
mistakes (a typo, a busy directory, a leftover mount) get an immediate one-line answer
instead of a daemon that dies in the background.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import NamedTuple

from siffs.fs.errors import MountError

MOUNTINFO = "/proc/self/mountinfo"


class MountEntry(NamedTuple):
    """One line of /proc/self/mountinfo, with the fields siffs uses."""

    mount_point: str
    fs_type: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_table(path: str = MOUNTINFO) -> list[MountEntry]:
    entries = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            fs_type, source, super_options = ([*right.rstrip("\n").split(" "), "", "", ""])[:3]
            entries.append(MountEntry(_unescape(fields[4]), fs_type, _unescape(source), super_options))
    return entries


def find_mount(mount_point: str) -> MountEntry | None:
    """The mount table entry whose mount point is ``mount_point`` (the last one wins, as stacked)."""
    target = os.path.realpath(mount_point)
    found = None
    for entry in mount_table():
        if entry.mount_point == target:
            found = entry
    return found


def is_stale(mount_point: str) -> bool:
    """True for a FUSE mount whose daemon is gone ("Transport endpoint is not connected")."""
    try:
        os.stat(mount_point)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def check_fuse(device: str = "/dev/fuse") -> None:
    """Raise ``MountError`` saying what to do when FUSE cannot be used here."""
    if not os.path.exists(device):
        raise MountError(
            f"{device} does not exist: load the fuse kernel module ('modprobe fuse', as root), "
            "or in a container pass the device in (e.g. --device /dev/fuse); "
            "without FUSE, 'siffs sandbox' extracts an image that 'siffs run' can run as a directory"
        )
    if not os.access(device, os.R_OK | os.W_OK):
        raise MountError(
            f"{device} is not usable by you (mode {stat.S_IMODE(os.stat(device).st_mode):o}): "
            f"ask an administrator to make it mode 666, as desktop systems have it ('chmod 666 {device}'); "
            "without FUSE, 'siffs sandbox' extracts an image that 'siffs run' can run as a directory"
        )


def check_mount_point(mount_point: str, *, allow_nonempty: bool = False) -> str:
    """Return the absolute mount point, or raise ``MountError`` saying what is wrong."""
    path = os.path.abspath(mount_point)
    if is_stale(path):
        raise MountError(
            f"{mount_point}: a dead FUSE mount is still there (its daemon was killed); "
            f"run 'siffs umount {mount_point}' first"
        )
    if not os.path.lexists(path):
        raise MountError(f"{mount_point}: mount point does not exist (create it with mkdir)")
    if not os.path.isdir(path):
        raise MountError(f"{mount_point}: mount point is not a directory")
    if find_mount(path) is not None:
        raise MountError(f"{mount_point}: something is already mounted there (see 'mount'; unmount it first)")
    try:
        entries = os.listdir(path)
    except PermissionError as exc:
        raise MountError(f"{mount_point}: cannot read the mount point: permission denied") from exc
    if entries and not allow_nonempty:
        raise MountError(
            f"{mount_point}: mount point is not empty (use -o nonempty to mount over its content)"
        )
    if not os.access(path, os.W_OK) and os.geteuid() != 0:
        raise MountError(f"{mount_point}: you need write permission on the mount point to mount there")
    return path
