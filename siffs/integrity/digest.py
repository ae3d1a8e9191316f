"""Digest strings ``<alg>:<hex>`` as the signed metadata carries them (sif-format.md §7).

A digest names its algorithm, so a verifier re-hashes with whatever the signer chose; only
the six algorithms the reference accepts are known, and a malformed or unknown digest makes
the whole metadata (and so its signature) invalid rather than silently "not matching".
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import NamedTuple, Protocol

from siffs.integrity.errors import HashUnsupportedError, SignatureNotValidError
from siffs.sif.types import HashType


class Hasher(Protocol):
    """What ``hashlib`` objects offer and the integrity code uses."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


#: Metadata digest names → (hashlib constructor, digest length in bytes).
ALGORITHMS: dict[str, tuple[Callable[[], Hasher], int]] = {
    "sha224": (hashlib.sha224, 28),
    "sha256": (hashlib.sha256, 32),
    "sha384": (hashlib.sha384, 48),
    "sha512": (hashlib.sha512, 64),
    "sha512_224": (lambda: hashlib.new("sha512_224"), 28),
    "sha512_256": (lambda: hashlib.new("sha512_256"), 32),
}

#: Descriptor HashType values a legacy (SIFHASH) signature may use, by metadata name.
LEGACY_HASH_TYPES: dict[int, str] = {
    HashType.SHA256: "sha256",
    HashType.SHA384: "sha384",
    HashType.SHA512: "sha512",
}


class Digest(NamedTuple):
    """A named digest value; ``str()`` gives the metadata spelling."""

    algorithm: str
    value: bytes

    @classmethod
    def parse(cls, text: object) -> Digest:
        """Parse ``<alg>:<hex>`` as the reference does; anything else invalidates the metadata."""
        if not isinstance(text, str):
            raise SignatureNotValidError("signed metadata holds a digest that is not a string")
        parts = text.split(":")
        if len(parts) != 2:
            raise SignatureNotValidError(f"signed metadata holds a malformed digest {text[:80]!r}")
        name, hex_value = parts
        value = parse_hex(hex_value)
        if value is None:
            raise SignatureNotValidError(f"signed metadata holds a malformed digest {text[:80]!r}")
        if name not in ALGORITHMS:
            raise SignatureNotValidError(f"signed metadata uses an unsupported digest algorithm {name!r}")
        if len(value) != ALGORITHMS[name][1]:
            raise SignatureNotValidError(f"signed metadata holds a {name} digest of the wrong length")
        return cls(name, value)

    @classmethod
    def of(cls, algorithm: str, data: bytes) -> Digest:
        h = new_hasher(algorithm)
        h.update(data)
        return cls(algorithm, h.digest())

    def matches(self, value: bytes) -> bool:
        return hmac.compare_digest(self.value, value)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value.hex()}"


def new_hasher(algorithm: str) -> Hasher:
    try:
        return ALGORITHMS[algorithm][0]()
    except KeyError:
        raise HashUnsupportedError(f"hash algorithm {algorithm!r} unsupported") from None


def parse_hex(text: str) -> bytes | None:
    """Bytes of a hex string as Go's ``hex.DecodeString`` reads it (no whitespace), else ``None``."""
    if len(text) % 2 or not all(c in "0123456789abcdefABCDEF" for c in text):
        return None
    return bytes.fromhex(text)
