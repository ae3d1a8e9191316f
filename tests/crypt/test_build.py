"""``siffs create --encrypt``: images that the real gocryptfs opens, and that siffs reads back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from siffs.sif import Image
from siffs.sif.types import DataType, FsType
from tests.support.images import require_tool
from tests.support.mounts import siffs

PASSWORD = "build horse"


def _env() -> dict[str, str]:
    return dict(os.environ, SIFFS_ENCRYPTION_PASSPHRASE=PASSWORD)


def _outer(sif: Path, out: Path) -> Path:
    """The fs type 6 partition unpacked with unsquashfs: gocryptfs.conf and squashfs-<n>."""
    partition = out.with_suffix(".outer")
    with Image.open(sif) as image:
        d = image.primary_partition()
        assert d.partition is not None and d.partition.fs_type == FsType.GOCRYPTFS_SQUASHFS
        partition.write_bytes(image.read(d))
    subprocess.run(["unsquashfs", "-q", "-d", out, partition], check=True, capture_output=True)
    return out


def test_gocryptfs_opens_a_passphrase_image(plain, tmp_path):
    sif = tmp_path / "enc.sif"
    siffs("create", "--encrypt", "--passphrase", sif, plain, env=_env(), check=True)
    cipher = _outer(sif, tmp_path / "cipher")
    names = sorted(p.name for p in cipher.iterdir())
    assert names[0] == "gocryptfs.conf" and names[1].startswith("squashfs-") and len(names) == 2
    mnt = tmp_path / "plain"
    mnt.mkdir()
    subprocess.run(
        [require_tool("gocryptfs"), "-q", "-ro", cipher, mnt], input=PASSWORD.encode() + b"\n", check=True
    )
    try:
        assert (mnt / names[1]).read_bytes() == plain.read_bytes()  # the real gocryptfs decrypts it
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=True)
    xray = subprocess.run(
        [require_tool("gocryptfs-xray"), cipher / names[1]], capture_output=True, text=True, check=True
    )
    assert xray.stdout.count("Block") == -(-plain.stat().st_size // 4096)  # one authenticated block per 4 KiB


def test_image_built_from_a_tree_reads_back(work, tmp_path):
    sif = tmp_path / "tree.sif"
    siffs("create", "--encrypt", "--passphrase", sif, work / "tree/data", env=_env(), check=True)
    got = siffs("cat", sif, "/one", env=_env(), check=True).stdout
    assert got == "x"


def test_pem_image_uses_a_key_message_like_apptainer(plain, rsa_pem, tmp_path):
    public = tmp_path / "pub.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", rsa_pem, "-RSAPublicKey_out", "-out", public],
        check=True,
        capture_output=True,
    )
    sif = tmp_path / "pem.sif"
    siffs("create", "--encrypt", "--pem-path", public, sif, plain, check=True)
    with Image.open(sif) as image:
        part = image.primary_partition()
        (message,) = [d for d in image.descriptors if d.data_type == DataType.CRYPTO_MESSAGE]
        assert message.link is not None and message.link.target == part.id
        assert image.read(message).startswith(b"-----BEGIN MESSAGE-----\n")
    listing = siffs("ls", "--pem-path", rsa_pem, sif, "/data", check=True).stdout
    assert "big.bin" in listing.split()
    assert siffs("ls", sif, "/data", env=_env()).returncode == 13  # a passphrase does not open it


def test_build_needs_a_key(plain, tmp_path):
    env = {k: v for k, v in os.environ.items() if "ENCRYPTION" not in k}
    result = siffs("create", "--encrypt", tmp_path / "x.sif", plain, env=env)
    assert (result.returncode, result.stderr.strip().split(": ")[-1]) == (
        2,
        "--encrypt needs --passphrase or --pem-path PUB.pem",
    )
    assert not (tmp_path / "x.sif").exists()


def test_apptainer_public_key_builds_what_its_private_key_opens(plain, tmp_path):
    fixtures = Path(os.environ.get("SIFFS_SHARED", "/nonexistent")) / "apptainer-fixtures"
    if not fixtures.is_dir():
        pytest.skip("the Apptainer fixtures are not available (set SIFFS_SHARED)")
    sif = tmp_path / "a.sif"
    siffs("create", "--encrypt", "--pem-path", fixtures / "enc-rsa-pub.pem", sif, plain, check=True)
    assert siffs("ls", "--pem-path", fixtures / "enc-rsa.pem", sif, "/data", check=True).stdout
