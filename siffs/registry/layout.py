"""``oci:DIR[:TAG|@DIGEST]`` and ``oci-archive:FILE[:TAG|@DIGEST]``: OCI image layouts as image sources.

An OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``) holds what a registry
holds, so the ``docker://`` conversion reads it through the same ``ImageSource`` interface. A
directory is read in place; so is an uncompressed archive, whose members are byte ranges of the
tar (nothing is extracted, spec registry.md §5.8). A gzip-compressed archive cannot be read at
random, so its blobs are copied once into a scratch directory. Whatever holds them, blobs are
checked against their digest and size before use, exactly as registry blobs are. The reference
syntax is containers/image's: the path ends at the first ``:`` (``TAG`` matches the annotation
``org.opencontainers.image.ref.name``), or at ``@`` before a digest.
"""

from __future__ import annotations

import json
import re
import stat
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from siffs.registry.errors import BadReference, DigestError, LocalIOError, NotFoundError, UnsupportedError
from siffs.registry.image import Blob, Extent, Progress, Resolved, follow_indexes, manifest_media

SCHEMES = ("oci", "oci-archive")
REF_NAME = "org.opencontainers.image.ref.name"
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
#: Manifests and indexes are small; a bigger "manifest" is refused before it is read into memory.
_MANIFEST_LIMIT = 4 << 20


@dataclass(frozen=True)
class LayoutReference:
    """A parsed ``oci:`` or ``oci-archive:`` source."""

    scheme: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def origin(self) -> str:
        """What follows the scheme: the definition file's ``from:``, as Apptainer records it."""
        if self.digest:
            return f"{self.path}@{self.digest}"
        return f"{self.path}:{self.tag}" if self.tag else self.path

    def __str__(self) -> str:
        return f"{self.scheme}:{self.origin}"

    def default_file_name(self) -> str:
        """Apptainer's output name (``uri.GetName``): the last path component, ``_``, the tag."""
        last = self.origin.rstrip("/").rsplit("/", 1)[-1]
        name, _, version = last.partition(":")
        return f"{name}_{version.split(',')[0] or 'latest'}.sif"


def is_layout(source: str) -> bool:
    return source.partition(":")[0] in SCHEMES and ":" in source and "://" not in source


def parse(text: str) -> LayoutReference:
    """Parse ``oci:…`` or ``oci-archive:…``; ``BadReference`` says which rule failed."""
    scheme, _, rest = text.partition(":")
    if scheme not in SCHEMES or not rest:
        raise BadReference(f'invalid reference "{text}": expected oci:DIR[:TAG] or oci-archive:FILE[:TAG]')
    tag = digest = None
    if "@" in rest:
        rest, _, digest = rest.rpartition("@")
        if not _DIGEST.fullmatch(digest):
            raise BadReference(f'invalid reference "{text}": digest must be sha256:<64 hex digits>')
    elif ":" in rest:
        rest, _, tag = rest.partition(":")
        if not _TAG.fullmatch(tag):
            raise BadReference(f'invalid reference "{text}": tag must match [A-Za-z0-9_.-]{{1,128}}')
    if not rest:
        raise BadReference(f'invalid reference "{text}": no path')
    return LayoutReference(scheme, rest, tag, digest)


#: A layout member by its path in the layout, or None when absent.
Members = Callable[[str], Extent | None]


