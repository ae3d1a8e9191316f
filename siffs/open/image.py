"""Open the SquashFS tree of an image: the request, the partition choice, the stacked sources.

Accepts a SIF (its primary system partition, or the partition asked for) and, for
convenience, a bare SquashFS file. The SIF layer has already checked that every object
lies inside the file; here the partition kind is checked before anything is read from it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

from siffs.open import decrypt
from siffs.open.errors import EmptyPartition, NotAPartition, UnsignedRefused, UnsupportedPartition
from siffs.open.hooks import SILENT, Hooks
from siffs.open.trust import Gate, TrustChoice, plain_sources
from siffs.sif import Descriptor, Image, SifIOError
from siffs.sif.types import FS_TYPE_NAMES, DataType, FsType, name_of
from siffs.squashfs.reader import SquashFS
from siffs.squashfs.source import FileSource

if TYPE_CHECKING:  # the composite tree is the FUSE layer's; only --all needs it
    from siffs.fs.composite import CompositeTree

SQUASHFS_MAGIC = b"hsqs"
#: Decompressed blocks kept when the caller does not say.
DEFAULT_CACHE_BYTES = 64 << 20


class OpenRequest(NamedTuple):
    """What to open and how far to trust it.

    ``partition``: a partition ID (default: the primary system partition); ``everything``:
    every object of the image (``mount --all``). ``trust`` None: peek without verifying (``ls``,
    ``cat``), which also accepts a bare SquashFS file; otherwise verify unless it allows unsigned
    use. ``cache_bytes``: decompressed blocks the SquashFS reader keeps.
    """

    path: str
    partition: int | None = None
    everything: bool = False
    trust: TrustChoice | None = TrustChoice()
    cache_bytes: int = DEFAULT_CACHE_BYTES


class Provenance(NamedTuple):
    """Where an opened tree came from: the image's absolute path and who vouched for its bytes."""

    image: str
    verified_by: str


class OpenedTree(NamedTuple):
    """A readable tree and where it came from (``image`` is None for a bare SquashFS file)."""

    tree: SquashFS
    image: Image | None
    partition: Descriptor | None
    fd: int
    provenance: Provenance

    def close(self) -> None:
        self.tree.close()
        if self.image is not None:
            self.image.close()
        else:
            os.close(self.fd)


class OpenedImage(NamedTuple):
    """Every object of an image as one tree (``everything``), and where it came from."""

    tree: CompositeTree
    image: Image
    provenance: Provenance

    def close(self) -> None:
        self.image.close()


#: File names (after "<ID>-") of the objects ``mount --all`` shows as files.
OBJECT_FILE_NAMES: dict[int, str] = {
    DataType.DEFFILE: "definition.def",
    DataType.ENVVAR: "environment.sh",
    DataType.LABELS: "labels.json",
    DataType.SIGNATURE: "signature",
    DataType.GENERIC_JSON: "data.json",
    DataType.GENERIC: "data",
    DataType.CRYPTO_MESSAGE: "crypt-message",
    DataType.SBOM: "sbom",
    DataType.OCI_ROOT_INDEX: "oci-root-index.json",
    DataType.OCI_BLOB: "oci-blob",
    DataType.PARTITION: "partition.img",
}


def _entry_name(d: Descriptor, kind: str | None = None) -> bytes:
    """``<ID>[-kind][-name]``; the name comes from the image, so it is kept to one path component."""
    label = d.name.replace(b"/", b"_").replace(b"\0", b"")
    parts = [str(d.id).encode(), *([kind.encode()] if kind else []), *([label] if label else [])]
    return b"-".join(parts)


def _gate(request: OpenRequest, hooks: Hooks) -> Gate:
    return Gate(request.trust or TrustChoice(allow_unsigned=True), hooks)


def open_everything(request: OpenRequest, hooks: Hooks = SILENT) -> OpenedImage:
    """Every SquashFS partition of the image as a directory, every other object as a file.

    Signature objects belong to no group, so no signature covers them: they are shown as
    they are (they are what a verification checks), every other object verified as the
    request asks.
    """
    from siffs.fs.composite import CompositeTree, ObjectFile  # noqa: PLC0415 - see TYPE_CHECKING
    from siffs.fs.operations import Tree  # noqa: PLC0415

    gate = _gate(request, hooks)
    image = Image.open(request.path)
    try:
        sources = gate.sources if request.trust is not None else plain_sources
        grouped = [d for d in image.descriptors if d.group]
        ungrouped = [d for d in image.descriptors if not d.group]
        object_sources = sources(image, grouped) | plain_sources(image, ungrouped)
        trees: list[tuple[bytes, Tree]] = []
        files: list[ObjectFile] = []
        squashfs_parts = [
            d for d in image.descriptors if d.partition and d.partition.fs_type == FsType.SQUASHFS
        ]
        share = max(request.cache_bytes // max(len(squashfs_parts), 1), 4 << 20)
        for d in image.descriptors:
            source = object_sources[d.id]
            if d in squashfs_parts and d.size:
                trees.append((_entry_name(d), SquashFS(source, cache_bytes=share)))
                continue
            kind = OBJECT_FILE_NAMES.get(d.data_type, "object")
            files.append(ObjectFile(_entry_name(d, kind), d.size, source.pread, max(d.modified_at, 0)))
        tree = CompositeTree(trees, files, mtime=max(image.header.modified_at, 0))
    except BaseException:
        image.close()
        raise
    return OpenedImage(tree, image, Provenance(os.path.abspath(request.path), gate.verified_by))


def check_squashfs_partition(d: Descriptor) -> None:
    part = d.partition
    if part is None:
        raise NotAPartition(f"object {d.id} is not a partition")
    if part.fs_type != FsType.SQUASHFS:
        kind = name_of(FS_TYPE_NAMES, part.fs_type)
        raise UnsupportedPartition(f"partition {d.id} holds a {kind} filesystem; siffs reads SquashFS only")
    if d.size == 0:
        raise EmptyPartition(f"partition {d.id} is empty")


def _is_bare_squashfs(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False  # Image.open reports the problem properly


def open_partition(request: OpenRequest, hooks: Hooks = SILENT) -> OpenedTree:
    """The SquashFS tree of one partition (decrypted with ``hooks.unlock`` if encrypted).

    The caller closes it.
    """
    gate = _gate(request, hooks)
    provenance = Provenance(os.path.abspath(request.path), gate.verified_by)
    if request.partition is None and _is_bare_squashfs(request.path):
        if not gate.choice.allow_unsigned:
            raise UnsignedRefused(
                "a bare SquashFS file carries no signature: use --allow-unsigned to use it anyway"
            )
        try:
            fd = os.open(request.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SifIOError(exc.strerror or str(exc)) from exc
        try:
            tree = SquashFS(FileSource(fd), cache_bytes=request.cache_bytes)
        except BaseException:
            os.close(fd)
            raise
        return OpenedTree(tree, None, None, fd, provenance)
    sources = gate.sources if request.trust is not None else plain_sources
    image = Image.open(request.path)
    try:
        d = image.primary_partition() if request.partition is None else image.get(request.partition)
        if decrypt.is_encrypted(d):
            source = decrypt.decrypted(image, d, sources, hooks)
        else:
            check_squashfs_partition(d)
            source = sources(image, [d])[d.id]
        tree = SquashFS(source, cache_bytes=request.cache_bytes)
    except BaseException:
        image.close()
        raise
    provenance = Provenance(provenance.image, gate.verified_by)
    return OpenedTree(tree, image, d, image.fd, provenance)
