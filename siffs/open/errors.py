"""What can go wrong while opening an image, before any byte of the tree is read.

Failures of the layers below (SIF format, signatures, SquashFS, decryption) keep their own
classes; these are the pipeline's own refusals. Each message says what to do.
"""

from __future__ import annotations


class OpenError(Exception):
    """An image cannot be opened as asked."""


class NotAPartition(OpenError):
    """The object asked for is not a partition."""


class UnsupportedPartition(OpenError):
    """The partition holds a filesystem siffs does not read."""


class EmptyPartition(OpenError):
    """The partition has no bytes."""


class UnsignedRefused(OpenError):
    """A bare SquashFS file (no signature possible) without ``--allow-unsigned``."""


class NoKeys(OpenError):
    """Verification was asked for and no key to verify with was given or trusted."""
