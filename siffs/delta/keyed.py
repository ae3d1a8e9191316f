"""The secret of an encrypted chunk store and what is derived from it.

Why a store secret at all: chunking the ciphertext of an encrypted image gains nothing (each build
has a new volume key), so the plaintext is chunked, and the store must then hide it. One 32-byte
secret per store gives, through HKDF-SHA256 with distinct labels:

* the chunker's buzhash table, so cut points (and chunk sizes) cannot be predicted from known files;
* the chunk-name key: a chunk is named by HMAC-SHA256 of its plaintext, so names reveal nothing
  without the key yet stay equal between versions (the point of a delta);
* the chunk-encryption key: AES-256-GCM with the name's first 12 bytes as nonce and the name as
  associated data (deterministic, so re-publishing writes identical files; a nonce repeats only
  with the same plaintext, which the name already says);
* a check value, published with the store, that tells a wrong key before anything is fetched;
* for the client's seed-index cache: an identity of the keyed chunker (one-way, names the cache
  entry) and a key that seals the entry (chunk names and plaintext offsets are derived from
  secrets, so they never sit in the cache in the clear).

The secret comes from the passphrase (scrypt with a salt published with the store) or, for images
encrypted to an RSA key, is random and wrapped to that key in a Cryptographic Message. Either way
the store's description is a small JSON object, kept in the store directory (so every version
published there shares the secret) and copied into each encrypted index (so a client needs nothing
else).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from siffs.crypt.errors import KeyProblem
from siffs.crypt.keys import WRONG_KEY, KeyMaterial, decrypt_message, encrypt_message
from siffs.delta.errors import DigestMismatchError, IndexFormatError, UnsupportedFormatError

#: scrypt cost for a passphrase store: 128 MiB and about half a second, twice gocryptfs' default.
SCRYPT_N = 1 << 17
SCRYPT_R = 8
#: What a client accepts from an untrusted store description (a DoS guard): 1 GiB of scrypt memory.
MAX_SCRYPT_MEMORY = 1 << 30
NAME_SIZE = 32
TAG_SIZE = 16
_LABEL = b"siffs encrypted chunk store v1: "


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise IndexFormatError(f"corrupt encrypted index: store key {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise IndexFormatError(f"corrupt encrypted index: store key {what} is not base64") from None


def _hkdf(secret: bytes, label: str, length: int = 32) -> bytes:
    info = _LABEL + label.encode()
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class StoreKeys:
    """The keys of one store, derived from its secret; repr shows none of them."""

    table: npt.NDArray[np.uint32] = field(repr=False)
    _name_key: bytes = field(repr=False)
    _aead: AESGCM = field(repr=False)
    #: Names the keyed chunker in the seed cache's keys; one-way, reveals nothing of the secret.
    chunker_id: bytes = field(repr=False)
    _cache_aead: AESGCM = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> StoreKeys:
        table = np.frombuffer(_hkdf(secret, "chunker table", 1024), dtype="<u4").astype(np.uint32)
        return cls(
            table,
            _hkdf(secret, "chunk names"),
            AESGCM(_hkdf(secret, "chunk encryption")),
            _hkdf(secret, "seed cache identity", 16),
            AESGCM(_hkdf(secret, "seed index cache")),
        )

    def seal_cached(self, context: bytes, data: bytes) -> bytes:
        """A seed-index cache entry: random nonce, AES-256-GCM, bound to ``context`` (what it describes)."""
        nonce = os.urandom(12)
        return nonce + self._cache_aead.encrypt(nonce, data, context)

    def open_cached(self, context: bytes, sealed: bytes) -> bytes | None:
        """A cache entry's content, or None when it is damaged, another store's or another file's."""
        if len(sealed) < 12 + TAG_SIZE:
            return None
        try:
            return self._cache_aead.decrypt(sealed[:12], sealed[12:], context)
        except InvalidTag:
            return None

    def name(self, plaintext: bytes | memoryview) -> bytes:
        """A chunk's name: the keyed MAC of its plaintext."""
        return hmac.new(self._name_key, plaintext, hashlib.sha256).digest()

    def seal(self, name: bytes, plaintext: bytes | memoryview) -> bytes:
        """The stored form of a chunk: AES-256-GCM ciphertext and tag."""
        return self._aead.encrypt(name[:12], bytes(plaintext), name)

    def open(self, name: bytes, sealed: bytes, size: int, source: str) -> bytes:
        """The plaintext of a stored chunk, authenticated and checked against its name and size."""
        what = f"encrypted chunk {name.hex()} from {source}"
        if len(sealed) != size + TAG_SIZE:
            raise DigestMismatchError(
                f"{what} has {len(sealed)} bytes, expected {size + TAG_SIZE}: corrupt chunk"
            )
        try:
            plain = self._aead.decrypt(name[:12], sealed, name)
        except InvalidTag:
            raise DigestMismatchError(f"{what} fails authentication: corrupt or tampered chunk") from None
        self.check(name, plain, source)
        return plain

    def check(self, name: bytes, plaintext: bytes | memoryview, source: str) -> None:
        if not hmac.compare_digest(self.name(plaintext), name):
            raise DigestMismatchError(
                f"encrypted chunk {name.hex()} from {source} does not match its name: corrupt or stale data"
            )


