"""``siffs mount``, ``umount`` and ``mounts``: options in, one line out.

The mount point is checked here; the image is opened, verified and served by
``siffs.open.mount``, in this process before any daemon starts, so that mistakes get an
immediate one-line answer and no daemon is left behind.
"""

from __future__ import annotations

import argparse
import contextlib

from siffs.cli import encrypted, output, trust
from siffs.cli.common import CommandError, print_json
from siffs.cli.exitcodes import ExitCode
from siffs.fs import registry
from siffs.fs.daemon import log_path_for as daemon_log
from siffs.fs.mountpoint import check_mount_point
from siffs.fs.unmount import unmount
from siffs.open.image import OpenRequest
from siffs.open.mount import MountRequest, mount, mounted

#: libfuse options passed through as they are (the kernel or fusermount3 judge them).
#: ``noexec`` matters for fstab lines: an admin who writes it must get it.
PASSTHROUGH = {"allow_other", "allow_root", "auto_unmount", "noexec"}
#: Options siffs handles itself.
OWN = {"uid", "gid", "nonempty", "cache_size"}
#: Default ``cache_size`` in MiB.
DEFAULT_CACHE_MIB = 4


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


def _open_request(args: argparse.Namespace, image: str, cache_mib: int = DEFAULT_CACHE_MIB) -> OpenRequest:
    return OpenRequest(
        image,
        getattr(args, "partition", None),
        everything=bool(getattr(args, "all", False)),
        trust=trust.choice(args),
        cache_bytes=cache_mib << 20,
    )


def mount_image(image: str, mount_point: str, args: argparse.Namespace) -> None:
    """Verify and mount the primary partition of ``image`` for another command (``bundle``).

    ``args`` carries that command's trust and key options (``--key``, ``--allow-unsigned``, ``--passphrase``).
    """
    request = MountRequest(
        _open_request(args, image),
        check_mount_point(mount_point),
        secret=encrypted.KeyChoice.from_args(args).offered,
    )
    mount(request, trust.hooks(args))


def mounted_image(
    image: str, args: argparse.Namespace, as_caller: bool = False
) -> contextlib.AbstractContextManager[str]:
    """``image`` verified and mounted on a private, temporary mount point for a ``with`` block (``run``).

    ``as_caller`` shows every file as the caller's (``uid=,gid=``), which ``--fakeroot`` maps to root.
    """
    secret = encrypted.KeyChoice.from_args(args).offered
    return mounted(_open_request(args, image), trust.hooks(args), as_caller=as_caller, secret=secret)


def cmd_mount(args: argparse.Namespace) -> None:
    options = parse_options(args.options)
    mount_point = check_mount_point(args.mount_point, allow_nonempty="nonempty" in options)
    # Decompressed blocks kept (half metadata, half data). The kernel's page cache keeps file
    # contents anyway, so this only needs to cover blocks shared by neighbouring small files and
    # hot metadata; measured daemon RSS after reading a whole rootfs (bench/memory_bench.py):
    # 2 MiB -> 34 MiB, 4 -> 39, 8 -> 46, 16 -> 55, 32 -> 78 (README, Performance).
    cache_mib = int(options.get("cache_size") or DEFAULT_CACHE_MIB)
    uid, gid = options.get("uid"), options.get("gid")
    request = MountRequest(
        _open_request(args, args.image, cache_mib),
        mount_point,
        passthrough=frozenset(key for key in options if key in PASSTHROUGH),
        uid=None if uid is None else int(uid),
        gid=None if gid is None else int(gid),
        secret=encrypted.KeyChoice.from_args(args).offered,
        foreground=args.foreground,
        verbose=args.verbose,
    )
    pid = mount(request, trust.hooks(args))
    if pid is not None:
        output.detail(f"{mount_point}: mounted by daemon pid {pid}, logging to {daemon_log(mount_point)}")


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
