"""Linking the ``mount.fuse.siffs`` console script where mount(8) looks for helpers.

mount(8) runs ``/sbin/mount.<type>`` for ``mount -t <type>`` and fstab lines, with a bare PATH,
as root. The console script that pip or pipx installs beside ``siffs`` names its interpreter by
absolute path, so a symbolic link to it is all mount(8) needs, from any kind of install.

Because root runs what the link points to, the link is refused when the script, its
interpreter, the siffs package or a directory above any of them could be changed by a user
other than root: that would hand that user root's mount(8).
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from siffs.fs.errors import MountError

HELPER_NAME = "mount.fuse.siffs"
#: Where mount(8) looks first (util-linux: /sbin, then /sbin/fs.d and /sbin/fs).
DEFAULT_DIR = Path("/sbin")


class HelperError(MountError):
    """The mount helper cannot be linked or unlinked; the message says why and what to do."""


@dataclass(frozen=True)
class HelperChange:
    """What ``install``/``uninstall`` did: ``changed`` is False when nothing needed doing."""

    link: Path
    target: Path | None
    changed: bool


def installed_script() -> Path:
    """The ``mount.fuse.siffs`` console script of the running siffs installation."""
    candidates = [
        Path(sys.executable).parent / HELPER_NAME,  # venv, pipx (the script sits beside python)
        Path(sysconfig.get_path("scripts")) / HELPER_NAME,  # system-wide pip install
        Path(sysconfig.get_path("scripts", f"{os.name}_user")) / HELPER_NAME,  # pip install --user
        Path(sys.argv[0]).resolve().parent / HELPER_NAME,  # beside the siffs that runs now
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise HelperError(
        f"the {HELPER_NAME} script of this siffs installation was not found (looked beside "
        f"{sys.executable}); reinstall siffs with pip or pipx"
    )


def _unsafe_part(path: Path) -> Path | None:
    """The first file or directory on the way to ``path`` that a user other than root can change."""
    parts = [path.resolve(), *path.resolve().parents]
    for part in parts:
        st = part.stat()
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX
        if st.st_uid != 0 or writable:
            return part
    return None


def _interpreter(script: Path) -> Path | None:
    """The interpreter a console script names on its ``#!`` line."""
    with script.open("rb") as f:
        first = f.readline(4096)
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return Path(os.fsdecode(words[0])) if words else None


def _is_ours(link: Path) -> bool:
    return link.is_symlink() and Path(os.readlink(link)).name == HELPER_NAME


def install(directory: Path = DEFAULT_DIR, script: Path | None = None) -> HelperChange:
    """Link ``directory/mount.fuse.siffs`` to this installation's script (idempotent)."""
    target = script or installed_script()
    code = Path(__file__).resolve().parents[1]  # the siffs package the script imports
    for part in filter(None, (target, _interpreter(target), code)):
        unsafe = _unsafe_part(part)
        if unsafe is not None:
            raise HelperError(
                f"{unsafe} can be changed by a user other than root, and mount(8) would run "
                f"{target} as root; install siffs where only root can write (e.g. pipx as root)"
            )
    link = directory / HELPER_NAME
    if link.is_symlink() and link.resolve() == target.resolve():
        return HelperChange(link, target, changed=False)
    if (link.exists() or link.is_symlink()) and not _is_ours(link):
        raise HelperError(f"{link} exists and is not a link to a siffs {HELPER_NAME}; remove it first")
    tmp = directory / f".{HELPER_NAME}.{os.getpid()}"
    try:
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic: mount(8) never sees a missing helper during an update
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise HelperError(f"cannot link {link}: {exc.strerror}") from exc
    return HelperChange(link, target, changed=True)


def uninstall(directory: Path = DEFAULT_DIR) -> HelperChange:
    """Remove ``directory/mount.fuse.siffs`` if it is a siffs link (idempotent)."""
    link = directory / HELPER_NAME
    if not (link.exists() or link.is_symlink()):
        return HelperChange(link, None, changed=False)
    if not _is_ours(link):
        raise HelperError(f"{link} is not a link to a siffs {HELPER_NAME}; not removing it")
    try:
        link.unlink()
    except OSError as exc:
        raise HelperError(f"cannot remove {link}: {exc.strerror}") from exc
    return HelperChange(link, None, changed=True)
