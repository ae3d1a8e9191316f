"""What every command shares: the error-to-exit-code map and small output helpers."""

from __future__ import annotations

import json
import sys
from typing import Any

from siffs.cli.exitcodes import ExitCode
from siffs.crypt import errors as crypt
from siffs.fs.errors import MountError
from siffs.integrity.errors import IntegrityError, KeyMaterialError
from siffs.sif import ObjectNotFoundError, SifFormatError, SifIOError, SifUsageError
from siffs.squashfs import errors as squashfs


class CommandError(Exception):
    """A failure already phrased for the user, with the exit code it maps to."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


#: Error classes of the layers below, most specific first, and the exit code each gets.
ERROR_CODES: list[tuple[type[BaseException], ExitCode]] = [
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
    (crypt.KeyProblem, ExitCode.ENCRYPTION_KEY),
    (crypt.UnsupportedEncryption, ExitCode.UNSUPPORTED),
    (crypt.CorruptEncryption, ExitCode.INVALID_IMAGE),
]


def exit_code_for(exc: BaseException) -> ExitCode | None:
    if isinstance(exc, CommandError):
        return exc.code
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return None


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def write_bytes(data: bytes) -> None:
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
