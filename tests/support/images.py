"""Build the test images once, from local material: example rootfs -> SquashFS -> SIF."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.shared import REPO


def _load_mkrootfs():  # the example builder lives in contrib/ so the README demo uses it too
    spec = importlib.util.spec_from_file_location("mkrootfs", REPO / "contrib/example/mkrootfs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test set-up command")
    return path


def build_rootfs(dest: Path) -> Path:
    """The busybox example tree with Singularity metadata."""
    return _load_mkrootfs().build_tree(dest)


def mksquashfs(source: Path, out: Path, *options: str) -> Path:
    cmd = [require_tool("mksquashfs"), str(source), str(out), "-noappend", "-quiet", "-no-progress", *options]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out
