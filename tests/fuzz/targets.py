"""What the coverage-guided fuzzers feed, and which errors count as a parser's answer.

Each target takes untrusted bytes as siffs meets them and drives the parser the way the
commands do. The errors in ``expected`` are the ones the layer raises on purpose when the
input is wrong (its documented hierarchy); any other exception, a time-out or an
allocation past the memory limit is a bug (``tests/fuzz/run.py`` sets the limits).

* ``sif``: a SIF file. The ``siffs.sif`` loader (header, descriptor table, bounds, overlaps),
  ``describe`` (the text and JSON of ``header``, ``list``, ``info``), object reads.
* ``squashfs``: a SquashFS image (seeds: gzip, xz, lzo, lz4, zstd, uncompressed metadata).
  The whole ``siffs.squashfs`` reader: superblock, codecs, metadata blocks, lookup tables,
  inodes, directories and their index, file data, fragments, xattrs, path resolution.
* ``signature``: a signature object's bytes. ``siffs.integrity``: clear-signed framing and
  OpenPGP armor (``clearsign``), DSSE envelope JSON and base64 verified with a real Ed25519
  key (``dsse``), the signed metadata JSON (``metadata``), legacy ``SIFHASH`` digests.

The OpenPGP packets inside the armor are GnuPG's to parse (siffs hands them over whole),
so they are not a target here; GnuPG has its own fuzzing (OSS-Fuzz).

A target still to plug in (same shape: a function of bytes, the layer's error hierarchy as
``expected``, seeds from ``tests/fuzz/seeds.py``); its parser is fuzzed meanwhile by the random
loops of ``tests/crypt``:

* ``luks2``: the LUKS2 header parser of ``siffs/crypt/luks2``
  (``read_header(source)``: binary headers, JSON area, keyslots, segments, digests). Entry:
  ``Target("luks2", lambda data: luks2.read_header(BytesSource(data)), (CryptError, CorruptImage))``
  (``BytesSource`` from ``tests.squashfs.fuzz`` raises ``CorruptImage`` outside the data), and
  in ``seeds.py`` a ``cryptsetup luksFormat --type luks2`` header of a small file (argon2id and
  pbkdf2 keyslots), cut to its metadata areas.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from siffs.integrity import clearsign, dsse, legacy
from siffs.integrity.digest import LEGACY_HASH_TYPES
from siffs.integrity.errors import IntegrityError
from siffs.integrity.metadata import ImageMetadata
from siffs.sif import Image, SifError
from siffs.sif import describe as sif_describe
from siffs.squashfs import SquashfsError
from tests.squashfs.fuzz import exercise as exercise_squashfs

#: Where each target's corpus lives: committed seeds (``seed-*``) and what fuzzing added.
CORPUS = Path(__file__).parent / "corpus"

#: The DSSE key the ``signature`` target verifies with, and its seeds were signed with: fixed,
#: so a seed envelope really verifies and mutations start from an accepted signature.
DSSE_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def exercise_sif(data: bytes) -> None:
    """Load ``data`` as a SIF file and use what ``header``, ``list``, ``info`` and ``cat`` use."""
    fd = os.memfd_create("fuzz.sif", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        with Image.open(f"/proc/self/fd/{fd}") as image:
            sif_describe.header_text(image.header)
            sif_describe.list_text(image)
            json.dumps(sif_describe.image_json(image))
            for d in image.descriptors:
                sif_describe.info_text(d)
                image.relative_id(d)
                for _ in image.iter_chunks(d, 1 << 16):
                    pass
            image.groups()
            image.signatures()
            image.primary_partition()
    finally:
        os.close(fd)


_VERIFIER = dsse.DsseKey(DSSE_KEY.public_key())


def exercise_signature(data: bytes) -> None:
    """Parse ``data`` as the verifier parses a signature object, every branch of it."""
    message = clearsign.decode(data)
    if message is not None:
        if legacy.is_legacy(message):
            for name in sorted(set(LEGACY_HASH_TYPES.values())):
                _answer(legacy.legacy_digest, message.plaintext, name)
        _answer(ImageMetadata.parse, message.plaintext)
    if dsse.is_envelope(data):
        verified = _answer(dsse.verify, data, [_VERIFIER])
        if isinstance(verified, dsse.Verified):
            _answer(ImageMetadata.parse, verified.payload)
    _answer(ImageMetadata.parse, data)


def _answer(fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)``, where an ``IntegrityError`` is an answer: the later steps still run."""
    try:
        return fn(*args)
    except IntegrityError as e:
        return e


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]


TARGETS = {
    t.name: t
    for t in (
        Target("sif", exercise_sif, (SifError,)),
        Target("squashfs", exercise_squashfs, (SquashfsError,)),
        Target("signature", exercise_signature, (IntegrityError,)),
    )
}
