"""Errors of the decryption stage: one hierarchy, one class per exit code the CLI gives.

Each class carries the errno a FUSE handler answers with, like the SquashFS errors, because a
decryption failure can surface while serving a read (a tampered gocryptfs block).
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class CryptError(Exception):
    """Base class: anything the decryption stage refuses or cannot do."""

    errno: ClassVar[int] = _errno.EIO


class KeyProblem(CryptError):
    """A key is needed and was not given, the key given is wrong, or it cannot be used."""


class UnsupportedEncryption(CryptError):
    """A well-formed encrypted container of a kind siffs does not read (LUKS1, other ciphers)."""

    errno = _errno.EOPNOTSUPP


class CorruptEncryption(CryptError):
    """The encrypted container contradicts its format (damaged, truncated or hostile)."""


class TamperedBlock(CorruptEncryption):
    """An authenticated block failed its check while serving a read: the read answers EIO."""
