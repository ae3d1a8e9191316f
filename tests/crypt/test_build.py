"""``siffs create --encrypt``: images that the real gocryptfs opens, and that siffs reads back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from siffs.sif import Image
from siffs.sif.types import DataType, FsType
from tests.support.crypt import luks_json, xts_encrypt
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


def _luks_partition(sif: Path, out: Path) -> Path:
    with Image.open(sif) as image:
        d = image.primary_partition()
        assert d.partition is not None and d.partition.fs_type == FsType.ENCRYPTED_SQUASHFS
        out.write_bytes(image.read(d))
    return out


def _cryptsetup(*args: object, key: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require_tool("cryptsetup"), *map(str, args), "--key-file", "-"],
        input=key,
        capture_output=True,
        check=False,
    )


def test_cryptsetup_opens_a_luks2_image(plain, tmp_path):
    """luksDump accepts it, --test-passphrase unlocks it, its volume key decrypts the data to the squashfs."""
    sif = tmp_path / "l.sif"
    luks2 = ("--encrypt", "--format", "luks2", "--kdf-memory", "32", "--kdf-time", "4", "--passphrase")
    siffs("create", *luks2, sif, plain, env=_env(), check=True)
    container = _luks_partition(sif, tmp_path / "l.luks")
    assert (
        container.stat().st_size == (16 << 20) + -(-plain.stat().st_size // 512) * 512
    )  # SingularityCE's size
    reference = luks_json(container)
    assert (
        reference["segments"]["0"]["offset"] == str(16 << 20)
        and reference["segments"]["0"]["sector_size"] == 512
    )
    assert reference["keyslots"]["0"]["kdf"]["type"] == "argon2id"
    assert _cryptsetup("open", "--test-passphrase", container, key=PASSWORD.encode()).returncode == 0
    assert _cryptsetup("open", "--test-passphrase", container, key=b"wrong").returncode == 2
    dump = _cryptsetup("luksDump", "--dump-volume-key", "--batch-mode", container, key=PASSWORD.encode())
    vk = bytes.fromhex("".join(dump.stdout.decode().split("MK dump:")[1].split()).replace(":", "")[:128])
    data = container.read_bytes()[16 << 20 :]
    expected = plain.read_bytes()
    assert data == xts_encrypt(vk, expected, 512)  # what cryptsetup's key gives back is the squashfs
    assert siffs("cat", sif, "/data/one", env=_env(), check=True).stdout == "x"


def test_luks2_pem_image(plain, rsa_pem, tmp_path):
    public = tmp_path / "pub.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", rsa_pem, "-pubout", "-out", public], check=True, capture_output=True
    )
    sif = tmp_path / "lp.sif"
    cost = ("--kdf-memory", "32", "--kdf-time", "4")
    siffs("create", "--encrypt", "--format", "luks2", *cost, "--pem-path", public, sif, plain, check=True)
    assert siffs("cat", "--pem-path", rsa_pem, sif, "/data/one", check=True).stdout == "x"
    info = siffs("info", "--json", "1", sif, check=True).stdout
    assert '"key_message": true' in info and '"cipher": "aes-xts-plain64"' in info
