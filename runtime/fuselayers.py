"""Overlay layers the kernel cannot mount for a user: ext3 images (fuse2fs) and a FUSE upper (fuse-overlayfs).

An ext3 overlay (``apptainer overlay create``: a file, or a partition inside a SIF) holds
``upper/`` and ``work/`` at its root. The kernel mounts ext3 only for root, so Debian's
``fuse2fs`` serves it, read-only or read-write, from the byte offset of the partition. A
writable one cannot be the upper layer of the kernel's overlayfs (fuse2fs has no
``RENAME_WHITEOUT`` nor ``O_TMPFILE``), so ``fuse-overlayfs`` merges the layers then, as
Apptainer does in its unprivileged mode.

Both run inside the container's user and mount namespaces, as Apptainer runs them: the ids
written into an image are the container's (root inside is 0 in the image), ``--fakeroot``'s
subordinate ids work, and nothing is ever mounted in the host's mount table, so nothing can be
left there. Each daemon runs in a mount namespace of its own (a copy of the container's,
taken before the container's root is switched, so later detaches never empty its view), chrooted
in a small tmpfs ("the area") holding a recursive bind of the host root and links to its system
directories; it mounts on a shared mount point, which brings the mount into the container's
namespace. They are stopped (SIGTERM, which makes fuse2fs write its metadata back) after the
command ends, and get the same signal from the kernel if the process that started them dies first.
Found on Linux 6.18: the kernel's overlayfs refuses a fuse2fs upper outright (no d_type report,
no tmpfile, no RENAME_WHITEOUT), and a helper that is not root in the namespace needs
CAP_SYS_ADMIN kept across its ``execve`` (ambient) to mount there.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time

from runtime import libc, mounts
from runtime.errors import InvalidRequest, MountFailed
from runtime.request import OverlayImage

_EXT_MAGIC = 0xEF53
_SQUASHFS_MAGIC = b"hsqs"
_MOUNT_TIMEOUT = 20.0
_STOP_TIMEOUT = 20.0
#: Host directories the helpers need inside their chroot (programs, libraries, /dev/fuse, /proc).
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc")
_HOST_IN_AREA = "/host"
#: Where the helpers are looked for, whatever the caller's PATH (fuse2fs may be in sbin).
_SEARCH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: Why fuse-overlayfs most often cannot start: the image's upper/ and work/ belong to someone else.
_OWNERS = (
    " (upper/ and work/ of a writable ext3 overlay must be yours inside the container: an image made "
    "by 'overlay create --fakeroot' is root's, one made without it is yours; --fakeroot without "
    "/etc/subuid ranges cannot write a user's image)"
)
#: The helpers started for this container, in start order.
_daemons: list[subprocess.Popen[bytes]] = []


def image_kind(path: str) -> str | None:
    """``"ext3"`` (any ext2/3/4 superblock), ``"squashfs"``, or None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024 + 64)
    except OSError as exc:
        raise InvalidRequest(f"--overlay {path}: {exc.strerror}") from None
    if head[:4] == _SQUASHFS_MAGIC:
        return "squashfs"
    if len(head) >= 1024 + 58 and struct.unpack_from("<H", head, 1024 + 56)[0] == _EXT_MAGIC:
        return "ext3"
    return None


def check(image: OverlayImage) -> None:
    """Refuse, before anything starts, what cannot be served: a missing helper, a filesystem
    larger than its partition (fuse2fs would write past it, into the SIF's other objects)."""
    needed = ["fuse2fs"] + (["fuse-overlayfs"] if image.writable else [])
    for program in needed:
        if _which(program) is None:
            raise InvalidRequest(
                f"the ext3 overlay {image.path} needs {program}, which is not installed "
                f"(apt-get install {program})"
            )
    try:
        with open(image.path, "rb") as f:
            f.seek(image.offset + 1024)
            superblock = f.read(64)
    except OSError as exc:
        raise InvalidRequest(f"overlay {image.path}: {exc.strerror}") from None
    if len(superblock) < 58 or struct.unpack_from("<H", superblock, 56)[0] != _EXT_MAGIC:
        raise InvalidRequest(f"overlay {image.path}: no ext3 filesystem at byte {image.offset}")
    blocks, log_size = struct.unpack_from("<I", superblock, 4)[0], struct.unpack_from("<I", superblock, 24)[0]
    if log_size > 6:
        raise InvalidRequest(f"overlay {image.path}: corrupt ext3 superblock (block size)")
    if image.size and blocks * (1024 << log_size) > image.size:
        raise InvalidRequest(
            f"overlay {image.path}: its ext3 filesystem is larger than its partition; refused so that "
            "the image's other objects cannot be overwritten"
        )


