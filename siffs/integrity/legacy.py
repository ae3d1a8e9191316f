"""Legacy ``SIFHASH`` signatures (Singularity before 3.6, sif-format.md §8.3).

A legacy signature is a clear-signed hex digest of one object's bytes (object-linked) or of
the concatenated bytes of a group's objects (group-linked). It protects no header or
descriptor field: a legacy-verified image can be relabelled freely, which is why siffs
verifies these only when asked (``--legacy``).
"""

from __future__ import annotations

from siffs.integrity.clearsign import ClearSigned
from siffs.integrity.digest import ALGORITHMS, LEGACY_HASH_TYPES, Digest, parse_hex
from siffs.integrity.errors import HashUnsupportedError, SignatureNotValidError

PREFIX = b"SIFHASH:\n"


def is_legacy(message: ClearSigned | None) -> bool:
    return message is not None and message.plaintext.startswith(PREFIX)


def legacy_algorithm(hash_type: int) -> str:
    """The digest algorithm a legacy signature's descriptor names (BLAKE2 types cannot be used)."""
    name = LEGACY_HASH_TYPES.get(hash_type)
    if name is None:
        raise HashUnsupportedError(f"legacy signature uses hash type {hash_type}: only SHA-256/384/512 work")
    return name


def legacy_digest(plaintext: bytes, name: str) -> Digest:
    """The digest a legacy message states, read as algorithm ``name``."""
    text = plaintext.removeprefix(PREFIX).removesuffix(b"\n")
    value = parse_hex(text.decode("latin-1"))
    if value is None or len(value) != ALGORITHMS[name][1]:
        raise SignatureNotValidError("legacy signature does not hold a well-formed digest")
    return Digest(name, value)
