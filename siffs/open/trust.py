"""The trust decision before an image is exposed: verify, or say plainly that it was not.

An image is refused unless a trusted key's signature covers every object to expose; the bytes
then reach the SquashFS reader only through the verified block table, so a file changed under a
live mount yields EIO, never the changed bytes. ``allow_unsigned`` skips all of that, and says
so through the caller's warning hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from siffs.open.errors import NoKeys
from siffs.open.hooks import SILENT, Hooks
from siffs.sif import Descriptor, Image
from siffs.squashfs.source import ByteSource, FileSource

if TYPE_CHECKING:  # the integrity layer (and its crypto) is imported only when verifying
    from siffs.integrity.blockcache import BlockTableCache
    from siffs.integrity.verify import KeyMaterial, SignatureReport


class TrustChoice(NamedTuple):
    """Skip verification altogether, or verify against these key files (none: the trusted keyring)."""

    allow_unsigned: bool = False
    key_files: tuple[str, ...] = ()


def keys_from(paths: Sequence[str], *, required: bool = True) -> KeyMaterial:
    """The keys in ``paths``, or else the trusted keyring's."""
    from siffs.integrity.keyring import Keyring  # noqa: PLC0415 - see TYPE_CHECKING above
    from siffs.integrity.keys import key_material, load_files  # noqa: PLC0415

    if paths:
        return key_material(load_files(list(paths)))
    keys = Keyring().key_material()
    if required and keys.pgp is None and not keys.dsse:
        raise NoKeys(
            "no keys: pass the signer's public key with --key FILE or trust it with 'siffs key import FILE'"
        )
    return keys


def block_cache() -> BlockTableCache | None:
    """The verified-block-table cache, or None where no cache directory can be written."""
    from siffs.integrity.blockcache import BlockTableCache  # noqa: PLC0415 - see TYPE_CHECKING above

    try:
        return BlockTableCache.default()
    except OSError:
        return None  # verify without the cache


def plain_sources(image: Image, exposed: Sequence[Descriptor]) -> dict[int, ByteSource]:
    """Unverified sources: for ``allow_unsigned``, and for the peeking commands (``ls``, ``cat``)."""
    return {d.id: FileSource(image.fd, d.offset, d.size) for d in exposed}


def signer_text(s: SignatureReport) -> str:
    """Who made a verified signature, for people: fingerprint and user ID, or DSSE key IDs."""
    if s.pgp_signer is not None:
        uid = f' "{s.pgp_signer.user_id}"' if s.pgp_signer.user_id else ""
        return f"{s.pgp_signer.fingerprint}{uid}"
    if s.dsse_keys:
        return ", ".join(f"{k.key_id} ({k.description})" for k in s.dsse_keys)
    return "unknown"


class Gate:
    """Makes the byte sources of the objects to expose, and remembers who vouched for them."""

    def __init__(self, choice: TrustChoice, hooks: Hooks = SILENT) -> None:
        self.choice = choice
        self.hooks = hooks
        self.verified_by = "nobody (--allow-unsigned)"

    def sources(self, image: Image, exposed: Sequence[Descriptor]) -> dict[int, ByteSource]:
        """A byte source per exposed object: verified block by block unless unsigned use was allowed."""
        if self.choice.allow_unsigned:
            self.hooks.warn(f"{image.path}: signatures not verified (--allow-unsigned)")
            return plain_sources(image, exposed)
        from siffs.integrity.blocktable import VerifiedObjectReader  # noqa: PLC0415 - see TYPE_CHECKING
        from siffs.integrity.keyring import require_trusted  # noqa: PLC0415

        # An empty keyring is reported by require_trusted, with the --allow-unsigned hint.
        keys = keys_from(self.choice.key_files, required=False)
        with self.hooks.progress("verifying") as progress:
            report = require_trusted(
                image, [d.id for d in exposed], keys, cache=block_cache(), progress=progress
            )
        self.verified_by = "; ".join(sorted({signer_text(s) for s in report.signatures if s.ok}))
        for warning in report.warnings:
            self.hooks.warn(f"{image.path}: {warning}")
        return {
            d.id: VerifiedObjectReader(image.fd, d.offset, d.size, report.block_tables[d.id]) for d in exposed
        }