def _check_value(secret: bytes) -> bytes:
    return _hkdf(secret, "key check")


def new_description(material: KeyMaterial) -> tuple[dict[str, Any], bytes]:
    """A new store description for ``material`` and its secret (publisher side)."""
    if material.pem is not None:
        secret = os.urandom(32)
        private = serialization.load_pem_private_key(material.pem, password=None)
        public = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        described: dict[str, Any] = {"type": "rsa-oaep", "message": encrypt_message(public, secret).decode()}
    elif material.passphrase is not None:
        salt = os.urandom(32)
        described = {
            "type": "scrypt",
            "salt": base64.b64encode(salt).decode(),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": 1,
        }
        secret = _scrypt(material.passphrase, salt, SCRYPT_N, SCRYPT_R, 1)
    else:
        raise KeyProblem("image is encrypted: give --passphrase or --pem-path")
    described["check"] = base64.b64encode(_check_value(secret)).decode()
    return described, secret


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def secret_of(described: object, material: KeyMaterial) -> bytes:
    """The store secret from its description and the user's key; checked before any use.

    Raises :class:`KeyProblem` for a key that does not fit, and the delta errors for a description
    that is damaged or asks for more than the limits (checked before scrypt runs).
    """
    if not isinstance(described, dict):
        raise IndexFormatError("corrupt encrypted index: no store key description")
    kind = described.get("type")
    check = _b64(described.get("check"), "check")
    if kind == "rsa-oaep":
        message = described.get("message")
        if not isinstance(message, str):
            raise IndexFormatError("corrupt encrypted index: store key message is missing")
        if material.pem is None:
            raise KeyProblem(f"{WRONG_KEY}: this store was encrypted to an RSA key, give --pem-path")
        secret = decrypt_message(material.pem, message.encode())
    elif kind == "scrypt":
        n, r, p = (described.get(k) for k in ("n", "r", "p"))
        if not all(type(v) is int for v in (n, r, p)):
            raise IndexFormatError("corrupt encrypted index: scrypt parameters are not integers")
        assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
        power = n >= 2 and n & (n - 1) == 0
        if not (power and 1 <= r <= 32 and 1 <= p <= 16 and 128 * n * r <= MAX_SCRYPT_MEMORY):
            raise UnsupportedFormatError(
                f"store key scrypt parameters N={n} r={r} p={p} exceed the limits; "
                "refused before running scrypt"
            )
        if material.passphrase is None:
            raise KeyProblem("image was encrypted with a passphrase: give --passphrase, not --pem-path")
        secret = _scrypt(material.passphrase, _b64(described.get("salt"), "salt"), n, r, p)
    else:
        raise UnsupportedFormatError(f"store key type {str(kind)[:40]} not supported")
    if not hmac.compare_digest(_check_value(secret), check):
        raise KeyProblem(WRONG_KEY)
    return secret
