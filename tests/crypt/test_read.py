"""Encrypted images of both kinds read through the CLI: ls, cat, sandbox, real FUSE mounts and run.

Every kind (LUKS2 with passphrase, Argon2id and 4 KiB sectors, PEM; gocryptfs with passphrase and
PEM) must show exactly what the kernel shows for the plaintext SquashFS, as an ordinary user.
"""

from __future__ import annotations

import ast
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crypt.conftest import Encrypted
from tests.support.mounts import daemons_for, is_mounted, siffs, umount_and_wait
from tests.support.shared import REPO, SHARED
from tests.support.trees import assert_same_tree
from tests.support.users import TEST_USER, ensure_user, user_dir

FIXTURES = SHARED / "apptainer-fixtures"


def as_user(*argv: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the test user, with exactly ``env`` as its environment when given."""
    clean = ["env", "-i", *(f"{k}={v}" for k, v in env.items())] if env is not None else []
    return subprocess.run(
        ["runuser", "-u", TEST_USER, "--", *clean, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


@contextlib.contextmanager
def user_mount(enc: Encrypted, mnt: Path) -> Iterator[Path]:
    """``siffs mount`` of an encrypted image as the unprivileged user, the key from the environment or PEM."""
    result = siffs("mount", "--allow-unsigned", *enc.key_args(), enc.sif, mnt, user=TEST_USER, env=enc.env())
    assert result.returncode == 0, result.stderr
    try:
        yield mnt
    finally:
        umount_and_wait(mnt, TEST_USER)


def user_snapshot(root: Path) -> dict:
    """tests.support.trees.snapshot run as the test user (root cannot enter a user's FUSE mount)."""
    code = (
        "import sys; from pathlib import Path; from tests.support.trees import snapshot;"
        " print(repr(snapshot(Path(sys.argv[1]))))"
    )
    result = as_user(sys.executable, "-c", code, root)
    assert result.returncode == 0, result.stderr
    return ast.literal_eval(result.stdout)


def test_unprivileged_mount_equals_kernel(encrypted, expected, work, tmp_path):
    ensure_user()
    os.chmod(encrypted.pem or work, 0o644 if encrypted.pem else 0o755)
    mnt = Path(user_dir(tmp_path, "mnt"))
    with user_mount(encrypted, mnt):
        assert_same_tree(user_snapshot(mnt), expected)
    assert not is_mounted(mnt) and not daemons_for(mnt)


def test_ls_and_cat(encrypted, work):
    env = encrypted.env()
    listing = siffs("ls", *encrypted.key_args(), encrypted.sif, "/data", env=env, check=True).stdout
    assert "big.bin" in listing.split("\n")
    cat = subprocess.run(
        [sys.executable, "-m", "siffs", "cat", *encrypted.key_args(), encrypted.sif, "/data/big.bin"],
        capture_output=True,
        env=env,
        check=True,
    )
    assert cat.stdout == (work / "tree/data/big.bin").read_bytes()


def test_sandbox_extracts_the_plaintext(luks_pem, work, tmp_path):
    out = tmp_path / "sandbox"
    siffs("sandbox", "--allow-unsigned", *luks_pem.key_args(), luks_pem.sif, out, check=True)
    assert (out / "data/big.bin").read_bytes() == (work / "tree/data/big.bin").read_bytes()


def test_daemon_holding_keys_is_not_dumpable(goc_pass, tmp_path):
    ensure_user()
    mnt = Path(user_dir(tmp_path, "mnt"))
    with user_mount(goc_pass, mnt):
        (pid,) = daemons_for(mnt)
        status = Path(f"/proc/{pid}/status").read_text()
        assert (
            "siffs-test" not in as_user("stat", "-c", "%U", f"/proc/{pid}/mem").stdout
        )  # root-owned: not dumpable
        assert os.stat(f"/proc/{pid}/mem").st_uid == 0, status
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert goc_pass.passphrase not in environ  # wiped from the environment block the kernel shows
        assert goc_pass.passphrase not in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize("kind", ["goc_pass", "luks_pass"])
def test_passphrase_never_reaches_the_container(kind, request, tmp_path):
    image = request.getfixturevalue(kind)
    env = {
        "HOME": user_dir(tmp_path, "home"),
        "PATH": "/usr/bin:/bin",
        "SIFFS_ENCRYPTION_PASSPHRASE": "correct horse",
        "APPTAINER_ENCRYPTION_PASSPHRASE": "x",
        "SINGULARITY_ENCRYPTION_PASSPHRASE": "y",
    }
    result = as_user(sys.executable, "-m", "siffs", "exec", "--allow-unsigned", image.sif, "env", env=env)
    assert result.returncode == 0, result.stderr
    assert "ENCRYPTION_PASSPHRASE" not in result.stdout


def test_passphrase_from_standard_input(luks_pass):
    result = subprocess.run(
        [sys.executable, "-m", "siffs", "ls", "--passphrase", luks_pass.sif, "/data"],
        input=luks_pass.passphrase + b"\n",
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"big.bin" in result.stdout


def _golden(name: str) -> tuple[list[str], str, int]:
    goldens = FIXTURES / "goldens"
    cmd = (goldens / f"{name}.cmd").read_text().split()[2:]  # after "$ apptainer"
    args = [a.replace("{FIXTURES}", str(FIXTURES)) for a in cmd]
    return args, (goldens / f"{name}.out").read_text(), int((goldens / f"{name}.rc").read_text())


@pytest.mark.parametrize("name", ["enc-pass-run", "enc-pem-run"])
def test_apptainer_encrypted_images_run_as_apptainer_ran_them(name, tmp_path):
    """Apptainer 1.4.5's own unprivileged ``build --encrypt`` images (fs type 6), against its goldens."""
    if not FIXTURES.is_dir():
        pytest.skip(f"the Apptainer fixtures are not at {FIXTURES} (set SIFFS_SHARED)")
    ensure_user()
    args, out, rc = _golden(name)
    env = {
        "HOME": user_dir(tmp_path, "home"),
        "USER": TEST_USER,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    if name == "enc-pass-run":
        env["APPTAINER_ENCRYPTION_PASSPHRASE"] = (FIXTURES / "enc-pass.passphrase").read_text()
    result = as_user(sys.executable, "-m", "siffs", "-q", args[0], "--allow-unsigned", *args[1:], env=env)
    assert (result.stdout, result.returncode) == (out, rc), result.stderr


def test_apptainer_images_need_their_key():
    if not FIXTURES.is_dir():
        pytest.skip(f"the Apptainer fixtures are not at {FIXTURES} (set SIFFS_SHARED)")
    result = siffs("ls", FIXTURES / "enc-pem.sif")
    assert (result.returncode, result.stderr.split(": ", 2)[-1]) == (
        13,
        "image is encrypted: give --passphrase or --pem-path\n",
    )


def test_pem_text_from_apptainers_variable(luks_pem):
    env = dict(os.environ, APPTAINER_ENCRYPTION_PEM_DATA=luks_pem.pem.read_text())
    assert "big.bin" in siffs("ls", luks_pem.sif, "/data", env=env, check=True).stdout.split()


@pytest.mark.parametrize("kind", ["luks_pass", "goc_pem"])
def test_instance_start_takes_the_key_options(kind, request, tmp_path):
    image = request.getfixturevalue(kind)
    env = {
        "HOME": user_dir(tmp_path, "home"),
        "PATH": "/usr/bin:/bin",
        "XDG_RUNTIME_DIR": user_dir(tmp_path, "run"),
    }
    key_args = image.key_args()
    if image.pem is not None:  # the test user's own copy of the key
        key = Path(user_dir(tmp_path, "key")) / "rsa.pem"
        key.write_bytes(image.pem.read_bytes())
        os.chown(key, ensure_user().pw_uid, ensure_user().pw_gid)
        key_args = ["--pem-path", str(key)]
    siffs_start = [sys.executable, "-m", "siffs", "instance", "start", "--allow-unsigned"]
    start = [*siffs_start, *key_args, image.sif]
    # No key: refused in one line, as run refuses it.
    refused = as_user(*siffs_start, image.sif, "enc", env=env)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        f"siffs: {image.sif}: image is encrypted: give --passphrase or --pem-path"
    ]
    # A passphrase typed on standard input is read before the supervisor leaves the terminal.
    started = subprocess.run(
        ["runuser", "-u", TEST_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *start, "enc"],
        input=(image.passphrase or b"") + b"\n",
        capture_output=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        inside = as_user(sys.executable, "-m", "siffs", "exec", "instance://enc", "cat", "/data/one", env=env)
        assert inside.returncode == 0 and inside.stdout == "x", inside.stderr
    finally:
        stopped = as_user(sys.executable, "-m", "siffs", "instance", "stop", "enc", env=env)
    assert stopped.returncode == 0, stopped.stderr
