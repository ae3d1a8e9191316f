"""casync chunk stores (``default.castr`` layout): chunk names, zstd frames, verified decoding.

A chunk's file is ``<store>/<first 4 hex digits>/<64 hex digits>.cacnk`` and holds the chunk
compressed as one zstd frame; its id is the digest of the *uncompressed* bytes, so every chunk
read from anywhere is decompressed with a bound and checked against the index before use.
"""

from __future__ import annotations

import contextlib
import os
import threading

import zstandard

from siffs.delta.caibx import BlobIndex, Chunk
from siffs.delta.errors import DigestMismatchError, UnsupportedFormatError
from siffs.delta.files import describe
from siffs.sif.durable import fsync_directory

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_MAGICS = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip"}
_local = threading.local()


def relative_path(chunk_id: bytes) -> str:
    name = chunk_id.hex()
    return f"{name[:4]}/{name}.cacnk"


def compress(data: bytes) -> bytes:
    """One zstd frame as casync writes it: level 3, no content size, no checksum."""
    if not hasattr(_local, "compressor"):
        _local.compressor = zstandard.ZstdCompressor(level=3, write_content_size=False, write_checksum=False)
    frame: bytes = _local.compressor.compress(data)
    return frame


def decode(blob: bytes, chunk: Chunk, index: BlobIndex, source: str) -> bytes:
    """The verified bytes of ``chunk`` from its compressed file ``blob``, which came from ``source``."""
    if not blob.startswith(_ZSTD_MAGIC):
        kind = next((k for magic, k in _OTHER_MAGICS.items() if blob.startswith(magic)), None)
        if kind is not None:
            raise UnsupportedFormatError(
                f"chunk {chunk.name} from {source} is {kind}-compressed: siffs reads zstd chunks only "
                "(make the store with casync's default --compression=zstd)"
            )
        raise DigestMismatchError(f"chunk {chunk.name} from {source} is not a zstd frame (corrupt chunk)")
    try:
        if not hasattr(_local, "decompressor"):  # one per thread: a new one per chunk costs 2x
            _local.decompressor = zstandard.ZstdDecompressor()
        data: bytes = _local.decompressor.decompress(blob, max_output_size=chunk.size + 1)
    except zstandard.ZstdError as exc:
        del _local.decompressor  # a fresh one for the next chunk, whatever state this one is in
        raise DigestMismatchError(f"chunk {chunk.name} from {source} does not decompress: {exc}") from None
    verify(data, chunk, index, source)
    return data


def verify(data: bytes | memoryview, chunk: Chunk, index: BlobIndex, source: str) -> None:
    if len(data) != chunk.size or index.chunk_id(data) != chunk.id:
        raise DigestMismatchError(
            f"chunk {chunk.name} from {source} does not match its id in the index "
            f"({len(data)} bytes, expected {chunk.size}): corrupt or stale data"
        )


class LocalStore:
    """A chunk store directory: add chunks crash-safely, read them back."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, chunk_id: bytes) -> str:
        return os.path.join(self.root, relative_path(chunk_id))

    def has(self, chunk_id: bytes) -> bool:
        return os.path.exists(self.path(chunk_id))

    def read(self, chunk_id: bytes) -> bytes | None:
        try:
            with open(self.path(chunk_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise describe(exc, self.path(chunk_id)) from None

    def add(self, chunk_id: bytes, compressed: bytes, *, durable: bool = False) -> bool:
        """Store a compressed chunk unless present (chunks are immutable); True when written.

        As casync: a temporary name in the same directory, then rename, mode 0444, so concurrent
        writers and readers never see a partial chunk. ``durable`` also fsyncs (resumable pulls).
        """
        target = self.path(chunk_id)
        if os.path.exists(target):
            return False
        directory = os.path.dirname(target)
        tmp = f"{target}.{os.getpid()}.{threading.get_ident():x}.tmp"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(compressed)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
            if durable:
                fsync_directory(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise describe(exc, target) from None
        return True
