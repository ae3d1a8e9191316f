"""An unprivileged user for tests that must not run as root (FUSE mounts, ch-run, runc)."""

from __future__ import annotations

import os
import pwd
import subprocess

import pytest

TEST_USER = "siffs-test"


def ensure_user() -> pwd.struct_passwd:
    """Create ``siffs-test`` (once) and make /dev/fuse usable by it, as a desktop has it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the unprivileged test user")
    try:
        entry = pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", TEST_USER], check=True)
        entry = pwd.getpwnam(TEST_USER)
    if os.path.exists("/dev/fuse"):
        os.chmod("/dev/fuse", 0o666)
    return entry


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
