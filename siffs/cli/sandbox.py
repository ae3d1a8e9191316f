"""``siffs sandbox``: extract an image's verified tree into a directory (what CVMFS sites ship)."""

from __future__ import annotations

import argparse
import sys

from siffs.cli import encrypted, output, trust
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.cli.progress import ProgressBar
from siffs.open.image import OpenRequest, open_partition
from siffs.squashfs.extract import extract


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sandbox", help="extract an image's root filesystem into a directory")
    p.add_argument("image", help="SIF file (or a bare SquashFS file, with --allow-unsigned)")
    p.add_argument("directory", help="where to extract (created; must be empty)")
    p.add_argument("--partition", type=int, metavar="ID", help="extract this partition, not the primary")
    p.add_argument(
        "--keep-privileged",
        action="store_true",
        help="with --allow-unsigned: also recreate setuid/setgid bits and device nodes (verified: always)",
    )
    trust.add_arguments(p)
    encrypted.add_arguments(p)
    p.set_defaults(func=cmd_sandbox)


def cmd_sandbox(args: argparse.Namespace) -> None:
    choice = trust.choice(args)
    opened = open_partition(OpenRequest(args.image, args.partition, trust=choice), trust.hooks(args))
    try:
        with ProgressBar("extracting") as progress:
            keep = args.keep_privileged or not choice.allow_unsigned
            report = extract(opened.tree, args.directory, progress, keep_privileged=keep)
    except FileExistsError as exc:
        raise CommandError(f"{args.directory}: {exc.strerror}", ExitCode.IO) from exc
    except OSError as exc:
        raise CommandError(f"{args.directory}: cannot write: {exc.strerror}", ExitCode.IO) from exc
    finally:
        opened.close()
    print(
        f"{args.directory}: {report.files} files ({report.bytes} bytes), {report.directories} directories, "
        f"{report.symlinks} symlinks, {report.hard_links} hard links"
    )
    if report.dropped:
        dropped = " and ".join(f"{count} {what}" for what, count in sorted(report.dropped.items()))
        output.warn(f"unverified image: left out {dropped} (--keep-privileged keeps them)")
    for what, count in sorted(report.skipped.items()):
        print(f"siffs: warning: {count} {what} not recreated (needs root)", file=sys.stderr)
