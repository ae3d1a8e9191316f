import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.images import build_rootfs, mksquashfs, wrap_sif
from tests.support.shared import CONFORMANCE
from tests.support.signing import SigningKey
from tests.support.squashfs_corpus import SPECS, Corpus, kernel_mount, mount_unavailable, wrap_at_offset


def pytest_configure(config):
    if not CONFORMANCE.is_dir():
        raise pytest.UsageError(
            f"the conformance corpus is missing at {CONFORMANCE}; set SIFFS_SHARED to the shared/ folder"
        )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("squashfs-corpus"))


@pytest.fixture(scope="session")
def kernel(corpus: Corpus) -> Callable[..., contextlib.AbstractContextManager[Path]]:
    """``kernel(name, offset=0)``: a context manager mounting corpus image ``name`` (or its oracle)."""
    reason = mount_unavailable(corpus.workdir)
    if reason is not None:
        pytest.skip(reason)

    @contextlib.contextmanager
    def mount(name: str, offset: int = 0) -> Iterator[Path]:
        image = corpus.image(SPECS[name].oracle or name)
        if offset:
            image = wrap_at_offset(image, corpus.workdir / f"{image.stem}-at{offset}.img", offset)
        with kernel_mount(image, corpus.workdir / "mnt" / f"{name}-{offset}", offset) as mnt:
            yield mnt

    return mount


# The image every FUSE, CLI and runtime test may mount: the example rootfs plus what a mount must get right.
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
    wrap_sif(squash, sif)
    os.chmod(work, 0o755)
    return sif


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> SigningKey:
    """A fresh Ed25519 key: images signed with it mount on the default (verified) path."""
    work = tmp_path_factory.mktemp("signing-key")
    os.chmod(work, 0o755)
    return SigningKey.make(work / "keys")


@pytest.fixture(scope="session")
def verified_image(image, signing_key) -> Path:
    """``image`` signed with ``signing_key``; mount it with ``key=signing_key.public``."""
    return signing_key.sign(image, image.with_name("image-signed.sif"))
