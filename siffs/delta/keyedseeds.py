"""Seeds of an encrypted pull: their plaintext cut by the store's keyed chunker, the cut cached sealed.

A seed is any SIF whose SquashFS may hold the new version's chunks: an encrypted image of either
kind that the user's key opens (decrypted in memory), or a plain SIF, whose SquashFS partition is
its own plaintext. Cutting it means decrypting and reading all of it, so the result (the chunk
names and where they lie) is cached in the seed cache directory, keyed like a plain seed's by the
file's identity (path, device, inode, size, mtime, ctime), plus the SIF's header and descriptor
table and the keyed chunker's identity and sizes.

Why sealed: the names are keyed MACs of the plaintext and the offsets are plaintext offsets, both
derived from secrets, so the entry is AES-256-GCM encrypted under a key derived from the store
secret, with the entry's name as associated data (an entry copied onto another name does not
open). A damaged, foreign or stale entry simply does not open or does not fit, and the seed is cut
again; a seed that changed without its identity changing costs fetches, never wrong bytes, since
every chunk taken from a seed is checked against its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siffs import cache
from siffs.crypt.keys import KeyMaterial
from siffs.delta import caibx
from siffs.delta.caibx import BlobIndex
from siffs.delta.chunker import Chunker, ChunkSizes
from siffs.delta.errors import DeltaError
from siffs.delta.files import write_atomic
from siffs.delta.keyed import StoreKeys
from siffs.delta.plaintext import Opened, open_image, run_reader, spans
from siffs.delta.seeds import LIMIT_MIB, cache_directory, cache_entry
from siffs.integrity.blockcache import ImageIdentity
from siffs.integrity.xdg import private_dir
from siffs.sif import Image, SifError

Progress = Callable[[int, int], None]


@dataclass
class KeyedSeed:
    """An open seed, its plaintext's cut, and how many plaintext bytes this run had to cut (0: cached)."""

    opened: Opened
    path: str
    index: BlobIndex
    chunked: int


def _entry(image: Image, path: str, keys: StoreKeys, sizes: ChunkSizes) -> tuple[str, bytes]:
    """The cache file for this seed and chunker, and the associated data its seal is bound to."""
    tables = hashlib.sha256(image.header.pack() + b"".join(d.pack() for d in image.slots)).hexdigest()
    parameters = f"keyed\0{keys.chunker_id.hex()}\0{sizes.min}:{sizes.avg}:{sizes.max}\0{tables}"
    entry = cache_entry(ImageIdentity.of(image.fd), path, parameters, ".sealed")
    return entry, os.path.basename(entry).encode()


def _load(entry: str, context: bytes, keys: StoreKeys, sizes: ChunkSizes, size: int) -> BlobIndex | None:
    with contextlib.suppress(OSError, DeltaError):
        with open(entry, "rb") as f:
            content = keys.open_cached(context, f.read())
        if content is not None:
            index = caibx.parse(content, what=f"seed cache entry {entry}")
            if index.blob_size == size and index.sizes == sizes:
                cache.touch(Path(entry))
                return index
    return None


def _store(entry: str, context: bytes, keys: StoreKeys, index: BlobIndex) -> None:
    """Best effort: a cache that cannot be written only costs the next pull a re-cut."""
    with contextlib.suppress(OSError, DeltaError):
        directory = private_dir(cache_directory())
        write_atomic(entry, keys.seal_cached(context, caibx.to_bytes(index)), mode=0o600)
        cache.prune(directory, cache.limit(LIMIT_MIB))


def _cut(opened: Opened, keys: StoreKeys, sizes: ChunkSizes, progress: Progress | None) -> BlobIndex:
    items, end = [], 0
    size = opened.plain.size
    for data in Chunker(sizes, keys.table).split(run_reader(opened.plain.pread, spans(size))):
        end += len(data)
        items.append((end, keys.name(data)))
        if progress is not None:
            progress(end, size)
    return caibx.parse(caibx.encode(sizes, False, items))


def open_keyed_seed(
    path: str, material: KeyMaterial, keys: StoreKeys, sizes: ChunkSizes, progress: Progress | None
) -> KeyedSeed:
    """Open seed ``path`` (encrypted with ``material``, or plain) and its plaintext's cut, cached or new."""
    opened = open_image(path, material, plain_too=True)
    try:
        entry, context = _entry(opened.image, path, keys, sizes)
        index = _load(entry, context, keys, sizes, opened.plain.size)
        if index is not None:
            return KeyedSeed(opened, path, index, 0)
        index = _cut(opened, keys, sizes, progress)
        _store(entry, context, keys, index)
        return KeyedSeed(opened, path, index, opened.plain.size)
    except BaseException:
        opened.close()
        raise


def remember_keyed(path: str, keys: StoreKeys, plain: BlobIndex) -> None:
    """Record that the image now at ``path`` has exactly ``plain`` as its plaintext's cut (the next seed)."""
    with contextlib.suppress(OSError, DeltaError, SifError), Image.open(path) as image:
        entry, context = _entry(image, path, keys, plain.sizes)
        _store(entry, context, keys, plain)
