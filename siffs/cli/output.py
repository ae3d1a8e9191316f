"""How much siffs says on standard error besides errors: ``-q`` (nothing), default, ``-v`` (more).

One process-wide setting, made once by ``main`` from the global options, so that the few places
that warn or show progress need no extra parameter threaded through every command. Errors are
never silenced: they are the one line ``main`` prints, whatever the level.
"""

from __future__ import annotations

import sys
from enum import IntEnum


class Verbosity(IntEnum):
    QUIET = 0  #: errors only: no warnings, no progress bar
    NORMAL = 1
    VERBOSE = 2  #: also details such as the mount daemon's pid and log file


_level = Verbosity.NORMAL


def set_verbosity(level: Verbosity) -> None:
    global _level  # noqa: PLW0603 -- the one process-wide setting this module exists for
    _level = level


def verbosity() -> Verbosity:
    return _level


def warn(message: str) -> None:
    """``siffs: warning: MESSAGE`` on stderr, unless ``-q``."""
    if _level >= Verbosity.NORMAL:
        print(f"siffs: warning: {message}", file=sys.stderr)


def detail(message: str) -> None:
    """``siffs: MESSAGE`` on stderr with ``-v`` only."""
    if _level >= Verbosity.VERBOSE:
        print(f"siffs: {message}", file=sys.stderr)
