"""Mount records and logs (one per mount point, never shared), and bugs the daemon must not hide."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from siffs.fs import registry
from tests.support.images import mksquashfs, wrap_sif
from tests.support.mounts import daemons_for, is_mounted, siffs, siffs_mount


@pytest.fixture
def state(tmp_path, monkeypatch) -> dict[str, str]:
    """A private runtime and state directory, for the daemons and for this process."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run"), "XDG_STATE_HOME": str(tmp_path / "state")}
    (tmp_path / "run").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ, **env)


def _listed(env: dict[str, str], base: Path) -> dict[str, dict[str, object]]:
    rows = json.loads(siffs("mounts", "--json", env=env, check=True).stdout)
    return {row["mount_point"]: row for row in rows if row["mount_point"].startswith(str(base))}


def test_record_names_end_in_the_sha256_of_the_path():
    """The name's digest is SHA-256 whichever implementation computes it (the interpreter's own,
    which loads no OpenSSL, or hashlib's): a record written by one siffs is found by another."""
    path = "/tmp/a-b/\u00e9t\u00e9.sif"
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    assert registry.file_stem(path) == f"tmp-a-b-t-.sif-{digest}"


@pytest.mark.parametrize(
    ("first", "second"), [("mnt/tools.sif", "mnt/tools.img"), ("a-b/c", "a/b-c")], ids=["suffix", "dashes"]
)
def test_records_and_logs_of_two_mounts_never_collide(image, tmp_path, state, first, second):
    points = [tmp_path / "m" / first, tmp_path / "m" / second]
    names = {registry.file_stem(str(p)) for p in points}
    assert len(names) == 2
    for p in points:
        p.mkdir(parents=True)
        assert siffs("mount", "--allow-unsigned", image, p, env=state).returncode == 0
    try:
        listed = _listed(state, tmp_path)
        assert set(listed) == {str(p) for p in points}
        pids = [listed[str(p)]["pid"] for p in points]
        assert all(listed[str(p)]["alive"] for p in points) and pids[0] != pids[1]
        logs = [tmp_path / "state" / "siffs" / "logs" / f"{registry.file_stem(str(p))}.log" for p in points]
        for log, pid in zip(logs, pids, strict=True):
            assert f"siffs[{pid}]" in log.read_text()
        # One daemon's exit must leave the other's record and log alone.
        assert siffs("umount", points[0], env=state).returncode == 0
        deadline = time.monotonic() + 10
        while daemons_for(points[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = _listed(state, tmp_path)
        assert set(listed) == {str(points[1])}
        assert listed[str(points[1])]["pid"] == pids[1] and listed[str(points[1])]["alive"]
        assert f"siffs[{pids[0]}]" not in logs[1].read_text()
    finally:
        for p in points:
            siffs("umount", p, env=state)
    assert not any(is_mounted(p) for p in points)


#: The real CLI with one bug planted in the reader: reading a file whose data starts with
#: "BUG" raises KeyError (what a reader bug looks like); "DAMAGED" raises the reader's own
#: CorruptImage (an expected error). Everything else is the ordinary stack.
_PLANTED = textwrap.dedent(
    """
    import sys
    from siffs.squashfs.errors import CorruptImage
    from siffs.squashfs.reader import SquashFS
    from siffs.cli.main import main

    original = SquashFS.read

    def read(self, ino, offset, size):
        data = original(self, ino, offset, size)
        if data.startswith(b"BUG"):
            raise KeyError(ino)
        if data.startswith(b"DAMAGED"):
            raise CorruptImage("planted damage")
        return data

    SquashFS.read = read
    SquashFS._answer_in_c = lambda self: None  # keep the reader's Python methods, this one planted
    sys.exit(main(sys.argv[1:]))
    """
)


def test_unexpected_exceptions_are_logged_with_traceback_once_and_counted(tmp_path, state):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "bug1").write_bytes(b"BUG one")
    (tree / "bug2").write_bytes(b"BUG two")
    (tree / "damaged").write_bytes(b"DAMAGED")
    (tree / "fine").write_bytes(b"fine")
    sif = wrap_sif(mksquashfs(tree, tmp_path / "t.squashfs", "-all-root"), tmp_path / "t.sif")
    script = tmp_path / "planted.py"
    script.write_text(_PLANTED)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = subprocess.run(
        [sys.executable, str(script), "mount", "--allow-unsigned", str(sif), str(mnt)],
        env=state,
        capture_output=True,
        text=True,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    try:
        assert (mnt / "fine").read_bytes() == b"fine"

        def read_fails(*names: str) -> None:
            for name in names:
                with pytest.raises(OSError) as err:
                    (mnt / name).read_bytes()
                assert err.value.errno == 5

        read_fails("bug1", "bug2", "bug1")
        bugs = _listed(state, tmp_path)[str(mnt)]["internal_errors"]
        assert isinstance(bugs, int) and bugs >= 3  # the kernel may retry a failed read
        read_fails("damaged", "damaged")
        assert _listed(state, tmp_path)[str(mnt)]["internal_errors"] == bugs  # damage is not a bug
        log = (tmp_path / "state" / "siffs" / "logs" / f"{registry.file_stem(str(mnt))}.log").read_text()
        assert log.count("internal error (a bug in siffs") == 1  # one kind: one traceback
        assert log.count("Traceback") == 1 and "KeyError" in log
        assert log.count("planted damage") >= 2  # expected errors: one line each, no traceback
    finally:
        siffs("umount", mnt, env=state)


def test_mounts_without_errors_show_zero(image, tmp_path, state):
    with siffs_mount(image, tmp_path / "mnt"):
        assert _listed(state, tmp_path)[str(tmp_path / "mnt")]["internal_errors"] == 0
