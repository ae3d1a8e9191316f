"""Mounts verify by default, refuse what is not trusted, and serve only the bytes that were verified."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from siffs.open.image import OpenRequest, open_partition
from siffs.squashfs.paths import resolve
from tests.support.mounts import daemons_for, is_mounted, siffs
from tests.support.reference import key_path

PGP_PUBLIC = key_path("pgp-public")


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A private keyring and cache: never the real ~/.config."""
    return dict(
        os.environ,
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        XDG_STATE_HOME=str(tmp_path / "state"),
    )


@pytest.fixture
def signed(image, tmp_path, env) -> Path:
    """The FUSE test image, signed with the corpus' OpenPGP test key."""
    path = tmp_path / "signed.sif"
    shutil.copyfile(image, path)
    siffs("sign", path, "--key", key_path("pgp"), env=env, check=True)
    return path


def _mount(image, mnt, *args, env):
    mnt.mkdir(exist_ok=True)
    return siffs("mount", image, mnt, *args, env=env)


def test_signed_image_mounts_with_its_key(signed, tmp_path, env):
    mnt = tmp_path / "mnt"
    result = _mount(signed, mnt, "--key", PGP_PUBLIC, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # verified: nothing to warn about
    try:
        assert (mnt / "etc/passwd").read_text().startswith("root:")
    finally:
        siffs("umount", mnt, check=True)


def test_trusted_keyring_is_used_by_default(signed, tmp_path, env):
    siffs("key", "import", PGP_PUBLIC, env=env, check=True)
    mnt = tmp_path / "mnt"
    assert _mount(signed, mnt, env=env).returncode == 0
    siffs("umount", mnt, check=True)


@pytest.mark.parametrize(
    ("keys", "text"),
    [
        ((), "siffs key import"),  # empty keyring: says how to trust a key, or to skip
        (("--key", key_path("pgp-unrelated")), "--allow-unsigned"),
        (("--key", key_path("ed25519", "public")), "--allow-unsigned"),
    ],
)
def test_untrusted_is_refused(signed, tmp_path, env, keys, text):
    mnt = tmp_path / "mnt"
    result = _mount(signed, mnt, *keys, env=env)
    assert result.returncode == 7, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert text in result.stderr
    assert not is_mounted(mnt) and not daemons_for(mnt)


def test_unsigned_image_needs_allow_unsigned(image, tmp_path, env):
    mnt = tmp_path / "mnt"
    result = _mount(image, mnt, "--key", PGP_PUBLIC, env=env)
    assert result.returncode == 7
    assert "--allow-unsigned" in result.stderr
    result = _mount(image, mnt, "--allow-unsigned", env=env)
    assert result.returncode == 0
    assert "signatures not verified" in result.stderr  # said plainly
    siffs("umount", mnt, check=True)


def test_dsse_signed_image(image, tmp_path, env):
    path = tmp_path / "dsse.sif"
    shutil.copyfile(image, path)
    siffs("sign", path, "--key", key_path("ed25519", "private"), env=env, check=True)
    mnt = tmp_path / "mnt"
    assert _mount(path, mnt, "--key", key_path("ed25519", "public"), env=env).returncode == 0
    assert (mnt / "bin/busybox").stat().st_size > 0
    siffs("umount", mnt, check=True)


def _data_offset(image: Path, path: bytes) -> int:
    """File offset of the middle of ``path``'s first data blocks, inside the SIF."""
    opened = open_partition(OpenRequest(str(image), trust=None))
    try:
        loc = opened.tree.inode(resolve(opened.tree, path).ino).file
        assert loc is not None and opened.partition is not None
        return opened.partition.offset + loc.blocks_start + 150_000
    finally:
        opened.close()


def test_tampering_after_mount_gives_eio_for_that_file_only(signed, tmp_path, env):
    mnt = tmp_path / "mnt"
    assert _mount(signed, mnt, "--key", PGP_PUBLIC, env=env).returncode == 0
    try:
        others = {
            p: hashlib.sha256(p.read_bytes()).digest() for p in (mnt / "etc/passwd", mnt / "bin/busybox")
        }
        offset = _data_offset(signed, b"/data/big.bin")
        with open(signed, "r+b") as f:  # flip one bit of big.bin's data in the image file
            byte = os.pread(f.fileno(), 1, offset)
            os.pwrite(f.fileno(), bytes([byte[0] ^ 1]), offset)
        with pytest.raises(OSError) as info:
            (mnt / "data/big.bin").read_bytes()
        assert info.value.errno == errno.EIO
        for path, digest in others.items():
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1")
            assert hashlib.sha256(path.read_bytes()).digest() == digest
        log = (tmp_path / "state" / "siffs" / "logs").glob("*.log")
        assert any(
            "differs from the verified" in p.read_text() or "tamper" in p.read_text().lower() for p in log
        )
    finally:
        siffs("umount", mnt, check=True)