class Area:
    """The helpers' chroot, mounted at ``path`` (a directory of the staging root) over ``host``."""

    def __init__(self, path: str, host: str) -> None:
        self.path, self.host = path, host
        mounts.tmpfs(path, 0o755)
        os.mkdir(path + _HOST_IN_AREA)
        mounts.bind(host, path + _HOST_IN_AREA)  # recursive: every host mount, the image's included
        for name in _SYSTEM_DIRS:
            if os.path.lexists(f"{host}/{name}"):
                os.symlink(f"{_HOST_IN_AREA}/{name}", f"{path}/{name}")
        self._count = 0

    def new_dir(self, name: str) -> str:
        """A new directory of the area (staging path)."""
        self._count += 1
        made = f"{self.path}/{name}-{self._count}"
        os.mkdir(made, 0o755)
        return made

    def inside(self, staging_path: str) -> str:
        """What the helpers call ``staging_path``: area paths lose the prefix, host paths gain /host."""
        if staging_path.startswith(self.path + "/"):
            return staging_path[len(self.path) :]
        if staging_path.startswith(self.host + "/"):
            return _HOST_IN_AREA + staging_path[len(self.host) :]
        raise MountFailed(f"internal: {staging_path} is not visible to the overlay helpers")

    def ext3(self, image: OverlayImage) -> str:
        """Serve ``image`` with fuse2fs; the staging path of its root (with ``upper`` and ``work`` made
        there when writable and missing, as Apptainer does)."""
        target = self.new_dir("ext3")
        options = ["allow_other", "rw" if image.writable else "ro"]
        if os.geteuid() != 0:
            options.append("fakeroot")  # as Apptainer: every file of the overlay, work/ included
        if image.offset:
            options.append(f"offset={image.offset}")
        source = self.inside(self.host + image.path)
        argv = ["fuse2fs", "-f", source, self.inside(target), "-o", ",".join(options)]
        self._start(argv, target, f"the ext3 overlay {image.path}")
        if not image.writable and not os.path.isdir(f"{target}/upper"):
            raise MountFailed(
                f"overlay {image.path}: no upper/ directory in the image to use read-only "
                "(an image from 'apptainer overlay create' has one; use it writable once to make it)"
            )
        if image.writable:
            for name in ("upper", "work"):
                try:
                    os.makedirs(f"{target}/{name}", mode=0o755, exist_ok=True)
                except OSError as exc:
                    raise MountFailed(
                        f"overlay {image.path}: cannot create {name}/: {exc.strerror}"
                    ) from None
        return target

    def merge(self, lowers: list[str], upper: str, work: str) -> str:
        """fuse-overlayfs of ``lowers`` (topmost first) writing into ``upper``; its staging path."""
        target = self.new_dir("merged")
        for path in (*lowers, upper, work):
            if any(c in path for c in ":,\\"):
                raise MountFailed(f"fuse-overlayfs cannot take the layer path {path} (':', ',' or '\\')")
        data = (
            f"lowerdir={':'.join(self.inside(p) for p in lowers)},upperdir={self.inside(upper)},"
            f"workdir={self.inside(work)},allow_other,noacl"
        )
        self._start(["fuse-overlayfs", "-f", "-o", data, self.inside(target)], target, "the overlay", _OWNERS)
        return target

    def _start(self, argv: list[str], target: str, what: str, hint: str = "") -> None:
        program = _which(argv[0], self.host)
        if program is None:
            raise MountFailed(f"{argv[0]} is not installed (apt-get install {argv[0]})")
        log_path = self.new_dir("log") + "/stderr"
        # The helper mounts from a mount namespace of its own (see _enter); the shared target
        # brings its mount into this one.
        mounts.make_shared(target)
        before = os.stat(target).st_dev
        # Python's DEVNULL is /dev/null of the staging root, which has none: the host's is used.
        with open(log_path, "w+b") as log, open(self.host + "/dev/null", "rb") as null:
            daemon = subprocess.Popen(
                [_HOST_IN_AREA + program, *argv[1:]],
                stdin=null,
                stdout=log,
                stderr=log,
                preexec_fn=self._enter,  # noqa: PLW1509 - the runtime is single-threaded here
                start_new_session=True,  # Ctrl-C is the command's, not its filesystem's
            )
        _daemons.append(daemon)
        deadline = time.monotonic() + _MOUNT_TIMEOUT
        while os.stat(target).st_dev == before:
            if daemon.poll() is not None or time.monotonic() > deadline:
                with open(log_path, "rb") as f:
                    said = os.fsdecode(f.read()).strip().splitlines()
                raise MountFailed(
                    f"{argv[0]} could not mount {what}" + (f": {said[-1]}" if said else "") + hint
                )
            time.sleep(0.01)

    def _enter(self) -> None:
        """In the helper before exec: its own mount namespace and root, SIGTERM if the container
        process dies first.

        Its own mount namespace keeps its view whole when the container's ``pivot_root``
        detaches the staging tree (the area with it): fuse-overlayfs looks layer paths up
        (``/proc/self/fd``, the layers) long after it started.
        """
        libc.unshare(libc.CLONE_NEWNS)
        os.chroot(self.path)
        os.chdir("/")
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.geteuid() != 0:  # to mount in the namespace, as root inside (--fakeroot) can
            libc.keep_capability(libc.CAP_SYS_ADMIN)


def _which(program: str, root: str = "") -> str | None:
    """``program``'s path below ``root`` (the host's root, seen from the staging root)."""
    found = shutil.which(program, path=os.pathsep.join(root + d for d in _SEARCH))
    return found[len(root) :] if found else None


def running() -> bool:
    return bool(_daemons)


def stop() -> None:
    """Stop the helpers, the merging one first: fuse2fs writes its metadata back on SIGTERM."""
    while _daemons:
        daemon = _daemons.pop()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
