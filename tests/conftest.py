import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.shared import CONFORMANCE
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
