"""The early mount: ``siffs mount`` makes the mount before its daemon imports the FUSE binding.

A stand-in ``pyfuse3`` on PYTHONPATH (one whose import never ends, or fails) makes the window
between "mounted" and "serving" as long as a test needs, so each way out of it can be checked:
the mount is live and listed while the daemon starts, a stop signal or a failed start removes
it, and the old path (libfuse mounts after the imports) gives the same mount.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siffs.fs.registry import file_stem
from tests.support.mounts import daemons_for, siffs
from tests.support.trees import assert_same_tree, snapshot
from tests.support.users import TEST_USER, user_dir

HANGS = "import time\ntime.sleep(3600)\n"
BROKEN = "raise ImportError('this pyfuse3 is broken on purpose')\n"


def _binding_env(base: Path, body: str) -> dict[str, str]:
    """An environment whose ``pyfuse3`` is ``body``, with the daemons' logs under ``base``."""
    fake = base / "fake-binding"
    fake.mkdir(exist_ok=True)
    (fake / "pyfuse3.py").write_text(body)
    fake.chmod(0o755)
    (fake / "pyfuse3.py").chmod(0o644)
    path = f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return dict(os.environ, PYTHONPATH=path, XDG_STATE_HOME=str(base / "state"))


def _listed(mnt: Path) -> bool:
    """In the mount table? Without a stat of the mount point, which waits for the daemon to serve."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(mnt) for line in f)


def _wait_gone(mnt: Path) -> None:
    deadline = time.monotonic() + 15
    while (_listed(mnt) or daemons_for(mnt)) and time.monotonic() < deadline:
        time.sleep(0.05)


def _log_of(mnt: Path, env: dict[str, str]) -> str:
    """The daemon's log: one per mount point, under the XDG_STATE_HOME that ``env`` gives."""
    return (Path(env["XDG_STATE_HOME"]) / "siffs/logs" / f"{file_stem(str(mnt))}.log").read_text()


@pytest.mark.parametrize("user", [None, TEST_USER], ids=["root", "user"])
def test_mount_is_live_before_the_binding_is_imported_and_a_signal_then_removes_it(image, tmp_path, user):
    base = Path(user_dir(tmp_path, "w")) if user else tmp_path
    mnt = base / "mnt"
    mnt.mkdir()
    if user:
        os.chown(mnt, *(os.stat(base).st_uid, os.stat(base).st_gid))
    env = _binding_env(base, HANGS)
    result = siffs("mount", "--allow-unsigned", image, mnt, env=env, user=user)
    assert result.returncode == 0, result.stderr
    try:
        assert _listed(mnt)  # mounted while the daemon is still importing (it never finishes)
        listed = json.loads(siffs("mounts", "--json", env=env, user=user, check=True).stdout)
        (row,) = [r for r in listed if r["mount_point"] == str(mnt)]
        assert row["alive"]
        (pid,) = daemons_for(mnt)
        assert row["pid"] == pid
        os.kill(pid, signal.SIGTERM)
        _wait_gone(mnt)
        assert not _listed(mnt)
        assert not daemons_for(mnt)
        assert "SIGTERM while starting" in _log_of(mnt, env)
        assert not [r for r in json.loads(siffs("mounts", "--json", env=env, user=user).stdout)
                    if r["mount_point"] == str(mnt)]  # fmt: skip
    finally:
        for pid in daemons_for(mnt):  # a stop signal removes the mount; an unmount would stat it
            os.kill(pid, signal.SIGTERM)


def test_daemon_that_cannot_start_leaves_no_mount(image, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = _binding_env(tmp_path, BROKEN)
    result = siffs("mount", "--allow-unsigned", image, mnt, env=env)
    assert result.returncode == 0, result.stderr  # the mount was live when the command returned
    _wait_gone(mnt)
    assert not _listed(mnt)
    assert not daemons_for(mnt)
    assert os.listdir(mnt) == []  # an empty directory again, not "Transport endpoint is not connected"
    assert "this pyfuse3 is broken on purpose" in _log_of(mnt, env)


def test_old_path_gives_the_same_mount(image, tmp_path):
    """SIFFS_EARLY_MOUNT=0 (also what a missing fusermount3 or libfuse < 3.3 gets): same mount, same tree."""
    seen = {}
    for switch in ("1", "0"):
        mnt = tmp_path / f"mnt{switch}"
        mnt.mkdir()
        env = dict(os.environ, SIFFS_EARLY_MOUNT=switch)
        siffs("mount", "--allow-unsigned", image, mnt, "-o", "noexec", env=env, check=True)
        try:
            line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                        if ln.split(" ")[4] == str(mnt))  # fmt: skip
            left, right = line.split(" - ")
            seen[switch] = (left.split(" ")[5], right, snapshot(mnt))
        finally:
            siffs("umount", mnt, check=True)
        _wait_gone(mnt)
    assert seen["1"][:2] == seen["0"][:2]  # mount flags, fs type, source, super options
    assert "noexec" in seen["1"][0] and "nosuid" in seen["1"][0]
    assert_same_tree(seen["1"][2], seen["0"][2])


def test_old_path_does_not_mount_before_the_binding(image, tmp_path):
    """Early mount off: a daemon that cannot import its binding says so, and nothing is mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = _binding_env(tmp_path, BROKEN) | {"SIFFS_EARLY_MOUNT": "0"}
    result = siffs("mount", "--allow-unsigned", image, mnt, env=env)
    assert result.returncode == 11
    assert "this pyfuse3 is broken on purpose" in result.stderr
    assert not _listed(mnt)
    assert not daemons_for(mnt)


@pytest.mark.parametrize("early", ["1", "0"], ids=["early-mount", "old-path"])
def test_a_stop_signal_during_the_cleanup_does_not_cut_it_short(image, tmp_path, early):
    """A stop signal while the daemon cleans up (``siffs run``'s command exits right after unmounting,
    and its death signal reaches the daemon then) is ignored: the record and log are finished, the
    forked daemon never unwinds into the command's own code (early mount) nor dies half-way (old
    path, where the session had put back the default action)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    escaped = tmp_path / "escaped"
    script = tmp_path / "mount.py"
    script.write_text(
        "import os, signal, sys\n"
        "from siffs.fs import registry\n"
        "forget = registry.forget\n"
        "def signalled_forget(mount_point):\n"  # the signal lands in the middle of the cleanup
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    forget(mount_point)\n"
        "registry.forget = signalled_forget\n"
        "from siffs.cli.main import main\n"
        "command = os.getpid()\n"
        "try:\n"
        "    code = main(['mount', '--allow-unsigned', sys.argv[1], sys.argv[2]])\n"
        "finally:\n"
        "    if os.getpid() != command:\n"
        "        open(sys.argv[3], 'w').write(f'the daemon {os.getpid()} unwound into the command')\n"
        "        os._exit(3)\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path / "state"), SIFFS_EARLY_MOUNT=early)
    env.pop("XDG_RUNTIME_DIR", None)  # records under the state directory, which the test owns
    argv = [sys.executable, str(script), str(image), str(mnt), str(escaped)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert _listed(mnt)
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)  # the session ends: the daemon cleans up
    _wait_gone(mnt)
    assert not daemons_for(mnt)
    assert not escaped.exists(), escaped.read_text()
    log = _log_of(mnt, env)
    assert "unmounted" in log and "Traceback" not in log
    rows = json.loads(siffs("mounts", "--json", env=env).stdout)
    assert not [r for r in rows if r["mount_point"] == str(mnt)]
    assert not list((tmp_path / "state" / "siffs" / "mounts").iterdir())  # the record is gone
