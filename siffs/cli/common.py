"""What every command shares: the error-to-exit-code map and small output helpers."""

from __future__ import annotations

import functools
import json
import signal
import sys
from typing import Any

from siffs.cli.exitcodes import ExitCode


class CommandError(Exception):
    """A failure already phrased for the user, with the exit code it maps to."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@functools.cache
def error_codes() -> list[tuple[type[BaseException], ExitCode]]:
    """Error classes of the layers below, most specific first, and the exit code each gets.

    Built on first use: the registry's, the delta's and the integrity layer's errors are looked
    at only once something has failed, and importing them took ~3 ms of every ``siffs run``.
    """
    from siffs.crypt import errors as crypt  # noqa: PLC0415 - see the docstring
    from siffs.delta import errors as delta  # noqa: PLC0415
    from siffs.fs.errors import MountError  # noqa: PLC0415
    from siffs.integrity.errors import IntegrityError, KeyMaterialError  # noqa: PLC0415
    from siffs.open import errors as opening  # noqa: PLC0415
    from siffs.pull import UnknownSourceError  # noqa: PLC0415
    from siffs.registry import errors as registry  # noqa: PLC0415
    from siffs.sif import ObjectNotFoundError, SifFormatError, SifIOError, SifUsageError  # noqa: PLC0415
    from siffs.squashfs import errors as squashfs  # noqa: PLC0415

    return [
        (KeyMaterialError, ExitCode.KEY_ERROR),
        (IntegrityError, ExitCode.NOT_TRUSTED),
        (SifIOError, ExitCode.IO),
        (SifFormatError, ExitCode.INVALID_IMAGE),
        (ObjectNotFoundError, ExitCode.NOT_FOUND),
        (SifUsageError, ExitCode.REFUSED),
        (squashfs.UnsupportedImage, ExitCode.UNSUPPORTED),
        (squashfs.NotFound, ExitCode.NOT_FOUND),
        (squashfs.NotADirectory, ExitCode.NOT_FOUND),
        (squashfs.SymlinkLoop, ExitCode.NOT_FOUND),
        (squashfs.IsADirectory, ExitCode.REFUSED),
        (squashfs.NotARegularFile, ExitCode.REFUSED),
        (squashfs.SquashfsError, ExitCode.CORRUPT_FILESYSTEM),
        (MountError, ExitCode.MOUNT_FAILED),
        (delta.NetworkError, ExitCode.NETWORK),  # includes a missing chunk, a server ignoring Range
        (delta.IndexFormatError, ExitCode.INVALID_IMAGE),
        (delta.UnsupportedFormatError, ExitCode.UNSUPPORTED),
        (delta.DigestMismatchError, ExitCode.DIGEST_MISMATCH),
        (delta.DeltaIOError, ExitCode.IO),
        (UnknownSourceError, ExitCode.USAGE),
        (registry.BadReference, ExitCode.USAGE),
        (registry.AuthError, ExitCode.AUTH_FAILED),
        (registry.NotFoundError, ExitCode.NOT_FOUND),
        (registry.NetworkError, ExitCode.NETWORK),
        (registry.DigestError, ExitCode.DIGEST_MISMATCH),
        (registry.UnsupportedError, ExitCode.UNSUPPORTED),
        (registry.LocalIOError, ExitCode.IO),
        (registry.RegistryError, ExitCode.NETWORK),
        (crypt.KeyProblem, ExitCode.ENCRYPTION_KEY),
        (crypt.UnsupportedEncryption, ExitCode.UNSUPPORTED),
        (crypt.CorruptEncryption, ExitCode.INVALID_IMAGE),
        (opening.NoKeys, ExitCode.KEY_ERROR),
        (opening.UnsignedRefused, ExitCode.NOT_TRUSTED),
        (opening.NotAPartition, ExitCode.NOT_FOUND),
        (opening.UnsupportedPartition, ExitCode.UNSUPPORTED),
        (opening.EmptyPartition, ExitCode.INVALID_IMAGE),
    ]


def exit_code_for(exc: BaseException) -> ExitCode | None:
    if isinstance(exc, CommandError):
        return exc.code
    for cls, code in error_codes():
        if isinstance(exc, cls):
            return code
    return None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


#: ``write_bytes`` hands the data to the pipe in pieces of this size.
_PIECE = 1 << 16


def write_bytes(data: bytes) -> None:
    """Binary data to standard output, in pieces, so that Ctrl-C stops it within one piece.

    Python looks at a signal between system calls only when one fails with EINTR; a signal that
    lands between two writes of one large buffer goes unnoticed until the whole buffer is out.
    """
    sys.stdout.flush()
    view = memoryview(data)
    for start in range(0, len(view), _PIECE):
        sys.stdout.buffer.write(view[start : start + _PIECE])


def interrupt_on_sigterm() -> None:
    """Make SIGTERM end the command as Ctrl-C does: cleanup runs, nothing half-written stays.

    For commands that write files (pull, push); the default action would kill the process
    before its ``finally`` blocks remove temporary files.
    """

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
