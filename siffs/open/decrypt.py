"""The decryption stage: an encrypted partition's plaintext SquashFS as a byte source.

Decryption sits between the verified ciphertext and the SquashFS reader: signatures are
checked over the ciphertext (and the Cryptographic Message) first. The key is asked for
(``Hooks.unlock``) only once an encrypted partition is found.
"""

from __future__ import annotations

import stat
from collections.abc import Callable, Sequence
from typing import Any

from siffs.crypt.errors import CorruptEncryption
from siffs.open.hooks import Hooks
from siffs.sif import Descriptor, Image
from siffs.sif.types import FormatType, FsType, MessageType
from siffs.source import ByteSource
from siffs.squashfs.errors import SquashfsError
from siffs.squashfs.reader import SquashFS

ENCRYPTED_FS_TYPES = (FsType.ENCRYPTED_SQUASHFS, FsType.GOCRYPTFS_SQUASHFS)

#: Gives the byte source of each object (``trust.Gate.sources`` verifies them first).
SourceFactory = Callable[[Image, Sequence[Descriptor]], dict[int, ByteSource]]


def is_encrypted(d: Descriptor) -> bool:
    return d.partition is not None and d.partition.fs_type in ENCRYPTED_FS_TYPES


def key_message(image: Image, d: Descriptor) -> Descriptor | None:
    """The Cryptographic Message (PEM, RSA-OAEP) linked to partition ``d``: the first one wins."""
    for m in image.descriptors:
        info = m.crypt_message
        link = m.link
        if (
            info is not None
            and link is not None
            and not link.is_group
            and link.target == d.id
            and (info.format_type, info.message_type) == (FormatType.PEM, MessageType.RSA_OAEP)
        ):
            return m
    return None


def decrypted(image: Image, d: Descriptor, sources: SourceFactory, hooks: Hooks) -> ByteSource:
    """The plaintext SquashFS bytes of encrypted partition ``d``, every check in the specs' order."""
    from siffs.crypt.gocryptfs import open_gocryptfs  # noqa: PLC0415 - the crypto stack loads only when needed
    from siffs.crypt.luks2 import open_luks2  # noqa: PLC0415

    message_object = key_message(image, d)
    exposed = [d] if message_object is None else [d, message_object]
    verified = sources(image, exposed)  # signatures over the ciphertext and the message come first
    message = None if message_object is None else verified[message_object.id].pread(0, message_object.size)
    assert d.partition is not None
    if d.partition.fs_type == FsType.ENCRYPTED_SQUASHFS:
        return open_luks2(verified[d.id], hooks.unlock(), message, warn=hooks.warn, notice=hooks.notice)
    conf, payload = _gocryptfs_parts(verified[d.id], hooks.warn)
    return open_gocryptfs(conf, payload, hooks.unlock(), message, notice=hooks.notice)


class FileInImage:
    """One regular file of a SquashFS as a byte source (the gocryptfs payload inside the outer image)."""

    def __init__(self, tree: SquashFS, ino: int, size: int) -> None:
        self._tree, self._ino, self.size = tree, ino, size

    def pread(self, offset: int, size: int) -> bytes:
        data = self._tree.read(self._ino, offset, size)
        if len(data) != size:
            raise CorruptEncryption(f"the encrypted payload ends before byte {offset + size} (damaged image)")
        return data


def describe(image: Image, d: Descriptor, warn: Callable[[str], None]) -> dict[str, Any]:
    """What can be said of encrypted partition ``d`` without a key (for ``info --json``).

    Nothing is verified here, and a damaged container is described by its error message.
    """
    from siffs.crypt.errors import CryptError  # noqa: PLC0415 - the crypto stack loads only when needed
    from siffs.crypt.gocryptfs import parse_conf, plain_size  # noqa: PLC0415
    from siffs.crypt.luks2 import read_header  # noqa: PLC0415
    from siffs.squashfs.source import FileSource  # noqa: PLC0415

    source = FileSource(image.fd, d.offset, d.size)
    facts: dict[str, Any] = {"key_message": key_message(image, d) is not None}
    try:
        assert d.partition is not None
        if d.partition.fs_type == FsType.ENCRYPTED_SQUASHFS:
            return read_header(source).to_dict() | facts
        conf, payload = _gocryptfs_parts(source, warn)
        if payload is None:
            raise CorruptEncryption("gocryptfs partition has no squashfs-* payload")
        plain = plain_size(payload.size)
        return (
            parse_conf(conf).to_dict()
            | facts
            | {
                "payload_size": payload.size,
                "plaintext_size": plain,
                "blocks": -(-plain // 4096),
            }
        )
    except (CryptError, SquashfsError) as exc:
        return facts | {"error": str(exc)}


def _gocryptfs_parts(partition: ByteSource, warn: Callable[[str], None]) -> tuple[bytes, ByteSource | None]:
    """``gocryptfs.conf`` and the payload from the outer SquashFS, chosen as Apptainer chooses them."""
    from siffs.crypt.gocryptfs import CONF_NAME, MAX_CONF_SIZE, PAYLOAD_PREFIX  # noqa: PLC0415

    try:
        if partition.size < 4 or partition.pread(0, 4) != b"hsqs":
            raise CorruptEncryption("gocryptfs partition is not a squashfs")
        outer = SquashFS(partition, cache_bytes=4 << 20)
        entries = sorted(outer.readdir(outer.root_ino), key=lambda e: e[0])
    except SquashfsError as exc:
        raise CorruptEncryption("gocryptfs partition is not a squashfs") from exc
    conf = next((st for name, st, _ in entries if name == CONF_NAME and stat.S_ISREG(st.mode)), None)
    if conf is None or conf.size > MAX_CONF_SIZE:
        raise CorruptEncryption("gocryptfs partition has no gocryptfs.conf")
    try:
        conf_data = outer.read(conf.ino, 0, conf.size)
    except SquashfsError as exc:
        raise CorruptEncryption("gocryptfs partition is not a squashfs") from exc
    payloads = [st for name, st, _ in entries if name.startswith(PAYLOAD_PREFIX)]
    if not payloads or not stat.S_ISREG(payloads[0].mode) or payloads[0].size == 0:
        return conf_data, None
    others = len(entries) - 2
    if others:
        warn(f"the gocryptfs partition holds {others} more entries; using the first squashfs-* payload")
    from siffs.crypt.gocryptfs import ExtentSource  # noqa: PLC0415

    direct = ExtentSource.covering(partition, outer.stored_extents(payloads[0].ino), payloads[0].size)
    return conf_data, direct or FileInImage(outer, payloads[0].ino, payloads[0].size)
