"""``siffs mount`` and ``siffs umount``: the FUSE daemon's front door.

Everything that can be checked before forking is checked here, in the caller's process
(mount point, image, partition kind, SquashFS superblock), so that mistakes get an
immediate one-line answer and no daemon is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Sequence

from siffs.cli import trust
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.cli.opener import open_all, open_tree
from siffs.fs import daemon
from siffs.fs.mountpoint import check_mount_point
from siffs.fs.operations import Ownership, ReadOnlyOperations, Tree
from siffs.fs.unmount import unmount
from siffs.sif import Descriptor, Image
from siffs.squashfs.source import ByteSource

#: libfuse options passed through as they are (the kernel or fusermount3 judge them).
PASSTHROUGH = {"allow_other", "allow_root", "auto_unmount"}
#: Options siffs handles itself.
OWN = {"uid", "gid", "nonempty", "cache_size"}


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
        help="comma-separated: allow_other, allow_root, uid=N, gid=N, nonempty, cache_size=MiB",
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
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("umount", help="unmount a siffs mount (also one whose daemon died)")
    p.add_argument("mount_point")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now, clean up when no longer busy")
    p.set_defaults(func=cmd_umount)


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


def _open_tree(args: argparse.Namespace, cache_bytes: int, stack: contextlib.ExitStack) -> Tree:
    """The tree to serve, verified: one partition (the primary by default), or all with --all."""
    choice = trust.TrustChoice.from_args(args)

    def sources(image: Image, exposed: Sequence[Descriptor]) -> dict[int, ByteSource]:
        return trust.sources(image, exposed, choice)

    if args.all:
        image = stack.enter_context(Image.open(args.image))
        return open_all(image, cache_bytes=cache_bytes, sources=sources)
    opened = open_tree(
        args.image,
        args.partition,
        cache_bytes=cache_bytes,
        sources=sources,
        bare_allowed=choice.allow_unsigned,
    )
    stack.callback(opened.close)
    return opened.tree


def cmd_mount(args: argparse.Namespace) -> None:
    options = parse_options(args.options)
    mount_point = check_mount_point(args.mount_point, allow_nonempty="nonempty" in options)
    # 32 MiB keeps the daemon under 100 MB resident after reading a whole rootfs (measured).
    cache_mib = int(options.get("cache_size") or 32)
    uid, gid = options.get("uid"), options.get("gid")
    ownership = Ownership(uid=None if uid is None else int(uid), gid=None if gid is None else int(gid))
    fuse = fuse_options(args.image, options)
    log_file = daemon.log_path_for(mount_point)
    with contextlib.ExitStack() as stack:
        tree = _open_tree(args, cache_mib << 20, stack)

        def make_ops() -> ReadOnlyOperations:
            return ReadOnlyOperations(tree, ownership)

        if args.foreground:
            daemon.setup_logging(log_file, to_stderr=True, verbose=args.verbose)
            daemon.run_foreground(make_ops, mount_point, fuse)
        else:
            daemon.run_background(make_ops, mount_point, fuse, log_file)


def cmd_umount(args: argparse.Namespace) -> None:
    unmount(args.mount_point, lazy=args.lazy)
