"""The open pipeline on its own: typed request in, tree and provenance out, typed refusals, hooks called."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from siffs.integrity.errors import NotTrustedError
from siffs.open.errors import UnsignedRefused
from siffs.open.hooks import Hooks, Progress
from siffs.open.image import OpenRequest, open_everything, open_partition
from siffs.open.trust import TrustChoice
from siffs.sif import ObjectNotFoundError

UNSIGNED = TrustChoice(allow_unsigned=True)


class Recorder:
    """Hooks that remember what the pipeline told the person at the terminal."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.progress_labels: list[str] = []
        self.steps: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def progress(self, label: str) -> Iterator[Progress]:
        self.progress_labels.append(label)
        yield lambda done, total: self.steps.append((done, total))

    def hooks(self) -> Hooks:
        return Hooks(warn=self.warnings.append, progress=self.progress)


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """The verified-block-table cache (and its key) in this test's directory, not the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def _names(opened) -> set[bytes]:
    tree = opened.tree
    return {name for name, _, _ in tree.readdir(tree.root_ino)}


def test_peeking_opens_a_sif_and_a_bare_squashfs_without_verifying(image):
    bare = image.parent / "root.squashfs"
    seen = []
    for path in (image, bare):
        opened = open_partition(OpenRequest(str(path), trust=None))
        try:
            seen.append(_names(opened))
            assert opened.provenance.image == str(path)
            assert opened.provenance.verified_by == "nobody (--allow-unsigned)"
        finally:
            opened.close()
    assert seen[0] == seen[1] and b"data" in seen[0]


def test_bare_squashfs_is_refused_unless_unsigned_use_is_allowed(image):
    bare = str(image.parent / "root.squashfs")
    with pytest.raises(UnsignedRefused, match="--allow-unsigned"):
        open_partition(OpenRequest(bare))
    open_partition(OpenRequest(bare, trust=UNSIGNED)).close()


def test_unsigned_use_is_said_through_the_warning_hook(image):
    record = Recorder()
    opened = open_partition(OpenRequest(str(image), trust=UNSIGNED), record.hooks())
    opened.close()
    assert record.warnings == [f"{image}: signatures not verified (--allow-unsigned)"]


def test_unsigned_image_is_refused_when_verifying(image, signing_key, own_cache):
    with pytest.raises(NotTrustedError):
        open_partition(OpenRequest(str(image), trust=TrustChoice(key_files=(str(signing_key.public),))))


def test_verified_open_names_the_signer_and_reports_progress(verified_image, signing_key, own_cache):
    record = Recorder()
    request = OpenRequest(str(verified_image), trust=TrustChoice(key_files=(str(signing_key.public),)))
    opened = open_partition(request, record.hooks())
    try:
        assert opened.provenance.verified_by.endswith("(Ed25519)")
        assert b"data" in _names(opened)
    finally:
        opened.close()
    assert record.progress_labels == ["verifying"] and record.warnings == []


def test_everything_shows_partitions_and_objects(verified_image, signing_key, own_cache):
    request = OpenRequest(
        str(verified_image), everything=True, trust=TrustChoice(key_files=(str(signing_key.public),))
    )
    opened = open_everything(request)
    try:
        names = _names(opened)
        assert opened.provenance.verified_by.endswith("(Ed25519)")
        assert b"1" in names and b"sif-objects" in names  # the partition, and the other objects
    finally:
        opened.close()


def test_missing_partition_is_the_sif_layers_error(image):
    with pytest.raises(ObjectNotFoundError):
        open_partition(OpenRequest(str(image), partition=99, trust=UNSIGNED))
