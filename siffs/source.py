"""The one byte-source protocol that every stage takes and gives.

An image's bytes pass through stages (a file, a verified block table, decryption) before the
SquashFS reader sees them. Each stage is a :class:`ByteSource` over the one below, so the
protocol lives here, importable by every stage without importing any of the others.
"""

from __future__ import annotations

from typing import Protocol


class ByteSource(Protocol):
    """Random access to the bytes of one partition (or of a stage's output).

    ``pread`` returns exactly ``size`` bytes read at ``offset`` (relative to the start of the
    source) or raises its stage's error, which carries an ``errno`` for the FUSE layer
    (EIO for damage); it must be safe to call from several threads at once.
    """

    @property
    def size(self) -> int:
        """Length of the source in bytes."""
        ...

    def pread(self, offset: int, size: int) -> bytes:
        """Read exactly ``size`` bytes at offset ``offset``."""
        ...
