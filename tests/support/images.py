"""Build the test images once, from local material: example rootfs -> SquashFS -> SIF."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from siffs.sif import ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
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


def wrap_sif(squashfs: Path, sif: Path, arch: bytes = b"02") -> Path:
    """An unsigned SIF whose primary system partition is ``squashfs`` (as ``siffs create`` makes)."""
    with open(squashfs, "rb") as f:
        extra = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, arch)
        create(sif, [ObjectInput(DataType.PARTITION, f, extra=extra)])
    return sif
