"""Verify a SIF image's signatures exactly as the reference verifier does (sif-format.md §9).

The steps, their order and the failure each step reports follow sylabs/sif ``pkg/integrity``,
so an image that Singularity/Apptainer accept is accepted here and vice versa (the corpus'
``expected.json`` pins every case). Every signature found for a task must verify (AND, not
OR); the report names, per signature, who signed and which objects it verified.

Unlike the reference, a failing signature does not stop the run: the report keeps evaluating
the others so ``siffs verify`` can show the whole picture, and ``Report.error`` is the first
failure in the reference's order, i.e. the one the reference would have stopped at.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from siffs.integrity import clearsign, dsse
from siffs.integrity.blockcache import BlockTableCache, CachedDigest, ImageIdentity
from siffs.integrity.blocktable import BlockTable, Extent, Progress, hash_extents
from siffs.integrity.digest import Digest
from siffs.integrity.dsse import DsseKey
from siffs.integrity.errors import (
    DescriptorIntegrityError,
    FingerprintMismatchError,
    GroupNotFoundError,
    HashUnsupportedError,
    HeaderIntegrityError,
    InvalidGroupIDError,
    NoGroupsError,
    NoKeyMaterialError,
    NonGroupedObjectError,
    NoObjectsError,
    ObjectIntegrityError,
    ObjectNotFoundError,
    ObjectNotSignedError,
    SignatureFormatError,
    SignatureNotFoundError,
    SignatureNotValidError,
    SignedObjectNotFoundError,
    VerificationError,
)
from siffs.integrity.legacy import is_legacy, legacy_algorithm, legacy_digest
from siffs.integrity.metadata import ImageMetadata, descriptor_integrity_bytes
from siffs.integrity.openpgp import PgpKeyring, Signer
from siffs.sif import Descriptor, Image, Link
from siffs.sif.errors import SifError
from siffs.sif.types import HASH_TYPE_NAMES, DataType

#: Largest signature object read: real ones are a few KiB; a huge Size must not exhaust memory.
MAX_SIGNATURE_SIZE = 8 * 1024 * 1024


class Mode(enum.Enum):
    """Which signatures count: current ones (normal) or pre-3.6 SIFHASH ones (legacy)."""

    NORMAL = "default"
    LEGACY = "legacy"
    LEGACY_ALL = "legacy-all"


class KeyMaterial(NamedTuple):
    """Keys a verification may use: an OpenPGP keyring and/or DSSE public keys."""

    pgp: PgpKeyring | None = None
    dsse: tuple[DsseKey, ...] = ()


class SignatureReport(NamedTuple):
    """The outcome for one signature object."""

    signature_id: int
    format: str  # "pgp", "dsse", "legacy" or "unknown"
    link: Link | None
    covers: tuple[int, ...]  # objects the task asked this signature to vouch for
    verified: tuple[int, ...]  # objects it verified (empty when it failed)
    pgp_signer: Signer | None = None
    dsse_keys: tuple[DsseKey, ...] = ()
    error: VerificationError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Report:
    """What a verification found; ``error`` is the reference's verdict (``None``: verified)."""

    signatures: list[SignatureReport] = field(default_factory=list)
    error: VerificationError | None = None
    block_tables: dict[int, BlockTable] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def warnings(self) -> list[str]:
        """What verified but deserves a word: signatures dated before their key (clock skew)."""
        return [
            f"signature {s.signature_id}: {s.pgp_signer.time_conflict}"
            for s in self.signatures
            if s.ok and s.pgp_signer is not None and s.pgp_signer.time_conflict
        ]

    @property
    def verified_objects(self) -> set[int]:
        return {i for s in self.signatures if s.ok for i in s.verified}

    def check(self) -> Report:
        """Raise the verdict if verification failed; returns ``self`` for chaining."""
        if self.error is not None:
            raise self.error
        return self


@dataclass
class _Found:
    """What is learnt about a signature while checking it, kept for the report if a later step fails."""

    format: str
    signer: Signer | None = None
    keys: tuple[DsseKey, ...] = ()
    error: VerificationError | None = None


