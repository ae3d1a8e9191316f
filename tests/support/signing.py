"""A test signing key, and images signed with it, so mounts take siffs' default path.

A mount of a signed image given its signer's key is what users get by default: the
signatures are checked, a block table of the partition is recorded, and every read is checked
against it. Tests that compare a mount with the kernel use that path, not ``--allow-unsigned``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from siffs.sif.types import MAGIC
from tests.support.images import wrap_sif
from tests.support.mounts import siffs


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair in PEM files (DSSE signatures); both readable by every user."""

    private: Path
    public: Path

    @classmethod
    def make(cls, directory: Path) -> SigningKey:
        directory.mkdir(parents=True, exist_ok=True)
        key = ed25519.Ed25519PrivateKey.generate()
        private, public = directory / "test-private.pem", directory / "test-public.pem"
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for path in (directory, private, public):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        return cls(private, public)

    def sign(self, image: Path, out: Path) -> Path:
        """``image`` (a SIF, or a bare SquashFS wrapped into one) signed with this key, at ``out``."""
        with open(image, "rb") as f:
            f.seek(32)  # after the launch script
            is_sif = f.read(len(MAGIC)) == MAGIC
        if is_sif:
            shutil.copyfile(image, out)
        else:
            wrap_sif(image, out)
        siffs("sign", out, "--key", self.private, check=True)
        os.chmod(out, 0o644)
        return out
