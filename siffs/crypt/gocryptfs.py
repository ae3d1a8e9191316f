"""Apptainer's unprivileged encrypted images (fs type 6): one gocryptfs file, decrypted in user space.

The partition is an outer SquashFS holding ``gocryptfs.conf`` and one gocryptfs-encrypted
file; the caller reads those with the SquashFS reader and hands them here as bytes and a
byte source. This module checks the conf (every field, the scrypt cost) before running
scrypt, unwraps the master key, and serves the file's 4 KiB blocks decrypted on demand:
each block's GCM tag is checked on every read, so a tampered block answers EIO, and the
plaintext never goes to disk.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from siffs.crypt.errors import CorruptEncryption, KeyProblem, TamperedBlock, UnsupportedEncryption
from siffs.crypt.keys import NO_KEY, WRONG_KEY, KeyMaterial, secret_from_message
from siffs.crypt.luks2 import check_squashfs
from siffs.crypt.xts import gcm_open_blocks
from siffs.source import ByteSource

CONF_NAME = b"gocryptfs.conf"
PAYLOAD_PREFIX = b"squashfs-"
MAX_CONF_SIZE = 64 * 1024
#: What every Apptainer image has, and all that siffs reads.
FEATURES = frozenset({"HKDF", "GCMIV128", "PlaintextNames"})
KNOWN_FEATURES = frozenset(
    {"PlaintextNames", "DirIV", "EMENames", "GCMIV128", "LongNames", "LongNameMax", "AESSIV", "Raw64", "HKDF"}
    | {"FIDO2", "XChaCha20Poly1305"}
)
NAME_FEATURES = frozenset({"EMENames", "DirIV", "LongNames", "Raw64", "LongNameMax"})
CONTENT_INFO = b"AES-GCM file content encryption"
HEADER = 18
BLOCK = 4096
NONCE = 16
TAG = 16
CIPHER_BLOCK = NONCE + BLOCK + TAG
MAX_PASSWORD = 2048
#: scrypt memory is 128·N·R bytes; more than this is a denial of service, not an image.
MAX_SCRYPT_MEMORY = 4 << 30


@dataclass(frozen=True)
class Conf:
    """A checked ``gocryptfs.conf``."""

    creator: str
    version: int
    features: tuple[str, ...]
    salt: bytes
    n: int
    r: int
    p: int
    encrypted_key: bytes

    def to_dict(self) -> dict[str, Any]:
        """The facts ``siffs inspect`` shows without a key."""
        return {
            "format": "gocryptfs",
            "creator": self.creator,
            "version": self.version,
            "feature_flags": list(self.features),
            "scrypt": {"N": self.n, "R": self.r, "P": self.p},
        }


def _field(conf: dict[str, Any], name: str) -> object:
    return conf.get(name)


def parse_conf(data: bytes) -> Conf:
    """Check ``gocryptfs.conf`` in the spec's order; no key and no KDF needed."""
    try:
        conf = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptEncryption("gocryptfs.conf is not valid JSON") from exc
    if not isinstance(conf, dict):
        raise CorruptEncryption("gocryptfs.conf is not valid JSON")
    version = conf.get("Version")
    if type(version) is not int or version != 2:
        raise UnsupportedEncryption(f"gocryptfs on-disk format {str(version)[:20]} not supported")
    flags = conf.get("FeatureFlags")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise CorruptEncryption("gocryptfs.conf: FeatureFlags is not a list of strings")
    for flag in flags:
        if flag not in KNOWN_FEATURES:
            raise UnsupportedEncryption(f"gocryptfs feature {flag[:40]} not supported")
    if NAME_FEATURES & set(flags) or "PlaintextNames" not in flags:
        raise UnsupportedEncryption(
            "gocryptfs with encrypted file names is not supported (not an Apptainer image)"
        )
    for flag in sorted(set(flags) - FEATURES):
        raise UnsupportedEncryption(f"gocryptfs feature {flag} not supported")
    for flag in sorted(FEATURES - set(flags)):
        raise UnsupportedEncryption(f"gocryptfs without feature {flag} not supported")
    scrypt = conf.get("ScryptObject")
    if not isinstance(scrypt, dict):
        raise CorruptEncryption("gocryptfs.conf: ScryptObject is missing")
    salt = _base64(scrypt.get("Salt"), "Salt")
    if len(salt) < 32:
        raise UnsupportedEncryption(_out_of_range("Salt"))
    _scrypt_int(scrypt, "KeyLen", lambda v: v == 32)
    n = _scrypt_int(scrypt, "N", lambda v: 1 << 10 <= v <= 1 << 22 and v & (v - 1) == 0)
    r = _scrypt_int(scrypt, "R", lambda v: 8 <= v <= 32)
    p = _scrypt_int(scrypt, "P", lambda v: 1 <= v <= 16)
    if 128 * n * r > MAX_SCRYPT_MEMORY:
        raise UnsupportedEncryption(_out_of_range("N·R"))
    encrypted_key = _base64(conf.get("EncryptedKey"), "EncryptedKey")
    if len(encrypted_key) != 64:
        raise CorruptEncryption(f"gocryptfs.conf: EncryptedKey has {len(encrypted_key)} bytes (want 64)")
    creator = conf.get("Creator")
    return Conf(
        str(creator)[:80] if creator is not None else "", version, tuple(flags), salt, n, r, p, encrypted_key
    )


