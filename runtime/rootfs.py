"""Build the container root from a ``Layout`` inside the new mount namespace (runtime.md §5 steps 5-11).

The staging tmpfs is mounted over ``/tmp`` and made the root at once, with the host's root
under ``/oldroot`` (bubblewrap's trick): every host path stays reachable as
``/oldroot/<path>`` whatever is mounted later, and no directory is ever created on the host.
The container root is assembled at ``/final`` and a second ``pivot_root`` detaches the rest;
the staging files (passwd, placeholders) live on only as long as their binds, that is, as
long as the namespace.
"""

from __future__ import annotations

import os

from runtime import fuselayers, libc, mounts
from runtime.errors import MountFailed
from runtime.layout import Bind, Generated, Kind, Layout, LibraryDir, MinimalDev, Proc, Step, Tmpfs
from runtime.request import OverlayImage

STAGING_MOUNT = "/tmp"
HOST = "/oldroot"
FINAL = "/final"
_SKELETON = "/skeleton"
_TREE = "/tree"
_FILES = "/files"
_LIBS = "/libs"
_WRITABLE = "/rw"
#: The chroot of the FUSE helpers serving ext3 overlays (``fuselayers.Area``).
_HELPERS = "/helpers"
#: Apptainer's ``sessiondir max size`` default: the tmpfs holding ``--writable-tmpfs`` writes.
WRITABLE_TMPFS_SIZE = "64m"
_DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "fd/0"),
    ("stdout", "fd/1"),
    ("stderr", "fd/2"),
    ("ptmx", "pts/ptmx"),
)


def build(layout: Layout) -> None:
    """Mount everything of ``layout`` and make it the root of this process."""
    mounts.make_private()
    mounts.tmpfs(STAGING_MOUNT, 0o755)
    for name in (HOST, FINAL, _SKELETON, _TREE, _FILES, _LIBS, _WRITABLE, _HELPERS):
        os.mkdir(STAGING_MOUNT + name)
    mounts.pivot_into(STAGING_MOUNT, HOST.lstrip("/"))
    _mount_root(layout)
    for step in layout.steps:
        _apply(step, layout.created.get(step.dest))
    mounts.pivot_into(FINAL)


def _create(path: str, kind: Kind) -> None:
    if kind == "dir":
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with open(path, "a"):
            pass


def _mount_root(layout: Layout) -> None:
    """The tree at FINAL: a plain read-only bind, or an overlay (§4.5): the skeleton of missing
    mount points on top, then the ``--overlay`` layers, then the image; writes go to the upper
    layer (a tmpfs for ``--writable-tmpfs``, DIR/upper for a writable ``--overlay DIR``). A
    writable ext3 overlay needs fuse-overlayfs instead of the kernel's (``fuselayers``)."""
    tree = HOST + layout.root
    if layout.writable:  # a sandbox the user may write: missing mount points are made in it
        mounts.bind(tree, FINAL)
        for dest, kind in layout.placeholders.items():
            try:
                _create(FINAL + dest, kind)
            except OSError as exc:
                raise MountFailed(
                    f"--writable: cannot create the mount point {dest} in the sandbox: {exc.strerror}"
                ) from None
        return
    writable = layout.writable_tmpfs or layout.overlay_upper is not None
    if not layout.placeholders and not writable and not layout.overlay_lowers:
        mounts.bind(tree, FINAL, readonly=True)
        return
    images = [
        layer for layer in (*layout.overlay_lowers, layout.overlay_upper) if isinstance(layer, OverlayImage)
    ]
    area = fuselayers.Area(_HELPERS, HOST) if images else None
    served = {image: area.ext3(image) for image in images} if area else {}
    # fuse-overlayfs, when it merges, must see the skeleton: it lives in the helpers' area then.
    skeleton = (
        area.new_dir("skeleton") if area and isinstance(layout.overlay_upper, OverlayImage) else _SKELETON
    )
    for dest, kind in layout.placeholders.items():
        _create(skeleton + dest, kind)
    lowers = [skeleton] if layout.placeholders else []
    lowers += [
        served[layer] + "/upper" if isinstance(layer, OverlayImage) else HOST + layer
        for layer in layout.overlay_lowers
    ]
    upper_layer = layout.overlay_upper
    if isinstance(upper_layer, OverlayImage) and area is not None:
        top = served[upper_layer]
        mounts.bind(area.merge([*lowers, tree], top + "/upper", top + "/work"), FINAL)
        mounts.make_private(FINAL)  # pivot_root refuses a shared root; nothing of it propagates
        return
    try:
        mounts.bind(tree, _TREE)
        lowers.append(_TREE)
        if upper_layer is not None and not isinstance(upper_layer, OverlayImage):  # an image is a tuple too
            upper, work = upper_layer
            mounts.overlay(FINAL, lowers, HOST + upper, HOST + work)
        elif layout.writable_tmpfs:
            mounts.tmpfs(_WRITABLE, 0o755, size=WRITABLE_TMPFS_SIZE)
            os.mkdir(_WRITABLE + "/upper")
            os.mkdir(_WRITABLE + "/work")
            mounts.overlay(FINAL, lowers, _WRITABLE + "/upper", _WRITABLE + "/work")
        else:
            mounts.overlay(FINAL, lowers)
    except MountFailed as exc:
        missing = ", ".join(sorted(layout.placeholders)) or "none"
        raise MountFailed(
            f"{exc} (unprivileged overlays need Linux >= 5.11, and an upper directory on a filesystem "
            f"overlayfs accepts, such as ext4, xfs or tmpfs); the image lacks these mount points: {missing}"
        ) from None


def _apply(step: Step, create: Kind | None) -> None:
    target = FINAL + step.dest
    if create is not None:
        _create(target, create)
    if isinstance(step, Bind):
        source = HOST + step.source
        if step.unless_visible and _same_file(source, target):
            return
        mounts.bind(source, target, readonly=step.readonly, secure=step.secure)
    elif isinstance(step, Tmpfs):
        mounts.tmpfs(target, step.mode)
    elif isinstance(step, Proc):
        mounts.proc(target)
    elif isinstance(step, MinimalDev):
        _minimal_dev(target, step)
    elif isinstance(step, Generated):
        staged = _FILES + "/" + step.dest.strip("/").replace("/", "_")
        with open(staged, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(step.content)
        mounts.bind(staged, target, readonly=True)
    elif isinstance(step, LibraryDir):
        for source, name in step.libraries:
            _create(f"{_LIBS}/{name}", "file")
            mounts.bind(HOST + source, f"{_LIBS}/{name}", readonly=True)
        mounts.bind(_LIBS, target, readonly=True, secure=True)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _minimal_dev(target: str, step: MinimalDev) -> None:
    """§4.3: a tmpfs with the host's harmless nodes bound in, links, private devpts and shm."""
    mounts.tmpfs(target, 0o755, flags=libc.MS_NOSUID)
    for device in step.devices:  # nodes, and whole directories (``/dev/dri`` of --rocm)
        node = f"{target}/{os.path.basename(device)}"
        is_dir = os.path.isdir(HOST + device)
        _create(node, "dir" if is_dir else "file")
        mounts.bind(HOST + device, node, recursive=is_dir)
    for name, link in _DEV_LINKS:
        os.symlink(link, f"{target}/{name}")
    if step.devpts:
        os.mkdir(f"{target}/pts")
        mounts.devpts(f"{target}/pts")
    os.mkdir(f"{target}/shm")
    mounts.tmpfs(f"{target}/shm", 0o1777)
    if step.console:
        _create(f"{target}/console", "file")
        mounts.bind(HOST + step.console, f"{target}/console", recursive=False)
