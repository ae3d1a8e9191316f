"""Metadata blocks loaded by the native readers themselves (siffs/squashfs/_caches.h, load_block)
against MetadataReader._load, the Python loader and oracle.

A reader over a plain file hands its native parts ``MetadataReader.loader``, with which they read,
check and decompress a missing block in C and store it through the cache. The blocks must be the
Python loader's byte for byte; anything unusual (damage, a closed file) must reach the Python
loader, which raises the precise error; a source other than a plain file is read through Python.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from siffs.squashfs import CorruptImage, FileSource, SquashFS, metadata, walk
from siffs.squashfs.superblock import SIZE, Superblock
from tests.support.squashfs_corpus import SPECS, wrap_at_offset

tree_module = pytest.importorskip(
    "siffs.squashfs._tree", reason="native readers not built (pip install -e .)"
)
pytestmark = pytest.mark.skipif(
    os.environ.get("SIFFS_NO_NATIVE", "") not in ("", "0"), reason="SIFFS_NO_NATIVE is set"
)

MAIN = [name for name, spec in SPECS.items() if spec.tree == "main"]


class CountedLoads:
    """Counts MetadataReader._load calls (the Python loader's misses) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = metadata.MetadataReader._load

        def counted(reader: metadata.MetadataReader, pos: int) -> metadata.Block:
            self.calls += 1
            return real(reader, pos)

        monkeypatch.setattr(metadata.MetadataReader, "_load", counted)


def paths_of(image: Path, offset: int) -> list[bytes]:
    with SquashFS.open(image, offset) as fs:
        return [path for path, _ in walk(fs)][1:]


def resolve(fs: SquashFS, path: bytes) -> None:
    """A client's requests for ``path``: lookups from the root, then getattr and readlink."""
    ino = fs.root_ino
    for name in path.lstrip(b"/").split(b"/"):
        found = fs.lookup(ino, name)
        assert found is not None, path
        ino = found.ino
    fs.getattr(ino)
    if found.mode & 0o170000 == 0o120000:
        fs.readlink(ino)


def resolve_all(
    image: Path, offset: int, paths: list[bytes], loads: CountedLoads
) -> tuple[int, dict[int, bytes]]:
    """Python loads while resolving every path on a fresh reader, and the blocks cached then."""
    with SquashFS.open(image, offset) as fs:
        before = loads.calls
        for path in paths:
            resolve(fs, path)
        in_python = loads.calls - before
        blocks = {key[1]: value[0] for key, value in fs._meta_cache.table.items() if key[0] == "m"}
        with FileSource.open(image, offset) as source:
            sb = Superblock.parse(source.pread(0, SIZE), source.size)
            oracle = metadata.MetadataReader(source, fs.codec, fs._meta_cache, sb.bytes_used)
            assert {pos: oracle._load(pos) for pos in blocks} == blocks
        return in_python, blocks


@pytest.mark.parametrize("name", MAIN)
@pytest.mark.parametrize("offset", [0, 32768], ids=["bare", "in-a-sif"])
def test_blocks_loaded_in_c_are_the_python_loaders(name, offset, corpus, monkeypatch, tmp_path):
    image = (
        corpus.image(name) if not offset else wrap_at_offset(corpus.image(name), tmp_path / "x.sif", offset)
    )
    paths = paths_of(image, offset)
    loads = CountedLoads(monkeypatch)
    with SquashFS.open(image, offset) as fs:
        assert isinstance(fs._meta.loader, tuple) and fs._meta.loader[2] == offset
    in_c, blocks = resolve_all(image, offset, paths, loads)
    monkeypatch.setattr(metadata, "FileSource", None)  # no plain file: every block through Python
    in_python, same = resolve_all(image, offset, paths, loads)
    assert same == blocks
    # What the Python code reads itself (a record across two blocks, an index) still goes through
    # the Python loader; what the native parts asked for was loaded in C.
    assert in_python - in_c >= 3, (in_c, in_python)


def damaged(image: Path, out: Path, change: bytes, at_header: bool) -> Path:
    """``image`` with the first inode-table block's header (or the byte after it) overwritten."""
    data = bytearray(image.read_bytes())
    sb = Superblock.parse(bytes(data[:SIZE]), len(data))
    at = sb.inode_table + (0 if at_header else 2)
    data[at : at + len(change)] = change
    out.write_bytes(data)
    return out


@pytest.mark.parametrize(
    ("change", "at_header", "error"),
    [
        (struct.pack("<H", 0x7FFF), True, "claims 32767 bytes"),  # longer than a block may be
        (struct.pack("<H", 0), True, "claims 0 bytes"),
        (b"\xff" * 8, False, "zstd"),  # the compressed bytes: the error the codec names
    ],
)
def test_damage_reaches_the_python_loader_which_names_it(
    change, at_header, error, corpus, monkeypatch, tmp_path
):
    image = damaged(corpus.image("mk-zstd"), tmp_path / "bad.sqfs", change, at_header)
    paths = paths_of(corpus.image("mk-zstd"), 0)
    loads = CountedLoads(monkeypatch)
    with (
        pytest.raises(CorruptImage, match=error),
        SquashFS.open(image) as fs,
    ):  # the root inode is read at once
        for path in paths:
            resolve(fs, path)
    assert loads.calls >= 1


def test_a_closed_file_is_not_read_in_c(corpus):
    """The descriptor is read from the source per load: once closed, the Python loader raises
    (a number kept in C could name another file by then)."""
    image = corpus.image("mk-zstd")
    paths = paths_of(image, 0)
    fs = SquashFS.open(image)
    fs.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        for path in paths:
            resolve(fs, path)


def test_a_source_that_is_not_a_plain_file_is_read_through_python(corpus):
    class Wrapped:
        def __init__(self, source: FileSource) -> None:
            self.inner = source
            self.size = source.size

        def pread(self, offset: int, size: int) -> bytes:
            return self.inner.pread(offset, size)

    with FileSource.open(corpus.image("mk-zstd")) as source:
        fs = SquashFS(Wrapped(source))
        assert fs._meta.loader == fs._meta.block
        assert fs.lookup(fs.root_ino, b"no-such-entry") is None
