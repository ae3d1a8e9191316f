"""``pip install .`` and ``pipx install .`` give a working ``siffs`` (from a clone: not editable).

These fetch siffs' dependencies from PyPI (pip's cache makes a second run quick) and build
pyfuse3 from source, so they need the network, gcc and libfuse3-dev, as the README's install.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from siffs import __version__
from tests.support.hostns import private_mounts, shadow
from tests.support.images import require_tool
from tests.support.reference import IMAGES
from tests.support.shared import REPO
from tests.support.trees import assert_same_tree, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The committed tree, as a user gets it: no .venv, no egg-info, no editable install."""
    path = tmp_path_factory.mktemp("packaging") / "siffs"
    subprocess.run(["git", "clone", "-q", str(REPO), str(path)], check=True)
    return path


def check_siffs(siffs: Path) -> None:
    version = subprocess.run([siffs, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"siffs {__version__}"
    listing = subprocess.run(
        [siffs, "list", IMAGES / "one-group.sif"], capture_output=True, text=True, check=True
    )
    assert "FS (Squashfs/*System/386)" in listing.stdout, listing.stdout


def _fuse_snapshot(siffs: Path, image: Path, mnt: Path) -> dict[str, object]:
    """The tree of ``image`` as a ``siffs`` of another installation mounts it."""
    mnt.mkdir()
    subprocess.run([siffs, "mount", "--allow-unsigned", image, mnt], check=True)
    try:
        return snapshot(mnt)
    finally:
        subprocess.run([siffs, "umount", mnt], check=True)


def test_pip_install(clone, tmp_path, corpus, kernel):
    """A plain ``pip install .`` (no extras) reads every compressor: LZO too, equal to the kernel."""
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", str(clone)], check=True)
    check_siffs(venv / "bin" / "siffs")
    with kernel("mk-lzo") as k:
        expected = snapshot(k)
    actual = _fuse_snapshot(venv / "bin" / "siffs", corpus.image("mk-lzo"), tmp_path / "mnt")
    assert_same_tree(actual, expected)


def test_pipx_install(clone, tmp_path, corpus, kernel):
    """``pipx install .``, then ``siffs setup mount-helper``: ``mount -t fuse.siffs`` works."""
    pipx = require_tool("pipx")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    subprocess.run([pipx, "install", str(clone)], check=True, env=env, capture_output=True)
    siffs = tmp_path / "bin" / "siffs"
    check_siffs(siffs)
    # mount(8) through the helper of this install, linked by its own setup command (private /sbin).
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with private_mounts():
        shadow(Path("/sbin"), {"mount.fuse.siffs": None}, tmp_path / "sbin-layer")
        setup = subprocess.run([siffs, "setup", "mount-helper"], capture_output=True, text=True, check=True)
        assert setup.stdout.startswith("linked: /sbin/mount.fuse.siffs -> ") and str(tmp_path) in setup.stdout
        bare = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # mount(8) finds the helper; the helper its siffs
        image = corpus.image("mk-lzo")
        mount = ["mount", "-t", "fuse.siffs", "-o", "allow_unsigned", image, mnt]
        subprocess.run(mount, check=True, env=bare)
        try:
            actual = snapshot(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)
    with kernel("mk-lzo") as k:
        assert_same_tree(actual, snapshot(k))


def test_no_merge_conflict_left_in_the_repository():
    """A conflict committed by mistake (one sat in the README for a whole session) fails here."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    marked = []
    for name in files.decode().split("\0"):
        path = REPO / name
        if not name or not path.is_file() or path.suffix in (".sif", ".img", ".squashfs", ".gz"):
            continue
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if line.startswith((b"<<<<<<< ", b">>>>>>> ")) or line == b"=======":
                marked.append(f"{name}:{number}")
    assert not marked, marked
