"""The runtime's one error hierarchy.

Every failure the user can do something about is a ``ContainerError`` whose message is one
line saying what went wrong and, where there is one, what to do. Callers print it as
Apptainer does (``FATAL: ...``) and exit with ``exit_status`` (255 unless stated).
"""

from __future__ import annotations

import sys

#: The status of "siffs could not start the container" and "command not found" (spec §3, §12.3).
COULD_NOT_START = 255


class ContainerError(Exception):
    """Anything that prevented the command from starting."""

    exit_status = COULD_NOT_START


class InvalidRequest(ContainerError):
    """The request cannot be honoured as given: missing tree, bind source, bad option value."""


class EnvironmentFileError(InvalidRequest):
    """An ``--env-file`` line that siffs refuses to evaluate (command substitution, bad syntax)."""


class NamespacesUnavailable(ContainerError):
    """The kernel refused an unprivileged user namespace; the message names the knob to change."""


class MountFailed(ContainerError):
    """A mount needed to build the container root failed."""


class CommandNotFound(ContainerError):
    """The command does not exist or is not executable inside the container."""


class NoRunscript(ContainerError):
    """Nothing to run: no runscript nor shell, an unknown app, an app without its script (exit 1).

    Apptainer's action script and the image's ``95-apps.sh`` exit 1 in these cases (spec §12.3).
    """

    exit_status = 1


_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence warnings (``-q``, as Apptainer's): the caller asked for errors only."""
    global _quiet  # noqa: PLW0603 - one process-wide switch, set once before the container starts
    _quiet = quiet


def warn(message: str) -> None:
    """A problem the container survives, on stderr as Apptainer words it (unless quiet)."""
    if not _quiet:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def report(error: ContainerError) -> None:
    """The one line a failed start prints (spec §12.3)."""
    print(f"FATAL: {error}", file=sys.stderr, flush=True)
