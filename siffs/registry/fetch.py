"""Fetching from a registry with every byte checked: manifests (and the platform in an index), blobs.

Shared by the ``oras://`` and ``docker://`` stages. A manifest asked for by digest must hash to
it; a blob is hashed while it streams into the cache (``blobs/sha256/<hex>``, partial downloads
in ``blobs/sha256/tmp`` so that a rerun resumes with a Range request) and only a complete,
matching blob is renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import mmap
import os
import queue
import select
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from siffs.registry.errors import DigestError, LocalIOError, NetworkError, NotFoundError, UnsupportedError
from siffs.registry.http import TIMEOUT, Response, Session
from siffs.registry.image import (
    DOCKER_LIST_TYPE,
    DOCKER_MANIFEST_TYPE,
    INDEX_TYPE,
    MANIFEST_TYPE,
    Blob,
    Extent,
    Progress,
    Resolved,
    follow_indexes,
    manifest_media,
    sha256,
)
from siffs.registry.reference import DOCKER_HUB, Reference

ACCEPT = ", ".join((MANIFEST_TYPE, INDEX_TYPE, DOCKER_MANIFEST_TYPE, DOCKER_LIST_TYPE))
_READ = 1 << 20


def _get_manifest(session: Session, ref: Reference, reference: str) -> tuple[dict[str, Any], str, str]:
    scope = f"repository:{ref.repository}:pull"
    url = f"/v2/{ref.repository}/manifests/{reference}"
    response = session.request("GET", url, scope=scope, headers={"Accept": ACCEPT})
    if response.status == 404:
        response.raw.read()
        raise NotFoundError(f"{ref.host}/{ref.repository}:{ref.tag or ref.digest} not found")
    body = response.read()
    digest = sha256(body)
    if reference.startswith("sha256:") and digest != reference:
        raise DigestError(f"manifest {reference} from {ref.host} has digest {digest}; nothing was written")
    try:
        value = json.loads(body)
    except ValueError:
        raise UnsupportedError(f"{ref}: the manifest is not JSON") from None
    return value, digest, manifest_media(value, response.header("Content-Type") or "", str(ref))


def resolve(session: Session, ref: Reference, arch: str = "amd64") -> Resolved:
    """The image manifest of ``ref`` for linux/``arch``, following (nested) indexes."""

    def get(child: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
        return _get_manifest(session, ref, Blob.of(child, "an index entry").digest)

    value, digest, media = _get_manifest(session, ref, ref.ref)
    return follow_indexes(get, value, digest, media, arch=arch, named=str(ref))


def blob(
    session: Session, ref: Reference, wanted: Blob, store: Path, progress: Progress | None = None
) -> Path:
    """The verified blob at ``store/<hex>``: reused when present and intact, else fetched (resuming)."""
    digest, size = wanted.digest, wanted.size
    hexdigest = digest.split(":", 1)[1]
    final = store / hexdigest
    if final.exists() and final.stat().st_size == size and file_digest(final) == digest:
        os.utime(final)
        session.traffic.cached_bytes += size
        return final
    (store / "tmp").mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = store / "tmp" / f"{hexdigest}.part"
    have = partial.stat().st_size if partial.exists() else 0
    if have > size:
        partial.unlink()
        have = 0
    h = hashlib.sha256()
    if have:
        with partial.open("rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
    resumed = have
    if have < size:
        headers = {"Range": f"bytes={have}-"} if have else {}
        url = f"/v2/{ref.repository}/blobs/{digest}"
        scope = f"repository:{ref.repository}:pull"
        response = session.request("GET", url, scope=scope, headers=headers, ok=frozenset({200, 206}))
        if response.status == 404:
            response.raw.read()
            where = f"{ref.host}/{ref.repository}"
            raise NotFoundError(f"{where}: blob {digest} missing on the registry (broken image)")
        if response.status == 200 and have:  # the server ignored Range: start again
            have, resumed, h = 0, 0, hashlib.sha256()
        with partial.open("r+b" if have else "w+b") as f:  # readable: the splice path hashes from it
            f.seek(have)
            f.truncate()
            try:
                have = _receive(response, f, h, have=have, size=size, progress=progress)
                f.flush()
                os.fsync(f.fileno())
            except _WriteError as exc:
                raise _cannot_write(partial, digest, size, exc.error) from None
            except (OSError, http.client.HTTPException) as exc:
                raise NetworkError(
                    f"{ref.host}: the download of {digest} broke off ({exc}); run the pull again to resume"
                ) from None
    got = "sha256:" + h.hexdigest()
    if have != size or got != digest:
        partial.unlink(missing_ok=True)
        what = f"{have} bytes, not {size}" if have != size else f"digest {got}"
        raise DigestError(
            f"blob {digest} from {ref.host} has {what} (corrupt download or registry); nothing was written"
        )
    os.replace(partial, final)
    session.traffic.resumed_bytes += resumed
    session.traffic.fetched_bytes += size - resumed
    return final


#: The writer flushes a download to disk after this many bytes (see ``_receive``).
_SYNC_EVERY = 64 << 20


class _WriteError(Exception):
    """Writing a download to its file failed (a local problem, not the network's)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _cannot_write(partial: Path, digest: str, size: int, error: OSError) -> LocalIOError:
    if error.errno == errno.ENOSPC:
        need = (size + (1 << 20) - 1) >> 20
        return LocalIOError(f"no space left on {partial.parent} while writing blob {digest} ({need} MiB)")
    return LocalIOError(f"{partial}: cannot write: {error.strerror}")


def _receive(
    response: Response, out: IO[bytes], h: Any, *, have: int, size: int, progress: Progress | None
) -> int:
    """Copy the body to ``out`` while hashing it; returns the byte count (stops past ``size``).

    A plain-http body of the expected length is spliced from the socket into the file (see
    ``_splice``); any other (https, chunked, a length that does not fit, ``SIFFS_NO_SPLICE=1``)
    goes through ``_Pipeline``. Three threads overlap on the pipeline, each releasing the GIL
    while it works: a reader takes the body off the socket, a writer puts it in the file and
    flushes it to disk every ``_SYNC_EVERY`` bytes (so the caller's final fsync waits for one
    slice, not for the whole blob, where ``curl`` followed by ``sync`` spends its time), and this
    thread hashes. A pull then takes about as long as the slowest of the three, not their sum.
    """
    raw = response.raw
    if not os.environ.get("SIFFS_NO_SPLICE") and raw.length == size - have:
        body = response.socket_body()
        if body is not None:
            have = _splice(*body, out, h, have=have, size=size, progress=progress)
            raw.close()  # every byte of the body was read: the connection can serve the next request
            return have
    pipe = _Pipeline(raw, out, have, size)
    # Daemon threads: when this one gives up (an interrupt, a bad body), a reader stuck on a
    # stalled socket must not hold the process; closing the session ends it.
    threading.Thread(target=pipe.read, daemon=True).start()
    writing = threading.Thread(target=pipe.write, daemon=True)
    writing.start()
    try:
        have = pipe.hash(h, progress)
        pipe.finish(writing)
    except BaseException:
        pipe.stop()  # the caller closes ``out`` next: no write may come after
        raise
    return have


class _Pipeline:
    """What the reader, writer and hashing threads of ``_receive`` share."""

    def __init__(self, raw: http.client.HTTPResponse, out: IO[bytes], have: int, size: int) -> None:
        self.raw, self.out, self.have, self.size = raw, out, have, size
        self.to_hash: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=8)
        self.to_write: queue.Queue[bytes] = queue.Queue(maxsize=8)
        self.failures: list[_WriteError] = []
        self.stopped = False
        self.lock = threading.Lock()  # held by the writer while it touches ``out``

    def read(self) -> None:
        got = self.have
        try:
            while got <= self.size and (chunk := self.raw.read(_READ)):
                got += len(chunk)
                self.to_write.put(chunk)
                self.to_hash.put(chunk)
            if self.raw.length:  # the connection closed short of Content-Length: resumable
                raise http.client.IncompleteRead(b"", self.raw.length)
            self.to_hash.put(b"")
        except BaseException as exc:  # handed to the hashing thread, which raises it
            self.to_hash.put(exc)
        finally:
            self.to_write.put(b"")

    def write(self) -> None:
        unsynced = 0
        while chunk := self.to_write.get():
            with self.lock:
                if self.failures or self.stopped:
                    continue  # drained, so that the reader never blocks on a full queue
                try:
                    self.out.write(chunk)
                    unsynced += len(chunk)
                    if unsynced >= _SYNC_EVERY:
                        self.out.flush()
                        os.fdatasync(self.out.fileno())
                        unsynced = 0
                except OSError as exc:  # ENOSPC and the like: the hashing thread raises it
                    self.failures.append(_WriteError(exc))
                    self.to_hash.put(self.failures[-1])

    def hash(self, h: Any, progress: Progress | None) -> int:
        have = self.have
        while True:
            try:
                item = self.to_hash.get(timeout=0.5)  # a timeout lets signals (Ctrl-C, SIGTERM) in
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            if not item:
                return have
            have += len(item)
            if have > self.size:
                return have
            h.update(item)
            if progress:
                progress(have, self.size)

    def finish(self, writing: threading.Thread) -> None:
        """Wait until everything received is in the file; raise what the writer met."""
        while writing.is_alive():
            writing.join(timeout=0.1)
            with contextlib.suppress(queue.Empty):
                self.to_hash.get_nowait()  # a body longer than announced: the reader may still hand over
        if self.failures:
            raise self.failures[0]

    def stop(self) -> None:
        """After this returns, the writer touches ``out`` no more."""
        with self.lock:
            self.stopped = True


