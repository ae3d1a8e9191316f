"""What an OCI image is, wherever it is kept: descriptors, the platform rule, and image sources.

A registry (``docker://``), an OCI image layout directory (``oci:``) and an OCI archive
(``oci-archive:``) hold the same things: an index or manifest, a config and layers, each named
by its digest. The conversion to SIF (``docker``) asks an ``ImageSource`` for the manifest of a
platform and for verified blobs, and so does not care where they come from. Every blob a source
hands out has been checked against its digest and size.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from siffs.registry.errors import NotFoundError, UnsupportedError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = frozenset({INDEX_TYPE, DOCKER_LIST_TYPE})
_READ = 1 << 20

#: Called with (bytes done, bytes total) while a blob moves.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Blob:
    """A blob by digest and size: a file to upload (``path``), bytes in memory, or one to fetch."""

    digest: str
    size: int
    path: Path | None = None
    data: bytes = b""

    @classmethod
    def of(cls, descriptor: Mapping[str, Any], what: str) -> Blob:
        digest, size = str(descriptor.get("digest", "")), descriptor.get("size")
        if not digest.startswith("sha256:") or len(digest) != 71 or not isinstance(size, int) or size < 0:
            raise UnsupportedError(f"{what} has no valid sha256 digest and size")
        return cls(digest, size)


@dataclass(frozen=True)
class Extent:
    """Bytes of a verified blob: ``size`` bytes at ``offset`` in ``path`` (a whole file, or a
    member of an uncompressed archive read in place)."""

    path: Path
    offset: int
    size: int

    @classmethod
    def whole(cls, path: Path) -> Extent:
        return cls(path, 0, path.stat().st_size)

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """A reader of exactly these bytes."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            yield io.BufferedReader(_Window(f, self.size), _READ)

    def read(self) -> bytes:
        with self.open() as f:
            return f.read()

    def digest(self, progress: Progress | None = None) -> str:
        h = hashlib.sha256()
        done = 0
        with self.open() as f:
            while chunk := f.read(_READ):
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, self.size)
        return "sha256:" + h.hexdigest()


class _Window(io.RawIOBase):
    """Reads at most ``left`` bytes from an open file (a tar member, without copying it out)."""

    def __init__(self, f: BinaryIO, left: int) -> None:
        super().__init__()
        self._f, self._left = f, left

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")[: self._left]
        n = self._f.readinto(view)  # type: ignore[attr-defined]
        self._left -= n
        return int(n)

    def readable(self) -> bool:
        return True


@dataclass(frozen=True)
class Resolved:
    """The image manifest chosen for the platform, and the digest of what the reference named."""

    manifest: dict[str, Any]
    digest: str  # of the chosen manifest
    top_digest: str  # of the manifest or index the reference named


class ImageSource(Protocol):
    """Where an image's manifests and blobs come from (a registry, a layout, an archive)."""

    @property
    def name(self) -> str:
        """How messages name the image (``HOST/REPO:TAG``, ``oci:DIR:TAG``)."""
        ...

    @property
    def bootstrap(self) -> str:
        """The definition file's ``bootstrap:`` (``docker``, ``oci``, ``oci-archive``)."""
        ...

    @property
    def origin(self) -> str:
        """The definition file's ``from:``, as Apptainer records the source."""
        ...

    @property
    def base_name(self) -> str:
        """``org.opencontainers.image.base.name``, or "" where Apptainer records none (local layouts)."""
        ...

    def resolve(self, arch: str) -> Resolved:
        """The image manifest for linux/``arch``."""
        ...

    def blob(self, wanted: Blob, progress: Progress | None = None) -> Extent:
        """The verified bytes of ``wanted``."""
        ...


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def platform_text(platform: Mapping[str, Any]) -> str:
    return "/".join(str(v) for v in (platform.get(k) for k in ("os", "architecture", "variant")) if v)


def _matches(entry: Mapping[str, Any], arch: str, variant: str | None) -> bool:
    """ggcr's rule: os and architecture equal, variant only when asked; no platform is linux/amd64."""
    platform = entry.get("platform") or {"os": "linux", "architecture": "amd64"}
    if platform.get("os") != "linux" or platform.get("architecture") != arch:
        return False
    return variant is None or platform.get("variant") == variant


#: Fetches a manifest by descriptor: (its JSON, its digest, its media type).
ManifestGetter = Callable[[Mapping[str, Any]], tuple[dict[str, Any], str, str]]


def follow_indexes(
    get: ManifestGetter, value: dict[str, Any], digest: str, media: str, *, arch: str, named: str
) -> Resolved:
    """From the manifest or index a reference named down to the image manifest for linux/``arch``."""
    top = digest
    for _ in range(4):  # nested indexes are rare; a loop of them is refused
        if media not in INDEX_TYPES:
            return Resolved(value, digest, top)
        children = [m for m in value.get("manifests") or [] if isinstance(m, dict)]
        child = next((m for m in children if _matches(m, arch, None)), None)
        if child is None:
            have = ", ".join(platform_text(m.get("platform") or {}) for m in children)
            raise NotFoundError(f"no linux/{arch} image in the index (has: {have})")
        value, digest, media = get(child)
    raise UnsupportedError(f"{named}: indexes nested too deeply")


def manifest_media(value: Any, fallback: str, named: str) -> str:
    """The media type of a parsed manifest (its own field, else what the transport said)."""
    if not isinstance(value, dict):
        raise UnsupportedError(f"{named}: the manifest is not a JSON object")
    media = str(value.get("mediaType") or fallback or "")
    if "distribution.manifest.v1" in media:
        raise UnsupportedError(f"{named} uses Docker schema 1, which is not supported")
    return media
