"""An ext3 overlay partition embedded in an image, served read-only by ``fuse2fs`` for one container.

Apptainer applies an image's overlay partition (``apptainer overlay create``) read-only by
default. The kernel cannot mount ext3 for an unprivileged user, so Debian's ``fuse2fs`` serves
it at a private mount point, and the partition's ``upper`` directory becomes a lower layer of
the container's root overlay.

fuse2fs (libfuse 2) has no working ``auto_unmount``: if siffs were killed, the mount would stay.
So a small watcher process owns the daemon: it holds the read end of a pipe whose write end only
siffs holds, and when that pipe closes, because the container ended or because siffs was
killed, it unmounts, stops fuse2fs and removes the mount point. Both run in their own session,
so Ctrl-C in the terminal reaches the container, not the layer it reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

from runtime.errors import MountFailed

_MOUNT_TIMEOUT = 20.0


def fuse2fs_missing() -> str | None:
    """Why an embedded overlay cannot be served here, or None."""
    if shutil.which("fuse2fs") is None:
        return "the image has an overlay partition, which needs fuse2fs (apt-get install fuse2fs)"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "the image has an overlay partition, which needs fusermount3 (apt-get install fuse3)"
    return None


@contextlib.contextmanager
def mounted(image: str, offset: int, parent: str) -> Iterator[str]:
    """``image``'s ext3 filesystem at byte ``offset``, read-only, at a new directory under ``parent``."""
    why = fuse2fs_missing()
    if why:
        raise MountFailed(why)
    mount_point = tempfile.mkdtemp(prefix="overlay-", dir=parent)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the watcher; its work is checked through the mount table
        os.close(write_end)
        _watch(image, offset, mount_point, read_end)
    os.close(read_end)
    try:
        _wait_mounted(mount_point, pid)
        yield mount_point
    finally:
        os.close(write_end)  # the watcher unmounts, stops fuse2fs, removes the mount point
        os.waitpid(pid, 0)


def _wait_mounted(mount_point: str, watcher: int) -> None:
    deadline = time.monotonic() + _MOUNT_TIMEOUT
    while not os.path.ismount(mount_point):
        done, _ = os.waitpid(watcher, os.WNOHANG)
        if done or time.monotonic() > deadline:
            raise MountFailed(
                "fuse2fs could not mount the image's overlay partition (run it by hand to see why)"
            )
        time.sleep(0.02)


def _watch(image: str, offset: int, mount_point: str, pipe: int) -> None:
    """The watcher: start fuse2fs, wait until siffs lets go of ``pipe``, then clean up."""
    status = 1
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        daemon = subprocess.Popen(
            ["fuse2fs", "-f", image, mount_point, "-o", f"ro,offset={offset}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with contextlib.suppress(OSError):
            os.read(pipe, 1)  # returns at EOF: siffs is done, or dead
        unmount = shutil.which("fusermount3") or "fusermount"
        subprocess.run([unmount, "-u", "-z", mount_point], capture_output=True, check=False)
        daemon.terminate()
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        os.rmdir(mount_point)
        status = 0
    finally:  # the watcher has nobody to report to: its exit status says how it went
        os._exit(status)
