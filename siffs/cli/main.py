"""Entry point of the ``siffs`` command: parse, dispatch, turn errors into one line + exit code.

Every error class of the layers below maps to one documented exit code (``exitcodes``); a
user never sees a traceback unless ``SIFFS_DEBUG=1`` is set.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, cast

from siffs import __version__
from siffs.cli import output, parserinfo
from siffs.cli.common import CommandError, exit_code_for
from siffs.cli.exitcodes import ExitCode
from siffs.cli.output import Verbosity

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
    "siffs.cli.instance": ("instance",),
    "siffs.cli.sandbox": ("sandbox",),
    "siffs.cli.completion": ("completion",),
    "siffs.cli.setup": ("setup",),
    "siffs.cli.cache": ("cache",),
    "siffs.cli.registry": ("push", "registry"),
    "siffs.cli.delta": ("delta",),
    "siffs.cli.pull": ("pull",),
}

_VERBOSITY_FLAGS = (
    (("-q", "--quiet"), Verbosity.QUIET, "errors only: no warnings, no progress bar"),
    (("-v", "--verbose"), Verbosity.VERBOSE, "more detail on stderr (mount daemon pid and log, causes)"),
)


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The command word of ``argv``: the first that is not an option (the top level's take no value)."""
    return next((a for a in argv or () if not a.startswith("-")), None)


def _groups_for(argv: Sequence[str] | None) -> list[str]:
    """The modules to load: the one defining the command in ``argv``, or all (help, typos).

    ``siffs --version`` alone needs none: scripts call it to probe for siffs, and loading every
    command group (the FUSE and crypto stacks) would make that take a third of a second.
    """
    command = _command_in(argv)
    if command is None and argv and "--version" in argv and not {"-h", "--help"} & set(argv):
        return []
    for module, commands in COMMAND_GROUPS.items():
        if command in commands:
            return [module]
    return list(COMMAND_GROUPS)


class _Unbuilt:
    """The parser of a command that is not being run: takes whatever ``register`` adds, keeps nothing."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return self._take

    def _take(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


class _OneCommand:
    """The subparsers action as a group's ``register`` sees it, building ``command``'s parser only.

    Building a parser costs more than parsing: ``siffs run``'s group has four commands of some
    sixty options each, and building them all took ~5 ms of every ``siffs run``.
    """

    def __init__(self, sub: argparse._SubParsersAction[argparse.ArgumentParser], command: str) -> None:
        self._sub, self._command = sub, command

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser | _Unbuilt:
        return self._sub.add_parser(name, **kwargs) if name == self._command else _Unbuilt()


def exit_codes_text() -> str:
    """The exit codes, as ``--help`` and the man page list them."""
    return ", ".join(f"{c.value} {c.name.lower().replace('_', ' ')}" for c in sorted(ExitCode))


def _add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    """-q/-v, before the command or after it (``siffs verify -q IMAGE``).

    A command that already gives one of these flags its own meaning keeps it: ``siffs mount -v``
    makes the daemon log in detail, and raises the verbosity too (``_set_verbosity``).
    """
    group = parser.add_mutually_exclusive_group()
    for flags, level, text in _VERBOSITY_FLAGS:
        with contextlib.suppress(argparse.ArgumentError):  # the command's own -v
            group.add_argument(
                *flags, dest="verbosity", action="store_const", const=level, default=default, help=text
            )


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``'s command; with ``argv`` None, the full parser (every command)."""
    parser = argparse.ArgumentParser(
        prog="siffs",
        description="Use Singularity/Apptainer SIF images without Singularity.",
        epilog=f"exit codes: {exit_codes_text()} (details in the README and siffs(1))",
    )
    parser.add_argument("--version", action="version", version=f"siffs {__version__}")
    _add_verbosity(parser, Verbosity.NORMAL)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = _groups_for(argv)
    # One group means a known command (``_groups_for``): only its parser is needed.
    target = sub if len(groups) != 1 else cast(Any, _OneCommand(sub, cast(str, _command_in(argv))))
    for module in groups:
        importlib.import_module(module).register(target)
    for command in parserinfo.walk(parser)[1:]:
        # SUPPRESS: a command not given -q/-v keeps what was said before its name.
        _add_verbosity(command.parser, argparse.SUPPRESS)
    return parser


