"""``siffs setup``: one-time integration with the host that needs root (the mount(8) helper)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.fs import helper


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("setup", help="integrate siffs with the host (as root)")
    what = p.add_subparsers(dest="setup_command", metavar="WHAT", required=True)
    m = what.add_parser(
        "mount-helper",
        help=f"link {helper.HELPER_NAME} into /sbin so mount(8) and fstab mount SIF images",
        description=(
            f"Link this installation's {helper.HELPER_NAME} script into /sbin (idempotent), so that "
            "'mount -t fuse.siffs IMAGE DIR' and fstab lines of type fuse.siffs work. Needs root."
        ),
    )
    m.add_argument("--uninstall", action="store_true", help="remove the link again")
    m.add_argument(
        "--dir", type=Path, default=helper.DEFAULT_DIR, help="where to link it (default: %(default)s)"
    )
    m.set_defaults(func=cmd_mount_helper)


def cmd_mount_helper(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise CommandError(
            f"linking into {args.dir} needs root: run 'sudo siffs setup mount-helper'", ExitCode.REFUSED
        )
    if args.uninstall:
        change = helper.uninstall(args.dir)
        print(f"removed {change.link}" if change.changed else f"{change.link} is not installed")
        return
    change = helper.install(args.dir)
    state = "linked" if change.changed else "already linked"
    print(f"{state}: {change.link} -> {change.target}")
