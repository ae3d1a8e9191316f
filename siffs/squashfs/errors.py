"""Errors of the SquashFS reader: one hierarchy, one documented type for bad input.

The filesystem layer needs to answer every failure with an errno, and the CLI needs one
message and one exit code per class; so each class carries the errno a FUSE handler
should reply with, and messages are one line that says what is wrong and what to do.

A damaged or hostile image must only ever yield :class:`CorruptImage` (or another class
here). There is no catch-all that turns ``IndexError`` or ``struct.error`` into it: every
place where the format can lie checks the value and raises ``CorruptImage`` with a message
saying what is wrong, so a raw Python exception escaping the reader is a bug, and the
fuzzers (``tests/squashfs/fuzz.py``, ``tests/fuzz``) fail on it.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class SquashfsError(Exception):
    """Base class: anything the SquashFS reader refuses or cannot do."""

    #: What a filesystem layer should answer for this error.
    errno: ClassVar[int] = _errno.EIO


class CorruptImage(SquashfsError):
    """The image contradicts the SquashFS format (truncated, damaged or hostile).

    The one error type for bad input: the FUSE layer turns it into EIO.
    """


class UnsupportedImage(SquashfsError):
    """A well-formed image this reader does not handle (not SquashFS 4.0, unknown compressor)."""

    errno = _errno.EOPNOTSUPP


class MissingCodec(UnsupportedImage):
    """The image's compressor needs a Python package that is not installed; the message names it."""


class NotFound(SquashfsError):
    """No entry of that name, or an inode number the reader has not been told about."""

    errno = _errno.ENOENT


class NotADirectory(SquashfsError):
    """A directory operation (lookup, readdir, a path component) on something else."""

    errno = _errno.ENOTDIR


class IsADirectory(SquashfsError):
    """File data was asked of a directory."""

    errno = _errno.EISDIR


class NotARegularFile(SquashfsError):
    """File data was asked of a device, FIFO, socket or symlink."""

    errno = _errno.EINVAL


class NotASymlink(SquashfsError):
    """readlink on something that is not a symbolic link (readlink(2) answers EINVAL)."""

    errno = _errno.EINVAL


class SymlinkLoop(SquashfsError):
    """Path resolution followed too many symbolic links."""

    errno = _errno.ELOOP


class XattrsUnsupported(SquashfsError):
    """listxattr on an image without an xattr table, where the kernel answers EOPNOTSUPP."""

    errno = _errno.EOPNOTSUPP


class NoSuchAttribute(SquashfsError):
    """The inode has no extended attribute of that name."""

    errno = _errno.ENODATA
