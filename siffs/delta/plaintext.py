"""The plaintext inside an encrypted SIF, where its ciphertext lies, and the way back to that ciphertext.

An encrypted image is published as two streams: the plaintext SquashFS (chunked, encrypted, in
the store) and "the rest" (every byte of the SIF that is not ciphertext of that plaintext: SIF
header, other objects, LUKS2 header and keyslots, the outer SquashFS of fs type 6, signatures).
The *cipher stream* is the ciphertext the plaintext encrypts to: the LUKS2 data segment, or the
whole gocryptfs payload file. ``cipher_map`` says where its bytes sit in the SIF: one run for
LUKS2, and for fs type 6 each part of the payload the outer SquashFS stores verbatim (parts it
stores otherwise simply stay in the rest).

Re-encryption gives the same bytes because both ciphers are deterministic given what the rest or
the index carries: XTS with the sector number as tweak under the volume key the new header
unlocks; for gocryptfs, AES-GCM with the nonce of each block and the file ID, which the publisher
ships (16 bytes per 4 KiB block), under the content key the new ``gocryptfs.conf`` unlocks.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from siffs.crypt import gocryptfs, luks2
from siffs.crypt.errors import CorruptEncryption
from siffs.crypt.keys import KeyMaterial, secret_from_message
from siffs.crypt.xts import xts
from siffs.delta.errors import UnsupportedFormatError
from siffs.open.decrypt import FileInImage
from siffs.open.decrypt import key_message as linked_message
from siffs.sif import Descriptor, Image
from siffs.sif.types import FsType
from siffs.source import ByteSource
from siffs.squashfs.errors import SquashfsError
from siffs.squashfs.reader import SquashFS
from siffs.squashfs.source import FileSource

LUKS2 = "luks2"
GOCRYPTFS = "gocryptfs"
#: A seed's unencrypted SquashFS partition (never a kind of index).
PLAIN = "plain"
KINDS: dict[int, str] = {FsType.ENCRYPTED_SQUASHFS: LUKS2, FsType.GOCRYPTFS_SQUASHFS: GOCRYPTFS}
#: Plaintext encrypted per call: whole units, large enough to amortise the call.
_RUN = 1 << 20
#: Bytes per sequential read of a plaintext or an image.
_READ = 4 << 20


def key_message(image: Image, d: Descriptor) -> bytes | None:
    """The Cryptographic Message (PEM, RSA-OAEP) linked to partition ``d``, or None (passphrase image)."""
    message = linked_message(image, d)
    return None if message is None else image.read(message)


def encrypted_partition(image: Image) -> Descriptor | None:
    """The primary partition when it is encrypted (fs type 5 or 6), else None."""
    d = image.primary_partition()
    return d if d.partition is not None and d.partition.fs_type in KINDS else None


@dataclass
class Outer:
    """The outer SquashFS of fs type 6: its conf, its payload and where the payload lies verbatim."""

    conf: bytes
    payload: ByteSource
    extents: list[tuple[int, int, int]]  #: (payload offset, partition offset, length)


def outer_parts(partition: ByteSource) -> Outer:
    """``gocryptfs.conf`` and the first ``squashfs-*`` file, chosen as Apptainer chooses them."""
    try:
        if partition.size < 4 or partition.pread(0, 4) != b"hsqs":
            raise CorruptEncryption("gocryptfs partition is not a squashfs")
        tree = SquashFS(partition, cache_bytes=4 << 20)
        entries = sorted(tree.readdir(tree.root_ino), key=lambda e: e[0])
        conf = next(
            (st for name, st, _ in entries if name == gocryptfs.CONF_NAME and stat.S_ISREG(st.mode)), None
        )
        if conf is None or conf.size > gocryptfs.MAX_CONF_SIZE:
            raise CorruptEncryption("gocryptfs partition has no gocryptfs.conf")
        payload = next((st for name, st, _ in entries if name.startswith(gocryptfs.PAYLOAD_PREFIX)), None)
        if payload is None or not stat.S_ISREG(payload.mode) or payload.size == 0:
            raise CorruptEncryption("gocryptfs partition has no squashfs-* payload")
        extents = tree.stored_extents(payload.ino)
        direct = gocryptfs.ExtentSource.covering(partition, extents, payload.size)
        return Outer(
            tree.read(conf.ino, 0, conf.size),
            direct or FileInImage(tree, payload.ino, payload.size),
            extents,
        )
    except SquashfsError as exc:
        raise CorruptEncryption(f"gocryptfs partition is not a squashfs ({exc})") from exc


def _content_key(conf: bytes, secret: bytes) -> bytes:
    master = gocryptfs.master_key(gocryptfs.parse_conf(conf), secret)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=gocryptfs.CONTENT_INFO).derive(master)


@dataclass
class Opened:
    """An encrypted image opened with its key: its plaintext and its cipher stream's place in the file."""

    image: Image
    kind: str
    plain: ByteSource
    cipher_size: int
    cipher_map: list[tuple[int, int, int]]  #: (cipher-stream offset, file offset, length), verbatim runs
    file_id: bytes = b""  #: gocryptfs: the payload's file ID
    payload: ByteSource | None = field(default=None, repr=False)  #: gocryptfs: the cipher stream

    def nonces(self) -> bytes:
        """gocryptfs: every block's 16-byte nonce, in order (all zero for a hole), read from the payload."""
        assert self.payload is not None
        out = bytearray()
        step = gocryptfs.CIPHER_BLOCK * 256
        for start in range(gocryptfs.HEADER, self.payload.size, step):
            run = self.payload.pread(start, min(step, self.payload.size - start))
            for pos in range(0, len(run), gocryptfs.CIPHER_BLOCK):
                nonce = run[pos : pos + gocryptfs.NONCE]
                hole = not any(nonce) and not any(run[pos : pos + gocryptfs.CIPHER_BLOCK])
                out += bytes(gocryptfs.NONCE) if hole else nonce
        return bytes(out)

    def close(self) -> None:
        self.image.close()


