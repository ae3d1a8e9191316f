"""Session fixtures for the SquashFS tests: the corpus (built once) and kernel mounts of it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from siffs.squashfs import SquashFS
from tests.support.squashfs_corpus import SPECS, Corpus, kernel_mount, mount_unavailable, wrap_at_offset


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


@pytest.fixture
def open_image(corpus: Corpus) -> Iterator[Callable[..., SquashFS]]:
    """``open_image(name, **kw)``: the siffs reader on corpus image ``name``, closed after the test."""
    opened: list[SquashFS] = []

    def open_(name: str, **kw: object) -> SquashFS:
        fs = SquashFS.open(str(corpus.image(name)), **kw)
        opened.append(fs)
        return fs

    yield open_
    for fs in opened:
        fs.close()
