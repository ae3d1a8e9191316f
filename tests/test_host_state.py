"""The test suite leaves the host as it found it (issue 12 item 8)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.support.hostns import private_mounts, replace_device
from tests.support.shared import REPO

PROBE = """
import os
from tests.support.users import ensure_user

def test_unprivileged_tests_open_dev_fuse():
    ensure_user()
    assert os.stat("/dev/fuse").st_mode & 0o777 == 0o666
"""


def test_a_session_puts_dev_fuse_back(tmp_path):
    """A server without udev has /dev/fuse 0600: a session opens it for its user, then closes it."""
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    with private_mounts():  # the 0600 node is this namespace's; the host's /dev/fuse is untouched
        replace_device(Path("/dev/fuse"), 0o600, tmp_path / "dev")
        session = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", probe],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    assert session.returncode == 0, session.stdout + session.stderr
    assert mode == 0o600
