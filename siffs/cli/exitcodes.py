"""The documented exit codes of ``siffs`` (README, "Exit codes"). Scripts rely on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    #: Success.
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
    #: Signature verification failed, or the image is not signed by a trusted key.
    NOT_TRUSTED = 7
    #: A key could not be used: unreadable or malformed key file, wrong kind of key.
    KEY_ERROR = 8
    #: The filesystem inside the image is damaged (SquashFS corruption).
    CORRUPT_FILESYSTEM = 9
    #: The image uses something siffs cannot read (compressor, encryption, partition kind).
    UNSUPPORTED = 10
    #: Mounting or unmounting failed (mount point, FUSE, daemon).
    MOUNT_FAILED = 11
    #: A server could not be reached, or kept failing after retries (HTTP stores, registries).
    NETWORK = 12
    #: An encrypted image needs a key (passphrase or PEM) that was not given, or the key given is wrong.
    ENCRYPTION_KEY = 13
    #: A registry or server refused the credentials, or asks for credentials that were not given.
    AUTH_FAILED = 14
    #: Downloaded data does not match its published digest (chunk, block, blob or manifest).
    DIGEST_MISMATCH = 15
    #: run/exec/shell/test could not start the command (image, mount, user namespaces, command not
    #: found): one ``FATAL:`` line, as Apptainer. Otherwise these commands exit with the command's status.
    CONTAINER_FAILED = 255
    #: Interrupted (Ctrl-C, SIGINT): 128 + 2, as a shell reports a command killed by SIGINT.
    INTERRUPTED = 130
