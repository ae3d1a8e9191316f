"""A short run of the mutation fuzzer (the long one is ``python -m tests.squashfs.fuzz --cases 100000``)."""

from __future__ import annotations

import pytest

from tests.squashfs.fuzz import build_bases, fuzz


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return build_bases(tmp_path_factory.mktemp("fuzz-bases"))


def test_hostile_images_raise_only_squashfs_errors(bases):
    counts, bugs, slowest = fuzz(400, seed=20240601, bases=bases)
    assert not bugs, bugs[0].detail
    assert slowest is not None and slowest.seconds < 2.0, (
        f"case {slowest.case} took too long: unbounded work?"
    )
    assert counts["CorruptImage"] > 50 and counts["ok"] > 50  # the mutations do reach the reader
    for kind in ("directory_loop", "inode_lie", "metadata_bomb", "block_list_lie"):
        assert any(key.startswith(kind + " ->") for key in counts), kind
