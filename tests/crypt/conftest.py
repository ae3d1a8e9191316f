"""Encrypted images of both kinds, made once per session with the real tools, and the kernel's view.

The plaintext SquashFS is the one every FUSE test mounts (the rich example tree); the oracle
for what an encrypted image must show is the kernel's mount of that plaintext.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from siffs.sif.types import FsType
from tests.conftest import PSEUDO, rich_tree
from tests.support.crypt import (
    FAST_ARGON2,
    gocryptfs_outer,
    gocryptfs_password,
    luks_container,
    message_for,
    rsa_key,
    wrap,
)
from tests.support.images import mksquashfs
from tests.support.mounts import kernel_mount
from tests.support.squashfs_corpus import mount_unavailable
from tests.support.trees import snapshot

PASSPHRASE = b"correct horse"


@dataclass(frozen=True)
class Encrypted:
    """An encrypted SIF and how to open it: ``passphrase`` bytes or the ``pem`` private key."""

    sif: Path
    partition: Path
    passphrase: bytes | None = None
    pem: Path | None = None
    volume_key: bytes | None = None

    def key_args(self) -> list[str]:
        return ["--pem-path", str(self.pem)] if self.pem else ["--passphrase"]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, **extra)
        if self.passphrase is not None:
            env["SIFFS_ENCRYPTION_PASSPHRASE"] = self.passphrase.decode()
        return env


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Readable by the unprivileged test user, who mounts and runs these images."""
    path = tmp_path_factory.mktemp("crypt")
    for directory in (path, *path.parents):
        if str(directory) in ("/", "/tmp"):
            break
        os.chmod(directory, os.stat(directory).st_mode | 0o005)
    return path


@pytest.fixture(scope="session")
def plain(work: Path) -> Path:
    """The plaintext SquashFS inside every encrypted fixture."""
    return mksquashfs(rich_tree(work / "tree"), work / "plain.sqfs", "-all-root", "-xattrs", *PSEUDO)


@pytest.fixture(scope="session")
def expected(plain: Path, work: Path) -> dict[str, Any]:
    """The kernel's view of the plaintext: what every encrypted image must show."""
    reason = mount_unavailable(work)
    if reason is not None:
        pytest.skip(reason)
    with kernel_mount(plain, work / "kernel") as k:
        return snapshot(k)


@pytest.fixture(scope="session")
def rsa_pem(work: Path) -> Path:
    return rsa_key(work / "rsa.pem")


def _luks(
    work: Path, plain: Path, name: str, pem: Path | None, *options: str, sector_size: int = 512
) -> Encrypted:
    secret = os.urandom(64) if pem else PASSPHRASE
    container = work / f"{name}.luks"
    vk = luks_container(plain, container, secret, *options, sector_size=sector_size)
    sif = wrap(
        container, work / f"{name}.sif", FsType.ENCRYPTED_SQUASHFS, message_for(pem, secret) if pem else None
    )
    return Encrypted(sif, container, None if pem else PASSPHRASE, pem, vk)


def _gocryptfs(
    work: Path, plain: Path, name: str, pem: Path | None, *extra: str, logn: int = 10
) -> Encrypted:
    password = gocryptfs_password(pem)
    outer = gocryptfs_outer(plain, work, password, "-plaintextnames", *extra, logn=logn)
    sif = wrap(
        outer, work / f"{name}.sif", FsType.GOCRYPTFS_SQUASHFS, message_for(pem, password) if pem else None
    )
    return Encrypted(sif, outer, None if pem else password, pem)


@pytest.fixture(scope="session")
def luks_pass(work: Path, plain: Path) -> Encrypted:
    return _luks(work, plain, "luks-pass", None)


@pytest.fixture(scope="session")
def luks_argon(work: Path, plain: Path) -> Encrypted:
    return _luks(work, plain, "luks-argon", None, *FAST_ARGON2, sector_size=4096)


@pytest.fixture(scope="session")
def luks_pem(work: Path, plain: Path, rsa_pem: Path) -> Encrypted:
    return _luks(work, plain, "luks-pem", rsa_pem)


@pytest.fixture(scope="session")
def goc_pass(work: Path, plain: Path) -> Encrypted:
    return _gocryptfs(work, plain, "goc-pass", None)


@pytest.fixture(scope="session")
def goc_pem(work: Path, plain: Path, rsa_pem: Path) -> Encrypted:
    return _gocryptfs(work, plain, "goc-pem", rsa_pem)


KINDS = ("luks_pass", "luks_argon", "luks_pem", "goc_pass", "goc_pem")


@pytest.fixture(params=KINDS)
def encrypted(request: pytest.FixtureRequest) -> Encrypted:
    """Each kind of encrypted image in turn."""
    return request.getfixturevalue(request.param)
