"""The documented exit codes of ``siffs`` (README, "Exit codes"). Scripts rely on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: An unexpected internal error: a bug in siffs (run with SIFFS_DEBUG=1 for a traceback).
    INTERNAL = 1
    #: Bad command-line usage (unknown option, missing argument, invalid value).
    USAGE = 2
    #: A file could not be opened, read or written (missing, permission, a directory).
    IO = 3
    #: The image is not a valid SIF file (truncated, bad magic, inconsistent tables).
    INVALID_IMAGE = 4
    #: The requested object, partition or path does not exist in the image.
    NOT_FOUND = 5
    #: The requested change cannot be made to this image (no free slot, wrong object kind).
    REFUSED = 6