@dataclass
class Layout:
    """An OCI image layout whose files ``members`` finds; an ``ImageSource``."""

    ref: LayoutReference
    members: Members
    _verified: dict[str, Extent] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.ref)

    @property
    def bootstrap(self) -> str:
        return self.ref.scheme

    @property
    def origin(self) -> str:
        return self.ref.origin

    @property
    def base_name(self) -> str:
        return ""  # Apptainer records no base image for a local layout

    def blob(self, wanted: Blob, progress: Progress | None = None) -> Extent:
        """The bytes of ``wanted``, checked against its size and digest (once per pull)."""
        if wanted.digest in self._verified:
            return self._verified[wanted.digest]
        hexdigest = wanted.digest.split(":", 1)[1]
        extent = self.members(f"blobs/sha256/{hexdigest}")
        if extent is None:
            raise NotFoundError(f"{self.name}: blob {wanted.digest} is missing (broken layout)")
        got = f"{extent.size} bytes, not {wanted.size}" if extent.size != wanted.size else ""
        if not got and (digest := extent.digest(progress)) != wanted.digest:
            got = f"digest {digest}"
        if got:
            raise DigestError(
                f"blob {wanted.digest} in {self.name} has {got} (corrupt layout); nothing was written"
            )
        self._verified[wanted.digest] = extent
        return extent

    def _manifest(self, descriptor: Mapping[str, Any]) -> tuple[dict[str, Any], str, str]:
        wanted = Blob.of(descriptor, f"an index entry of {self.name}")
        if wanted.size > _MANIFEST_LIMIT:
            raise UnsupportedError(f"{self.name}: manifest {wanted.digest} is too big ({wanted.size} bytes)")
        try:
            value = json.loads(self.blob(wanted).read())
        except ValueError:
            raise UnsupportedError(f"{self.name}: manifest {wanted.digest} is not JSON") from None
        return value, wanted.digest, manifest_media(value, str(descriptor.get("mediaType", "")), self.name)

    def _index(self) -> list[dict[str, Any]]:
        extent = self.members("index.json")
        if extent is None:
            raise NotFoundError(f"{self.name}: no index.json (not an OCI image layout)")
        if extent.size > _MANIFEST_LIMIT:
            raise UnsupportedError(f"{self.name}: index.json is too big ({extent.size} bytes)")
        try:
            index = json.loads(extent.read())
        except ValueError:
            raise UnsupportedError(f"{self.name}: index.json is not JSON") from None
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise UnsupportedError(f"{self.name}: index.json has no list of manifests")
        return entries

    def _select(self) -> dict[str, Any]:
        """The index entry the reference names: by digest, by tag, or the only one."""
        entries = self._index()
        ref = self.ref
        if ref.digest:
            chosen = [e for e in entries if e.get("digest") == ref.digest]
            missing = f"no image {ref.digest}"
        elif ref.tag:
            chosen = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == ref.tag]
            tags = sorted({str(t) for e in entries if (t := (e.get("annotations") or {}).get(REF_NAME))})
            missing = f"no image tagged {ref.tag} (tags: {', '.join(tags) or 'none'})"
        else:
            if len(entries) > 1:
                raise NotFoundError(
                    f"{self.name} holds {len(entries)} images: name one as {self.name}:TAG or "
                    f"{self.name}@sha256:…"
                )
            chosen, missing = entries, "no image (index.json is empty)"
        if not chosen:
            raise NotFoundError(f"{self.name}: {missing}")
        return chosen[0]

    def resolve(self, arch: str) -> Resolved:
        value, digest, media = self._manifest(self._select())
        return follow_indexes(self._manifest, value, digest, media, arch=arch, named=self.name)


def _directory_members(root: Path) -> Members:
    def member(name: str) -> Extent | None:
        try:
            st = (root / name).stat()
        except OSError:
            return None
        return Extent(root / name, 0, st.st_size) if stat.S_ISREG(st.st_mode) else None

    return member


def _archive_members(path: Path, scratch: Path) -> Members:
    """Members of an OCI archive: byte ranges of the tar, or copies in ``scratch`` when compressed."""
    found: dict[str, Extent] = {}
    try:
        with path.open("rb") as f:
            compressed = f.read(2) == b"\x1f\x8b"
        if compressed:
            with tarfile.open(path, mode="r|gz") as tar:
                for info in tar:
                    name = _member_name(info)
                    if name is not None:
                        copy = scratch / name.replace("/", "_")
                        source = tar.extractfile(info)
                        assert source is not None  # a regular member has contents
                        with copy.open("wb") as out:
                            while chunk := source.read(1 << 20):
                                out.write(chunk)
                        found[name] = Extent(copy, 0, info.size)
        else:
            with tarfile.open(path, mode="r:") as tar:
                for info in tar:
                    name = _member_name(info)
                    if name is not None:
                        found[name] = Extent(path, info.offset_data, info.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.strerror:
            raise LocalIOError(f"{path}: {exc.strerror}") from None
        raise UnsupportedError(f"{path}: not a readable OCI archive ({exc})") from None
    return found.get


def _member_name(info: tarfile.TarInfo) -> str | None:
    """The layout path of a member siffs reads (index.json, a blob), None for anything else."""
    name = info.name.removeprefix("./").lstrip("/")
    if not info.isreg() or info.sparse is not None:
        return None
    return name if name == "index.json" or _BLOB.fullmatch(name) else None


def open_layout(ref: LayoutReference, scratch: Path) -> Layout:
    """The layout ``ref`` names; ``scratch`` (removed by the caller) holds copies if it must."""
    path = Path(ref.path)
    if ref.scheme == "oci":
        if not path.is_dir():
            raise NotFoundError(f"{ref}: {path} is not a directory")
        return Layout(ref, _directory_members(path))
    if not path.is_file():
        raise NotFoundError(f"{ref}: {path} is not a file")
    return Layout(ref, _archive_members(path, scratch))