def _out_of_range(name: str) -> str:
    return f"scrypt parameter {name} out of range; refused before running scrypt"


def _scrypt_int(scrypt: dict[str, Any], name: str, ok: Callable[[int], bool]) -> int:
    value = scrypt.get(name)
    if type(value) is not int or not ok(value):
        raise UnsupportedEncryption(_out_of_range(name))
    return value


def _base64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise CorruptEncryption(f"gocryptfs.conf: {name} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise CorruptEncryption(f"gocryptfs.conf: {name} is not base64") from exc


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def password(secret: bytes) -> bytes:
    """The scrypt password: gocryptfs reads one line, 1 to 2048 bytes."""
    line = secret.split(b"\n", 1)[0]
    if not line:
        raise KeyProblem("the passphrase is empty")
    if len(line) > MAX_PASSWORD:
        raise KeyProblem(f"the passphrase is longer than gocryptfs' maximum of {MAX_PASSWORD} bytes")
    return line


def master_key(conf: Conf, secret: bytes) -> bytes:
    """scrypt → HKDF → AES-GCM unwrap of ``EncryptedKey``; a tag failure is a wrong key."""
    s = Scrypt(salt=conf.salt, length=32, n=conf.n, r=conf.r, p=conf.p).derive(password(secret))
    kek = _hkdf(s, CONTENT_INFO)
    try:
        return AESGCM(kek).decrypt(conf.encrypted_key[:NONCE], conf.encrypted_key[NONCE:], bytes(8))
    except InvalidTag as exc:
        raise KeyProblem(WRONG_KEY) from exc


def plain_size(csize: int) -> int:
    """The plaintext length of a ``csize``-byte gocryptfs file (known without the key)."""
    if csize == 0:
        return 0
    if csize < HEADER:
        raise CorruptEncryption(f"encrypted payload is truncated (its header has {csize} of {HEADER} bytes)")
    q, r = divmod(csize - HEADER, CIPHER_BLOCK)
    if 1 <= r <= NONCE + TAG:
        raise CorruptEncryption(f"encrypted payload is truncated (last block has {r} bytes)")
    return q * BLOCK + (r - NONCE - TAG if r else 0)


class ExtentSource:
    """A file its container stores verbatim in runs, read straight from the container.

    The payload of an Apptainer image is one file of incompressible ciphertext, so the outer
    SquashFS stores every block of it uncompressed, back to back, and its tail in an uncompressed
    fragment: reading those bytes directly skips the SquashFS data path and its block cache.
    """

    def __init__(self, container: ByteSource, runs: list[tuple[int, int, int]], size: int) -> None:
        self._container, self._runs, self.size = container, runs, size
        self._starts = [r[0] for r in runs]

    @classmethod
    def covering(
        cls, container: ByteSource, extents: list[tuple[int, int, int]], size: int
    ) -> ExtentSource | None:
        """The source when ``extents`` ((file offset, container offset, length)) cover the whole file."""
        runs: list[tuple[int, int, int]] = []
        at = 0
        for offset, where, length in sorted(extents):
            if offset != at:
                return None
            if runs and runs[-1][1] + runs[-1][2] == where:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + length)
            else:
                runs.append((offset, where, length))
            at += length
        return cls(container, runs, size) if at == size else None

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise CorruptEncryption(f"the encrypted payload ends before byte {offset + size} (damaged image)")
        parts = []
        i = bisect.bisect_right(self._starts, offset) - 1
        end = offset + size
        while offset < end:
            start, where, length = self._runs[i]
            take = min(end, start + length) - offset
            parts.append(self._container.pread(where + offset - start, take))
            offset += take
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)


