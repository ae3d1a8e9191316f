"""run/exec/inspect on a SIF file: verified, mounted for the command's duration, gone afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.runtime.conftest import Siffs
from tests.support.images import mksquashfs, wrap_sif
from tests.support.mounts import daemons_for
from tests.support.mounts import siffs as siffs_root
from tests.support.reference import key_path


@pytest.fixture(scope="module")
def signed_sif(tree, work) -> Path:
    squash = mksquashfs(tree, work / "sif-root.squashfs", "-all-root")
    sif = work / "signed.sif"
    wrap_sif(squash, sif)
    siffs_root("sign", sif, "--key", key_path("ed25519", "private"), check=True)
    os.chmod(sif, 0o644)
    return sif


@pytest.fixture
def user_env(work, tmp_path) -> dict[str, str]:
    """Per-test XDG directories the test user owns, so every test starts with an empty keyring."""
    base = work / f"xdg-{tmp_path.name}"
    base.mkdir()
    subprocess.run(["chown", "siffs-test", str(base)], check=True)
    return {
        "XDG_CONFIG_HOME": f"{base}/config",
        "XDG_CACHE_HOME": f"{base}/cache",
        "XDG_STATE_HOME": f"{base}/state",
        "XDG_RUNTIME_DIR": str(base),
    }


def _no_siffs_mounts_left(base: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return not any(base in line and "fuse.siffs" in line for line in f)


def test_run_and_exec_a_signed_sif(siffs: Siffs, signed_sif, user_env):
    result = siffs("run", "--key", key_path("ed25519", "public"), signed_sif, "x", "y", env=user_env)
    assert result.returncode == 0, result.stderr
    assert "Hello from the siffs example container" in result.stdout
    assert "arguments: x y" in result.stdout
    result = siffs(
        "exec", "--key", key_path("ed25519", "public"), signed_sif, "/bin/sh", "-c", "exit 42", env=user_env
    )
    assert result.returncode == 42
    assert _no_siffs_mounts_left(user_env["XDG_RUNTIME_DIR"])


def test_trusted_keyring_and_inspect(siffs: Siffs, signed_sif, user_env):
    assert siffs("key", "import", key_path("ed25519", "public"), env=user_env).returncode == 0
    result = siffs("inspect", "--labels", signed_sif, env=user_env)
    assert result.returncode == 0, result.stderr
    assert "org.label-schema.schema-version: 1.0" in result.stdout
    assert siffs("exec", signed_sif, "/bin/true", env=user_env).returncode == 0


def test_untrusted_sif_is_refused(siffs: Siffs, signed_sif, user_env):
    result = siffs("run", "--key", key_path("rsa", "public"), signed_sif, env=user_env)
    assert result.returncode == 255
    assert result.stderr.startswith("FATAL: ")
    assert "--allow-unsigned" in result.stderr
    result = siffs("run", "--allow-unsigned", signed_sif, env=user_env)
    assert result.returncode == 0
    assert "signatures not verified" in result.stderr


def test_killed_run_leaves_no_mount(siffs: Siffs, signed_sif, user_env):
    argv = siffs.command(
        "exec", "--key", key_path("ed25519", "public"), signed_sif, "/bin/sleep", "60", env=user_env
    )
    proc = subprocess.Popen(argv, cwd=siffs.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runtime = Path(user_env["XDG_RUNTIME_DIR"])
    deadline = time.monotonic() + 20
    while _no_siffs_mounts_left(str(runtime)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _no_siffs_mounts_left(str(runtime)), "the image was never mounted"
    mount_point = next(p for p in (runtime / "siffs" / "run").iterdir())
    # SIGKILL the siffs process (the runuser child): nothing can clean up in it.
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True)
    siffs_pid = int(children.stdout.split()[0])
    os.kill(siffs_pid, signal.SIGKILL)
    proc.wait(timeout=20)
    deadline = time.monotonic() + 20
    while not _no_siffs_mounts_left(str(runtime)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _no_siffs_mounts_left(str(runtime))
    assert not daemons_for(mount_point)
    assert not mount_point.exists()


def test_bundle_of_a_sif_runs_under_runc(siffs: Siffs, signed_sif, user_env, work):
    bundle = work / "sif-bundle"
    result = siffs(
        "bundle", "--key", key_path("ed25519", "public"), signed_sif, bundle, "from", "runc", env=user_env
    )
    assert result.returncode == 0, result.stderr
    rootfs = bundle / "rootfs"
    try:
        state = work / "sif-bundle-state"
        run = subprocess.run(
            [
                "runuser",
                "-u",
                "siffs-test",
                "--",
                "runc",
                "--root",
                str(state),
                "run",
                "-b",
                str(bundle),
                "sif-b",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert run.returncode == 0, run.stderr
        assert "arguments: from runc" in run.stdout
    finally:
        assert siffs("umount", rootfs, env=user_env).returncode == 0
