"""Changing host paths for one test without changing the host: a private mount namespace.

Tests of mount(8) need a helper in /sbin, siffs on mount's bare PATH, or a /dev/fuse that users
cannot open. Writing those into the host would change it for good when a test dies half-way,
and would collide with a real installation. Instead the test process enters a mount namespace
of its own, lays an overlay over the directory there (or binds a node over a device), and
returns to the host's namespace afterwards. Every process it starts meanwhile (mount(8), the
siffs daemon) sees the private view; the host never does, and the namespace with all its mounts
goes away with its last process, whatever happens to the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

CLONE_NEWNS = 0x00020000
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextlib.contextmanager
def private_mounts() -> Iterator[None]:
    """Run the body (and what it starts) in a private mount namespace; back to the host's after."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    if threading.active_count() > 1:  # unshare(CLONE_NEWNS) refuses threads that share the fs
        pytest.skip("the test process has threads; cannot enter a private mount namespace")
    host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        try:
            subprocess.run(["mount", "--make-rprivate", "/"], check=True)
            yield
        finally:
            _check(_libc.setns(host, CLONE_NEWNS), "setns back to the host's mount namespace")
    finally:
        os.close(host)


def shadow(directory: Path, entries: Mapping[str, Path | None], scratch: Path) -> None:
    """Inside ``private_mounts``: ``directory`` as it is, with ``entries`` on top, and writable.

    A name mapped to a path appears as a symbolic link to it; a name mapped to None disappears
    (an overlay whiteout). What the test writes there lands in ``scratch``, never in the host's
    directory.
    """
    real = directory.resolve()  # /sbin is a link to usr/sbin on Debian 12
    upper, work = scratch / "upper", scratch / "work"
    upper.mkdir(parents=True)
    work.mkdir()
    for name, target in entries.items():
        if target is None:
            os.mknod(upper / name, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        else:
            (upper / name).symlink_to(target)
    options = f"lowerdir={real},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(real)], check=True)


def replace_device(device: Path, mode: int, scratch: Path) -> None:
    """Inside ``private_mounts``: ``device`` shows as the same device node with ``mode``."""
    st = device.stat()
    scratch.mkdir(parents=True, exist_ok=True)
    node = scratch / device.name
    os.mknod(node, stat.S_IFMT(st.st_mode) | mode, st.st_rdev)
    os.chmod(node, mode)  # mknod applies the umask
    subprocess.run(["mount", "--bind", str(node), str(device)], check=True)
