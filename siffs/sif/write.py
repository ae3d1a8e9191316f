"""Write SIF files the way the reference library does: create, add, delete, set primary.

Layout and field values follow sif-format.md §13 (and sylabs/sif's ``CreateContainer``,
``AddObject``, ``DeleteObject``, ``SetPrimPart``), so the reference library and
Singularity/Apptainer load what siffs writes. Object data is streamed in chunks: a
multi-GB SquashFS partition never sits in memory.

A kill or a crash at any point leaves the old image or the new one, never a broken one.
``create`` writes a temporary file beside the target, syncs it, renames it into place and
syncs the directory. The in-place edits (``add``, ``delete``, ``set_primary``) cannot rename
(images are large), so they order their writes: new object data goes past the old end and is
synced first; then the header and the descriptor table, which must agree, are written in one
``pwrite`` (with the bytes between them, unchanged) and synced; only then is anything the old
image still uses zeroed or cut off. The reference writes the table and the header separately,
and a kill between the two leaves an image whose header disagrees with its table. (An image
whose table lies more than 1 MiB after the header, which no known writer makes, is edited
with two writes.)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO

from siffs.sif.durable import NewFile
from siffs.sif.errors import SifIOError, SifUsageError
from siffs.sif.load import Image
from siffs.sif.raw import Descriptor, Header, partition_extra
from siffs.sif.types import (
    ARCH_UNKNOWN,
    DEFAULT_DESCRIPTOR_CAPACITY,
    DEFAULT_DESCRIPTORS_OFFSET,
    DEFAULT_LAUNCH_SCRIPT,
    DESCRIPTOR_SIZE,
    EXTRA_SIZE,
    GROUP_MASK,
    LAUNCH_SCRIPT_SIZE,
    MAGIC,
    NAME_SIZE,
    PARTITION_ALIGNMENT,
    VERSION,
    DataType,
    PartType,
)

_COPY_CHUNK = 1 << 20
#: Largest gap between header and descriptor table rewritten with them in one write.
_MAX_GAP = 1 << 20


def default_time() -> int:
    """Now, or ``SOURCE_DATE_EPOCH`` when set, so that builds can be reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    return int(epoch) if epoch and epoch.isdigit() else int(time.time())


@dataclass
class ObjectInput:
    """One object to write: its data (bytes or an open binary file) and descriptor fields.

    ``group`` 0 means "no group"; ``link`` is the raw LinkedID (use ``link_group`` for a
    group link). ``alignment`` defaults to 4096 for partitions and 0 otherwise, as in Go.
    """

    data_type: int
    data: bytes | BinaryIO
    group: int = 1
    link: int = 0
    name: bytes = b""
    extra: bytes = field(default_factory=lambda: bytes(EXTRA_SIZE))
    alignment: int | None = None
    created_at: int | None = None

    def __post_init__(self) -> None:
        if len(self.name) >= NAME_SIZE:
            raise SifUsageError(f"object name is {len(self.name)} bytes, at most {NAME_SIZE - 1} fit")
        if len(self.extra) > EXTRA_SIZE:
            raise SifUsageError("descriptor extra data too large")
        self.extra = self.extra.ljust(EXTRA_SIZE, b"\0")
        if not 0 <= self.group <= 0x0FFFFFFF:
            raise SifUsageError(f"group {self.group} out of range")

    @property
    def effective_alignment(self) -> int:
        if self.alignment is not None:
            return self.alignment
        return PARTITION_ALIGNMENT if self.data_type == DataType.PARTITION else 0

    @property
    def is_primary(self) -> bool:
        return (
            self.data_type == DataType.PARTITION
            and int.from_bytes(self.extra[4:8], "little") == PartType.PRIMSYS
        )


def link_group(group: int) -> int:
    """Raw LinkedID value for a link to ``group``."""
    return group | GROUP_MASK


def _aligned(offset: int, alignment: int) -> int:
    if alignment <= 1 or offset % alignment == 0:
        return offset
    return offset + alignment - offset % alignment


