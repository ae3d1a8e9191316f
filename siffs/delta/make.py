"""Publishing: cut an image into a casync store plus a ``.caibx`` index, streaming.

The chunker runs in the calling thread while worker threads hash, compress and store the
chunks (hashlib, zstd and file writes release the GIL), with a bounded number in flight so
memory stays at a few maximum-size chunks whatever the image size. The index lists the chunks
in order, so the output is deterministic.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from siffs.delta import caibx, store
from siffs.delta.chunker import ChunkSizes, chunk_file
from siffs.delta.errors import DeltaIOError
from siffs.delta.files import describe, write_atomic

Progress = Callable[[int, int], None]

_WORKERS = 2
_IN_FLIGHT = 16


@dataclass(frozen=True)
class MakeReport:
    index_path: str
    store: str
    blob_size: int
    chunks: int
    new_chunks: int  #: chunks not already in the store
    stored_bytes: int  #: compressed bytes written to the store


def make_store(
    image: str,
    store_dir: str,
    index_path: str,
    sizes: ChunkSizes,
    *,
    sha512_256: bool = True,
    progress: Progress | None = None,
) -> MakeReport:
    """Chunk ``image`` into ``store_dir`` and write its index to ``index_path``."""
    target = store.LocalStore(store_dir)
    digest = "sha512_256" if sha512_256 else "sha256"
    try:
        total = os.stat(image).st_size
        os.makedirs(store_dir, exist_ok=True)
    except OSError as exc:
        raise describe(exc, image if not os.path.exists(image) else store_dir) from None

    def put(data: bytes) -> tuple[bytes, int]:

        chunk_id = hashlib.new(digest, data).digest()
        if target.has(chunk_id):
            return chunk_id, 0
        frame = store.compress(data)
        return chunk_id, len(frame) if target.add(chunk_id, frame) else 0

    items: list[tuple[int, bytes]] = []
    new_chunks = stored = end = 0
    pending: deque[tuple[int, Future[tuple[bytes, int]]]] = deque()

    def settle(limit: int) -> None:
        nonlocal new_chunks, stored
        while len(pending) > limit:
            chunk_end, future = pending.popleft()
            chunk_id, written = future.result()
            items.append((chunk_end, chunk_id))
            new_chunks += written > 0
            stored += written
            if progress is not None:
                progress(chunk_end, total)

    try:
        with ThreadPoolExecutor(_WORKERS) as pool:
            for data in chunk_file(image, sizes):
                end += len(data)
                pending.append((end, pool.submit(put, data)))
                settle(_IN_FLIGHT)
            settle(0)
    except OSError as exc:
        raise describe(exc, image) from None
    if end != total:
        raise DeltaIOError(f"{image} changed size while it was read ({total} -> {end} bytes): retry")
    write_atomic(index_path, caibx.encode(sizes, sha512_256, items))
    return MakeReport(index_path, store_dir, end, len(items), new_chunks, stored)
