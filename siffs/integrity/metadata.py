"""The "image metadata" JSON a PGP or DSSE signature signs (sif-format.md §7).

It lists digests of the header's fixed fields, of each signed descriptor's stable fields and
of each signed object's bytes. Fields that signing itself rewrites (counters, times, offsets)
are left out of the digested bytes, so an image can be signed again or rebuilt without
invalidating earlier signatures, while any change to what a user runs is caught.

``to_json`` must be byte-identical to the reference signer's ``json.Marshal`` output, because
other verifiers re-parse exactly what siffs signs; ``parse`` follows Go's decoder where the
difference could change an outcome (case-insensitive field names, last duplicate wins, unknown
keys ignored), and is stricter in one documented place: ``version`` must be 1.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from siffs.integrity.digest import Digest
from siffs.integrity.errors import SignatureNotValidError
from siffs.integrity.gojson import GoObject, loads
from siffs.sif import Descriptor, Image

_DESCRIPTOR_INTEGRITY = struct.Struct("<iBIIqqqq128s384s")
assert _DESCRIPTOR_INTEGRITY.size == 557

METADATA_VERSION = 1
_UINT32_MAX = 0xFFFFFFFF


def descriptor_integrity_bytes(image: Image, d: Descriptor) -> bytes:
    """The 557 descriptor bytes a signature covers: absolute ID, group, offsets and mtime left out."""
    return _DESCRIPTOR_INTEGRITY.pack(
        d.data_type,
        1 if d.used else 0,
        image.relative_id(d),
        d.linked_id_raw,
        d.size,
        d.created_at,
        d.uid,
        d.gid,
        d.name_raw,
        d.extra,
    )


class ObjectEntry(NamedTuple):
    """One signed object: its ID relative to its group's lowest ID, and two digests."""

    relative_id: int
    descriptor_digest: Digest
    object_digest: Digest

    def to_dict(self) -> dict[str, object]:
        """The entry as the reference encodes it (key order matters for byte-identical output)."""
        return {
            "relativeId": self.relative_id,
            "descriptorDigest": str(self.descriptor_digest),
            "objectDigest": str(self.object_digest),
        }


class ImageMetadata(NamedTuple):
    header_digest: Digest
    objects: tuple[ObjectEntry, ...]

    def to_json(self) -> bytes:
        """Compact JSON, keys in the reference's order, objects as given (sorted by ID)."""
        doc = {
            "version": METADATA_VERSION,
            "header": {"digest": str(self.header_digest)},
            "objects": [o.to_dict() for o in self.objects],
        }
        return json.dumps(doc, separators=(",", ":")).encode("ascii")

    def entry_for(self, object_id: int, min_id: int) -> ObjectEntry | None:
        """The entry naming absolute ``object_id`` (relative IDs count from ``min_id``, uint32)."""
        for o in self.objects:
            if (min_id + o.relative_id) & _UINT32_MAX == object_id:
                return o
        return None

    def absolute_ids(self, min_id: int) -> set[int]:
        return {(min_id + o.relative_id) & _UINT32_MAX for o in self.objects}

    @classmethod
    def parse(cls, data: bytes) -> ImageMetadata:
        """Decode signed metadata; any structural problem makes the signature invalid."""
        try:
            doc = loads(data)
        except ValueError as exc:
            raise SignatureNotValidError(f"signed metadata is not valid JSON ({exc})") from None
        root = _object(doc, "metadata")
        version = root.get("version")
        if type(version) is not int or version != METADATA_VERSION:
            raise SignatureNotValidError(f"signed metadata has unsupported version {version!r} (want 1)")
        header = _object(root.get("header"), "header")
        objects = root.get("objects")
        if objects is not None and not isinstance(objects, list):
            raise SignatureNotValidError("signed metadata: 'objects' is not a list")
        return cls(Digest.parse(header.get("digest")), tuple(_entry(o) for o in objects or ()))


def build(
    image: Image, members: Sequence[Descriptor], object_digests: Sequence[Digest], algorithm: str = "sha256"
) -> ImageMetadata:
    """Metadata for signing ``members`` (one group, sorted by ID); the reference signer uses SHA-256."""
    min_id = min(d.id for d in image.descriptors if d.group == members[0].group)
    entries = tuple(
        ObjectEntry(d.id - min_id, Digest.of(algorithm, descriptor_integrity_bytes(image, d)), od)
        for d, od in zip(members, object_digests, strict=True)
    )
    return ImageMetadata(Digest.of(algorithm, image.header.integrity_bytes()), entries)


def _object(value: Any, what: str) -> GoObject:
    if not isinstance(value, GoObject):
        raise SignatureNotValidError(f"signed metadata: {what} is not a JSON object")
    return value


def _entry(value: Any) -> ObjectEntry:
    o = _object(value, "an object entry")
    rid = o.get("relativeId", 0)
    if type(rid) is not int or not 0 <= rid <= _UINT32_MAX:
        raise SignatureNotValidError(f"signed metadata: relativeId {rid!r} is not a uint32")
    return ObjectEntry(rid, Digest.parse(o.get("descriptorDigest")), Digest.parse(o.get("objectDigest")))
