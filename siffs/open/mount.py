"""Open an image and serve its tree on a mount point: what ``mount``, ``run`` and ``bundle`` share.

Everything that can be checked before the daemon starts is checked here, in the caller's
process (image, partition kind, signatures, SquashFS superblock), so that mistakes get an
immediate answer and no daemon is left behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from siffs.fs import daemon, kernelmount, registry
from siffs.fs.errors import MountError
from siffs.fs.mountpoint import check_fuse, check_mount_point
from siffs.fs.unmount import unmount
from siffs.open.hooks import SILENT, Hooks
from siffs.open.image import OpenedImage, OpenedTree, OpenRequest, open_everything, open_partition

if TYPE_CHECKING:  # the FUSE binding is imported in the daemon only (siffs.fs.daemon)
    from siffs.fs.operations import ReadOnlyOperations


class MountRequest(NamedTuple):
    """An image to open and where and how to serve it.

    ``passthrough``: libfuse options handed on as they are (``allow_other``, ``noexec``...);
    ``uid``/``gid``: show every file as owned by them; ``secret``: the tree will hold
    decryption keys (the daemon is made non-dumpable); ``ephemeral``: the mount belongs to
    this process (see ``daemon.Served``); ``foreground``: serve in this process, logging to
    standard error, until unmounted.
    """

    image: OpenRequest
    mount_point: str
    passthrough: frozenset[str] = frozenset()
    uid: int | None = None
    gid: int | None = None
    secret: bool = False
    ephemeral: bool = False
    foreground: bool = False
    verbose: bool = False


def _escape(value: str) -> str:
    """libfuse splits options on commas: escape them (and backslashes) in the file system name."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def fuse_options(image_path: str, passthrough: frozenset[str]) -> set[str]:
    """The libfuse options of a siffs mount: read-only, named after the image, permissions by the kernel."""
    return {
        f"fsname={_escape(os.path.abspath(image_path))}",
        "subtype=siffs",
        "ro",
        "default_permissions",
    } | set(passthrough)


def mount(request: MountRequest, hooks: Hooks = SILENT) -> int | None:
    """Verify, open and serve the image; return the daemon's pid once the mount is live.

    In the foreground this serves until unmounted and returns None.
    """
    fuse = fuse_options(request.image.path, request.passthrough)
    log_file = daemon.log_path_for(request.mount_point)
    check_fuse()
    opened: OpenedTree | OpenedImage
    if request.image.everything:
        opened = open_everything(request.image, hooks)
    else:
        opened = open_partition(request.image, hooks)
    try:
        tree = opened.tree

        def make_ops() -> ReadOnlyOperations:  # in the daemon
            from siffs.fs.operations import Ownership, ReadOnlyOperations  # noqa: PLC0415

            return ReadOnlyOperations(tree, Ownership(uid=request.uid, gid=request.gid))

        provenance = opened.provenance
        served = daemon.Served(provenance.image, provenance.verified_by, request.ephemeral, request.secret)
        if request.foreground:
            from siffs.fs.session import run_foreground  # noqa: PLC0415 - see TYPE_CHECKING

            daemon.setup_logging(log_file, to_stderr=True, verbose=request.verbose)
            run_foreground(make_ops, request.mount_point, fuse, served)
            return None
        # The mount is made here when possible, so the daemon's imports come after "mounted".
        # An ephemeral mount is also watched by fusermount3 (auto_unmount): should this process
        # be killed before the daemon exists to take the signal, the mount still goes.
        kernel = None
        if kernelmount.available():
            watched = {"auto_unmount"} if request.ephemeral else set()
            kernel = kernelmount.mount(request.mount_point, fuse | watched)
        return daemon.run_background(make_ops, request.mount_point, fuse, served, log_file, kernel=kernel)
    finally:
        opened.close()


def _private_dir(base: os.PathLike[str]) -> str:
    """A new directory under ``base`` that only its owner can enter, as ``tempfile.mkdtemp`` makes
    (whose import, with ``random``'s, was about 1 ms of every ``siffs run``)."""
    while True:
        path = os.path.join(base, f"mnt-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


@contextlib.contextmanager
def mounted(
    image: OpenRequest, hooks: Hooks = SILENT, *, as_caller: bool = False, secret: bool = False
) -> Iterator[str]:
    """Verify and mount ``image`` on a private, temporary mount point for the block's duration.

    For ``siffs run`` and friends: the daemon is tied to this process, so the mount goes away
    when the block ends, and also when this process is killed. ``as_caller`` shows every file
    as the caller's, which ``--fakeroot`` maps to root.
    """
    base = registry.registry_dir().parent / "run"
    base.mkdir(parents=True, exist_ok=True)
    mount_point = _private_dir(base)
    uid, gid = (os.getuid(), os.getgid()) if as_caller else (None, None)
    try:
        checked = check_mount_point(mount_point)
        mount(MountRequest(image, checked, uid=uid, gid=gid, secret=secret, ephemeral=True), hooks)
    except BaseException:
        os.rmdir(mount_point)
        raise
    try:
        yield mount_point
    finally:
        with contextlib.suppress(MountError):
            unmount(mount_point, lazy=True)
        # The daemon removes the mount point once it has unmounted; it may still be at it.