def _copy_in(fd: int, offset: int, data: bytes | BinaryIO) -> int:
    """Write ``data`` at ``offset``; returns the number of bytes written."""
    if isinstance(data, bytes | bytearray | memoryview):
        _pwrite_all(fd, bytes(data), offset)
        return len(data)
    written = 0
    while chunk := data.read(_COPY_CHUNK):
        _pwrite_all(fd, chunk, offset + written)
        written += len(chunk)
    return written


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class _Writer:
    """Mutable working copy of an image's header and slots, flushed in the reference's order."""

    def __init__(self, fd: int, header: Header, slots: list[Descriptor]) -> None:
        self.fd = fd
        self.header = header
        self.slots = slots

    @property
    def append_offset(self) -> int:
        # Go appends at DataOffset + DataSize; never write over an object if those lie.
        ends = [d.end for d in self.slots if d.used]
        return max([self.header.data_offset + self.header.data_size, *ends])

    def write_object(self, obj: ObjectInput, when: int) -> Descriptor:
        slot = next((i for i, d in enumerate(self.slots) if not d.used), None)
        if slot is None:
            raise SifUsageError(
                f"no free descriptor slot left (all {len(self.slots)} are used): delete an object first"
            )
        if obj.is_primary and any(d.is_primary_partition for d in self.slots if d.used):
            raise SifUsageError("image already contains a primary partition")
        used_ids = {d.id for d in self.slots if d.used}
        object_id = slot + 1 if slot + 1 not in used_ids else max(used_ids) + 1
        start = self.append_offset
        offset = _aligned(start, obj.effective_alignment)
        size = _copy_in(self.fd, offset, obj.data)
        t = obj.created_at if obj.created_at is not None else when
        d = Descriptor(
            slot=slot,
            data_type=obj.data_type,
            used_raw=1,
            id=object_id,
            group_id_raw=obj.group | GROUP_MASK,
            linked_id_raw=obj.link,
            offset=offset,
            size=size,
            size_with_padding=offset - start + size,
            created_at=t,
            modified_at=t,
            uid=0,
            gid=0,
            name_raw=obj.name.ljust(NAME_SIZE, b"\0"),
            extra=obj.extra,
        )
        self.slots[slot] = d
        changes: dict[str, object] = {
            "descriptors_free": self.header.descriptors_free - 1,
            "data_size": offset + size - self.header.data_offset,
        }
        if obj.is_primary:
            changes["arch"] = obj.extra[8:10] + b"\0"
        self.header = self.header.with_changes(**changes)
        return d

    def flush(self) -> None:
        """Write the header and the table, after the data they point at is on disk (see above)."""
        os.fsync(self.fd)
        table = b"".join(d.pack() for d in self.slots)
        header = self.header.pack()
        gap = self.header.descriptors_offset - len(header)
        if gap <= _MAX_GAP:
            between = os.pread(self.fd, gap, len(header)).ljust(gap, b"\0")
            _pwrite_all(self.fd, header + between + table, 0)
        else:
            _pwrite_all(self.fd, table, self.header.descriptors_offset)
            os.fsync(self.fd)
            _pwrite_all(self.fd, header, 0)
        os.fsync(self.fd)