#: The pipe between socket and file: as large as an unprivileged process may make it (Linux's
#: default pipe-max-size), so that one splice moves up to this much.
_PIPE = 1 << 20
#: The hashing thread waits for this much new data (or the end) before it maps and hashes it.
_HASH_STEP = 8 << 20


def _splice(
    sock: int, buffered: bytes, out: IO[bytes], h: Any, *, have: int, size: int, progress: Progress | None
) -> int:
    """Move the body from the socket ``sock`` to ``out`` in the kernel; returns ``size``.

    ``buffered`` (the body's first bytes, which http.client read with the headers) is written
    first, then ``splice(2)`` moves socket -> pipe -> file with no copy through this process. A
    second thread hashes what is written, from the page cache through a read-only mapping (no
    copy either), trailing the writer by a few MiB; a third flushes the file to disk every
    ``_SYNC_EVERY`` bytes without stalling the writer. The SHA-256 is then the one user-space
    pass over the bytes; this thread waits for the socket in ``poll`` (signals get in).
    """
    fd = out.fileno()
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE)
    trail = _Trail(fd, have, h)
    workers = [threading.Thread(target=work, daemon=True) for work in (trail.hash, trail.sync)]
    for worker in workers:
        worker.start()
    try:
        pos = have
        try:
            while buffered:
                done = os.pwrite(fd, buffered, pos)
                pos, buffered = pos + done, buffered[done:]
        except OSError as exc:
            raise _WriteError(exc) from None
        ready = select.poll()
        ready.register(sock, select.POLLIN)
        trail.wrote(pos)
        while pos < size:
            try:
                got = os.splice(sock, w, min(_PIPE, size - pos), flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                if not ready.poll(TIMEOUT * 1000):
                    raise TimeoutError("timed out") from None
                continue
            if not got:
                raise http.client.IncompleteRead(b"", size - pos)
            try:
                while got:
                    done = os.splice(r, fd, got, offset_dst=pos)
                    pos, got = pos + done, got - done
            except OSError as exc:
                raise _WriteError(exc) from None
            trail.wrote(pos)
            if progress:
                progress(pos, size)
        trail.wrote(pos, last=True)
        while workers[0].is_alive():
            workers[0].join(timeout=0.1)  # a timeout lets signals in
        if progress:
            progress(pos, size)
    finally:
        trail.stop()
        for worker in workers:
            worker.join()  # the caller closes ``out`` next: no thread may touch it after
        os.close(r)
        os.close(w)
    if trail.failures:
        raise trail.failures[0]
    return pos


class _Trail:
    """The threads that follow ``_splice``'s writes: one hashes them, one flushes them to disk."""

    def __init__(self, fd: int, have: int, h: Any) -> None:
        self.fd, self.h = fd, h
        self.written = self.hashed = self.synced = have
        self.last = self.stopped = False
        self.failures: list[BaseException] = []
        self.changed = threading.Condition()

    def wrote(self, pos: int, *, last: bool = False) -> None:
        with self.changed:
            self.written, self.last = pos, last
            self.changed.notify_all()

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()

    def _wait(self, done: int, step: int) -> int:
        """The written end once ``step`` bytes past ``done`` (or the last ones) are there; 0 when stopped."""
        with self.changed:
            self.changed.wait_for(lambda: self.stopped or self.last or self.written - done >= step)
            return 0 if self.stopped else self.written

    def hash(self) -> None:
        try:
            while (end := self._wait(self.hashed, _HASH_STEP)) and self.hashed < end:
                start = self.hashed - self.hashed % mmap.ALLOCATIONGRANULARITY  # mappings start on a page
                with mmap.mmap(self.fd, end - start, prot=mmap.PROT_READ, offset=start) as view, \
                        memoryview(view) as data:  # fmt: skip
                    self.h.update(data[self.hashed - start :])
                self.hashed = end
        except OSError as exc:  # raised by ``_splice``
            self.failures.append(_WriteError(exc))

    def sync(self) -> None:
        """Flush every ``_SYNC_EVERY`` bytes, and once more after the last write: that flush runs
        while the hash catches up, and leaves the caller's fsync little to wait for."""
        try:
            while end := self._wait(self.synced, _SYNC_EVERY):
                os.fdatasync(self.fd)
                self.synced = end
                if self.last:
                    return
        except OSError as exc:
            self.failures.append(_WriteError(exc))


def file_digest(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    size, done = path.stat().st_size, 0
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, size)
    return "sha256:" + h.hexdigest()


@dataclass
class RegistryImage:
    """An image on a registry as an ``ImageSource``: blobs land in the verified cache ``store``."""

    session: Session
    ref: Reference
    store: Path

    @property
    def bootstrap(self) -> str:
        return "docker"

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def origin(self) -> str:
        """Apptainer's ``from:``: the reference as written, Docker Hub's official images short."""
        ref = self.ref
        text = f"{ref.host}/{ref.repository}" + (f"@{ref.digest}" if ref.digest else f":{ref.tag}")
        if ref.host == DOCKER_HUB:
            text = text.removeprefix(f"{DOCKER_HUB}/").removeprefix("library/")
        return text

    @property
    def base_name(self) -> str:
        ref = self.ref
        return f"{ref.host.replace(DOCKER_HUB, 'docker.io')}/{ref.repository}:{ref.ref}"

    def resolve(self, arch: str) -> Resolved:
        return resolve(self.session, self.ref, arch)

    def blob(self, wanted: Blob, progress: Progress | None = None) -> Extent:
        return Extent.whole(blob(self.session, self.ref, wanted, self.store, progress))
