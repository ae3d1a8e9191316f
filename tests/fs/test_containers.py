"""Container runtimes on a siffs mount, as an unprivileged user: ch-run and rootless runc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.images import build_rootfs, mksquashfs, wrap_sif
from tests.support.mounts import siffs_mount
from tests.support.users import TEST_USER, ensure_user, user_dir


def as_user(*cmd: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", TEST_USER, "--", *map(str, cmd)],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run the README's test set-up command")
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    ensure_user()
    work = tmp_path_factory.mktemp("containers")
    squash = mksquashfs(build_rootfs(work / "tree"), work / "root.squashfs", "-all-root")
    sif = work / "busybox.sif"
    wrap_sif(squash, sif)
    os.chmod(work, 0o755)
    user_dir(work, ".")  # make the image reachable for the test user
    return sif


def test_ch_run(image, tmp_path):
    require("ch-run")
    with siffs_mount(image, Path(user_dir(tmp_path, "mnt")), user=TEST_USER) as m:
        assert as_user("ch-run", m, "--", "/bin/true").returncode == 0
        out = as_user(
            "ch-run", m, "--", "/bin/sh", "-c", "echo $((6*7)); cat /.singularity.d/labels.json"
        ).stdout
        assert out.startswith("42\n")
        assert "siffs example (busybox)" in out
        failed = as_user("ch-run", m, "--", "/bin/sh", "-c", "exit 3", check=False)
        assert failed.returncode == 3
        # The tree is read-only, as ch-run expects of an image.
        denied = as_user("ch-run", m, "--", "/bin/touch", "/new", check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def test_rootless_runc(image, tmp_path):
    require("runc")
    bundle = Path(user_dir(tmp_path, "bundle"))
    with siffs_mount(image, Path(user_dir(tmp_path, "rootfs")), user=TEST_USER) as m:
        subprocess.run(
            ["runuser", "-u", TEST_USER, "--", "runc", "spec", "--rootless"], cwd=bundle, check=True
        )
        config = json.loads((bundle / "config.json").read_text())
        config["root"] = {"path": str(m), "readonly": True}
        config["process"]["terminal"] = False
        config["process"]["args"] = ["/bin/sh", "-c", "id -u; cat /etc/passwd | head -n 1; exit 5"]
        (bundle / "config.json").write_text(json.dumps(config))
        result = as_user(
            "runc", "--root", bundle / "state", "run", "--bundle", bundle, "siffs-test-runc", check=False
        )
        assert result.returncode == 5, result.stderr
        assert result.stdout.splitlines() == ["0", "root:x:0:0:root:/root:/bin/sh"]
