"""The two fixed-size on-disk records of a SIF file: the global header and a descriptor.

Both are packed little-endian structures (sif-format.md §2, §3). They are kept as
immutable values with ``pack``/``unpack`` so that the loader, the writer and the integrity
layer (which digests raw fields) share one definition of the layout. They are named tuples:
defining a frozen dataclass generates and compiles its methods, about 0.5 ms each, which every
``siffs run`` and ``siffs mount`` paid before its mount (a named tuple takes a sixth of that).
"""

# No ``from __future__ import annotations`` here: typing.NamedTuple compiles a string annotation
# (ForwardRef) for each field, ~15 us each, 37 fields on every start; these annotations are objects.
import struct
from typing import TYPE_CHECKING, NamedTuple

from siffs.sif.types import (
    ARCH_UNKNOWN,
    DESCRIPTOR_SIZE,
    EXTRA_SIZE,
    GROUP_MASK,
    HEADER_SIZE,
    ID_MASK,
    NAME_SIZE,
    UNSET_TIME,
    DataType,
    PartType,
    arch_name,
)

if TYPE_CHECKING:  # uuid and datetime are imported where used: reading an image needs neither
    import uuid

_HEADER = struct.Struct("<32s10s3s3s16sqqqqqqqq")
_DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")
assert _HEADER.size == HEADER_SIZE
assert _DESCRIPTOR.size == DESCRIPTOR_SIZE

_PARTITION_EXTRA = struct.Struct("<ii3s")
_SIGNATURE_EXTRA = struct.Struct("<i20s")
_CRYPT_EXTRA = struct.Struct("<ii")
_SBOM_EXTRA = struct.Struct("<i")
_OCI_DIGEST_SIZE = len("sha256:") + 64


def format_time(seconds: int) -> str | None:
    """A SIF timestamp as Go prints ``time.Time.UTC()``; ``None`` for the unset value."""
    if seconds == UNSET_TIME:
        return None
    from datetime import UTC, datetime  # noqa: PLC0415 - see TYPE_CHECKING above

    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (out of range)"
    return when.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


class Header(NamedTuple):
    """The 128-byte global header at offset 0."""

    launch_script: bytes
    magic: bytes
    version: bytes
    arch: bytes
    id: bytes
    created_at: int
    modified_at: int
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        return cls(*_HEADER.unpack(raw))

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.launch_script,
            self.magic,
            self.version,
            self.arch,
            self.id,
            self.created_at,
            self.modified_at,
            self.descriptors_free,
            self.descriptors_total,
            self.descriptors_offset,
            self.descriptors_size,
            self.data_offset,
            self.data_size,
        )

    def integrity_bytes(self) -> bytes:
        """The 61 header bytes a PGP/DSSE signature covers (sif-format.md §7)."""
        return self.launch_script + self.magic + self.version + self.id

    @property
    def arch_name(self) -> str:
        return arch_name(self.arch)

    @property
    def uuid(self) -> "uuid.UUID | None":
        """The image ID, or ``None`` when all sixteen bytes are zero (no ID)."""
        from uuid import UUID  # noqa: PLC0415 - see TYPE_CHECKING above

        return None if self.id == bytes(16) else UUID(bytes=self.id)

    @property
    def launch_script_text(self) -> str:
        return self.launch_script.rstrip(b"\0").decode("utf-8", "replace")

    def with_changes(self, **changes: object) -> "Header":
        return self._replace(**changes)  # type: ignore[arg-type]


class Link(NamedTuple):
    """Where a descriptor's LinkedID points: an object ID or a group number."""

    target: int
    is_group: bool


class PartitionInfo(NamedTuple):
    """A partition descriptor's extra fields: filesystem, role (primary, overlay...) and architecture."""

    fs_type: int
    part_type: int
    arch: bytes

    @property
    def arch_name(self) -> str:
        return arch_name(self.arch)


class SignatureInfo(NamedTuple):
    """A signature descriptor's extra fields: the hash it signs with and the signer's key."""

    hash_type: int
    entity: bytes

    @property
    def fingerprint(self) -> str | None:
        """Upper-case hex OpenPGP fingerprint, or ``None`` when the entity is all zero (DSSE)."""
        return None if self.entity == bytes(20) else self.entity.hex().upper()


