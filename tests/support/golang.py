"""Build the small Go programs under tests/support/go against Debian's reference SIF library.

Debian packages github.com/sylabs/sif (v2) under /usr/share/gocode without the ``/v2`` path
element, so the programs are built in GOPATH mode with a link that supplies it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GOCODE = Path("/usr/share/gocode/src")
SIF_SOURCE = GOCODE / "github.com/sylabs/sif"
PROGRAMS = Path(__file__).parent / "go"


def build(name: str, workdir: Path) -> Path:
    """Compile ``tests/support/go/<name>`` and return the binary's path."""
    go = shutil.which("go")
    if go is None or not SIF_SOURCE.is_dir():
        if os.environ.get("CI"):
            pytest.fail("golang-go and golang-github-sylabs-sif-dev must be installed in CI")
        pytest.skip("needs golang-go and golang-github-sylabs-sif-dev")
    gopath = workdir / "gopath"
    link = gopath / "src/github.com/sylabs/sif/v2"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(SIF_SOURCE)
    package = gopath / "src/siffs-tests" / name
    if not package.exists():
        package.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(PROGRAMS / name, package)
    binary = workdir / name
    env = dict(
        os.environ,
        GOPATH=f"{gopath}:{GOCODE.parent}",
        GO111MODULE="off",
        GOCACHE=str(workdir / "gocache"),
        GOFLAGS="",
    )
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=package, env=env, check=True)
    return binary
