"""Seeds: local files whose chunks a pull can copy instead of fetching.

A seed must be chunked with the *new* index's sizes and digest before its chunks can be compared
by id. That costs a full read of the seed, so the result is kept as a ``.caibx`` in
``$XDG_CACHE_HOME/siffs/delta/seeds``, keyed by the file's identity (device, inode, size, mtime,
ctime) and the chunking parameters: the second pull from the same seed reads only the chunks it
copies. A stale or damaged cache entry costs a fetch, never wrong bytes: every copied chunk is
hashed against the index before it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from siffs.delta import caibx
from siffs.delta.caibx import BlobIndex, Chunk
from siffs.delta.chunker import Chunker
from siffs.delta.errors import DeltaError, DeltaIOError
from siffs.delta.files import describe, write_atomic
from siffs.integrity.blockcache import ImageIdentity
from siffs.integrity.xdg import cache_dir, private_dir

Progress = Callable[[int, int], None]


#: The seed cache's size limit, least recently used entries pruned first (``siffs cache`` lists it).
LIMIT_MIB = 256


def cache_directory() -> Path:
    return cache_dir() / "delta" / "seeds"


def cache_entry(identity: ImageIdentity, path: str, parameters: str, suffix: str) -> str:
    """The cache file for ``path`` as ``identity`` describes it, cut with ``parameters``."""
    key = (
        f"{os.path.realpath(path)}\0{identity.device}\0{identity.inode}\0{identity.size}\0"
        f"{identity.mtime_ns}\0{identity.ctime_ns}\0{parameters}"
    )
    name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return str(cache_directory() / f"{name}{suffix}")


def _cache_path(identity: ImageIdentity, path: str, index: BlobIndex) -> str:
    s = index.sizes
    return cache_entry(identity, path, f"{s.min}:{s.avg}:{s.max}\0{index.digest_name}", ".caibx")


@dataclass
class Seed:
    """An open seed file and where each of its chunks lies."""

    path: str
    fd: int
    chunks: dict[bytes, Chunk] = field(default_factory=dict)
    cache_entry: str | None = None
    chunked: int = 0  #: bytes read to cut it (0: its cut came from the cache)

    def read(self, chunk: Chunk) -> bytes:
        try:
            return os.pread(self.fd, chunk.size, chunk.offset)
        except OSError as exc:
            raise describe(exc, self.path) from None

    def forget(self) -> None:
        """Drop the cached index (it described different bytes): the next pull re-chunks."""
        if self.cache_entry is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.cache_entry)
            self.cache_entry = None

    def close(self) -> None:
        os.close(self.fd)


def _chunk_seed(fd: int, like: BlobIndex, size: int, progress: Progress | None) -> BlobIndex:
    items = []
    end = 0
    for data in Chunker(like.sizes).split(lambda n: os.read(fd, n)):
        end += len(data)
        items.append((end, like.chunk_id(data)))
        if progress is not None:
            progress(end, size)
    return caibx.parse(caibx.encode(like.sizes, like.sha512_256, items))


def open_seed(path: str, like: BlobIndex, *, progress: Progress | None = None) -> Seed:
    """Open ``path`` and find its chunks with ``like``'s parameters (from the cache when it can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DeltaIOError(f"seed {path}: {exc.strerror}") from None
    try:
        identity = ImageIdentity.of(fd)
        entry = _cache_path(identity, path, like)
        index, chunked = None, 0
        with contextlib.suppress(OSError, DeltaError):
            cached = caibx.read(entry)
            if cached.blob_size == identity.size and cached.sizes == like.sizes:
                index = cached
        if index is None:
            try:
                index, chunked = _chunk_seed(fd, like, identity.size, progress), identity.size
            except OSError as exc:
                raise DeltaIOError(f"seed {path}: {exc.strerror}") from None
            with contextlib.suppress(OSError, DeltaError):
                private_dir(cache_directory())
                write_atomic(entry, caibx.to_bytes(index))
        seed = Seed(path, fd, {}, entry, chunked)
        for chunk in index.chunks:
            seed.chunks.setdefault(chunk.id, chunk)
        return seed
    except BaseException:
        os.close(fd)
        raise


def remember(path: str, index: BlobIndex) -> None:
    """Record that ``path`` now holds exactly ``index``'s blob, so it seeds the next pull for free."""
    with contextlib.suppress(OSError, DeltaError):
        fd = os.open(path, os.O_RDONLY)
        try:
            identity = ImageIdentity.of(fd)
        finally:
            os.close(fd)
        private_dir(cache_directory())
        write_atomic(_cache_path(identity, path, index), caibx.to_bytes(index))
