"""The whole SquashFS corpus through a real siffs mount equals the kernel's mount of it.

Each image is signed and mounted with its signer's key: the default path (signatures checked,
every read checked against the block table) is the one compared with the kernel.
"""

from __future__ import annotations

import pytest

from tests.support.mounts import siffs_mount
from tests.support.squashfs_corpus import SPECS
from tests.support.trees import assert_same_tree, snapshot

#: Too slow through any FUSE mount to walk in CI (a 4 GiB sparse file); the reader tests cover it.
SKIP = {"mk-huge"}


@pytest.mark.parametrize("name", [n for n in SPECS if n not in SKIP])
def test_corpus_image_through_fuse_equals_kernel(name, corpus, kernel, signing_key, tmp_path):
    with kernel(name) as k:
        expected = snapshot(k)
    signed = signing_key.sign(corpus.image(name), tmp_path / f"{name}.sif")
    with siffs_mount(signed, tmp_path / "fuse", key=signing_key.public) as m:
        actual = snapshot(m)
    assert_same_tree(actual, expected)