def create(
    path: str | os.PathLike[str],
    objects: Iterable[ObjectInput] = (),
    *,
    launch_script: bytes = DEFAULT_LAUNCH_SCRIPT,
    image_id: uuid.UUID | None = None,
    when: int | None = None,
    capacity: int = DEFAULT_DESCRIPTOR_CAPACITY,
) -> None:
    """Write a new SIF at ``path`` holding ``objects`` (IDs 1, 2, ... in order).

    ``image_id`` defaults to a random UUID (``uuid.UUID(int=0)`` writes "no ID");
    ``when`` defaults to now (or ``SOURCE_DATE_EPOCH``).
    """
    if len(launch_script) >= LAUNCH_SCRIPT_SIZE:
        raise SifUsageError(f"launch script too large (at most {LAUNCH_SCRIPT_SIZE - 1} bytes)")
    if not 0 < capacity <= 1 << 16:
        raise SifUsageError(f"descriptor capacity {capacity} out of range")
    when = default_time() if when is None else when
    ident = uuid.uuid4() if image_id is None else image_id
    table_size = capacity * DESCRIPTOR_SIZE
    header = Header(
        launch_script=launch_script.ljust(LAUNCH_SCRIPT_SIZE, b"\0"),
        magic=MAGIC,
        version=VERSION,
        arch=ARCH_UNKNOWN + b"\0",
        id=ident.bytes,
        created_at=when,
        modified_at=when,
        descriptors_free=capacity,
        descriptors_total=capacity,
        descriptors_offset=DEFAULT_DESCRIPTORS_OFFSET,
        descriptors_size=table_size,
        data_offset=DEFAULT_DESCRIPTORS_OFFSET + table_size,
        data_size=0,
    )
    target = os.fspath(path)
    try:
        new = NewFile(target, 0o755 & ~_umask())
    except OSError as exc:
        directory = os.path.dirname(os.path.abspath(target))
        raise SifIOError(f"cannot create a file in {directory}: {exc.strerror}") from exc
    try:
        with new:
            writer = _Writer(new.fd, header, [Descriptor.empty(i) for i in range(capacity)])
            for obj in objects:
                writer.write_object(obj, when)
            writer.flush()
            new.commit()
    except OSError as exc:
        raise SifIOError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _edit(path: str | os.PathLike[str]) -> tuple[Image, _Writer]:
    image = Image.open(path, writable=True)
    return image, _Writer(image.fd, image.header, list(image.slots))


def add(path: str | os.PathLike[str], obj: ObjectInput, *, when: int | None = None) -> Descriptor:
    """Append ``obj`` to the image at ``path``; returns its new descriptor."""
    when = default_time() if when is None else when
    image, writer = _edit(path)
    with image:
        d = writer.write_object(obj, when)
        writer.header = writer.header.with_changes(modified_at=when)
        writer.flush()
    return d


def delete(
    path: str | os.PathLike[str], object_id: int, *, zero: bool = False, compact: bool = False
) -> None:
    """Free the descriptor of ``object_id``; optionally zero its data or cut it off the end."""
    image, writer = _edit(path)
    with image:
        d = image.get(object_id)
        if compact and any(o.end > d.end for o in image.descriptors):
            raise SifUsageError(f"object {object_id} is not the last object: cannot compact")
        changes: dict[str, object] = {
            "descriptors_free": writer.header.descriptors_free + 1,
            "modified_at": default_time(),
        }
        if compact:
            changes["data_size"] = writer.header.data_size - d.size_with_padding
        if d.is_primary_partition:
            changes["arch"] = ARCH_UNKNOWN + b"\0"
        writer.slots[d.slot] = Descriptor.empty(d.slot)
        writer.header = writer.header.with_changes(**changes)
        writer.flush()
        # Only now that no descriptor points at the object may its bytes go.
        if zero:
            for start in range(0, d.size, _COPY_CHUNK):
                _pwrite_all(image.fd, bytes(min(_COPY_CHUNK, d.size - start)), d.offset + start)
        if compact:
            os.ftruncate(image.fd, d.end - d.size_with_padding)
        if zero or compact:
            os.fsync(image.fd)


def set_primary(path: str | os.PathLike[str], object_id: int) -> None:
    """Make system partition ``object_id`` the primary one, demoting the current primary."""
    image, writer = _edit(path)
    with image:
        d = image.get(object_id)
        part = d.partition
        if part is None:
            raise SifUsageError(f"object {object_id} is not a partition")
        if part.part_type == PartType.PRIMSYS:
            return
        if part.part_type != PartType.SYSTEM:
            raise SifUsageError(f"object {object_id} is not a system partition")
        for old in image.descriptors:
            old_part = old.partition
            if old_part is not None and old_part.part_type == PartType.PRIMSYS:
                extra = partition_extra(old_part.fs_type, PartType.SYSTEM, old_part.arch)
                writer.slots[old.slot] = old.with_changes(extra=extra)
        writer.slots[d.slot] = d.with_changes(
            extra=partition_extra(part.fs_type, PartType.PRIMSYS, part.arch)
        )
        writer.header = writer.header.with_changes(arch=part.arch[:2] + b"\0", modified_at=default_time())
        writer.flush()