class _Task(NamedTuple):
    """Objects one set of signatures must vouch for (a group, or one object)."""

    group: int  # 0 for a legacy object task
    object_id: int  # 0 for a group task
    members: tuple[Descriptor, ...]
    exact: bool  # the signed metadata must list exactly these objects
    legacy: bool


def verify(
    image: Image,
    keys: KeyMaterial,
    *,
    groups: Sequence[int] = (),
    objects: Sequence[int] = (),
    mode: Mode = Mode.NORMAL,
    record_blocks: bool = False,
    cache: BlockTableCache | None = None,
    progress: Progress | None = None,
) -> Report:
    """Verify ``image``; never raises a ``VerificationError`` itself (see ``Report.check``)."""
    return _Verifier(image, keys, record_blocks or cache is not None, cache, progress).run(
        groups, objects, mode
    )


class _Verifier:
    def __init__(
        self,
        image: Image,
        keys: KeyMaterial,
        record_blocks: bool,
        cache: BlockTableCache | None,
        progress: Progress | None,
    ) -> None:
        self.image = image
        self.keys = keys
        self.record_blocks = record_blocks
        self.cache = cache
        self.identity = ImageIdentity.of(image.fd) if cache is not None else None
        self.progress = progress
        self.report = Report()
        self._hashed: dict[tuple[tuple[int, ...], str], bytes] = {}
        self._data: dict[int, bytes | None] = {}
        self._done = 0
        self._total = 0

    # -- tasks (steps 1-3) --------------------------------------------------------------------

    def run(self, groups: Sequence[int], objects: Sequence[int], mode: Mode) -> Report:
        try:
            tasks = self._tasks(sorted(set(groups)), sorted(set(objects)), mode)
            for d in self.image.descriptors:
                if d.data_type != DataType.SIGNATURE and d.group == 0:
                    raise NonGroupedObjectError(
                        f"object {d.id} belongs to no group, so no signature can cover it"
                    )
            found = [(task, self._signatures(task)) for task in tasks]
        except VerificationError as exc:
            self.report.error = exc
            return self.report
        self._total = sum(d.size for task, sigs in found if sigs for d in task.members) or 1
        for task, sigs in found:
            if not sigs:
                what = f"object {task.object_id}" if task.object_id else f"object group {task.group}"
                kind = "legacy " if task.legacy else ""
                self._fail(SignatureNotFoundError(f"no {kind}signature found for {what}"))
            for sig in sigs:
                self.report.signatures.append(self._check(task, sig))
                self._fail(self.report.signatures[-1].error)
        return self.report

    def _fail(self, error: VerificationError | None) -> None:
        if error is not None and self.report.error is None:
            self.report.error = error

    def _tasks(self, groups: list[int], objects: list[int], mode: Mode) -> list[_Task]:
        image = self.image
        if mode is Mode.LEGACY_ALL:
            extra = {d.id for d in image.descriptors if d.data_type != DataType.SIGNATURE and d.group}
            objects = sorted(set(objects) | extra)
        if not groups and not objects:
            groups = image.groups()
            if not groups:
                raise NoGroupsError("no object of the image belongs to a group: there is nothing signed")
        if not image.descriptors:
            raise NoObjectsError("the image holds no objects: there is nothing to verify")
        legacy = mode is not Mode.NORMAL
        tasks = []
        for g in groups:
            members = tuple(image.group_members(g))
            if not members or g == 0:
                raise GroupNotFoundError(f"group {g} not found (the image has groups {image.groups()})")
            tasks.append(_Task(g, 0, members, exact=not legacy, legacy=legacy))
        for o in objects:
            d = self._object(o)
            if legacy:
                tasks.append(_Task(0, o, (d,), exact=False, legacy=True))
            elif d.group == 0:
                raise InvalidGroupIDError(f"object {o} belongs to no group (a signature?): nothing signs it")
            else:
                tasks.append(_Task(d.group, 0, (d,), exact=False, legacy=False))
        return tasks

    def _object(self, object_id: int) -> Descriptor:
        try:
            return self.image.get(object_id)
        except SifError:
            raise ObjectNotFoundError(f"object {object_id} not found in the image") from None

    # -- signatures (step 5) ------------------------------------------------------------------

    def _signature_data(self, sig: Descriptor) -> bytes | None:
        if sig.id not in self._data:
            self._data[sig.id] = self.image.read(sig) if sig.size <= MAX_SIGNATURE_SIZE else None
        return self._data[sig.id]

    def _signatures(self, task: _Task) -> list[Descriptor]:
        if task.object_id:
            wanted = Link(task.object_id, is_group=False)
            return [s for s in self.image.signatures() if s.link == wanted]
        wanted = Link(task.group, is_group=True)
        return [s for s in self.image.signatures() if s.link == wanted and self._is_legacy(s) == task.legacy]

    def _is_legacy(self, sig: Descriptor) -> bool:
        data = self._signature_data(sig)
        return data is not None and is_legacy(clearsign.decode(data))

    # -- one signature (step 6) ---------------------------------------------------------------

    def _check(self, task: _Task, sig: Descriptor) -> SignatureReport:
        data = self._signature_data(sig)
        message = clearsign.decode(data) if data is not None else None
        if task.legacy:
            fmt = "legacy"
        elif data is not None and dsse.is_envelope(data):
            fmt = "dsse"
        else:
            fmt = "pgp" if message is not None else "unknown"
        found = _Found(fmt)
        try:
            if data is None:
                raise SignatureNotValidError(
                    f"signature object {sig.id} is {sig.size} bytes, far larger than any signature"
                )
            if task.legacy:
                self._check_legacy(task, sig, message, found)
            else:
                self._check_normal(task, sig, data, message, found)
        except VerificationError as exc:
            found.error = exc
        covers = tuple(d.id for d in task.members)
        verified = covers if found.error is None else ()
        return SignatureReport(sig.id, fmt, sig.link, covers, verified, found.signer, found.keys, found.error)

    def _check_normal(
        self, task: _Task, sig: Descriptor, data: bytes, message: clearsign.ClearSigned | None, found: _Found
    ) -> None:
        if found.format == "dsse":
            if not self.keys.dsse:
                raise NoKeyMaterialError(
                    f"signature {sig.id} is a DSSE envelope: pass the signer's PEM public key with --key"
                )
        elif message is not None:
            self._require_pgp(sig)
        else:
            raise SignatureFormatError(
                f"signature object {sig.id} is damaged or of an unknown format "
                "(neither a DSSE envelope nor a clear-signed OpenPGP message)"
            )
        info = sig.signature
        assert info is not None
        if info.hash_type not in HASH_TYPE_NAMES:
            raise HashUnsupportedError(f"signature {sig.id} names unknown hash type {info.hash_type}")
        if message is None or found.format == "dsse":
            verified = dsse.verify(data, self.keys.dsse)
            payload, found.keys = verified.payload, verified.keys
        else:
            found.signer = self._verify_pgp(sig, message)
            payload = message.plaintext
        try:
            metadata = ImageMetadata.parse(payload)
        except SignatureNotValidError as exc:
            raise SignatureNotValidError(f"signature {sig.id}: {exc}") from None
        if found.signer is not None:
            _check_fingerprint(sig, found.signer)
        min_id = min(d.id for d in self.image.descriptors if d.group == task.group)
        if task.exact:
            signed = metadata.absolute_ids(min_id)
            for d in task.members:
                if d.id not in signed:
                    raise ObjectNotSignedError(f"object {d.id} is not covered by signature {sig.id}")
            missing = sorted(signed - {d.id for d in task.members})
            if missing:
                raise SignedObjectNotFoundError(
                    f"signature {sig.id} covers object {missing[0]}, which the image no longer has"
                )
        if not _matches(metadata.header_digest, self.image.header.integrity_bytes()):
            raise HeaderIntegrityError("the image header (launch script, ID) changed since it was signed")
        sig_digest = hashlib.sha256(data).digest()
        for d in task.members:
            entry = metadata.entry_for(d.id, min_id)
            if entry is None:
                raise ObjectNotSignedError(f"object {d.id} is not covered by signature {sig.id}")
            if not _matches(entry.descriptor_digest, descriptor_integrity_bytes(self.image, d)):
                raise DescriptorIntegrityError(f"the descriptor of object {d.id} changed since it was signed")
            if not self._object_matches(d, entry.object_digest, sig_digest):
                raise ObjectIntegrityError(f"the data of object {d.id} changed since it was signed")

    def _check_legacy(
        self, task: _Task, sig: Descriptor, message: clearsign.ClearSigned | None, found: _Found
    ) -> None:
        self._require_pgp(sig)
        if message is None:
            raise SignatureNotValidError(f"signature {sig.id} is not a clear-signed message")
        found.signer = self._verify_pgp(sig, message)
        info = sig.signature
        assert info is not None
        algorithm = legacy_algorithm(info.hash_type)
        _check_fingerprint(sig, found.signer)
        expected = legacy_digest(message.plaintext, algorithm)
        if not expected.matches(self._hash(task.members, algorithm)):
            what = f"object {task.object_id}" if task.object_id else f"object group {task.group}"
            raise ObjectIntegrityError(f"the data of {what} changed since it was signed")

    def _require_pgp(self, sig: Descriptor) -> None:
        if self.keys.pgp is None:
            raise NoKeyMaterialError(
                f"signature {sig.id} is an OpenPGP signature: pass the signer's public key with --key "
                "or import it with 'siffs key import'"
            )

    def _verify_pgp(self, sig: Descriptor, message: clearsign.ClearSigned) -> Signer:
        assert self.keys.pgp is not None
        try:
            return self.keys.pgp.verify_detached(message.signed, message.signature)
        except SignatureNotValidError as exc:
            raise type(exc)(f"signature {sig.id}: {exc}") from None

    # -- hashing ------------------------------------------------------------------------------

    def _object_matches(self, d: Descriptor, expected: Digest, sig_digest: bytes) -> bool:
        """Does object ``d`` hash to ``expected``? Uses (and fills) the block table cache."""
        if self.cache is not None and self.identity is not None:
            cached = self.cache.load(self.identity, d.id, sig_digest)
            if (
                cached is not None
                and cached.algorithm == expected.algorithm
                and expected.matches(cached.digest)
            ):
                self.report.block_tables[d.id] = cached.table
                return True
        ok = expected.matches(self._hash((d,), expected.algorithm))
        if ok and self.cache is not None and self.identity is not None and d.id in self.report.block_tables:
            entry = CachedDigest(expected.algorithm, expected.value, self.report.block_tables[d.id])
            self.cache.store(self.identity, d.id, sig_digest, entry)
        return ok

    def _hash(self, members: Sequence[Descriptor], algorithm: str) -> bytes:
        key = (tuple(d.id for d in members), algorithm)
        if key not in self._hashed:
            digest, tables = hash_extents(
                self.image.fd,
                [Extent(d.offset, d.size) for d in members],
                algorithm,
                record_blocks=self.record_blocks,
                progress=self.progress,
                done=self._done,
                total=self._total,
            )
            self._done = min(self._done + sum(d.size for d in members), self._total)
            self._hashed[key] = digest
            self.report.block_tables.update(zip((d.id for d in members), tables, strict=False))
        return self._hashed[key]


def _matches(expected: Digest, data: bytes) -> bool:
    return expected.matches(Digest.of(expected.algorithm, data).value)


def _check_fingerprint(sig: Descriptor, signer: Signer) -> None:
    info = sig.signature
    assert info is not None
    if info.entity[:20].hex().upper() != signer.fingerprint:
        recorded = info.fingerprint or "no fingerprint"
        raise FingerprintMismatchError(
            f"signature {sig.id} records signer {recorded} but was made by key {signer.fingerprint}"
        )
