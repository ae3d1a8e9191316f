"""``siffs mount`` and ``siffs umount``: the FUSE daemon's front door.

Everything that can be checked before forking is checked here, in the caller's process
(mount point, image, partition kind, SquashFS superblock), so that mistakes get an
immediate one-line answer and no daemon is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator

from siffs.cli import encrypted, output, trust
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode
from siffs.cli.opener import open_all, open_tree
from siffs.fs import daemon, registry
from siffs.fs.errors import MountError
from siffs.fs.mountpoint import check_fuse, check_mount_point
from siffs.fs.operations import Ownership, ReadOnlyOperations, Tree
from siffs.fs.unmount import unmount
from siffs.sif import Image

#: libfuse options passed through as they are (the kernel or fusermount3 judge them).
#: ``noexec`` matters for fstab lines: an admin who writes it must get it.
PASSTHROUGH = {"allow_other", "allow_root", "auto_unmount", "noexec"}
#: Options siffs handles itself.
OWN = {"uid", "gid", "nonempty", "cache_size"}
#: Default ``cache_size`` in MiB.
DEFAULT_CACHE_MIB = 8


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("mount", help="mount an image's root filesystem read-only (FUSE)")
    p.add_argument("image", help="SIF file (or a bare SquashFS file)")
    p.add_argument("mount_point", help="empty directory to mount on")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated: allow_other, allow_root, noexec, uid=N, gid=N, nonempty, cache_size=MiB",
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground, log to stderr")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--partition", type=int, metavar="ID", help="mount this partition instead of the primary"
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="every SquashFS partition as a directory <ID>[-name], other objects as files in sif-objects/",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log every error in detail")
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a siffs mount (also one whose daemon died)")
    p.add_argument("mount_point", nargs="?", help="the mount point (or --all)")
    p.add_argument("-a", "--all", action="store_true", help="unmount every siffs mount")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser("mounts", help="list live siffs mounts: mount point, image, verified by, daemon pid")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_mounts)


def parse_options(raw: list[str]) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for group in raw:
        for item in filter(None, group.split(",")):
            key, sep, value = item.partition("=")
            if key == "ro":
                continue  # always read-only
            if key not in PASSTHROUGH | OWN:
                known = ", ".join(sorted(PASSTHROUGH | OWN))
                raise CommandError(f"unknown mount option {key!r} (known: {known})", ExitCode.USAGE)
            if key in {"uid", "gid", "cache_size"} and not (sep and value.isdigit()):
                raise CommandError(f"mount option {key} needs a number: {key}=N", ExitCode.USAGE)
            options[key] = value if sep else None
    return options


def _escape(value: str) -> str:
    """libfuse splits options on commas: escape them (and backslashes) in the file system name."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def fuse_options(image_path: str, options: dict[str, str | None]) -> set[str]:
    fuse = {f"fsname={_escape(os.path.abspath(image_path))}", "subtype=siffs", "ro", "default_permissions"}
    fuse |= {key for key in options if key in PASSTHROUGH}
    return fuse


def _open_tree(
    args: argparse.Namespace, cache_bytes: int, gate: trust.Gate, stack: contextlib.ExitStack
) -> Tree:
    """The tree to serve, verified: one partition (the primary by default), or all with --all."""
    if args.all:
        image = stack.enter_context(Image.open(args.image))
        return open_all(image, cache_bytes=cache_bytes, sources=gate.sources)
    opened = open_tree(
        args.image,
        args.partition,
        cache_bytes=cache_bytes,
        sources=gate.sources,
        bare_allowed=gate.choice.allow_unsigned,
        keys=encrypted.KeyChoice.from_args(args),
    )
    stack.callback(opened.close)
    return opened.tree


