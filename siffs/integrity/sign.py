"""Sign a SIF image's object groups the way the reference signer does (sif-format.md §13).

For each group: the metadata JSON over the group's objects (sorted by ID, SHA-256), signed as
a clear-signed OpenPGP message (GnuPG) or a DSSE envelope (PEM keys), appended as a Signature
object with no group, linked to the group, HashType SHA-256 and the signer's primary
fingerprint (zeros for DSSE). The metadata bytes are exactly the reference's, so Singularity,
Apptainer and sylabs/sif verify what siffs signs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from siffs.integrity import clearsign, dsse, metadata
from siffs.integrity.blocktable import Extent, Progress, hash_extents
from siffs.integrity.digest import Digest
from siffs.integrity.errors import SigningError
from siffs.integrity.openpgp import sign_text
from siffs.sif import Descriptor, Image, ObjectInput, add, link_group
from siffs.sif.raw import signature_extra
from siffs.sif.types import DataType, HashType


@dataclass(frozen=True)
class PgpSigningKey:
    """An OpenPGP secret key file (armored or binary) and its passphrase, if any."""

    data: bytes
    source: str
    passphrase: bytes | None = None
    #: Told when the key cannot be kept where a kill of siffs would not leave it (see ``sealed``).
    on_fallback: Callable[[str], None] | None = None


@dataclass(frozen=True)
class DsseSigningKey:
    keys: tuple[dsse.PrivateKey, ...]


SigningKey = PgpSigningKey | DsseSigningKey


@dataclass(frozen=True)
class Signed:
    """One signature added to the image."""

    group: int
    signature_id: int
    objects: tuple[int, ...]
    signer: str  # primary fingerprint (PGP) or DSSE key IDs


def group_metadata(image: Image, group: int, progress: Progress | None = None) -> metadata.ImageMetadata:
    """The metadata a signature over ``group`` signs (objects sorted by ID, SHA-256)."""
    members = sorted(image.group_members(group), key=lambda d: d.id)
    if not members or group == 0:
        raise SigningError(f"group {group} not found (the image has groups {image.groups()})")
    total = sum(d.size for d in members)
    digests: list[Digest] = []
    done = 0
    for d in members:
        value, _ = hash_extents(
            image.fd,
            [Extent(d.offset, d.size)],
            "sha256",
            record_blocks=False,
            progress=progress,
            done=done,
            total=total,
        )
        digests.append(Digest("sha256", value))
        done += d.size
    return metadata.build(image, members, digests)


def _sign_message(payload: bytes, key: SigningKey) -> tuple[bytes, bytes, str]:
    """Signature object bytes, descriptor entity and a signer description."""
    if isinstance(key, DsseSigningKey):
        ids = ", ".join(dsse.key_id(k.public_key()) for k in key.keys)
        return dsse.sign(payload, key.keys), bytes(20), ids
    signed = sign_text(key.data, key.source, clearsign.signed_bytes(payload), key.passphrase, key.on_fallback)
    return (
        clearsign.encode(payload, signed.signature),
        bytes.fromhex(signed.signer.fingerprint),
        signed.signer.fingerprint,
    )


def sign(
    path: str, key: SigningKey, groups: Sequence[int] = (), progress: Progress | None = None
) -> list[Signed]:
    """Sign ``groups`` (default: every group) of the image at ``path``, one signature per group."""
    with Image.open(path) as image:
        selected = sorted(set(groups)) or image.groups()
        if not selected:
            raise SigningError("no object of the image belongs to a group: there is nothing to sign")
        prepared: list[tuple[int, tuple[int, ...], bytes]] = []
        for g in selected:
            md = group_metadata(image, g, progress)
            members = tuple(sorted(d.id for d in image.group_members(g)))
            prepared.append((g, members, md.to_json()))
    done: list[Signed] = []
    for g, members, payload in prepared:
        data, entity, signer = _sign_message(payload, key)
        obj = ObjectInput(
            DataType.SIGNATURE,
            data,
            group=0,
            link=link_group(g),
            extra=signature_extra(HashType.SHA256, entity),
        )
        d: Descriptor = add(path, obj)
        done.append(Signed(g, d.id, members, signer))
    return done
