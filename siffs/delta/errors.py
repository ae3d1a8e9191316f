"""The delta stage's errors: one hierarchy, each class one kind of failure the CLI maps to one exit code.

Every message is one line that names what failed (which index rule, which chunk, which server or seed)
and, where it helps, what to do about it.
"""

from __future__ import annotations


class DeltaError(Exception):
    """Base of every error the delta stage raises."""

    #: Messages name the file, chunk or server themselves; the CLI adds no file name in front.
    names_its_subject = True


class IndexFormatError(DeltaError):
    """An index (.caibx) or control file (.zsync) breaks a rule of its format: corrupt or truncated."""


class UnsupportedFormatError(DeltaError):
    """Well-formed, but uses something siffs does not implement (archive index, xz chunks, SHA-224 zsync)."""


class DigestMismatchError(DeltaError):
    """A chunk, block or whole file does not hash to what the index or control file says."""


class NetworkError(DeltaError):
    """A server could not be reached, answered wrongly, or kept failing after retries."""


class StoreIncompleteError(NetworkError):
    """The store answered 404 for a chunk the index names: the store is incomplete for this index."""


class RangeIgnoredError(NetworkError):
    """The server answered a Range request with the whole file: zsync cannot work against it."""


class DeltaIOError(DeltaError):
    """A local file could not be read or written (destination not writable, disk full, seed unreadable)."""
