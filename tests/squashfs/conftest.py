"""Fixtures of the SquashFS tests (the corpus and its kernel mounts are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from siffs.squashfs import SquashFS
from tests.support.squashfs_corpus import Corpus


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
