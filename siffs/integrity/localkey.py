"""The per-user key that signs images siffs builds itself (``docker://`` conversions).

A converted image is unsigned by nature, and the default-deny trust policy would refuse to run
what the user just pulled. Signing it with a key that exists only for this user, and that only
this user's keyring trusts, keeps the policy whole: the image runs without ``--allow-unsigned``,
and any change to it after the build (on disk, on a shared file system) is caught like a change
to any signed image. Nobody else trusts the key, so it vouches for nothing beyond this account.

The Ed25519 private key is created on first use in ``$XDG_CONFIG_HOME/siffs/local-build-key.pem``
(mode 0600, written exclusively so that two first uses cannot race); its public half is in
the trusted keyring.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from siffs.integrity.errors import KeyMaterialError
from siffs.integrity.keyring import Keyring
from siffs.integrity.keys import key_material, load_files, private_pem
from siffs.integrity.sign import DsseSigningKey
from siffs.integrity.verify import KeyMaterial
from siffs.integrity.xdg import config_dir, private_dir

NAME = "local-build-key.pem"


def key_path() -> Path:
    return config_dir() / NAME


def _create(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another siffs made it first: use theirs
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())


def signing_key() -> DsseSigningKey:
    """This user's build key (created on first use), its public half trusted by this user.

    The public half is imported every time (cheap, idempotent), so a first use that died
    between making the key and trusting it mends itself.
    """
    path = key_path()
    if not path.exists():
        _create(path)
    try:
        Keyring().import_file(str(path))  # keeps only the public half
        [f] = load_files([str(path)])
        return DsseSigningKey((private_pem(f),))
    except KeyMaterialError as exc:
        raise KeyMaterialError(f"{exc}; remove {path} to make a new local build key") from None


def verification_keys() -> KeyMaterial:
    """The build key's public half, to check what it signed (creating the key if needed)."""
    signing_key()
    return key_material(load_files([str(key_path())]))
