"""Pulling from a casync store: copy what the seeds have, fetch the rest, verify, replace atomically.

Order of sources for each chunk of the index: the partial download of an earlier, interrupted
pull of the same destination (chunks fetched then are kept there, compressed, beside DEST);
the all-zero chunk (no I/O); the seeds (the destination's previous version first, then
``--seed`` files); finally the store, over HTTP with several requests in flight.
Every chunk, whatever its source, is checked against its id before it is written.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from siffs.delta import caibx, seeds, store
from siffs.delta.caibx import BlobIndex, Chunk
from siffs.delta.errors import DeltaIOError, DigestMismatchError, StoreIncompleteError
from siffs.delta.files import Journal, describe
from siffs.delta.http import HttpClient, is_url
from siffs.delta.target import Assembly, Trust

if TYPE_CHECKING:
    from siffs.crypt.keys import KeyMaterial

Progress = Callable[[int, int], None]


@dataclass
class PullReport:
    """What a pull moved and reused; ``as_dict`` is the ``--json`` output."""

    dest: str
    source: str
    size: int = 0
    requests: int = 0
    fetched_bytes: int = 0  #: everything downloaded: the index or control file and the chunks or blocks
    index_bytes: int = 0
    fetched_items: int = 0  #: chunks (casync) or ranges (zsync) downloaded
    resumed_bytes: int = 0  #: taken from the partial-download area of an interrupted pull
    reused: dict[str, int] = field(default_factory=dict)  #: bytes copied from each seed
    chunked_bytes: int = 0  #: seed bytes read and cut by this run (0: every seed's cut was cached)
    signers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def read_source(source: str, client: HttpClient) -> bytes:
    """The bytes of an index or control file given as a path or an http(s) URL."""
    if is_url(source):
        return client.get_ok(source)
    try:
        with open(source, "rb") as f:
            return f.read()
    except OSError as exc:
        raise DeltaIOError(f"{source}: {exc.strerror}") from None


def default_store(index_source: str) -> str:
    """``default.castr`` in place of the index's last path component, as casync does."""
    if is_url(index_source):
        return urllib.parse.urljoin(index_source, "default.castr")
    return os.path.join(os.path.dirname(os.path.abspath(index_source)), "default.castr")


def partial_path(dest: str, kind: str) -> str:
    """Where what a pull of ``dest`` fetched waits until the pull completes (kept if it does not)."""
    directory, name = os.path.split(os.path.abspath(dest))
    return os.path.join(directory, f".{name}.partial.{kind}")


