"""The user's trusted keys (``$XDG_CONFIG_HOME/siffs/keys/``) and the trust policy.

A key is trusted because the user put it here (``siffs key import``); siffs has no web of
trust and no key server. OpenPGP keys are stored as their armored public part, named by the
primary fingerprint; PEM keys as their public part, named by the DSSE key ID. Secret key
material is never stored: importing a secret key file keeps only its public half.

The policy answers one question for ``mount``/``run``: is this image signed, by a trusted key,
over every object that is about to be exposed? It verifies in normal mode (current signature
formats only: legacy signatures protect no metadata and are never enough for trust).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from siffs.integrity.blockcache import BlockTableCache
from siffs.integrity.blocktable import Progress
from siffs.integrity.dsse import load_public_pem
from siffs.integrity.errors import KeyMaterialError, NotTrustedError
from siffs.integrity.keys import KeyKind, key_material, load_files, public_dsse_key
from siffs.integrity.openpgp import PgpKeyring
from siffs.integrity.verify import KeyMaterial, Report, verify
from siffs.integrity.xdg import config_dir, private_dir
from siffs.sif import Image
from siffs.sif.durable import replace_file
from siffs.sif.errors import SifError


class TrustedKey(NamedTuple):
    """One key in the keyring, as ``siffs key list`` shows it."""

    kind: str  # "pgp" or "dsse"
    id: str  # primary fingerprint or DSSE key ID
    description: str  # user ID, or key type
    path: Path
    #: "expired" or "revoked" for an OpenPGP key that can no longer vouch for an image, else "".
    status: str = ""


#: GnuPG's validity letters for keys that verify nothing any more.
_STATUS = {"e": "expired", "r": "revoked"}


class Keyring:
    """The directory of trusted public keys."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else config_dir() / "keys"

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix in (".asc", ".pem"))

    def import_file(self, path: str) -> list[TrustedKey]:
        """Add the public key(s) of a key file; returns what was added."""
        [f] = load_files([path])
        private_dir(self.directory)
        added = []
        if f.kind is KeyKind.PGP:
            ring = PgpKeyring.from_keys([(f.data, path)])
            for key in ring.keys:
                target = self.directory / f"{key.fingerprint}.asc"
                replace_file(target, ring.armored(key.fingerprint), 0o644)
                added.append(TrustedKey("pgp", key.fingerprint, key.user_id, target))
        else:
            dkey = public_dsse_key(f)
            target = self.directory / f"{_file_name(dkey.key_id)}.pem"
            replace_file(target, dkey.pem(), 0o644)
            added.append(TrustedKey("dsse", dkey.key_id, dkey.description, target))
        return added

    def keys(self) -> list[TrustedKey]:
        found = []
        for path in self._files():
            if path.suffix == ".asc":
                ring = PgpKeyring.from_keys([(path.read_bytes(), str(path))])
                found += [
                    TrustedKey("pgp", k.fingerprint, k.user_id, path, _STATUS.get(k.validity, ""))
                    for k in ring.keys
                ]
            else:
                dkey = load_public_pem(path.read_bytes(), str(path))
                found.append(TrustedKey("dsse", dkey.key_id, dkey.description, path))
        return found

    def remove(self, key_id: str) -> TrustedKey:
        """Remove the key with this fingerprint (or unambiguous fingerprint suffix) or DSSE key ID."""
        wanted = key_id.strip().replace(" ", "")
        matches = [
            k
            for k in self.keys()
            if k.id == wanted or (k.kind == "pgp" and len(wanted) >= 16 and k.id.endswith(wanted.upper()))
        ]
        if not matches:
            raise KeyMaterialError(f"no trusted key {key_id}: see 'siffs key list'")
        if len(matches) > 1:
            raise KeyMaterialError(f"{key_id} matches {len(matches)} keys: give the full fingerprint")
        matches[0].path.unlink()
        return matches[0]

    def key_material(self) -> KeyMaterial:
        """Every trusted key, ready for ``verify``."""
        return key_material(load_files([str(p) for p in self._files()]), self._pgp_keyring)

    def _pgp_keyring(self, files: Sequence[tuple[bytes, str]]) -> PgpKeyring:
        """GnuPG's export of the trusted OpenPGP keys, kept beside them while they are unchanged.

        Building it runs gpg three times (tens of milliseconds each), on every mount and run. The
        export is a function of the key files alone, so it is stored in the keyring directory under
        their digest and rebuilt when any of them changes. It needs no authentication: whoever
        can write it can write the trusted keys themselves.
        """
        digest = hashlib.sha256()
        for data, name in files:
            digest.update(b"%d:%s:%d:" % (len(name), os.fsencode(Path(name).name), len(data)) + data)
        path = self.directory / f".pgp-keyring-{digest.hexdigest()[:32]}.json"
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # missing or damaged: rebuild
            return PgpKeyring.from_json(path.read_text())
        ring = PgpKeyring.from_keys(files)
        for stale in self.directory.glob(".pgp-keyring-*.json"):
            stale.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # a read-only keyring still verifies, only slower
            replace_file(path, ring.to_json().encode(), 0o644)
        return ring


def _file_name(dsse_key_id: str) -> str:
    # Key IDs are base64 and may contain '/': derive a safe, stable name instead.
    digest = hashlib.sha256(dsse_key_id.encode("ascii")).digest()[:12]
    return "dsse-" + base64.urlsafe_b64encode(digest).decode("ascii")


def require_trusted(
    image: Image,
    expose: Sequence[int],
    keys: KeyMaterial,
    *,
    cache: BlockTableCache | None = None,
    progress: Progress | None = None,
) -> Report:
    """Verify that trusted signatures cover every object in ``expose``; the report has block tables.

    Raises ``NotTrustedError`` (or the verification error) with a message that says what to do.
    """
    if keys.pgp is None and not keys.dsse:
        raise NotTrustedError(
            "no trusted keys: import the signer's public key with 'siffs key import FILE' "
            "(or use --allow-unsigned to skip verification)"
        )
    groups = set()
    for object_id in expose:
        try:
            group = image.get(object_id).group
        except SifError as exc:
            raise NotTrustedError(f"object {object_id}: {exc}") from None
        if group == 0:
            raise NotTrustedError(f"object {object_id} belongs to no group, so no signature can cover it")
        groups.add(group)
    report = verify(image, keys, groups=sorted(groups), cache=cache, record_blocks=True, progress=progress)
    if report.error is not None:
        raise NotTrustedError(
            f"not signed by a trusted key: {report.error} (use --allow-unsigned to mount anyway)"
        ) from report.error
    uncovered = sorted(set(expose) - report.verified_objects)
    if uncovered:
        raise NotTrustedError(f"object {uncovered[0]} is not covered by a trusted signature")
    return report


def trusted_signers(path: str, keys: KeyMaterial | None, progress: Progress | None = None) -> list[str]:
    """Require trusted signatures over the primary partition of the SIF at ``path``; who signed.

    What a whole-file stage (a pull) asks before its result replaces the destination. ``keys``
    None means the caller allowed unsigned images: the file is only opened as a SIF.
    """
    with Image.open(path) as image:
        if keys is None:
            return []
        primary = image.primary_partition()
        report = require_trusted(image, [primary.id], keys, progress=progress)
    return sorted(
        {
            s.pgp_signer.fingerprint if s.pgp_signer else ", ".join(k.key_id for k in s.dsse_keys)
            for s in report.signatures
            if s.ok
        }
    )
