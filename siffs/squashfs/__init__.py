"""SquashFS 4.0 reading for siffs: from a byte source to inodes, listings, file bytes and xattrs.

Knows only a byte source (see :mod:`siffs.squashfs.source`), never the SIF container,
the integrity layer or FUSE. :class:`SquashFS` is the one interface the filesystem layer
uses; :mod:`siffs.squashfs.paths` and :mod:`siffs.squashfs.listing` serve the CLI.
Every error is a :class:`SquashfsError`; damaged or hostile input is :class:`CorruptImage`.
"""

from siffs.squashfs.errors import (
    CorruptImage,
    IsADirectory,
    MissingCodec,
    NoSuchAttribute,
    NotADirectory,
    NotARegularFile,
    NotASymlink,
    NotFound,
    SquashfsError,
    SymlinkLoop,
    UnsupportedImage,
    XattrsUnsupported,
)
from siffs.squashfs.inode import Stat
from siffs.squashfs.listing import format_long, quote_name
from siffs.squashfs.paths import resolve, walk
from siffs.squashfs.reader import FsStats, SquashFS
from siffs.squashfs.source import ByteSource, FileSource

__all__ = [
    "ByteSource",
    "CorruptImage",
    "FileSource",
    "FsStats",
    "IsADirectory",
    "MissingCodec",
    "NoSuchAttribute",
    "NotADirectory",
    "NotARegularFile",
    "NotASymlink",
    "NotFound",
    "SquashFS",
    "SquashfsError",
    "Stat",
    "SymlinkLoop",
    "UnsupportedImage",
    "XattrsUnsupported",
    "format_long",
    "quote_name",
    "resolve",
    "walk",
]