class CryptMessageInfo(NamedTuple):
    """An encrypted-message descriptor's extra fields: its format and message type."""

    format_type: int
    message_type: int


class Descriptor(NamedTuple):
    """One 585-byte descriptor slot. ``slot`` is its index in the table (not stored on disk)."""

    slot: int
    data_type: int
    used_raw: int
    id: int
    group_id_raw: int
    linked_id_raw: int
    offset: int
    size: int
    size_with_padding: int
    created_at: int
    modified_at: int
    uid: int
    gid: int
    name_raw: bytes
    extra: bytes

    @classmethod
    def unpack(cls, slot: int, raw: bytes) -> "Descriptor":
        return cls(slot, *_DESCRIPTOR.unpack(raw))

    @classmethod
    def empty(cls, slot: int) -> "Descriptor":
        return cls(slot, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(NAME_SIZE), bytes(EXTRA_SIZE))

    def pack(self) -> bytes:
        return _DESCRIPTOR.pack(
            self.data_type,
            self.used_raw,
            self.id,
            self.group_id_raw,
            self.linked_id_raw,
            self.offset,
            self.size,
            self.size_with_padding,
            self.created_at,
            self.modified_at,
            self.uid,
            self.gid,
            self.name_raw,
            self.extra,
        )

    def with_changes(self, **changes: object) -> "Descriptor":
        return self._replace(**changes)  # type: ignore[arg-type]

    @property
    def used(self) -> bool:
        # Go decodes the byte as a bool: any non-zero value means "used".
        return self.used_raw != 0

    @property
    def group(self) -> int:
        """Group number, 0 when the object belongs to no group."""
        return self.group_id_raw & ID_MASK

    @property
    def link(self) -> Link | None:
        if self.linked_id_raw == 0:
            return None
        is_group = self.linked_id_raw & GROUP_MASK == GROUP_MASK
        return Link(self.linked_id_raw & ID_MASK, is_group)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def name(self) -> bytes:
        # Go strips trailing NULs only; interior bytes are kept as they are.
        return self.name_raw.rstrip(b"\0")

    @property
    def name_text(self) -> str:
        return self.name.decode("utf-8", "replace")

    @property
    def partition(self) -> PartitionInfo | None:
        if self.data_type != DataType.PARTITION:
            return None
        fs_type, part_type, arch = _PARTITION_EXTRA.unpack_from(self.extra)
        return PartitionInfo(fs_type, part_type, arch)

    @property
    def signature(self) -> SignatureInfo | None:
        if self.data_type != DataType.SIGNATURE:
            return None
        return SignatureInfo(*_SIGNATURE_EXTRA.unpack_from(self.extra))

    @property
    def crypt_message(self) -> CryptMessageInfo | None:
        if self.data_type != DataType.CRYPTO_MESSAGE:
            return None
        return CryptMessageInfo(*_CRYPT_EXTRA.unpack_from(self.extra))

    @property
    def sbom_format(self) -> int | None:
        if self.data_type != DataType.SBOM:
            return None
        fmt: int = _SBOM_EXTRA.unpack_from(self.extra)[0]
        return fmt

    @property
    def oci_digest(self) -> str | None:
        if self.data_type not in (DataType.OCI_ROOT_INDEX, DataType.OCI_BLOB):
            return None
        return self.extra[:_OCI_DIGEST_SIZE].split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def is_primary_partition(self) -> bool:
        part = self.partition
        return part is not None and part.part_type == PartType.PRIMSYS


def partition_extra(fs_type: int, part_type: int, arch: bytes = ARCH_UNKNOWN) -> bytes:
    """Extra bytes of a partition descriptor."""
    return _PARTITION_EXTRA.pack(fs_type, part_type, arch[:2] + b"\0").ljust(EXTRA_SIZE, b"\0")


def signature_extra(hash_type: int, entity: bytes) -> bytes:
    """Extra bytes of a signature descriptor (``entity``: 20-byte fingerprint or zeros)."""
    return _SIGNATURE_EXTRA.pack(hash_type, entity).ljust(EXTRA_SIZE, b"\0")


def sbom_extra(fmt: int) -> bytes:
    return _SBOM_EXTRA.pack(fmt).ljust(EXTRA_SIZE, b"\0")


def oci_extra(digest: str) -> bytes:
    return digest.encode("ascii").ljust(EXTRA_SIZE, b"\0")
