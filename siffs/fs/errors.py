"""Errors of the FUSE filesystem layer."""


class MountError(Exception):
    """Mounting, serving or unmounting failed; the message says what to do about it."""

    #: Messages name the mount point themselves; the CLI adds no file name in front.
    names_its_subject = True
