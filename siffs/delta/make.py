"""Publishing: cut an image into a casync store plus a ``.caibx`` index, streaming.

One thread: chunk, hash, compress, store, in order. Hashing and compression cost a fifth of
the chunker's time, and handing chunks to worker threads cost more than that on a busy machine
(each hand-over is a wake-up, and a worker preempted while holding the GIL stalls the chunker).
Memory stays at one maximum-size chunk plus one read, whatever the image size; the index lists
the chunks in order, so the output is deterministic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from siffs.delta import caibx, store
from siffs.delta.chunker import ChunkSizes, Table, chunk_file
from siffs.delta.errors import DeltaIOError
from siffs.delta.files import describe, write_atomic

Progress = Callable[[int, int], None]


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
    table: Table | None = None,
) -> MakeReport:
    """Chunk ``image`` into ``store_dir`` and write its index to ``index_path``.

    ``table``: the chunker's 256 words (casync's by default; see :class:`chunker.Chunker`).
    """
    target = store.LocalStore(store_dir)
    digest = "sha512_256" if sha512_256 else "sha256"
    try:
        total = os.stat(image).st_size
        os.makedirs(store_dir, exist_ok=True)
    except OSError as exc:
        raise describe(exc, image if not os.path.exists(image) else store_dir) from None

    items: list[tuple[int, bytes]] = []
    new_chunks = stored = end = 0
    try:
        for data in chunk_file(image, sizes, table):
            end += len(data)
            chunk_id = hashlib.new(digest, data).digest()
            items.append((end, chunk_id))
            if not target.has(chunk_id):
                frame = store.compress(data)
                if target.add(chunk_id, frame):
                    new_chunks += 1
                    stored += len(frame)
            if progress is not None:
                progress(end, total)
    except OSError as exc:
        raise describe(exc, image) from None
    if end != total:
        raise DeltaIOError(f"{image} changed size while it was read ({total} -> {end} bytes): retry")
    write_atomic(index_path, caibx.encode(sizes, sha512_256, items))
    return MakeReport(index_path, store_dir, end, len(items), new_chunks, stored)