class GocryptfsSource:
    """The plaintext of one gocryptfs file: 4 KiB blocks decrypted and authenticated on every read."""

    def __init__(self, payload: ByteSource, content_key: bytes) -> None:
        self._payload = payload
        self._size = plain_size(payload.size)
        if payload.size:
            header = payload.pread(0, HEADER)
            version = int.from_bytes(header[:2], "big")
            if version != 2:
                raise UnsupportedEncryption(f"gocryptfs file header version {version} not supported")
            self._file_id = header[2:]
            if not any(self._file_id):
                raise CorruptEncryption("gocryptfs file ID is all zero (corrupt image)")
        self._aead = AESGCM(content_key)
        self._key = content_key

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self._size:
            raise CorruptEncryption(
                f"read of bytes {offset}..{offset + size} outside the {self._size}-byte encrypted payload "
                "(truncated or damaged image)"
            )
        if size == 0:
            return b""
        first, last = offset // BLOCK, (offset + size - 1) // BLOCK
        start = HEADER + first * CIPHER_BLOCK
        data = self._payload.pread(start, min(HEADER + (last + 1) * CIPHER_BLOCK, self._payload.size) - start)
        skip = offset - first * BLOCK
        native = gcm_open_blocks(self._key, data, first, self._file_id, skip=skip, length=size)
        if isinstance(native, int):
            raise TamperedBlock(
                f"authentication failed in encrypted block {native} (corrupt or tampered image)"
            )
        if native is not None:
            return native  # just the bytes asked for, written straight from the decryption
        plain = b"".join(
            self._block(first + i, data[pos : pos + CIPHER_BLOCK])
            for i, pos in enumerate(range(0, len(data), CIPHER_BLOCK))
        )
        return plain[skip : skip + size]

    def _block(self, number: int, block: bytes) -> bytes:
        nonce = block[:NONCE]
        if not any(nonce):
            if len(block) == CIPHER_BLOCK and not any(block):
                return bytes(BLOCK)  # a hole: gocryptfs writes zeros when a file grows past its end
        else:
            try:
                return self._aead.decrypt(nonce, block[NONCE:], number.to_bytes(8, "big") + self._file_id)
            except InvalidTag:
                pass
        raise TamperedBlock(f"authentication failed in encrypted block {number} (corrupt or tampered image)")


def open_gocryptfs(
    conf_data: bytes,
    payload: ByteSource | None,
    material: KeyMaterial,
    message: bytes | None,
    *,
    notice: Callable[[str], None] = lambda _: None,
) -> GocryptfsSource:
    """The inner SquashFS bytes, in the spec's order: conf, key, scrypt, payload, inner superblock.

    ``payload`` is None when the outer image has none; the conf is judged first, because a
    conf with encrypted names explains why no ``squashfs-*`` name was found.
    """
    conf = parse_conf(conf_data)
    if payload is None:
        raise CorruptEncryption("gocryptfs partition has no squashfs-* payload")
    plain_size(payload.size)  # the payload's size rules need no key
    if material.passphrase is None and material.pem is None:
        raise KeyProblem(NO_KEY)
    secret = secret_from_message(material, message)
    if 128 * conf.n * conf.r > 256 << 20:
        notice(f"deriving key: scrypt N={conf.n}, {128 * conf.n * conf.r >> 20} MiB")
    try:
        mk = master_key(conf, secret)
    except KeyProblem as exc:
        if message is not None and material.pem is None:
            raise KeyProblem(f"{WRONG_KEY}: this image was encrypted to an RSA key, give --pem-path") from exc
        raise
    plain = GocryptfsSource(payload, _hkdf(mk, CONTENT_INFO))
    check_squashfs(plain, "decrypted payload is not a squashfs (wrong key or corrupt image)")
    return plain


# -- writing (siffs create --encrypt) ------------------------------------------------------------

#: gocryptfs' default scrypt cost, which Apptainer keeps: N = 2^16 (64 MiB, ~0.3 s).
DEFAULT_SCRYPT_N = 1 << 16
CREATOR = "siffs"


def new_conf(secret: bytes, *, n: int = DEFAULT_SCRYPT_N) -> tuple[bytes, bytes]:
    """A fresh ``gocryptfs.conf`` (as ``gocryptfs -init -plaintextnames`` writes it) and its master key."""
    salt, mk, nonce = os.urandom(32), os.urandom(32), os.urandom(NONCE)
    s = Scrypt(salt=salt, length=32, n=n, r=8, p=1).derive(password(secret))
    wrapped = nonce + AESGCM(_hkdf(s, CONTENT_INFO)).encrypt(nonce, mk, bytes(8))
    conf = {
        "Creator": CREATOR,
        "EncryptedKey": base64.b64encode(wrapped).decode(),
        "ScryptObject": {"Salt": base64.b64encode(salt).decode(), "N": n, "R": 8, "P": 1, "KeyLen": 32},
        "Version": 2,
        "FeatureFlags": ["HKDF", "GCMIV128", "PlaintextNames"],
    }
    return (json.dumps(conf, indent="\t") + "\n").encode(), mk


def encrypt_file(
    plain: BinaryIO, out: BinaryIO, master: bytes, progress: Callable[[int, int], None] = lambda d, t: None
) -> None:
    """Write ``plain`` as one gocryptfs file: header, then 4 KiB blocks with random nonces and GCM tags."""
    total = os.fstat(plain.fileno()).st_size
    file_id = os.urandom(16)
    aead = AESGCM(_hkdf(master, CONTENT_INFO))
    out.write((2).to_bytes(2, "big") + file_id)
    number = 0
    while block := plain.read(BLOCK):
        nonce = os.urandom(NONCE)
        out.write(nonce + aead.encrypt(nonce, block, number.to_bytes(8, "big") + file_id))
        number += 1
        if number % 256 == 0:
            progress(number * BLOCK, total)
    progress(total, total)
