"""The image every FUSE test mounts: the example rootfs plus what a mount must get right."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from siffs.sif import ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from tests.support.images import build_rootfs, mksquashfs

PSEUDO = [
    "-p",
    "dev/null c 666 0 0 1 3",
    "-p",
    "dev/sda b 660 0 6 8 0",
    "-p",
    "run d 755 0 0",
    "-p",
    "run/fifo i 600 1000 1000 f",
    "-p",
    "run/sock i 600 70000 70001 s",
]


def rich_tree(root: Path) -> Path:
    """The example rootfs plus what a mount must get right: links, xattrs, odd names, sizes."""
    build_rootfs(root)
    data = root / "data"
    data.mkdir()
    (data / "empty").write_bytes(b"")
    (data / "one").write_bytes(b"x")
    (data / "big.bin").write_bytes(os.urandom(300_000) + bytes(400_000) + b"tail" * 1000)
    os.link(data / "one", data / "one-hardlink")
    (data / "caf\xe9 \n odd").write_text("odd name")
    os.mkdir(root / os.fsdecode(b"dir-\xff\xfe"))
    (data / "attrs").write_text("with xattrs")
    os.setxattr(data / "attrs", "user.comment", b"hello")
    os.setxattr(data / "attrs", "user.empty", b"")
    (data / "loop").symlink_to("loop")
    (data / "dangling").symlink_to("/nowhere/at/all")
    deep = data / "/".join(f"d{i}" for i in range(40))
    deep.mkdir(parents=True)
    (deep / "leaf").write_text("deep")
    os.utime(data / "one", (1_000_000_000, 1_000_000_000))
    return root


@pytest.fixture(scope="session")
def image(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("fs-image")
    squash = mksquashfs(rich_tree(work / "tree"), work / "root.squashfs", "-all-root", "-xattrs", *PSEUDO)
    sif = work / "image.sif"
    with open(squash, "rb") as f:
        create(
            sif,
            [
                ObjectInput(
                    DataType.PARTITION, f, extra=partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
                )
            ],
        )
    os.chmod(work, 0o755)
    return sif
