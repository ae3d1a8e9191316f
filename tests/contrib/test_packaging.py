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
from tests.support.images import require_tool
from tests.support.reference import IMAGES
from tests.support.shared import REPO

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


def test_pip_install(clone, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", str(clone)], check=True)
    check_siffs(venv / "bin" / "siffs")


def test_pipx_install(clone, tmp_path):
    pipx = require_tool("pipx")
    env = dict(os.environ, PIPX_HOME=str(tmp_path / "pipx"), PIPX_BIN_DIR=str(tmp_path / "bin"))
    subprocess.run([pipx, "install", str(clone)], check=True, env=env, capture_output=True)
    check_siffs(tmp_path / "bin" / "siffs")
