"""Errors of the SIF container layer.

Every problem with a SIF file surfaces as one of these, with a one-line message that
names the problem; the CLI adds the file name and maps the class to an exit code.
"""


class SifError(Exception):
    """Base class: anything wrong while reading or writing a SIF container."""


class SifIOError(SifError):
    """The file could not be opened, read or written (missing, unreadable, a directory)."""


class SifFormatError(SifError):
    """The bytes are not a valid SIF container (truncated, bad magic, inconsistent tables)."""


class ObjectNotFoundError(SifError):
    """No used descriptor matches the requested object ID or kind."""


class SifUsageError(SifError):
    """A write was asked that the format cannot express (no free slot, bad field value)."""
