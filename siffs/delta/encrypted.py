"""Delta transfer of encrypted images: the plaintext chunked with a keyed chunker, the store encrypted.

Why not chunk the ciphertext: every build has a new random volume key, so two versions share
none of it. The publisher decrypts the SquashFS, cuts it with a chunker keyed by the store
secret (:mod:`siffs.delta.keyed`), names each chunk by a keyed MAC and stores it AES-GCM
encrypted; the rest of the SIF (headers, LUKS2 header and keyslots, outer SquashFS, signatures)
goes into an ordinary casync index and store. One *encrypted index* file ties them together:

    magic "SIFFSEIX", u32 version 1, u32 length of the JSON, the JSON, then the sections the
    JSON sizes: the rest's .caibx, the plaintext's .caibx (keyed names as ids), and for fs type 6
    the 16-byte nonce of every 4 KiB block.

The JSON says the kind, the image size and SHA-256, the store key description, the cipher
stream's size, and ``pieces``: [file offset, length, 0 = rest | 1 = cipher, stream offset],
covering the image in order. A client with the key fetches the rest, unlocks the new header with
its key, chunks its old image's plaintext as the seed, fetches and decrypts only the missing
chunks (kept sealed in the partial download, never as plaintext on disk), re-encrypts the
plaintext in order and writes each ciphertext byte where ``pieces`` puts it. The result must
hash to the index's SHA-256 and pass the signature check before it replaces the destination.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from siffs.crypt.errors import CryptError, KeyProblem
from siffs.crypt.keys import KeyMaterial, keep_out_of_core_dumps
from siffs.delta import caibx, store
from siffs.delta.caibx import BlobIndex, Chunk
from siffs.delta.chunker import Chunker, ChunkSizes
from siffs.delta.errors import DeltaError, DeltaIOError, DigestMismatchError, IndexFormatError
from siffs.delta.files import Journal, describe, write_atomic
from siffs.delta.http import HttpClient
from siffs.delta.keyed import StoreKeys, new_description, secret_of
from siffs.delta.keyedseeds import open_keyed_seed, remember_keyed
from siffs.delta.make import MakeReport
from siffs.delta.plaintext import (
    GOCRYPTFS,
    KINDS,
    LUKS2,
    Opened,
    Sealer,
    gocryptfs_sealer,
    key_message,
    luks2_sealer,
    open_image,
    run_reader,
    spans,
)
from siffs.delta.pull import PullReport, Remote, partial_path, seed_paths
from siffs.delta.target import Assembly, Trust
from siffs.sif import Image, SifError
from siffs.squashfs.errors import SquashfsError
from siffs.squashfs.source import FileSource

Progress = Callable[[int, int], None]
MAGIC = b"SIFFSEIX"
VERSION = 1
_HEAD = struct.Struct("<8sII")
#: The store's key description, shared by every version published into that store.
STORE_KEY_FILE = "siffs-store-key.json"
SEALED_SUFFIX = ".cacnk.sealed"
REST, CIPHER = 0, 1


def is_encrypted_index(data: bytes) -> bool:
    return data.startswith(MAGIC)


def sealed_path(name: bytes) -> str:
    """Where a sealed chunk lives in the store: casync's layout with its own ending."""
    return store.relative_path(name).removesuffix(".cacnk") + SEALED_SUFFIX


class SealedStore(store.LocalStore):
    """The sealed chunks of a store: casync's layout and crash-safe writes, with their own ending."""

    def path(self, chunk_id: bytes) -> str:
        return os.path.join(self.root, sealed_path(chunk_id))


_count_lock = threading.Lock()


def _count_fetch(report: PullReport, size: int) -> None:
    with _count_lock:
        report.fetched_items += 1
        report.fetched_bytes += size