class Remote:
    """The store being pulled from: an http(s) URL or a local directory."""

    def __init__(self, location: str, client: HttpClient) -> None:
        self.location = location
        self.client = client
        if is_url(location):
            base = location.split("?", 1)[0].split(";", 1)[0].rstrip("/")
            self.base = base + "/"
        else:
            self.base = location

    def fetch(self, chunk: Chunk) -> bytes:
        return self.get(store.relative_path(chunk.id), chunk.name)

    def get(self, relative: str, name: str) -> bytes:
        """The file at ``relative`` in the store (the chunk called ``name``); missing is an error."""
        if is_url(self.location):
            resp = self.client.get(self.base + relative)
            if resp.status == 404:
                raise StoreIncompleteError(
                    f"chunk {name} is missing on {self.location} (HTTP 404): "
                    "the store is incomplete for this index"
                )
            return resp.body
        try:
            with open(os.path.join(self.base, relative), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StoreIncompleteError(
                f"chunk {name} is missing in {self.location}: the store is incomplete for this index"
            ) from None
        except OSError as exc:
            raise describe(exc, os.path.join(self.base, relative)) from None


def seed_paths(dest: str, extra: Sequence[str]) -> list[str]:
    """The destination's previous version (if any), then the given seeds, each file once."""
    paths, seen = [], set()
    for path in ([dest] if os.path.isfile(dest) else []) + list(extra):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            paths.append(path)
    return paths


def pull(
    source: str,
    dest: str,
    *,
    seed_files: Sequence[str] = (),
    store_location: str | None = None,
    trust: Trust,
    progress: Progress | None = None,
    client: HttpClient | None = None,
    material: Callable[[], KeyMaterial] | None = None,
) -> PullReport:
    """Assemble ``source``'s blob at ``dest`` (see the module docstring).

    An encrypted index (``siffs delta make`` of an encrypted image) goes to
    :mod:`siffs.delta.encrypted`, which asks ``material`` for the key.
    """
    client = client or HttpClient()
    raw = read_source(source, client)
    remote = Remote(store_location or default_store(source), client)
    from siffs.delta import encrypted  # noqa: PLC0415 -- the crypto stack loads only for encrypted images

    if encrypted.is_encrypted_index(raw):
        return encrypted.pull_encrypted(
            raw,
            source,
            dest,
            seed_files=seed_files,
            remote=remote,
            trust=trust,
            material=material,
            progress=progress,
            client=client,
        )
    index = caibx.parse(raw, what=f"index {source}")
    report = PullReport(dest, source, index.blob_size, index_bytes=len(raw), fetched_bytes=len(raw))
    opened: list[seeds.Seed] = []
    try:
        for path in seed_paths(dest, seed_files):
            opened.append(seeds.open_seed(path, index, progress=progress))
            report.reused[path] = 0
            report.chunked_bytes += opened[-1].chunked
        assembly = Assembly(dest, index.blob_size)
        try:
            job = _Job(index, assembly, Journal(partial_path(dest, "casync")), report, progress)
            try:
                missing = job.copy_local(opened)
                job.fetch(remote, missing)
            finally:
                job.partial.close()
            report.signers = assembly.commit(trust)
        except BaseException:
            assembly.discard()
            raise
    finally:
        for seed in opened:
            seed.close()
        report.requests = client.requests
    job.partial.remove()
    seeds.remember(dest, index)
    return report


@dataclass
class _Job:
    index: BlobIndex
    assembly: Assembly
    partial: Journal
    report: PullReport
    progress: Progress | None

    def copy_local(self, opened: list[seeds.Seed]) -> dict[bytes, list[Chunk]]:
        """Write every chunk available locally; returns the rest, by id (a chunk may repeat)."""
        index = self.index
        zero_id = index.chunk_id(bytes(index.sizes.max))
        missing: dict[bytes, list[Chunk]] = {}
        done = 0
        for chunk in index.chunks:
            done += chunk.size
            if chunk.id in missing:
                missing[chunk.id].append(chunk)
            elif chunk.size == index.sizes.max and chunk.id == zero_id:
                pass  # the file was created sparse: the zeros are already there
            elif not self._from_partial(chunk) and not self._from_seeds(chunk, opened):
                missing[chunk.id] = [chunk]
            if self.progress is not None:
                self.progress(done, index.blob_size)
        return missing

    def _from_partial(self, chunk: Chunk) -> bool:
        blob = self.partial.read(chunk.id)
        if blob is None:
            return False
        try:
            data = store.decode(blob, chunk, self.index, "the partial download")
        except DigestMismatchError:
            return False
        self.assembly.write(chunk.offset, data)
        self.report.resumed_bytes += chunk.size
        return True

    def _from_seeds(self, chunk: Chunk, opened: list[seeds.Seed]) -> bool:
        for seed in opened:
            where = seed.chunks.get(chunk.id)
            if where is None:
                continue
            data = seed.read(where)
            try:
                store.verify(data, chunk, self.index, f"seed {seed.path}")
            except DigestMismatchError as exc:
                self.report.warnings.append(
                    f"{exc}; fetched it instead (the seed changed since it was indexed)"
                )
                seed.forget()
                del seed.chunks[chunk.id]
                continue
            self.assembly.write(chunk.offset, data)
            self.report.reused[seed.path] += chunk.size
            return True
        return False

    def fetch(self, remote: Remote, missing: dict[bytes, list[Chunk]]) -> None:
        """Download the missing chunks on the connection threads; each is checked, kept in the
        partial download, and written at every offset where the index has it."""
        index = self.index
        lock = threading.Lock()
        done = index.blob_size - sum(c.size for cs in missing.values() for c in cs)

        def get(chunk_id: bytes) -> None:
            nonlocal done
            first = missing[chunk_id][0]
            blob = remote.fetch(first)
            data = store.decode(blob, first, index, f"the store {remote.location}")
            self.partial.add(chunk_id, blob)
            for chunk in missing[chunk_id]:
                self.assembly.write(chunk.offset, data)
            with lock:
                self.report.fetched_items += 1
                self.report.fetched_bytes += len(blob)
                done += len(data) * len(missing[chunk_id])
                if self.progress is not None:
                    self.progress(done, index.blob_size)

        remote.client.run(get, list(missing))
