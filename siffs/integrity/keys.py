"""Key files: tell OpenPGP from PEM, and load them for verifying or signing.

Users hand siffs whatever they have: an armored or binary OpenPGP key (public or secret), or a
PEM public or private key. The kind is decided by content, never by file name, and a file
that is none of these is a ``KeyMaterialError`` naming the file.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from siffs.integrity.dsse import DsseKey, load_private_pem, load_public_pem
from siffs.integrity.errors import KeyMaterialError
from siffs.integrity.openpgp import PgpKeyring
from siffs.integrity.verify import KeyMaterial

if TYPE_CHECKING:
    from siffs.integrity.dsse import PrivateKey

#: Larger files are not keys; refusing them early avoids reading a wrong path into memory.
MAX_KEY_FILE = 4 * 1024 * 1024


class KeyKind(enum.Enum):
    PGP = "pgp"
    PEM_PUBLIC = "pem-public"
    PEM_PRIVATE = "pem-private"


def read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyMaterialError(f"{path}: cannot read key file ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyMaterialError(f"{path}: too large to be a key file")
    return data


def classify(data: bytes, source: str) -> KeyKind:
    text = data.lstrip()
    if text.startswith(b"-----BEGIN PGP ") or (data and data[0] & 0x80):
        return KeyKind.PGP
    if text.startswith(b"-----BEGIN ") and b"PRIVATE KEY-----" in text.split(b"\n", 1)[0]:
        return KeyKind.PEM_PRIVATE
    if text.startswith(b"-----BEGIN ") and b"PUBLIC KEY-----" in text.split(b"\n", 1)[0]:
        return KeyKind.PEM_PUBLIC
    raise KeyMaterialError(f"{source}: not an OpenPGP key or a PEM key")


class KeyFile(NamedTuple):
    path: str
    data: bytes
    kind: KeyKind


def load_files(paths: Sequence[str]) -> list[KeyFile]:
    files = []
    for path in paths:
        data = read_key_file(path)
        files.append(KeyFile(path, data, classify(data, path)))
    return files


def public_dsse_key(f: KeyFile) -> DsseKey:
    """The DSSE public key of a PEM file (the public half when given a private key)."""
    if f.kind is KeyKind.PEM_PRIVATE:
        return DsseKey(load_private_pem(f.data, f.path).public_key())
    return load_public_pem(f.data, f.path)


def key_material(
    files: Sequence[KeyFile],
    pgp_keyring: Callable[[Sequence[tuple[bytes, str]]], PgpKeyring] = PgpKeyring.from_keys,
) -> KeyMaterial:
    """Everything needed to verify with these files: an OpenPGP keyring and/or DSSE keys.

    ``pgp_keyring`` builds the keyring from ``(data, name)`` pairs (the trusted keyring passes one
    that caches GnuPG's export).
    """
    pgp = [(f.data, f.path) for f in files if f.kind is KeyKind.PGP]
    dsse = tuple(public_dsse_key(f) for f in files if f.kind is not KeyKind.PGP)
    return KeyMaterial(pgp_keyring(pgp) if pgp else None, dsse)


def private_pem(f: KeyFile, password: bytes | None = None) -> PrivateKey:
    if f.kind is not KeyKind.PEM_PRIVATE:
        raise KeyMaterialError(f"{f.path}: a PEM private key is needed to make a DSSE signature")
    return load_private_pem(f.data, f.path, password)
