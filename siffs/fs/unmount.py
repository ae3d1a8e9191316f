"""Unmount a siffs mount, including one whose daemon was killed.

``fusermount3 -u`` is what an unprivileged user has (and works for root too); it also
clears a dead mount left by a ``kill -9``-ed daemon ("Transport endpoint is not
connected"), which is why ``siffs umount`` is the documented way to recover one.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from siffs.fs.errors import MountError
from siffs.fs.mountpoint import find_mount, is_stale


def unmount(mount_point: str, *, lazy: bool = False) -> None:
    path = os.path.abspath(mount_point)
    entry = find_mount(path)
    if entry is None and not is_stale(path):
        raise MountError(f"{mount_point}: not mounted")
    if entry is not None and not entry.fs_type.startswith("fuse"):
        raise MountError(f"{mount_point}: not a FUSE mount ({entry.fs_type}); use umount(8)")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 not found: install the fuse3 package")
    cmd = [tool, "-u", *(["-z"] if lazy else []), path]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "unknown error"
        hint = "; files are in use: close them or use --lazy" if "busy" in reason else ""
        raise MountError(f"{mount_point}: unmount failed: {reason}{hint}")
