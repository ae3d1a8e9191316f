"""The assembled image: written beside the destination, checked, and only then put in its place.

A pull writes into a temporary file in the destination's directory (so the final rename is atomic
and never crosses filesystems). Before the rename the file is flushed, its size and whole-file
digest (when the source gives one) are checked, and the SIF must pass signature verification
under the trust policy, unless the caller allowed unsigned images: an index or control file from
an untrusted place can waste bandwidth, never get an image trusted.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from siffs.delta.errors import DeltaIOError, DigestMismatchError
from siffs.delta.files import describe, temp_name
from siffs.integrity.keyring import trusted_signers
from siffs.integrity.verify import KeyMaterial
from siffs.sif.durable import fsync_directory

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Trust:
    """How the assembled image is accepted: ``keys`` None means unsigned images are allowed."""

    keys: KeyMaterial | None
    progress: Progress | None = None


def check_image(path: str, trust: Trust) -> list[str]:
    """Open the SIF and require trusted signatures over its primary partition; who signed it."""
    return trusted_signers(path, trust.keys, trust.progress)


class Assembly:
    """A temporary file of the final size that chunks are written into at their offsets."""

    def __init__(self, dest: str, size: int) -> None:
        self.dest = dest
        self.size = size
        directory = os.path.dirname(os.path.abspath(dest))
        if os.path.isdir(dest):
            raise DeltaIOError(f"{dest} is a directory: give the image file name to write")
        if not os.access(directory, os.W_OK):
            raise DeltaIOError(f"{directory}: not writable: choose another destination")
        self.path = temp_name(dest)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise describe(exc, dest) from None
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            self.discard()
            raise describe(exc, dest) from None

    def write(self, offset: int, data: bytes | memoryview) -> None:
        try:
            view = memoryview(data)
            while view:
                done = os.pwrite(self.fd, view, offset)
                view, offset = view[done:], offset + done
        except OSError as exc:
            raise describe(exc, self.dest) from None

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def commit(self, trust: Trust, digest: Callable[[], None] | None = None) -> list[str]:
        """Flush, check (size, ``digest`` check, signatures), rename over the destination."""
        try:
            try:
                os.fsync(self.fd)
                if os.fstat(self.fd).st_size != self.size:
                    raise DigestMismatchError(f"{self.dest}: assembled size differs from the index")
            except OSError as exc:
                raise describe(exc, self.dest) from None
            if digest is not None:
                digest()
            signers = check_image(self.path, trust)
            os.close(self.fd)
            os.replace(self.path, self.dest)
            fsync_directory(os.path.dirname(os.path.abspath(self.dest)))
        except OSError as exc:
            self.discard()
            raise describe(exc, self.dest) from None
        except BaseException:
            self.discard()
            raise
        return signers
