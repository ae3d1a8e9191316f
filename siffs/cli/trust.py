"""The trust options of every command that exposes an image, and the CLI's side of the open pipeline.

``--allow-unsigned`` and ``--key`` become a :class:`siffs.open.trust.TrustChoice`; the pipeline
talks to the person at the terminal only through the hooks made here (warnings, the progress
bar, the passphrase prompt).
"""

from __future__ import annotations

import argparse

from siffs.cli import encrypted, output
from siffs.cli.progress import ProgressBar
from siffs.open.hooks import Hooks
from siffs.open.trust import TrustChoice


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="expose the image without verifying its signatures (says so on stderr)",
    )
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="trust this public key (OpenPGP or PEM) instead of the keyring; repeatable",
    )


def choice(args: argparse.Namespace) -> TrustChoice:
    """The trust choice of a command's options (commands without them verify against the keyring)."""
    return TrustChoice(bool(getattr(args, "allow_unsigned", False)), tuple(getattr(args, "key", None) or ()))


def hooks(args: argparse.Namespace) -> Hooks:
    """Warnings and progress on standard error; the key from the command's key options, asked for once."""
    keys = encrypted.KeyChoice.from_args(args)
    return Hooks(warn=output.warn, notice=encrypted.notice, progress=ProgressBar, unlock=keys.material)
