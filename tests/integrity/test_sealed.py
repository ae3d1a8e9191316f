"""A secret OpenPGP key never outlives ``siffs sign``, not even a SIGKILL in the middle of it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siffs.integrity.errors import KeyMaterialError
from siffs.integrity.sealed import run_sealed
from tests.integrity.conftest import key_path
from tests.support.mounts import daemons_for
from tests.support.reference import IMAGES

GPG = shutil.which("gpg") or "/usr/bin/gpg"

#: A gpg that, when asked to sign, says where its home is and what it holds, then stalls: the
#: secret key is imported by then, so that is the moment to kill siffs.
_STALLING_GPG = """#!/bin/sh
case " $* " in *" --detach-sign "*)
    ls "$GNUPGHOME/private-keys-v1.d" > "{marker}.keys"
    echo "$GNUPGHOME" > "{marker}"
    exec tail -f "{marker}.keys" > /dev/null ;;
esac
exec {gpg} "$@"
"""


def _key_files_under(*roots: str) -> list[str]:
    found = []
    for root in roots:
        for directory, _, files in os.walk(root):
            if directory.endswith("private-keys-v1.d") and files:
                found += [os.path.join(directory, f) for f in files]
    return found


def test_sigkill_during_sign_leaves_no_key_material(tmp_path):
    image = tmp_path / "image.sif"
    shutil.copyfile(IMAGES / "two-groups.sif", image)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "home-was"
    fake = bin_dir / "gpg"
    fake.write_text(_STALLING_GPG.format(marker=marker, gpg=GPG))
    fake.chmod(0o755)
    before = set(_key_files_under("/tmp", "/dev/shm", "/var/tmp", "/run"))
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    home = ""
    proc = subprocess.Popen(
        [sys.executable, "-m", "siffs", "sign", str(image), "--key", key_path("pgp")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read().decode() if proc.poll() is not None else "gpg never ran"
        time.sleep(0.1)
        imported = Path(f"{marker}.keys").read_text().strip()
        assert imported, "the key was not imported yet: the test would prove nothing"
        home = marker.read_text().strip()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while daemons_for(Path(f"{marker}.keys")) and time.monotonic() < deadline:
            time.sleep(0.05)  # the stalled gpg (and its agent) die with the namespace
        assert not daemons_for(Path(f"{marker}.keys")), "a gpg process outlived siffs"
        assert not os.path.exists(home), f"the GnuPG home {home} is still on disk"
        left = set(_key_files_under("/tmp", "/dev/shm", "/var/tmp", "/run")) - before
        assert not left, f"secret key files left behind: {sorted(left)}"
        assert "stays in" not in proc.stderr.read().decode()  # sealed, not the fallback
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in daemons_for(Path(f"{marker}.keys")):  # the old code's stalled gpg
            os.kill(pid, signal.SIGKILL)
        if home and os.path.isdir(home):  # the old code's home, and the agent serving it
            agent_env = dict(os.environ, GNUPGHOME=home)
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=agent_env, check=False)
            shutil.rmtree(home, ignore_errors=True)


def test_sign_still_works_sealed(tmp_path):
    image = tmp_path / "image.sif"
    shutil.copyfile(IMAGES / "two-groups.sif", image)
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    run = subprocess.run(
        [sys.executable, "-m", "siffs", "sign", str(image), "--key", key_path("pgp")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "warning" not in run.stderr
    check = subprocess.run(
        [sys.executable, "-m", "siffs", "verify", str(image), "--key", key_path("pgp-public")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def _look_around(directory: Path) -> tuple[str, str, int]:
    (directory / "secret").write_bytes(b"key material")
    with open("/proc/self/mountinfo") as f:
        fs_type = next(
            line.split(" - ")[1].split()[0] for line in f if line.split()[4] == str(directory.parent)
        )
    return str(directory), fs_type, os.getpid()


def test_run_sealed_works_on_a_private_tmpfs_that_vanishes():

    heard: list[str] = []
    directory, fs_type, pid = run_sealed(_look_around, heard.append)
    assert fs_type == "tmpfs" and pid == 1  # PID 1 of its own namespace, on its own tmpfs
    assert not heard  # sealed, not the fallback
    assert not os.path.exists(directory)  # never visible here, and gone with the namespace


def test_run_sealed_passes_errors_back():

    def fail(directory: Path) -> None:
        raise KeyMaterialError(f"no key in {directory.name}")

    with pytest.raises(KeyMaterialError, match="no key in"):
        run_sealed(fail)


def test_without_user_namespaces_signing_falls_back_and_says_so(tmp_path):
    """In a user namespace that may create none (its own limit 0), the fallback runs and warns."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1)")
    image = tmp_path / "image.sif"
    shutil.copyfile(IMAGES / "two-groups.sif", image)
    before = set(os.listdir("/dev/shm"))
    inner = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    run = subprocess.run(
        [unshare, "--user", "--map-root-user", "sh", "-c", inner, "sh",
         sys.executable, "-m", "siffs", "sign", str(image), "--key", key_path("pgp")],
        env=dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "cfg")),
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "user.max_user_namespaces" in run.stderr and "would stay in /dev/shm" in run.stderr
    assert set(os.listdir("/dev/shm")) == before  # removed again after a normal end
