"""Encrypted test images made with the real tools (cryptsetup, gocryptfs), per the specs' recipes.

LUKS2 (luks2.md §6 recipe A): cryptsetup writes the header and keyslots of a file with a known
volume key; the data segment is encrypted here with ``cryptography``'s AES-XTS, independently
of siffs. Recipe B (``cryptsetup reencrypt --encrypt``) lets cryptsetup encrypt the data too.
gocryptfs (gocryptfs-sif.md §9): a real gocryptfs mount writes the encrypted payload, mksquashfs
packs the outer image. Both wrap into a SIF with the project's writer, with a Cryptographic
Message for PEM images.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from siffs.sif import ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, PartType
from tests.support.images import mksquashfs, require_tool

#: Fast keyslot parameters (cryptsetup's minimum): the default costs ~1 GiB and 2 s per unlock.
FAST_PBKDF2 = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000")
FAST_ARGON2 = (
    "--pbkdf",
    "argon2id",
    "--pbkdf-force-iterations",
    "4",
    "--pbkdf-memory",
    "32",
    "--pbkdf-parallel",
    "1",
)


def rsa_key(path: Path) -> Path:
    """An unencrypted PKCS#1 RSA-2048 private key (as ``openssl genrsa -traditional``)."""
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(path), "2048"], check=True, capture_output=True
    )
    return path


def message_for(private_pem: Path, secret: bytes) -> bytes:
    """PEM MESSAGE of DER OCTET STRING of RSA-OAEP-SHA256(secret), as Apptainer writes it."""
    key = serialization.load_pem_private_key(private_pem.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    ct = key.public_key().encrypt(secret, padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None))
    b64 = base64.b64encode(b"\x04\x82" + len(ct).to_bytes(2, "big") + ct).decode()
    body = "".join(b64[i : i + 64] + "\n" for i in range(0, len(b64), 64))
    return f"-----BEGIN MESSAGE-----\n{body}-----END MESSAGE-----\n".encode()


def wrap(partition: Path, sif: Path, fs_type: int, message: bytes | None = None) -> Path:
    """A SIF with ``partition`` as its primary system partition and, for PEM, the linked message."""
    with open(partition, "rb") as f:
        objects = [
            ObjectInput(DataType.DEFFILE, b"Bootstrap: scratch\n"),
            ObjectInput(DataType.PARTITION, f, extra=partition_extra(fs_type, PartType.PRIMSYS, b"02")),
        ]
        if message is not None:
            extra = (2).to_bytes(4, "little") + (0x200).to_bytes(4, "little")
            objects.append(ObjectInput(DataType.CRYPTO_MESSAGE, message, link=2, extra=extra))
        create(sif, objects)
    return sif


def xts_encrypt(volume_key: bytes, data: bytes, sector_size: int) -> bytes:
    """The data segment of ``data`` (zero-padded to whole sectors), tweak counting 512-byte units."""
    data += bytes(-len(data) % sector_size)
    out = bytearray()
    for n in range(len(data) // sector_size):
        tweak = (n * (sector_size // 512)).to_bytes(16, "little")
        enc = Cipher(algorithms.AES(volume_key), modes.XTS(tweak)).encryptor()
        out += enc.update(data[n * sector_size : (n + 1) * sector_size])
    return bytes(out)


def luksformat(container: Path, secret: bytes, *options: str, volume_key: bytes | None = None) -> None:
    """``cryptsetup luksFormat`` on a plain file, key from stdin (never argv)."""
    args = [require_tool("cryptsetup"), "luksFormat", "--type", "luks2", "--batch-mode", "--key-file", "-"]
    with tempfile.TemporaryDirectory() as tmp:
        if volume_key is not None:
            vk = Path(tmp) / "vk"
            vk.write_bytes(volume_key)
            args += ["--volume-key-file", str(vk)]
        subprocess.run([*args, *options, str(container)], input=secret, check=True, capture_output=True)


def luks_container(
    squashfs: Path,
    out: Path,
    secret: bytes,
    *options: str,
    sector_size: int = 512,
    volume_key: bytes | None = None,
) -> bytes:
    """Recipe A: an Apptainer-layout LUKS2 file (16 MiB data offset) holding ``squashfs``; returns the VK."""
    volume_key = volume_key or os.urandom(64)
    data = squashfs.read_bytes()
    with open(out, "wb") as f:
        f.truncate(len(data) + (-len(data) % sector_size) + (16 << 20))
    luksformat(
        out, secret, "--sector-size", str(sector_size), *(options or FAST_PBKDF2), volume_key=volume_key
    )
    segment = luks_json(out)["segments"]["0"]
    with open(out, "r+b") as f:
        f.seek(int(segment["offset"]))
        f.write(xts_encrypt(volume_key, data, sector_size))
    return volume_key


def luks_json(container: Path) -> dict:
    out = subprocess.run(
        [require_tool("cryptsetup"), "luksDump", "--dump-json-metadata", str(container)],
        check=True,
        capture_output=True,
    ).stdout
    return json.loads(out)


def rewrite_json(container: Path, metadata: dict) -> None:
    """Replace both header copies' JSON and fix their checksums (luks2.md §6, JSON-edited fixtures)."""
    with open(container, "r+b") as f:
        size = int.from_bytes(f.read(16)[8:16], "big")
        text = json.dumps(metadata).encode()
        for offset in (0, size):
            f.seek(offset)
            copy = bytearray(f.read(size))
            copy[4096:] = text + bytes(size - 4096 - len(text))
            copy[448:512] = bytes(64)
            copy[448 : 448 + 32] = hashlib.sha256(copy).digest()
            f.seek(offset)
            f.write(copy)


def gocryptfs_outer(
    inner: Path,
    workdir: Path,
    password: bytes,
    *init_options: str,
    logn: int = 10,
    payload_cut: int | None = None,
) -> Path:
    """The outer squashfs of fs type 6 (spec §9): ``inner`` written through a real gocryptfs mount."""
    gocryptfs = require_tool("gocryptfs")
    work = Path(tempfile.mkdtemp(dir=workdir))
    cipher, plain = work / "cipher", work / "plain"
    cipher.mkdir(mode=0o700)
    plain.mkdir(mode=0o700)
    init = [gocryptfs, "-q", "-init", "-scryptn", str(logn), "-deterministic-names", *init_options]
    subprocess.run(
        [*init, str(cipher)], input=password + b"\n" + password + b"\n", check=True, capture_output=True
    )
    subprocess.run(
        [gocryptfs, "-q", str(cipher), str(plain)], input=password + b"\n", check=True, capture_output=True
    )
    try:
        (plain / "squashfs-1234567890").write_bytes(inner.read_bytes())
    finally:
        subprocess.run(["fusermount3", "-u", str(plain)], check=True)
    if payload_cut is not None:
        payload = next(p for p in cipher.iterdir() if not p.name.startswith("gocryptfs."))
        os.truncate(payload, payload_cut)
    return mksquashfs(cipher, work / "outer.sqfs", "-comp", "gzip", "-noD", "-noF", "-all-root")


def gocryptfs_password(pem: Path | None) -> bytes:
    """A passphrase, or for PEM images what Apptainer uses: 32 lowercase hex characters of MD5(random)."""
    return hashlib.md5(os.urandom(32)).hexdigest().encode() if pem else b"correct horse"