@dataclass(frozen=True)
class EncryptedIndex:
    kind: str
    image_size: int
    sha256: bytes
    store_key: dict[str, Any]
    cipher_size: int
    pieces: tuple[tuple[int, int, int, int], ...]
    rest: BlobIndex
    plain: BlobIndex
    file_id: bytes
    nonces: bytes

    def encode(self) -> bytes:
        rest, plain = caibx.to_bytes(self.rest), caibx.to_bytes(self.plain)
        meta = {
            "kind": self.kind,
            "image_size": self.image_size,
            "sha256": self.sha256.hex(),
            "store_key": self.store_key,
            "cipher_size": self.cipher_size,
            "file_id": self.file_id.hex(),
            "pieces": [list(p) for p in self.pieces],
            "sections": [len(rest), len(plain), len(self.nonces)],
        }
        text = json.dumps(meta, separators=(",", ":")).encode()
        return _HEAD.pack(MAGIC, VERSION, len(text)) + text + rest + plain + self.nonces


def parse_index(data: bytes, what: str) -> EncryptedIndex:
    """Read and check an encrypted index; every size is bounded by the file's own length."""

    def bad(rule: str) -> IndexFormatError:
        return IndexFormatError(f"corrupt encrypted index {what}: {rule}")

    if len(data) < _HEAD.size:
        raise bad("shorter than its header")
    magic, version, size = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise bad(f"not a version {VERSION} siffs encrypted index")
    if _HEAD.size + size > len(data):
        raise bad("its description runs past the end of the file")
    try:
        meta = json.loads(data[_HEAD.size : _HEAD.size + size].decode("utf-8"))
        sections = [int(n) for n in meta["sections"]]
        kind, image_size, cipher_size = str(meta["kind"]), int(meta["image_size"]), int(meta["cipher_size"])
        sha256, file_id = bytes.fromhex(meta["sha256"]), bytes.fromhex(meta["file_id"])
        pieces = tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in meta["pieces"])
        store_key = meta["store_key"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
        raise bad("its description is not the expected JSON") from None
    if (
        kind not in (LUKS2, GOCRYPTFS)
        or len(sections) != 3
        or min(sections) < 0
        or not isinstance(store_key, dict)
    ):
        raise bad("unknown kind or sections")
    start = _HEAD.size + size
    if start + sum(sections) != len(data):
        raise bad("sections do not add up to the file's size")
    rest = caibx.parse(data[start : start + sections[0]], what=f"rest index in {what}")
    middle = start + sections[0]
    plain = caibx.parse(data[middle : middle + sections[1]], what=f"plaintext index in {what}")
    nonces = data[middle + sections[1] :]
    index = EncryptedIndex(
        kind, image_size, sha256, store_key, cipher_size, pieces, rest, plain, file_id, nonces
    )
    _check_pieces(index, bad)
    return index


def _check_pieces(index: EncryptedIndex, bad: Callable[[str], IndexFormatError]) -> None:
    at = rest_at = 0
    for offset, length, kind, source in index.pieces:
        if offset != at or length <= 0 or kind not in (REST, CIPHER):
            raise bad("pieces do not cover the image in order")
        if kind == REST and source != rest_at:
            raise bad("rest pieces are not in order")
        if kind == CIPHER and not 0 <= source <= source + length <= index.cipher_size:
            raise bad("a cipher piece lies outside the cipher stream")
        rest_at += length if kind == REST else 0
        at += length
    if at != index.image_size or rest_at != index.rest.blob_size or len(index.sha256) != 32:
        raise bad("pieces, rest and image sizes disagree")


class _Map:
    """Writes a stream's bytes where ``pieces`` of one kind put them in the image."""

    def __init__(
        self,
        pieces: Sequence[tuple[int, int, int, int]],
        kind: int,
        write: Callable[[int, bytes | memoryview], None],
    ) -> None:
        self._runs = sorted((src, off, n) for off, n, k, src in pieces if k == kind)
        self._starts = [r[0] for r in self._runs]
        self._write = write

    def __call__(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        i = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        end = offset + len(view)
        for src, at, n in self._runs[i:]:
            if src >= end:
                break
            lo, hi = max(src, offset), min(src + n, end)
            if lo < hi:
                self._write(at + lo - src, view[lo - offset : hi - offset])


def _pieces(size: int, cipher_map: list[tuple[int, int, int]]) -> list[tuple[int, int, int, int]]:
    out, at, rest = [], 0, 0
    for src, offset, n in sorted(cipher_map, key=lambda r: r[1]):
        if offset > at:
            out.append((at, offset - at, REST, rest))
            rest += offset - at
        out.append((offset, n, CIPHER, src))
        at = offset + n
    if size > at:
        out.append((at, size - at, REST, rest))
    return out


# -- publishing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedMakeReport(MakeReport):
    """A plain store's report, plus the encryption kind and how many chunks hold plaintext."""

    kind: str
    plaintext_chunks: int


def store_secret(store_dir: str, material: KeyMaterial) -> tuple[dict[str, Any], bytes]:
    """The store's key description and secret: the existing one (checked), or a new one written there."""
    path = os.path.join(store_dir, STORE_KEY_FILE)
    try:
        with open(path, "rb") as f:
            described = json.loads(f.read())
    except FileNotFoundError:
        described, secret = new_description(material)
        write_atomic(path, json.dumps(described, indent=1).encode() + b"\n")
        return described, secret
    except (OSError, ValueError) as exc:
        raise DeltaIOError(f"{path}: unreadable store key ({exc}): remove it to start a new store") from None
    try:
        return described, secret_of(described, material)
    except KeyProblem as exc:
        raise KeyProblem(
            f"{exc} for the store {store_dir}: publish with its key, or into a new store directory"
        ) from None


def make_encrypted(
    image: str,
    store_dir: str,
    index_path: str,
    sizes: ChunkSizes,
    material: KeyMaterial,
    *,
    progress: Progress | None = None,
    notice: Callable[[str], None] = lambda _: None,
) -> EncryptedMakeReport:
    """Publish encrypted ``image``: its rest into the casync store, its plaintext sealed, one index."""
    try:
        os.makedirs(store_dir, exist_ok=True)
    except OSError as exc:
        raise describe(exc, store_dir) from None
    keep_out_of_core_dumps()
    opened = open_image(image, material, notice=notice)
    try:
        described, secret = store_secret(store_dir, material)
        keys = StoreKeys.from_secret(secret)
        size = opened.image.file_size
        pieces = _pieces(size, opened.cipher_map)
        target, sealed_store = store.LocalStore(store_dir), SealedStore(store_dir)
        counts = [0, 0]  # new chunks, bytes stored
        total = size + opened.plain.size

        def pread(offset: int, n: int) -> bytes:
            return os.pread(opened.image.fd, n, offset)

        rest_runs = [(off, n) for off, n, kind, _ in pieces if kind == REST]
        rest_items, done = [], 0
        for data in Chunker(sizes).split(run_reader(pread, rest_runs)):
            done += len(data)
            chunk_id = hashlib.new("sha512_256", data).digest()
            rest_items.append((done, chunk_id))
            if not target.has(chunk_id) and target.add(chunk_id, frame := store.compress(data)):
                counts[0] += 1
                counts[1] += len(frame)
        plain_items, done = [], 0
        plaintext = run_reader(opened.plain.pread, spans(opened.plain.size))
        for data in Chunker(sizes, keys.table).split(plaintext):
            done += len(data)
            name = keys.name(data)
            plain_items.append((done, name))
            if not sealed_store.has(name) and sealed_store.add(name, sealed := keys.seal(name, data)):
                counts[0] += 1
                counts[1] += len(sealed)
            if progress is not None:
                progress(done, total)
        digest = hashlib.sha256()
        for offset, n in spans(size):
            digest.update(pread(offset, n))
        index = EncryptedIndex(
            opened.kind,
            size,
            digest.digest(),
            described,
            opened.cipher_size,
            tuple(pieces),
            caibx.parse(caibx.encode(sizes, True, rest_items)),
            caibx.parse(caibx.encode(sizes, False, plain_items)),
            opened.file_id,
            opened.nonces() if opened.kind == GOCRYPTFS else b"",
        )
    except OSError as exc:
        raise describe(exc, image) from None
    finally:
        opened.close()
    write_atomic(index_path, index.encode())
    chunks = len(rest_items) + len(plain_items)
    return EncryptedMakeReport(
        index_path, store_dir, size, chunks, counts[0], counts[1], index.kind, len(plain_items)
    )


# -- pulling -------------------------------------------------------------------------------------


@dataclass
class _Seed:
    opened: Opened
    path: str
    chunks: dict[bytes, Chunk]  #: the wanted chunks it holds, by name


def pull_encrypted(
    raw: bytes,
    source: str,
    dest: str,
    *,
    seed_files: Sequence[str],
    remote: Remote,
    trust: Trust,
    material: Callable[[], KeyMaterial] | None,
    progress: Progress | None,
    client: HttpClient,
) -> PullReport:
    """Assemble the image the encrypted index ``raw`` describes at ``dest`` (see the module docstring)."""
    index = parse_index(raw, source)
    keep_out_of_core_dumps()
    key = material() if material is not None else KeyMaterial()
    if key.passphrase is None and key.pem is None:
        raise KeyProblem("the index is of an encrypted image: give --passphrase or --pem-path")
    keys = StoreKeys.from_secret(secret_of(index.store_key, key))
    report = PullReport(dest, source, index.image_size, index_bytes=len(raw), fetched_bytes=len(raw))
    assembly = Assembly(dest, index.image_size)
    job = _Pull(
        index, keys, key, assembly, Journal(partial_path(dest, "encrypted")), remote, report, progress
    )
    try:
        job.fetch_rest()
        sealer = job.sealer()
        job.open_seeds(seed_paths(dest, seed_files))
        job.fetch_missing()
        job.write_plain(sealer)
        job.journal.close()
        report.signers = assembly.commit(trust, job.check_digest)
        remember_keyed(dest, keys, index.plain)  # the next update needs no cut of it
    except BaseException:
        job.journal.close()
        assembly.discard()
        raise
    finally:
        for seed in job.seeds:
            seed.opened.close()
        report.requests = client.requests
    job.journal.remove()
    return report


@dataclass
class _Pull:
    index: EncryptedIndex
    keys: StoreKeys
    key: KeyMaterial
    assembly: Assembly
    journal: Journal
    remote: Remote
    report: PullReport
    progress: Progress | None
    seeds: list[_Seed] = field(default_factory=list)
    fetched: set[bytes] = field(default_factory=set)  #: sealed chunks fetched by this run

    def fetch_rest(self) -> None:
        """The rest of the image from the casync store (or an interrupted run), where ``pieces`` put it."""
        index, journal, report = self.index, self.journal, self.report
        write = _Map(index.pieces, REST, self.assembly.write)
        zero_id = index.rest.chunk_id(bytes(index.rest.sizes.max))
        missing: dict[bytes, list[Chunk]] = {}
        for chunk in index.rest.chunks:
            if chunk.size == index.rest.sizes.max and chunk.id == zero_id:
                continue  # the file was created sparse
            blob = journal.read(chunk.id)
            if blob is not None:
                with contextlib.suppress(DigestMismatchError):
                    write(chunk.offset, store.decode(blob, chunk, index.rest, "the partial download"))
                    report.resumed_bytes += chunk.size
                    continue
            missing.setdefault(chunk.id, []).append(chunk)

        def get(chunk_id: bytes) -> None:
            first = missing[chunk_id][0]
            blob = self.remote.get(store.relative_path(chunk_id), first.name)
            data = store.decode(blob, first, index.rest, f"the store {self.remote.location}")
            journal.add(chunk_id, blob)
            for chunk in missing[chunk_id]:
                write(chunk.offset, data)
            _count_fetch(report, len(blob))

        self.remote.client.run(get, list(missing))

    def sealer(self) -> Sealer:
        """Unlock the new image's header (already assembled) with the user's key."""
        index = self.index
        emit = _Map(index.pieces, CIPHER, self.assembly.write)
        try:
            with Image.open(self.assembly.path) as image:
                d = image.primary_partition()
                if d.partition is None or KINDS.get(d.partition.fs_type) != index.kind:
                    raise IndexFormatError(f"the image the index describes has no {index.kind} partition")
                partition = FileSource(self.assembly.fd, d.offset, d.size)
                message = key_message(image, d)
        except SifError as exc:
            raise IndexFormatError(f"the image the index describes is not a SIF: {exc}") from None
        if index.kind == LUKS2:
            return luks2_sealer(partition, self.key, message, emit)
        return gocryptfs_sealer(
            partition,
            self.key,
            message,
            emit,
            cipher_size=index.cipher_size,
            file_id=index.file_id,
            nonces=index.nonces,
        )

    def open_seeds(self, paths: list[str]) -> None:
        """Each usable seed (encrypted of either kind, or plain) and the wanted chunks its plaintext holds.

        Unusable seeds are skipped with a warning; the cut of each comes from the seed cache when it can.
        """
        wanted = {c.id for c in self.index.plain.chunks}
        for path in paths:
            try:
                found = open_keyed_seed(path, self.key, self.keys, self.index.plain.sizes, self.progress)
            except (CryptError, SifError, SquashfsError, DeltaError, OSError) as exc:
                self.report.warnings.append(f"seed {path} not used: {exc}")
                continue
            seed = _Seed(found.opened, path, {})
            self.seeds.append(seed)
            self.report.reused[path] = 0
            self.report.chunked_bytes += found.chunked
            for chunk in found.index.chunks:
                if chunk.id in wanted:
                    seed.chunks.setdefault(chunk.id, chunk)

    def fetch_missing(self) -> None:
        """Fetch, authenticate and keep (sealed) every chunk no seed and no earlier attempt has."""
        sizes = {c.id: c.size for c in self.index.plain.chunks}
        missing = [
            name
            for name in sizes
            if name not in self.journal.records and not any(name in s.chunks for s in self.seeds)
        ]
        self.fetched.update(missing)

        def get(name: bytes) -> None:
            sealed = self.remote.get(sealed_path(name), name.hex())
            self.keys.open(name, sealed, sizes[name], f"the store {self.remote.location}")
            self.journal.add(name, sealed)
            _count_fetch(self.report, len(sealed))

        self.remote.client.run(get, missing)

    def write_plain(self, sealer: Sealer) -> None:
        """The plaintext in order, from seeds or the partial download, into the sealer."""
        plain = self.index.plain
        for chunk in plain.chunks:
            sealer.feed(self._plain_chunk(chunk))
            if self.progress is not None:
                self.progress(chunk.offset + chunk.size, plain.blob_size)
        sealer.finish()

    def _plain_chunk(self, chunk: Chunk) -> bytes:
        for seed in self.seeds:
            where = seed.chunks.get(chunk.id)
            if where is None:
                continue
            data = seed.opened.plain.pread(where.offset, where.size)
            try:
                self.keys.check(chunk.id, data, f"seed {seed.path}")
            except DigestMismatchError as exc:
                self.report.warnings.append(f"{exc}; fetched it instead")
                del seed.chunks[chunk.id]
                continue
            self.report.reused[seed.path] += chunk.size
            return data
        sealed = self.journal.read(chunk.id)
        if sealed is not None:
            with contextlib.suppress(DigestMismatchError):
                data = self.keys.open(chunk.id, sealed, chunk.size, "the partial download")
                if chunk.id not in self.fetched:
                    self.report.resumed_bytes += chunk.size
                return data
        sealed = self.remote.get(sealed_path(chunk.id), chunk.name)
        _count_fetch(self.report, len(sealed))
        return self.keys.open(chunk.id, sealed, chunk.size, f"the store {self.remote.location}")

    def check_digest(self) -> None:
        digest = hashlib.sha256()
        for offset, n in spans(self.index.image_size):
            digest.update(self.assembly.read(offset, n))
        if digest.digest() != self.index.sha256:
            raise DigestMismatchError(
                f"{self.assembly.dest}: the assembled image does not match the index's SHA-256 "
                "(wrong or stale index)"
            )
