"""What the contrib/ tests share: a small signed image, its key, and a private environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support.images import build_rootfs, mksquashfs
from tests.support.mounts import siffs
from tests.support.reference import key_path
from tests.support.shared import REPO

CONTRIB = REPO / "contrib"
PUBLIC_KEY = key_path("ed25519", "public")
#: The ``siffs`` console script of the environment running the tests.
SIFFS_BIN = Path(sys.executable).parent / "siffs"


@pytest.fixture(scope="session")
def signed_image(tmp_path_factory) -> Path:
    """The example image, signed (DSSE, the corpus' Ed25519 test key); readable by every user."""
    work = tmp_path_factory.mktemp("contrib-image")
    squash = mksquashfs(build_rootfs(work / "tree"), work / "root.squashfs", "-all-root")
    image = work / "example.sif"
    siffs("create", image, squash, check=True)
    siffs("sign", image, "--key", key_path("ed25519", "private"), check=True)
    os.chmod(work, 0o755)
    os.chmod(image, 0o644)
    return image


@pytest.fixture
def private_env(tmp_path) -> dict[str, str]:
    """The environment with a private home, keyring, caches, logs and runtime directory."""
    dirs = {name: tmp_path / name for name in ("home", "config", "cache", "state", "data", "runtime")}
    for path in dirs.values():
        path.mkdir()
    dirs["runtime"].chmod(0o700)
    return dict(
        os.environ,
        HOME=str(dirs["home"]),
        XDG_CONFIG_HOME=str(dirs["config"]),
        XDG_CACHE_HOME=str(dirs["cache"]),
        XDG_STATE_HOME=str(dirs["state"]),
        XDG_DATA_HOME=str(dirs["data"]),
        XDG_RUNTIME_DIR=str(dirs["runtime"]),
    )