def _serve(
    args: argparse.Namespace,
    mount_point: str,
    options: dict[str, str | None],
    *,
    foreground: bool,
    ephemeral: bool,
) -> None:
    """Verify, open and serve ``args.image`` at ``mount_point`` (a daemon unless ``foreground``)."""
    # Decompressed blocks kept (half metadata, half data). The kernel's page cache keeps file
    # contents anyway, so this only needs to cover blocks shared by neighbouring small files and
    # hot metadata; measured daemon RSS after reading a whole rootfs: 8 MiB -> 45 MiB,
    # 16 -> 55, 32 -> 78 (README, Performance).
    cache_mib = int(options.get("cache_size") or DEFAULT_CACHE_MIB)
    uid, gid = options.get("uid"), options.get("gid")
    ownership = Ownership(uid=None if uid is None else int(uid), gid=None if gid is None else int(gid))
    fuse = fuse_options(args.image, options)
    log_file = daemon.log_path_for(mount_point)
    check_fuse()
    with contextlib.ExitStack() as stack:
        gate = trust.Gate(trust.TrustChoice.from_args(args))
        tree = _open_tree(args, cache_mib << 20, gate, stack)

        def make_ops() -> ReadOnlyOperations:
            return ReadOnlyOperations(tree, ownership)

        keys = encrypted.KeyChoice.from_args(args)
        served = daemon.Served(os.path.abspath(args.image), gate.verified_by, ephemeral, secret=keys.offered)
        if foreground:
            daemon.setup_logging(log_file, to_stderr=True, verbose=args.verbose)
            daemon.run_foreground(make_ops, mount_point, fuse, served)
        else:
            pid = daemon.run_background(make_ops, mount_point, fuse, served, log_file)
            output.detail(f"{mount_point}: mounted by daemon pid {pid}, logging to {log_file}")


def mount_image(
    image: str,
    mount_point: str,
    args: argparse.Namespace,
    *,
    ephemeral: bool = False,
    as_caller: bool = False,
) -> None:
    """Verify and mount the primary partition of ``image`` for another command (run, bundle).

    ``args`` carries that command's trust options (``--key``, ``--allow-unsigned``);
    ``as_caller`` shows every file as the caller's (``uid=,gid=``), which ``--fakeroot`` maps to root.
    """
    ns = argparse.Namespace(
        image=image,
        all=False,
        partition=None,
        key=getattr(args, "key", []) or [],
        allow_unsigned=getattr(args, "allow_unsigned", False),
        verbose=False,
        key_choice=encrypted.KeyChoice.from_args(args),
    )
    owner: dict[str, str | None] = {"uid": str(os.getuid()), "gid": str(os.getgid())} if as_caller else {}
    _serve(ns, check_mount_point(mount_point), owner, foreground=False, ephemeral=ephemeral)


@contextlib.contextmanager
def mounted_image(image: str, args: argparse.Namespace, as_caller: bool = False) -> Iterator[str]:
    """Verify and mount ``image`` on a private, temporary mount point for the block's duration.

    For ``siffs run`` and friends: the daemon is tied to this process, so the mount goes away
    when the block ends, and also when this process is killed.
    """
    base = registry.registry_dir().parent / "run"
    base.mkdir(parents=True, exist_ok=True)
    mount_point = tempfile.mkdtemp(prefix="mnt-", dir=base)
    try:
        mount_image(image, mount_point, args, ephemeral=True, as_caller=as_caller)
    except BaseException:
        os.rmdir(mount_point)
        raise
    try:
        yield mount_point
    finally:
        with contextlib.suppress(MountError):
            unmount(mount_point, lazy=True)
        # The daemon removes the mount point once it has unmounted; it may still be at it.


def cmd_mount(args: argparse.Namespace) -> None:
    options = parse_options(args.options)
    mount_point = check_mount_point(args.mount_point, allow_nonempty="nonempty" in options)
    _serve(args, mount_point, options, foreground=args.foreground, ephemeral=False)


def cmd_umount(args: argparse.Namespace) -> None:
    if args.all == (args.mount_point is not None):
        raise CommandError("give a mount point or --all", ExitCode.USAGE)
    targets = [entry.mount_point for entry, _ in registry.live_mounts()] if args.all else [args.mount_point]
    for target in targets:
        unmount(target, lazy=args.lazy)


def _live_pid(rec: registry.MountRecord | None) -> int | None:
    """The daemon's pid if it still runs (a killed daemon may linger as a zombie: not running)."""
    if rec is None:
        return None
    try:
        with open(f"/proc/{rec.pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    return rec.pid if state not in ("Z", "X") else None


def cmd_mounts(args: argparse.Namespace) -> None:
    rows = [
        {
            "mount_point": entry.mount_point,
            "image": entry.source,
            "verified_by": rec.verified_by if rec else None,
            "pid": _live_pid(rec),
            "alive": _live_pid(rec) is not None,
            "internal_errors": rec.internal_errors if rec else None,
        }
        for entry, rec in registry.live_mounts()
    ]
    if args.json:
        print_json(rows)
        return
    for row in rows:
        state = f"pid {row['pid']}" if row["alive"] else "daemon gone: run 'siffs umount'"
        if row["internal_errors"]:
            state += f", {row['internal_errors']} internal errors (bugs: see its log)"
        print(f"{row['mount_point']}\t{row['image']}\tverified by {row['verified_by'] or 'unknown'}\t{state}")
