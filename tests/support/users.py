"""An unprivileged user for tests that must not run as root (FUSE mounts, ch-run, runc)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess

import pytest

TEST_USER = "siffs-test"


#: /dev/fuse's mode before a test changed it, so that the session's end puts it back.
original_fuse_mode: int | None = None
#: Whether this session created the test user (then the session's end removes it again).
created_user = False


def ensure_user() -> pwd.struct_passwd:
    """Create ``siffs-test`` (once) and make /dev/fuse usable by it, as a desktop has it.

    Debian servers without udev have /dev/fuse as 0600; ``restore_host`` puts that back.
    """
    global original_fuse_mode, created_user  # noqa: PLW0603 -- one record for the whole session
    if os.geteuid() != 0:
        pytest.skip("needs root to create the unprivileged test user")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
        created_user = True
        entry = pwd.getpwnam(TEST_USER)
    if os.path.exists("/dev/fuse"):
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
        if mode != 0o666:
            if original_fuse_mode is None:
                original_fuse_mode = mode
            os.chmod("/dev/fuse", 0o666)
    return entry


def restore_host() -> None:
    """Undo what ``ensure_user`` changed on the host (called once, when the test session ends).

    A user that existed before (another session's, or one a developer keeps) stays.
    """
    if original_fuse_mode is not None:
        os.chmod("/dev/fuse", original_fuse_mode)
    if created_user:  # its processes (daemons of failed tests) go with it
        subprocess.run(["pkill", "-KILL", "-u", TEST_USER], check=False)
        subprocess.run(["userdel", "--remove", TEST_USER], check=False, capture_output=True)


def user_dir(base: os.PathLike[str] | str, name: str) -> str:
    """A directory under ``base`` that the test user owns (and can reach)."""
    entry = ensure_user()
    path = os.path.join(base, name)
    os.makedirs(path, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    # pytest's tmp dirs are private to root: open the way down for the test user.
    parent = os.path.dirname(os.path.abspath(path))
    while parent not in ("/", "/tmp"):
        os.chmod(parent, os.stat(parent).st_mode | 0o005)
        parent = os.path.dirname(parent)
    return path