def is_mount_call(argv: Sequence[str]) -> bool:
    """True when siffs runs as a mount helper: a path where the command name would be.

    A path contains a slash or names an existing file; a mistyped command name does neither,
    so it still gets argparse's "invalid choice" answer.
    """
    if len(argv) < 2 or argv[0].startswith("-") or any(argv[0] in cs for cs in COMMAND_GROUPS.values()):
        return False
    return "/" in argv[0] or os.path.exists(argv[0])


def _subject(args: argparse.Namespace) -> str | None:
    """The file an error is about, to name it in the message."""
    return getattr(args, "image", None)


def _as_mount_helper(argv: list[str]) -> list[str] | int:
    """mount(8) and mount.fuse3 run ``siffs SOURCE MOUNTPOINT -o ...``: the ``siffs mount`` words
    for that, or the exit code when there is nothing to mount (an error, ``mount -f``)."""
    from siffs.cli import mounthelper  # noqa: PLC0415 -- loads the FUSE stack: only for a mount

    try:
        words = mounthelper.siffs_mount_argv(argv)
    except CommandError as exc:
        print(f"siffs: {exc}", file=sys.stderr)
        return exc.code
    return ExitCode.OK if words is None else words


def _set_verbosity(args: argparse.Namespace) -> None:
    """Apply -q/-v; ``siffs mount -v`` and ``siffs -v mount`` mean the same."""
    level = Verbosity.VERBOSE if getattr(args, "verbose", False) else args.verbosity
    output.set_verbosity(level)
    if hasattr(args, "verbose"):
        args.verbose = level is Verbosity.VERBOSE


def _reader_gone() -> int:
    """The reader went away (``siffs dump ... | head``): not an error worth a message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return ExitCode.OK


@contextlib.contextmanager
def _load_quietly(one_shot: bool) -> Iterator[None]:
    """No cyclic garbage collection while the command's modules load, and none over them after.

    Loading them makes tens of thousands of objects that live as long as the process: the
    collector ran over them some fifteen times before ``siffs run``'s mount, ~3 ms of every start,
    and kept scanning them after. Frozen (``gc.freeze``), later collections skip them, as in the
    mount daemon forked later. Only where the process runs one command: a test's process calling
    ``main`` many times keeps its collector as it was.
    """
    if not one_shot:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def main(argv: Sequence[str] | None = None, *, one_shot: bool = False) -> int:
    """Run the command in ``argv``; its exit code. ``one_shot``: this process runs this command
    only (the installed ``siffs``), so what the parser loads may be frozen (``_load_quietly``)."""
    words = list(sys.argv[1:] if argv is None else argv)
    if is_mount_call(words):
        helper = _as_mount_helper(words)
        if isinstance(helper, int):
            return helper
        words = helper
    try:
        with _load_quietly(one_shot):
            args = build_parser(words).parse_args(words)  # prints --help and --version itself
    except BrokenPipeError:
        return _reader_gone()
    _set_verbosity(args)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("siffs: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        return _reader_gone()
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
        if exc.__cause__ is not None:
            output.detail(f"cause: {type(exc.__cause__).__name__}: {exc.__cause__}")
        return code
    return ExitCode.OK


def entry() -> NoReturn:
    """The installed command: ``main()``, then leave without tearing the interpreter down.

    Freeing every module and object at interpreter exit takes about 20 ms after a command
    that loaded the runtime, and ``siffs run`` pays it per job, after the container has
    exited. When no other thread is running, the streams are flushed and the exit handlers
    run (logging's among them), as a normal exit does, then the process ends. With another
    thread alive (none should be) it exits normally, so that thread is waited for.
    """
    try:
        code = main(one_shot=True)
    except SystemExit as stop:  # commands that end with the container's own status
        if stop.code is not None and not isinstance(stop.code, int):
            raise
        code = stop.code or 0
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except OSError:  # unwritable: a normal exit then ends with status 120 too
        code = code or 120
    except ValueError:  # closed by the command
        pass
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
