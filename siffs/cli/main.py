"""Entry point of the ``siffs`` command: parse, dispatch, turn errors into one line + exit code.

Every error class of the layers below maps to one documented exit code (``exitcodes``); a
user never sees a traceback unless ``SIFFS_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from siffs import __version__
from siffs.cli.common import exit_code_for
from siffs.cli.exitcodes import ExitCode

#: Each command group's module and the commands it registers. Only the module of the command
#: being run is imported: the FUSE stack (trio, pyfuse3) and the crypto stack take longer to
#: import than most commands take to run. A test checks this table against the modules.
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "siffs.cli.inspect": ("list", "info", "header", "dump"),
    "siffs.cli.browse": ("ls", "cat"),
    "siffs.cli.edit": ("new", "add", "del", "setprim", "create"),
    "siffs.cli.mount": ("mount", "umount", "mounts"),
    "siffs.cli.verify": ("verify", "sign", "key"),
    "siffs.cli.run": ("run", "exec", "shell", "test", "inspect", "bundle"),
    "siffs.cli.sandbox": ("sandbox",),
}


def _groups_for(argv: Sequence[str] | None) -> list[str]:
    """The modules to load: the one defining the command in ``argv``, or all (help, typos)."""
    command = next((a for a in argv or () if not a.startswith("-")), None)
    for module, commands in COMMAND_GROUPS.items():
        if command in commands:
            return [module]
    return list(COMMAND_GROUPS)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command; with ``argv`` None, the full parser (every command)."""
    parser = argparse.ArgumentParser(
        prog="siffs",
        description="Use Singularity/Apptainer SIF images without Singularity.",
        epilog="exit codes: "
        + ", ".join(f"{c.value} {c.name.lower().replace('_', ' ')}" for c in ExitCode)
        + " (details in the README)",
    )
    parser.add_argument("--version", action="version", version=f"siffs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _groups_for(argv):
        importlib.import_module(module).register(sub)
    return parser


def _subject(args: argparse.Namespace) -> str | None:
    """The file an error is about, to name it in the message."""
    return getattr(args, "image", None)


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("siffs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``siffs dump ... | head``): not an error worth a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None or os.environ.get("SIFFS_DEBUG"):
            if os.environ.get("SIFFS_DEBUG"):
                raise
            print(
                f"siffs: internal error: {type(exc).__name__}: {exc} "
                "(please report it; SIFFS_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            return ExitCode.INTERNAL
        subject = _subject(args)
        # Name the file unless the error names its own subject (mount errors name the mount point).
        named = getattr(exc, "names_its_subject", False)
        prefix = f"siffs: {subject}: " if subject and not named else "siffs: "
        print(prefix + str(exc), file=sys.stderr)
        return code
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
