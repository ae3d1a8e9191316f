"""Open the SquashFS tree of an image: what ``ls``, ``cat``, ``mount`` and ``run`` share.

Accepts a SIF (its primary system partition, or the partition asked for) and, for
convenience, a bare SquashFS file. The SIF layer has already checked that every object
lies inside the file; here the partition kind is checked before anything is read from it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from siffs.cli import encrypted
from siffs.cli.common import CommandError
from siffs.cli.exitcodes import ExitCode
from siffs.cli.trust import plain_sources
from siffs.fs.composite import CompositeTree, ObjectFile
from siffs.fs.operations import Tree
from siffs.sif import Descriptor, Image, SifIOError
from siffs.sif.types import FS_TYPE_NAMES, DataType, FsType, name_of
from siffs.squashfs.reader import SquashFS
from siffs.squashfs.source import ByteSource, FileSource

SQUASHFS_MAGIC = b"hsqs"


@dataclass
class OpenedTree:
    """A readable tree and where it came from (``image`` is None for a bare SquashFS file)."""

    tree: SquashFS
    image: Image | None
    partition: Descriptor | None
    fd: int

    def close(self) -> None:
        self.tree.close()
        if self.image is not None:
            self.image.close()
        else:
            os.close(self.fd)


#: Gives a byte source for each object to expose (``trust.Gate.sources`` verifies them first).
SourceFactory = Callable[[Image, Sequence[Descriptor]], dict[int, ByteSource]]


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


def open_all(image: Image, *, cache_bytes: int, sources: SourceFactory = plain_sources) -> CompositeTree:
    """Every SquashFS partition of ``image`` as a directory, every other object as a file.

    Signature objects belong to no group, so no signature covers them: they are shown as
    they are (they are what a verification checks), every other object through ``sources``.
    """
    grouped = [d for d in image.descriptors if d.group]
    ungrouped = [d for d in image.descriptors if not d.group]
    object_sources = sources(image, grouped) | plain_sources(image, ungrouped)
    trees: list[tuple[bytes, Tree]] = []
    files: list[ObjectFile] = []
    squashfs_parts = [d for d in image.descriptors if d.partition and d.partition.fs_type == FsType.SQUASHFS]
    share = max(cache_bytes // max(len(squashfs_parts), 1), 4 << 20)
    for d in image.descriptors:
        source = object_sources[d.id]
        if d in squashfs_parts and d.size:
            trees.append((_entry_name(d), SquashFS(source, cache_bytes=share)))
            continue
        kind = OBJECT_FILE_NAMES.get(d.data_type, "object")
        files.append(ObjectFile(_entry_name(d, kind), d.size, source.pread, max(d.modified_at, 0)))
    return CompositeTree(trees, files, mtime=max(image.header.modified_at, 0))


def check_squashfs_partition(d: Descriptor) -> None:
    part = d.partition
    if part is None:
        raise CommandError(f"object {d.id} is not a partition", ExitCode.NOT_FOUND)
    if part.fs_type != FsType.SQUASHFS:
        kind = name_of(FS_TYPE_NAMES, part.fs_type)
        raise CommandError(
            f"partition {d.id} holds a {kind} filesystem; siffs reads SquashFS only", ExitCode.UNSUPPORTED
        )
    if d.size == 0:
        raise CommandError(f"partition {d.id} is empty", ExitCode.INVALID_IMAGE)


def _is_bare_squashfs(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == SQUASHFS_MAGIC
    except OSError:
        return False  # Image.open reports the problem properly


def open_tree(
    path: str,
    partition_id: int | None = None,
    *,
    cache_bytes: int = 64 << 20,
    sources: SourceFactory = plain_sources,
    bare_allowed: bool = True,
    keys: encrypted.KeyChoice = encrypted.NO_KEYS,
) -> OpenedTree:
    """The SquashFS tree of ``path`` (decrypted with ``keys`` if encrypted); the caller closes it."""
    if partition_id is None and _is_bare_squashfs(path):
        if not bare_allowed:
            raise CommandError(
                "a bare SquashFS file carries no signature: use --allow-unsigned to use it anyway",
                ExitCode.NOT_TRUSTED,
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SifIOError(exc.strerror or str(exc)) from exc
        try:
            return OpenedTree(SquashFS(FileSource(fd), cache_bytes=cache_bytes), None, None, fd)
        except BaseException:
            os.close(fd)
            raise
    image = Image.open(path)
    try:
        d = image.primary_partition() if partition_id is None else image.get(partition_id)
        if encrypted.is_encrypted(d):
            source = encrypted.decrypted(image, d, sources, keys)
        else:
            check_squashfs_partition(d)
            source = sources(image, [d])[d.id]
        tree = SquashFS(source, cache_bytes=cache_bytes)
    except BaseException:
        image.close()
        raise
    return OpenedTree(tree, image, d, image.fd)