def open_image(
    path: str,
    material: KeyMaterial,
    *,
    notice: Callable[[str], None] = lambda _: None,
    plain_too: bool = False,
) -> Opened:
    """Open the encrypted SIF ``path`` with ``material``: every check of the open pipeline but signatures.

    The publisher owns the image, and a seed's chunks are checked against the index's names, so
    nothing here needs the trust policy; the assembled result is verified before it is used.
    ``plain_too`` (seeds): an unencrypted SquashFS partition is its own plaintext, so a plain SIF
    of the same content seeds an encrypted pull as well as the encrypted one does.
    """
    image = Image.open(path)
    try:
        d = encrypted_partition(image)
        if d is None:
            primary = image.primary_partition()
            if plain_too and primary.partition is not None and primary.partition.fs_type == FsType.SQUASHFS:
                return Opened(image, PLAIN, FileSource(image.fd, primary.offset, primary.size), 0, [])
            raise UnsupportedFormatError(f"{path}: the primary partition is not encrypted (fs type 5 or 6)")
        assert d.partition is not None
        source = FileSource(image.fd, d.offset, d.size)
        message = key_message(image, d)
        if d.partition.fs_type == FsType.ENCRYPTED_SQUASHFS:
            plain = luks2.open_luks2(source, material, message, notice=notice)
            segment = luks2.read_header(source).segment
            runs = [(0, d.offset + segment.offset, segment.length)]
            return Opened(image, LUKS2, plain, segment.length, runs)
        outer = outer_parts(source)
        goc = gocryptfs.open_gocryptfs(outer.conf, outer.payload, material, message, notice=notice)
        return Opened(
            image,
            GOCRYPTFS,
            goc,
            outer.payload.size,
            [(p, d.offset + at, n) for p, at, n in outer.extents],
            outer.payload.pread(2, 16),
            outer.payload,
        )
    except BaseException:
        image.close()
        raise


