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
from tests.support.shared import SHARED


@pytest.fixture(scope="module")
def signed_sif(tree, work) -> Path:
    squash = mksquashfs(tree, work / "sif-root.squashfs", "-all-root")
    sif = work / "signed.sif"
    wrap_sif(squash, sif)
    siffs_root("sign", sif, "--key", key_path("ed25519", "private"), check=True)
    os.chmod(sif, 0o644)
    return sif


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

    # The daemon unmounts, then exits: wait for both (it may still be exiting when the mount is gone).
    def settled() -> bool:
        return _no_siffs_mounts_left(str(runtime)) and not daemons_for(mount_point)

    while not settled() and time.monotonic() < deadline:
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


OVERLAY_SIF = SHARED / "apptainer-fixtures" / "overlay.sif"


def _overlay_mounts(base: str) -> list[str]:
    """This test's mounts of the overlay image (under its own runtime dir)."""
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if str(OVERLAY_SIF) in line and base in line]


@pytest.mark.skipif(not OVERLAY_SIF.is_file(), reason=f"no Apptainer-built overlay image at {OVERLAY_SIF}")
def test_embedded_overlay_partition_is_applied_and_gone_after_sigkill(siffs: Siffs, user_env):
    """fuse2fs serves the ext3 partition read-only; a killed siffs leaves neither mount nor daemon."""
    result = siffs("exec", "--allow-unsigned", OVERLAY_SIF, "/bin/cat", "/overlay-file.txt", env=user_env)
    assert (result.returncode, result.stdout) == (0, "persisted\n"), result.stderr
    assert _overlay_mounts(user_env["XDG_RUNTIME_DIR"]) == []
    argv = siffs.command(
        "exec", "--allow-unsigned", OVERLAY_SIF, "/bin/sh", "-c", "echo up; exec sleep 60", env=user_env
    )
    proc = subprocess.Popen(argv, cwd=siffs.cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def fuse2fs_running() -> bool:
        pgrep = subprocess.run(["pgrep", "-u", "siffs-test", "fuse2fs"], capture_output=True, check=False)
        return pgrep.returncode == 0

    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert sorted(
        line.split(" - ")[1].split()[0] for line in _overlay_mounts(user_env["XDG_RUNTIME_DIR"])
    ) == ["fuse.siffs"]  # fuse2fs mounts inside the container's namespace: the host never sees it
    assert fuse2fs_running()
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=True)
    os.kill(int(children.stdout.split()[0]), signal.SIGKILL)
    proc.wait(timeout=20)
    deadline = time.monotonic() + 20
    while (_overlay_mounts(user_env["XDG_RUNTIME_DIR"]) or fuse2fs_running()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _overlay_mounts(user_env["XDG_RUNTIME_DIR"]) == []
    assert not fuse2fs_running()


def test_data_image_bind_is_verified_read_only_and_unmounted(siffs: Siffs, signed_sif, tree, user_env):
    """-B data.sif:/data:image-src=/PATH mounts the SIF (verified like any image), binds PATH read-only."""
    key = key_path("ed25519", "public")
    bind = f"{signed_sif}:/data:image-src=/.singularity.d,/etc:/mnt/etc:ro"
    script = "cat /data/test; touch /data/x 2>/dev/null || echo read-only; ls -d /mnt/etc"
    result = siffs("exec", "--key", key, "-B", bind, tree, "/bin/sh", "-c", script, env=user_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["read-only", "/mnt/etc"]
    assert result.stdout.startswith((tree / ".singularity.d/test").read_text().splitlines()[0])
    assert _no_siffs_mounts_left(user_env["XDG_RUNTIME_DIR"])
    spec = f"type=bind,src={signed_sif},dst=/d2,image-src=/.singularity.d"
    mounted = siffs("exec", "--key", key, "--mount", spec, tree, "cat", "/d2/test", env=user_env)
    assert mounted.returncode == 0 and mounted.stdout == (tree / ".singularity.d/test").read_text()
    refused = siffs("exec", "--key", key_path("rsa", "public"), "-B", bind, tree, "true", env=user_env)
    assert refused.returncode == 255 and refused.stderr.startswith("FATAL: ")
    missing = siffs("exec", "-B", f"{tree}:/data:image-src=/", tree, "true", env=user_env)
    assert missing.returncode == 255 and "image-src= needs a SIF file" in missing.stderr


def test_fakeroot_on_a_sif_owns_the_image_files(siffs: Siffs, signed_sif, user_env):
    """As in Apptainer: under --fakeroot the image's files are root's, so root may change them in overlays."""
    key = key_path("ed25519", "public")
    script = "stat -c %u:%g /etc; echo pkg > /etc/installed && cat /etc/installed"
    result = siffs(
        "exec",
        "--key",
        key,
        "--fakeroot",
        "--writable-tmpfs",
        signed_sif,
        "/bin/sh",
        "-c",
        script,
        env=user_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0:0", "pkg"]
    plain = siffs("exec", "--key", key, signed_sif, "/bin/stat", "-c", "%u", "/etc", env=user_env)
    assert plain.stdout.strip() == "65534"  # without --fakeroot: root's files, unmapped
