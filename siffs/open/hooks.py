"""The callbacks through which the open pipeline talks to a person, supplied by the caller.

The pipeline never prints or prompts: the CLI hands it a warning printer, a status-line
printer, a progress-bar factory and, for encrypted partitions, a function that produces the
key (asking for a passphrase only then). The defaults are silent and offer no key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # the crypto stack loads only when an encrypted partition is opened
    from siffs.crypt.keys import KeyMaterial

#: ``(done, total)`` of a long step, such as hashing an image.
Progress = Callable[[int, int], None]


@contextlib.contextmanager
def _no_progress(label: str) -> Iterator[Progress]:
    yield lambda done, total: None


def _no_key() -> KeyMaterial:
    from siffs.crypt.keys import KeyMaterial  # noqa: PLC0415 - see TYPE_CHECKING above

    return KeyMaterial()


def _silent(message: str) -> None:
    """Drops a message: the default for callers that have nobody to tell."""


class Hooks(NamedTuple):
    """``warn``: a one-line warning; ``notice``: a status line for a slow step (the KDF);
    ``progress(label)``: a context giving a progress callback; ``unlock()``: the key for an
    encrypted partition, called only once one is found."""

    warn: Callable[[str], None] = _silent
    notice: Callable[[str], None] = _silent
    progress: Callable[[str], AbstractContextManager[Progress]] = _no_progress
    unlock: Callable[[], KeyMaterial] = _no_key


SILENT = Hooks()
