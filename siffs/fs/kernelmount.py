"""Make the FUSE mount before the daemon imports its FUSE binding ("early mount").

Importing trio and pyfuse3 takes longer than everything else ``siffs mount`` does. So the
command asks fusermount3 for the mount itself, as libfuse would: fusermount3 mounts
``/dev/fuse`` on the mount point and hands the open device back over a socket
(``_FUSE_COMMFD``, ``SCM_RIGHTS``). The daemon then gives libfuse that descriptor as
``/dev/fd/N``, which libfuse >= 3.3 takes as "already mounted" (stock pyfuse3 passes the
mount point through unchanged), while the kernel queues requests until the daemon answers
FUSE_INIT. The command can return as soon as the mount exists; a process that touches it
meanwhile waits for the daemon instead of failing.

libfuse does not unmount a mount it did not make, so the daemon does (``unmount``), and it
does so on every way out it controls: a failed start, a signal, the end of the session.
"""

from __future__ import annotations

import _socket  # the C module: socket.py's enums cost ~1.4 ms of every mount, before the mount
import os
import select
import shutil
import subprocess
import sys
from typing import NamedTuple

from siffs.fs.errors import MountError

#: The environment variable fusermount3 reads the socket's descriptor number from.
COMMFD = "_FUSE_COMMFD"
#: Set to 0 to mount as before: libfuse mounts inside the daemon, after its imports.
SWITCH = "SIFFS_EARLY_MOUNT"
#: libfuse accepts "/dev/fd/N" as a mount point since 3.3 (its version number is 100*major+minor).
_MIN_LIBFUSE = 303
#: libfuse options that are not kernel mount options: handled by the session, not fusermount3.
_SESSION_ONLY = {"allow_root"}


class KernelMount(NamedTuple):
    """A live mount and its connection: ``fd`` is the open /dev/fuse; ``keeper`` the socket that
    fusermount3 watches under ``auto_unmount`` (it unmounts once every copy is closed)."""

    mount_point: str
    fd: int
    keeper: int | None

    def close(self) -> None:
        """Close this process's descriptors (the daemon keeps its own copies)."""
        os.close(self.fd)
        if self.keeper is not None:
            os.close(self.keeper)

    def session_path(self) -> str:
        """What libfuse takes as the mount point of an already-mounted connection."""
        return f"/dev/fd/{self.fd}"


def available() -> bool:
    """True where the early mount works: fusermount3, pyfuse3 and a libfuse that takes /dev/fd/N."""
    if os.environ.get(SWITCH, "1") == "0" or _fusermount() is None:
        return False
    import ctypes  # noqa: PLC0415 - only here, and cheap
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("pyfuse3") is None:
        return False
    try:
        version = int(ctypes.CDLL("libfuse3.so.3").fuse_version())
    except (OSError, AttributeError):
        return False
    return version >= _MIN_LIBFUSE


def _fusermount() -> str | None:
    return shutil.which("fusermount3")


def _kernel_options(options: set[str]) -> str:
    """The mount options for fusermount3: libfuse's defaults (nosuid, nodev) and the kernel's part."""
    kernel = {"nosuid", "nodev"} | (options - _SESSION_ONLY)
    if "allow_root" in options:
        kernel.add("allow_other")  # the session then refuses everyone but the owner and root
    # fsname first and the rest sorted: a stable, readable command line.
    return ",".join(sorted(kernel, key=lambda o: (not o.startswith("fsname="), o)))


def mount(mount_point: str, options: set[str]) -> KernelMount:
    """Mount a FUSE connection on ``mount_point`` with fusermount3; raise ``MountError`` saying why not."""
    tool = _fusermount()
    if tool is None:
        raise MountError("fusermount3 not found: install the fuse3 package")
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    env = dict(os.environ, **{COMMFD: str(theirs.fileno())})
    auto = "auto_unmount" in options
    try:
        try:
            proc = subprocess.Popen(
                [tool, "-o", _kernel_options(options), "--", mount_point],
                env=env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        finally:
            theirs.close()
        assert proc.stderr is not None
        fd = _receive_fd(ours)
        if fd is None:
            complaint = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
            proc.wait()
            reason = complaint[-1] if complaint else f"fusermount3 exited with status {proc.returncode}"
            raise MountError(f"{mount_point}: FUSE mount failed: {reason}")
        proc.stderr.close()
        os.set_inheritable(fd, False)
        if not auto:
            proc.wait()
            return KernelMount(mount_point, fd, None)
        # fusermount3 stays, watching its end of the socket: ours must outlive this process.
        keeper = os.dup(ours.fileno())
        return KernelMount(mount_point, fd, keeper)
    finally:
        ours.close()


def _receive_fd(sock: _socket.socket) -> int | None:
    """The descriptor fusermount3 sends over ``sock`` (``SCM_RIGHTS``); None if it sends none."""
    try:
        _, ancillary, _, _ = sock.recvmsg(1, _socket.CMSG_LEN(4))
    except OSError:
        return None
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder, signed=True)
    return None


def connection_gone(fd: int) -> bool:
    """True once the kernel has dropped the connection (unmounted, or aborted): nothing to unmount."""
    poller = select.poll()
    poller.register(fd, 0)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def unmount(mount_point: str) -> None:
    """Detach the mount (lazily: open files keep working until closed), as libfuse does on exit."""
    tool = _fusermount()
    if tool is None:
        raise MountError("fusermount3 not found: install the fuse3 package")
    result = subprocess.run([tool, "-u", "-q", "-z", "--", mount_point], capture_output=True, check=False)
    if result.returncode != 0:
        reason = result.stderr.decode("utf-8", "replace").strip() or f"status {result.returncode}"
        raise MountError(f"{mount_point}: unmount failed: {reason}")