class Sealer:
    """Turns the plaintext, fed in order, back into the cipher stream (``emit(offset, bytes)``)."""

    def __init__(
        self,
        unit: int,
        plain_size: int,
        encrypt: Callable[[int, bytes], bytes],
        emit: Callable[[int, bytes], None],
        *,
        header: bytes = b"",
        cipher_unit: int | None = None,
    ) -> None:
        self._unit, self._cipher_unit = unit, cipher_unit or unit
        self._plain_size = plain_size
        self._encrypt, self._emit = encrypt, emit
        self._header = header
        self._buf = bytearray()
        self._next = 0  # first unit not yet encrypted
        self.fed = 0
        if header:
            emit(0, header)

    def feed(self, data: bytes | memoryview) -> None:
        self._buf += data
        self.fed += len(data)
        if len(self._buf) >= _RUN:
            self._flush(len(self._buf) // self._unit * self._unit)

    def finish(self) -> None:
        if self.fed != self._plain_size:
            raise CorruptEncryption(f"plaintext is {self.fed} bytes, expected {self._plain_size}")
        self._flush(len(self._buf))

    def _flush(self, size: int) -> None:
        if not size:
            return
        data = bytes(self._buf[:size])
        del self._buf[:size]
        self._emit(len(self._header) + self._next * self._cipher_unit, self._encrypt(self._next, data))
        self._next += -(-size // self._unit)


def luks2_sealer(
    partition: ByteSource, material: KeyMaterial, message: bytes | None, emit: Callable[[int, bytes], None]
) -> Sealer:
    """The sealer of a LUKS2 container whose header (at least) is in ``partition``: unlocks it."""
    header = luks2.read_header(partition)
    volume_key = luks2.unlock(partition, header, secret_from_message(material, message))
    seg = header.segment
    units = seg.sector_size // 512

    def encrypt(first: int, data: bytes) -> bytes:
        return xts(volume_key, data, seg.sector_size, seg.iv_tweak + first * units, units, encrypt=True)

    return Sealer(seg.sector_size, seg.length, encrypt, emit)


def gocryptfs_sealer(
    partition: ByteSource,
    material: KeyMaterial,
    message: bytes | None,
    emit: Callable[[int, bytes], None],
    *,
    cipher_size: int,
    file_id: bytes,
    nonces: bytes,
) -> Sealer:
    """The sealer of an fs type 6 payload: its conf unlocks it; nonces and file ID as shipped."""
    aead = AESGCM(_content_key(outer_conf(partition), secret_from_message(material, message)))
    plain_size = gocryptfs.plain_size(cipher_size)
    if len(nonces) != gocryptfs.NONCE * -(-plain_size // gocryptfs.BLOCK) or len(file_id) != 16:
        raise UnsupportedFormatError("the encrypted index's nonces do not fit the payload")
    n = gocryptfs.NONCE

    def encrypt(first: int, data: bytes) -> bytes:
        out = bytearray()
        for i, pos in enumerate(range(0, len(data), gocryptfs.BLOCK), first):
            nonce = nonces[i * n : (i + 1) * n]
            block = data[pos : pos + gocryptfs.BLOCK]
            if not any(nonce):
                out += bytes(gocryptfs.CIPHER_BLOCK)  # a hole
            else:
                out += nonce + aead.encrypt(nonce, block, i.to_bytes(8, "big") + file_id)
        return bytes(out)

    return Sealer(
        gocryptfs.BLOCK,
        plain_size,
        encrypt,
        emit,
        header=(2).to_bytes(2, "big") + file_id,
        cipher_unit=gocryptfs.CIPHER_BLOCK,
    )


def outer_conf(partition: ByteSource) -> bytes:
    """``gocryptfs.conf`` of an outer SquashFS whose payload may not be written yet."""
    try:
        if partition.size < 4 or partition.pread(0, 4) != b"hsqs":
            raise CorruptEncryption("gocryptfs partition is not a squashfs")
        tree = SquashFS(partition, cache_bytes=1 << 20)
        conf = tree.lookup(tree.root_ino, gocryptfs.CONF_NAME)
        if conf is None or not stat.S_ISREG(conf.mode) or conf.size > gocryptfs.MAX_CONF_SIZE:
            raise CorruptEncryption("gocryptfs partition has no gocryptfs.conf")
        return tree.read(conf.ino, 0, conf.size)
    except SquashfsError as exc:
        raise CorruptEncryption(f"gocryptfs partition is not a squashfs ({exc})") from exc


def run_reader(pread: Callable[[int, int], bytes], runs: list[tuple[int, int]]) -> Callable[[int], bytes]:
    """``read(n)`` over the concatenation of ``runs`` ((offset, length)) of ``pread``'s source."""
    parts = iter(runs)
    state = [0, 0]  # offset, bytes left in the current run

    def read(n: int) -> bytes:
        while state[1] == 0:
            nxt = next(parts, None)
            if nxt is None:
                return b""
            state[0], state[1] = nxt
        take = min(n, state[1])
        data = pread(state[0], take)
        state[0] += take
        state[1] -= take
        return data

    return read


def spans(size: int, step: int = _READ) -> list[tuple[int, int]]:
    """(offset, length) pieces of ``step`` bytes covering ``size``: the unit of sequential reads."""
    return [(o, min(step, size - o)) for o in range(0, size, step)]
