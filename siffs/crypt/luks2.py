"""LUKS2 containers (fs type 5) read in user space: header, keyslot unlock, lazy XTS sectors.

Everything in a header is attacker-controlled until the SIF signature has been checked, and
even then a KDF cost decides how long and how much memory an unlock takes. So the header is
parsed and checked completely (both copies, every keyslot, the cost limits) before any KDF
runs; only then is a keyslot unlocked, and only the volume-key digest proves the key right.
The data segment is then served sector by sector, decrypted on demand: plaintext never
reaches a disk. Offsets are relative to the partition (the LUKS2 device).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.kdf.argon2 import Argon2i, Argon2id

from siffs.crypt.errors import CorruptEncryption, CryptError, KeyProblem, UnsupportedEncryption
from siffs.crypt.keys import WRONG_KEY, KeyMaterial, secret_from_message
from siffs.crypt.xts import xts
from siffs.source import ByteSource

MAGIC = b"LUKS\xba\xbe"
SECONDARY_MAGIC = b"SKUL\xba\xbe"
BINARY_HEADER = 4096
#: The sizes a header copy (binary header + JSON area) may have.
HEADER_SIZES = tuple(16384 << i for i in range(9))
CIPHER = "aes-xts-plain64"
SQUASHFS_MAGIC = b"hsqs"
AF_HASHES = ("sha1", "sha256", "sha512")
#: Cost limits checked before any KDF runs (cryptsetup itself never writes more).
MAX_ARGON2_MEMORY_KIB = 4 * 1024 * 1024
MAX_ARGON2_TIME = 64
MAX_ARGON2_CPUS = 16
MAX_PBKDF2_ITERATIONS = 100_000_000
#: Reads above the squashfs reader are up to 128 KiB; decrypting in runs of this many bytes
#: keeps each pread one call.
_SECTOR = 512


@dataclass(frozen=True)
class Kdf:
    """A keyslot's key derivation: Argon2 (time, memory KiB, cpus) or PBKDF2 (hash, iterations)."""

    type: str
    salt: bytes
    time: int = 0
    memory: int = 0
    cpus: int = 0
    hash: str = ""
    iterations: int = 0

    def describe(self) -> str:
        if self.type == "pbkdf2":
            return f"PBKDF2-{self.hash.upper()}, {self.iterations} iterations"
        name = "Argon2id" if self.type == "argon2id" else "Argon2i"
        return f"{name}, {_mib(self.memory * 1024)}, time {self.time}, {self.cpus} threads"


@dataclass(frozen=True)
class Keyslot:
    number: int
    key_size: int
    stripes: int
    af_hash: str
    area_offset: int
    area_size: int
    area_key_size: int
    kdf: Kdf
    priority: int


@dataclass(frozen=True)
class Digest:
    keyslots: tuple[int, ...]
    hash: str
    iterations: int
    salt: bytes
    digest: bytes


@dataclass(frozen=True)
class Segment:
    offset: int
    length: int
    sector_size: int
    iv_tweak: int
    cipher: str


@dataclass(frozen=True)
class Header:
    """The checked metadata of a LUKS2 container (from the copy with the higher seqid)."""

    uuid: str
    seqid: int
    header_size: int
    keyslots: tuple[Keyslot, ...]
    digests: tuple[Digest, ...]
    segment: Segment
    used_secondary: bool

    def to_dict(self) -> dict[str, Any]:
        """The facts ``siffs inspect`` shows without a key."""
        return {
            "format": "LUKS2",
            "uuid": self.uuid,
            "cipher": self.segment.cipher,
            "volume_key_bits": self.keyslots[0].key_size * 8 if self.keyslots else None,
            "sector_size": self.segment.sector_size,
            "data_offset": self.segment.offset,
            "data_size": self.segment.length,
            "metadata_size": self.header_size,
            "keyslots": [
                {
                    "slot": k.number,
                    "kdf": k.kdf.describe(),
                    "priority": {0: "ignore", 1: "normal", 2: "prefer"}[k.priority],
                }
                for k in self.keyslots
            ],
        }


_NO_SEGMENT = Segment(0, 0, 512, 0, CIPHER)


def _mib(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n >> 10} KiB"


# -- parsing ---------------------------------------------------------------------------------


class _Bad(Exception):
    """A copy of the header is unusable; the message says why (kept internal: the other copy may do)."""


def _number(value: object, what: str) -> int:
    """A JSON integer or a decimal string (how LUKS2 writes 64-bit values), non-negative."""
    if isinstance(value, bool):
        raise CorruptEncryption(f"LUKS2 metadata: {what} is not a number (corrupt image)")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        return int(value)
    if isinstance(value, int) and value >= 0:
        return value
    raise CorruptEncryption(f"LUKS2 metadata: {what} is not a number (corrupt image)")


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CorruptEncryption(f"LUKS2 metadata: {what} is not an object (corrupt image)")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise CorruptEncryption(f"LUKS2 metadata: {what} is not a string (corrupt image)")
    return value


def _b64(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(_text(value, what), validate=True)
    except binascii.Error as exc:
        raise CorruptEncryption(f"LUKS2 metadata: {what} is not base64 (corrupt image)") from exc


def _read_copy(source: ByteSource, offset: int) -> tuple[int, int, bytes, str]:
    """One header copy at ``offset``: (seqid, header size, JSON text, UUID), or :class:`_Bad`."""
    if offset + BINARY_HEADER > source.size:
        raise _Bad("partition too short")
    binary = source.pread(offset, BINARY_HEADER)
    magic = MAGIC if offset == 0 else SECONDARY_MAGIC
    if binary[:6] != magic:
        raise _Bad("no magic")
    version = int.from_bytes(binary[6:8], "big")
    if version != 2:
        raise _Bad(f"version {version}")
    size = int.from_bytes(binary[8:16], "big")
    if size not in HEADER_SIZES or int.from_bytes(binary[256:264], "big") != offset:
        raise _Bad("size or offset")
    if offset + size > source.size:
        raise _Bad("partition too short")
    whole = bytearray(source.pread(offset, size))
    algorithm = bytes(whole[72:104]).split(b"\0", 1)[0].decode("ascii", "replace")
    if algorithm not in ("sha256", "sha512", "sha1"):
        raise _Bad(f"checksum {algorithm}")
    stored = bytes(whole[448:512])
    whole[448:512] = bytes(64)
    computed = hashlib.new(algorithm, whole).digest()
    if not hmac.compare_digest(stored[: len(computed)], computed) or any(stored[len(computed) :]):
        raise _Bad("checksum")
    text = bytes(whole[BINARY_HEADER:]).split(b"\0", 1)[0]
    uuid = bytes(whole[168:208]).split(b"\0", 1)[0].decode("ascii", "replace")
    return int.from_bytes(binary[16:24], "big"), size, text, uuid


def read_header(source: ByteSource, warn: Callable[[str], None] = lambda _: None) -> Header:
    """Find, check and parse the LUKS2 header of ``source``; no key and no KDF needed.

    Raises :class:`UnsupportedEncryption` for LUKS1 and other formats siffs refuses and
    :class:`CorruptEncryption` when no usable header copy exists or the metadata is unsafe.
    """
    head = source.pread(0, min(8, source.size))
    if head[:6] == MAGIC and int.from_bytes(head[6:8], "big") == 1:
        raise UnsupportedEncryption("LUKS1 containers are not supported")
    copies: list[tuple[int, int, bytes, str, bool]] = []
    with contextlib.suppress(_Bad):
        copies.append((*_read_copy(source, 0), False))
    offsets = [copies[0][1]] if copies else list(HEADER_SIZES)
    for offset in offsets:
        try:
            copies.append((*_read_copy(source, offset), True))
            break
        except _Bad:
            continue
    if not copies:
        if head[:6] != MAGIC:
            raise CorruptEncryption(
                "encrypted partition has no LUKS2 header (detached headers are not supported)"
            )
        raise CorruptEncryption("no valid LUKS2 header (both copies are damaged)")
    if copies[0][4]:
        warn("the primary LUKS2 header is damaged; using the secondary copy")
    # The higher seqid wins; on a tie the primary (listed first) does.
    seqid, size, text, uuid, secondary = max(copies, key=lambda c: (c[0], not c[4]))
    try:
        metadata = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptEncryption("LUKS2 metadata is not valid JSON (corrupt image)") from exc
    header = Header(uuid, seqid, size, (), (), _NO_SEGMENT, secondary)
    return _parse_metadata(_object(metadata, "the metadata"), source.size, header)


def _parse_metadata(metadata: dict[str, Any], device_size: int, found: Header) -> Header:
    """``found`` (the binary header's facts) completed with the checked JSON metadata."""
    header_size = found.header_size
    config = _object(metadata.get("config", {}), "config")
    if _number(config.get("json_size"), "config.json_size") != header_size - BINARY_HEADER:
        raise CorruptEncryption("LUKS2 metadata: config.json_size does not match the header (corrupt image)")
    requirements = _object(config.get("requirements", {}), "config.requirements")
    mandatory = requirements.get("mandatory", [])
    if not isinstance(mandatory, list):
        raise CorruptEncryption("LUKS2 metadata: config.requirements.mandatory is not a list (corrupt image)")
    if mandatory:
        raise UnsupportedEncryption(f"LUKS2 requirement {', '.join(map(str, mandatory))} not supported")
    segments = _object(metadata.get("segments"), "segments")
    if len(segments) != 1:
        raise UnsupportedEncryption(f"LUKS2 containers with {len(segments)} data segments are not supported")
    segment = _parse_segment(_object(next(iter(segments.values())), "segment"), device_size)
    keyslots = _object(metadata.get("keyslots"), "keyslots")
    slots = tuple(
        _parse_keyslot(name, _object(value, f"keyslot {name}"), segment.offset, 2 * header_size)
        for name, value in sorted(keyslots.items(), key=lambda kv: _slot_number(kv[0]))
    )
    digests = tuple(
        _parse_digest(name, _object(value, f"digest {name}"))
        for name, value in _object(metadata.get("digests"), "digests").items()
    )
    return replace(found, keyslots=slots, digests=digests, segment=segment)


def _slot_number(name: str) -> int:
    if not (name.isascii() and name.isdigit() and int(name) < 32):
        raise CorruptEncryption(f"LUKS2 metadata: keyslot name {name[:20]!r} is not 0..31 (corrupt image)")
    return int(name)


def _parse_segment(seg: dict[str, Any], device_size: int) -> Segment:
    if seg.get("type") != "crypt":
        raise UnsupportedEncryption(f"LUKS2 segment type {str(seg.get('type'))[:40]} not supported")
    if "integrity" in seg:
        raise UnsupportedEncryption("dm-integrity protected containers are not supported")
    cipher = _text(seg.get("encryption"), "segment encryption")
    if cipher != CIPHER:
        raise UnsupportedEncryption(f"cipher {cipher[:60]} not supported (only {CIPHER})")
    sector_size = _number(seg.get("sector_size"), "segment sector_size")
    if sector_size not in (512, 1024, 2048, 4096):
        raise CorruptEncryption(f"LUKS2 metadata: sector size {sector_size} is not 512..4096 (corrupt image)")
    offset = _number(seg.get("offset"), "segment offset")
    if offset % 512 or offset >= device_size:
        raise CorruptEncryption(
            f"LUKS2 data segment at byte {offset} does not fit the {device_size}-byte partition "
            "(truncated or corrupt image)"
        )
    raw_size = seg.get("size")
    length = device_size - offset if raw_size == "dynamic" else _number(raw_size, "segment size")
    if length <= 0 or length % sector_size or offset + length > device_size:
        raise CorruptEncryption(
            f"LUKS2 data segment of {length} bytes at byte {offset} does not fit the {device_size}-byte "
            "partition in whole sectors (truncated or corrupt image)"
        )
    return Segment(offset, length, sector_size, _number(seg.get("iv_tweak", "0"), "segment iv_tweak"), cipher)


def _parse_kdf(slot: int, kdf: dict[str, Any]) -> Kdf:
    kind = kdf.get("type")
    salt = _b64(kdf.get("salt"), f"keyslot {slot} salt")
    if kind in ("argon2id", "argon2i"):
        time = _number(kdf.get("time"), f"keyslot {slot} kdf time")
        memory = _number(kdf.get("memory"), f"keyslot {slot} kdf memory")
        cpus = _number(kdf.get("cpus"), f"keyslot {slot} kdf cpus")
        for field, value, limit in (
            ("memory", memory, MAX_ARGON2_MEMORY_KIB),
            ("time", time, MAX_ARGON2_TIME),
            ("cpus", cpus, MAX_ARGON2_CPUS),
        ):
            if value > limit:
                raise UnsupportedEncryption(
                    f"keyslot {slot}: kdf {field} {value} is above the limit of {limit}; "
                    "refused before running it"
                )
        if not (time >= 1 and cpus >= 1 and memory >= 8 * cpus and len(salt) >= 8):
            raise CorruptEncryption(f"keyslot {slot}: Argon2 parameters are invalid (corrupt image)")
        return Kdf(str(kind), salt, time=time, memory=memory, cpus=cpus)
    if kind == "pbkdf2":
        return Kdf(
            "pbkdf2", salt, hash=_hash(kdf.get("hash"), f"keyslot {slot}"), iterations=_iterations(kdf, slot)
        )
    raise UnsupportedEncryption(f"keyslot {slot}: key derivation {str(kind)[:40]} not supported")


def _iterations(obj: dict[str, Any], slot: int | str) -> int:
    iterations = _number(obj.get("iterations"), f"{slot} iterations")
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise UnsupportedEncryption(
            f"keyslot {slot}: pbkdf2 iterations {iterations} is above the limit of {MAX_PBKDF2_ITERATIONS}; "
            "refused before running it"
        )
    return max(iterations, 1)


def _hash(value: object, where: str) -> str:
    if value not in AF_HASHES:
        raise UnsupportedEncryption(f"{where}: hash {str(value)[:40]} not supported")
    return str(value)


def _parse_keyslot(name: str, slot: dict[str, Any], data_offset: int, area_start: int) -> Keyslot:
    number = _slot_number(name)
    if slot.get("type") != "luks2":
        raise UnsupportedEncryption(f"keyslot {number}: type {str(slot.get('type'))[:40]} not supported")
    af = _object(slot.get("af"), f"keyslot {number} af")
    area = _object(slot.get("area"), f"keyslot {number} area")
    if af.get("type") != "luks1" or area.get("type") != "raw":
        raise UnsupportedEncryption(f"keyslot {number}: anti-forensic or area type not supported")
    key_size = _number(slot.get("key_size"), f"keyslot {number} key_size")
    area_key_size = _number(area.get("key_size"), f"keyslot {number} area key_size")
    stripes = _number(af.get("stripes"), f"keyslot {number} stripes")
    offset = _number(area.get("offset"), f"keyslot {number} area offset")
    size = _number(area.get("size"), f"keyslot {number} area size")
    encryption = _text(area.get("encryption"), f"keyslot {number} area encryption")
    if encryption != CIPHER:
        raise UnsupportedEncryption(f"cipher {encryption[:60]} not supported (only {CIPHER})")
    if key_size not in (32, 64) or area_key_size not in (32, 64):
        raise UnsupportedEncryption(
            f"keyslot {number}: key size {key_size} not supported (AES-128/256-XTS only)"
        )
    if (
        not 1 <= stripes <= 65536
        or key_size * stripes > size
        or offset < area_start
        or offset + size > data_offset
    ):
        raise CorruptEncryption(f"keyslot {number}: key area does not fit the keyslots area (corrupt image)")
    priority = _number(slot.get("priority", 1), f"keyslot {number} priority")
    if priority > 2:
        raise CorruptEncryption(f"keyslot {number}: priority {priority} is not 0, 1 or 2 (corrupt image)")
    kdf = _parse_kdf(number, _object(slot.get("kdf"), f"keyslot {number} kdf"))
    af_hash = _hash(af.get("hash"), f"keyslot {number}")
    return Keyslot(number, key_size, stripes, af_hash, offset, size, area_key_size, kdf, priority)


def _parse_digest(name: str, d: dict[str, Any]) -> Digest:
    if d.get("type") != "pbkdf2":
        raise UnsupportedEncryption(f"LUKS2 digest type {str(d.get('type'))[:40]} not supported")
    slots = d.get("keyslots")
    if not isinstance(slots, list) or not all(isinstance(s, str) for s in slots):
        raise CorruptEncryption(f"LUKS2 metadata: digest {name[:20]} keyslots is not a list (corrupt image)")
    return Digest(
        tuple(_slot_number(s) for s in slots),
        _hash(d.get("hash"), f"digest {name[:20]}"),
        _iterations(d, f"digest {name[:20]}"),
        _b64(d.get("salt"), "digest salt"),
        _b64(d.get("digest"), "digest"),
    )


# -- unlocking -------------------------------------------------------------------------------


def _diffuse(data: bytes, hash_name: str) -> bytes:
    size = hashlib.new(hash_name).digest_size
    return b"".join(
        hashlib.new(hash_name, j.to_bytes(4, "big") + data[i : i + size]).digest()[: len(data[i : i + size])]
        for j, i in enumerate(range(0, len(data), size))
    )


def af_merge(material: bytes, key_size: int, stripes: int, hash_name: str) -> bytes:
    """The LUKS anti-forensic merge: the volume key hidden in ``stripes`` pieces."""
    d = bytes(key_size)
    for i in range(stripes - 1):
        d = _diffuse(_xor(d, material[i * key_size : (i + 1) * key_size]), hash_name)
    return _xor(d, material[(stripes - 1) * key_size : stripes * key_size])


def derive(kdf: Kdf, secret: bytes, length: int) -> bytes:
    """The keyslot key from ``secret``; limits were checked when the header was read."""
    try:
        if kdf.type == "pbkdf2":
            return hashlib.pbkdf2_hmac(kdf.hash, secret, kdf.salt, kdf.iterations, length)
        argon = Argon2id if kdf.type == "argon2id" else Argon2i
        return argon(
            salt=kdf.salt, length=length, iterations=kdf.time, lanes=kdf.cpus, memory_cost=kdf.memory
        ).derive(secret)
    except MemoryError as exc:
        raise UnsupportedEncryption(
            f"not enough memory to derive the key: this keyslot needs {_mib(kdf.memory * 1024)}"
        ) from exc


def unlock(
    source: ByteSource,
    header: Header,
    secret: bytes,
    *,
    key_slot: int | None = None,
    notice: Callable[[str], None] = lambda _: None,
) -> bytes:
    """The volume key, proven by its digest; tries slots as cryptsetup does (prefer, normal; never ignore).

    Raises :class:`KeyProblem` ("wrong passphrase or key") when no slot's digest matches.
    """
    if key_slot is not None:
        order = [k for k in header.keyslots if k.number == key_slot]
    else:
        order = sorted((k for k in header.keyslots if k.priority), key=lambda k: (-k.priority, k.number))
    for slot in order:
        digests = [d for d in header.digests if slot.number in d.keyslots]
        if not digests:
            continue
        notice(f"deriving key: {slot.kdf.describe()}")
        key = derive(slot.kdf, secret, slot.area_key_size)
        length = -(-slot.key_size * slot.stripes // _SECTOR) * _SECTOR
        if slot.area_offset + length > source.size:
            raise CorruptEncryption(f"keyslot {slot.number}: key area lies past the end of the partition")
        try:
            material = xts(key, source.pread(slot.area_offset, length), _SECTOR, 0, 1)
        except ValueError as exc:  # cryptography refuses XTS keys whose halves are equal
            raise CorruptEncryption(f"keyslot {slot.number}: unusable key area (corrupt image)") from exc
        candidate = af_merge(material, slot.key_size, slot.stripes, slot.af_hash)
        for d in digests:
            check = hashlib.pbkdf2_hmac(d.hash, candidate, d.salt, d.iterations, len(d.digest))
            if d.digest and hmac.compare_digest(check, d.digest):
                return candidate
    raise KeyProblem(WRONG_KEY)


class LuksSource:
    """The plaintext of a LUKS2 data segment: sectors decrypted on demand, nothing written anywhere."""

    def __init__(self, ciphertext: ByteSource, segment: Segment, volume_key: bytes) -> None:
        self._ciphertext = ciphertext
        self._segment = segment
        self._key = volume_key
        self._units_per_sector = segment.sector_size // 512

    @property
    def size(self) -> int:
        return self._segment.length

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self._segment.length:
            raise CorruptEncryption(
                f"read of bytes {offset}..{offset + size} outside the {self._segment.length}-byte "
                "encrypted data "
                "(truncated or damaged image)"
            )
        if size == 0:
            return b""
        s = self._segment.sector_size
        first, last = offset // s, (offset + size - 1) // s
        data = self._ciphertext.pread(self._segment.offset + first * s, (last - first + 1) * s)
        start = self._segment.iv_tweak + first * self._units_per_sector
        return xts(self._key, data, s, start, self._units_per_sector, skip=offset - first * s, length=size)


def check_squashfs(data: ByteSource, message: str) -> None:
    """The decrypted bytes must begin a SquashFS whose ``bytes_used`` fits; else ``message``."""
    if data.size < 96:
        raise CorruptEncryption(message)
    superblock = data.pread(0, 96)
    if superblock[:4] != SQUASHFS_MAGIC or int.from_bytes(superblock[40:48], "little") > data.size:
        raise CorruptEncryption(message)


def open_luks2(
    source: ByteSource,
    material: KeyMaterial,
    message: bytes | None,
    *,
    warn: Callable[[str], None] = lambda _: None,
    notice: Callable[[str], None] = lambda _: None,
    key_slot: int | None = None,
) -> LuksSource:
    """The SquashFS bytes inside the LUKS2 container ``source``, in the spec's order of checks.

    ``source`` must already be verified (signatures come first); ``message`` is the image's
    Cryptographic Message for PEM images, else None.
    """
    header = read_header(source, warn)
    if material.passphrase is None and material.pem is None:
        raise KeyProblem("image is encrypted: give --passphrase or --pem-path")
    secret = secret_from_message(material, message)
    try:
        volume_key = unlock(source, header, secret, key_slot=key_slot, notice=notice)
    except KeyProblem as exc:
        if message is not None and material.pem is None:
            raise KeyProblem(f"{WRONG_KEY}: this image was encrypted to an RSA key, give --pem-path") from exc
        raise
    plain = LuksSource(source, header.segment, volume_key)
    check_squashfs(plain, "decrypted data is not a squashfs (corrupt image)")
    return plain


__all__ = ["CryptError", "Header", "LuksSource", "open_luks2", "read_header", "unlock"]


# -- writing (siffs create --encrypt --format luks2) ---------------------------------------------

#: The layout ``cryptsetup luksFormat`` gives the loop device SingularityCE formats: 16 KiB
#: metadata copies, one keyslot area, the data segment at 16 MiB, 512-byte sectors.
METADATA_SIZE = 16384
KEYSLOTS_OFFSET = 2 * METADATA_SIZE
DATA_OFFSET = 16 << 20
STRIPES = 4000
DIGEST_ITERATIONS = 100_000
#: cryptsetup's defaults for a new keyslot: about 2 s of unlock, at most 1 GiB (and never more than
#: half the machine's memory, nor what is available), up to 4 threads (capped by the CPUs), and
#: its minimums (time 4, 32 KiB).
TARGET_UNLOCK_SECONDS = 2.0
DEFAULT_MAX_MEMORY_KIB = 1 << 20
MIN_ARGON2_TIME = 4
MIN_ARGON2_MEMORY_KIB = 32
_PROBE_MEMORY_KIB = 64 << 10


def _memory_limit_kib() -> int:
    """cryptsetup's cap: 1 GiB, at most half the physical memory and what is available now."""
    limit = DEFAULT_MAX_MEMORY_KIB
    with contextlib.suppress(OSError, ValueError):
        fields = {}
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0])
        limit = min(limit, fields["MemTotal"] // 2, fields.get("MemAvailable", limit))
    return max(limit, MIN_ARGON2_MEMORY_KIB)


def _time_argon2(time: int, memory: int, cpus: int) -> float:
    import time as clock  # noqa: PLC0415 -- the module's ``time`` parameters shadow the name

    start = clock.perf_counter()
    derive(Kdf("argon2id", bytes(16), time=time, memory=memory, cpus=cpus), b"benchmark", 32)
    return clock.perf_counter() - start


def default_argon2_cost(
    cpus: int,
    *,
    time: int | None = None,
    memory: int | None = None,
    target: float | None = None,
    measure: Callable[[int, int, int], float] = _time_argon2,
) -> tuple[int, int]:
    """(time, memory KiB) for a new Argon2id keyslot, as cryptsetup's benchmark chooses them.

    One short derivation measures this machine (siffs' own Argon2id, which is what unlocks the
    image here); the memory goes to the cap unless that alone takes longer than ``target``, and the
    time cost fills the rest. A value the user gave is kept and the other one fitted to it.
    """
    target = TARGET_UNLOCK_SECONDS if target is None else target
    probe = min(_PROBE_MEMORY_KIB, memory or _PROBE_MEMORY_KIB)
    per_unit = max(measure(MIN_ARGON2_TIME, probe, cpus), 1e-6) / (MIN_ARGON2_TIME * probe)
    if memory is None:
        memory = _memory_limit_kib()
        fitted = int(target / (per_unit * (time or MIN_ARGON2_TIME)))
        memory = max(MIN_ARGON2_MEMORY_KIB, min(memory, fitted))
    if time is None:
        time = min(MAX_ARGON2_TIME, max(MIN_ARGON2_TIME, int(target / (per_unit * memory))))
    return time, memory


def _af_split(volume_key: bytes, stripes: int, hash_name: str) -> bytes:
    """The inverse of :func:`af_merge`: ``stripes - 1`` random pieces and the one that completes the key."""
    size = len(volume_key)
    pieces = [os.urandom(size) for _ in range(stripes - 1)]
    d = bytes(size)
    for piece in pieces:
        d = _diffuse(_xor(d, piece), hash_name)
    return b"".join(pieces) + _xor(d, volume_key)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def new_header(
    secret: bytes, *, time: int, memory: int, cpus: int, volume_key: bytes | None = None
) -> tuple[bytes, bytes]:
    """The first 16 MiB of a new LUKS2 container (both header copies and keyslot 0), and its volume key.

    One Argon2id keyslot protects a random 512-bit AES-XTS key; the data segment starts at
    16 MiB, its size follows the partition ("dynamic"), in 512-byte sectors.
    """
    vk = volume_key or os.urandom(64)
    kdf = Kdf("argon2id", os.urandom(32), time=time, memory=memory, cpus=cpus)
    area_size = -(-len(vk) * STRIPES // 4096) * 4096
    area = xts(derive(kdf, secret, len(vk)), _af_split(vk, STRIPES, "sha256"), _SECTOR, 0, 1, encrypt=True)
    digest_salt = os.urandom(32)
    metadata = {
        "keyslots": {
            "0": {
                "type": "luks2",
                "key_size": len(vk),
                "af": {"type": "luks1", "stripes": STRIPES, "hash": "sha256"},
                "area": {
                    "type": "raw",
                    "offset": str(KEYSLOTS_OFFSET),
                    "size": str(area_size),
                    "encryption": CIPHER,
                    "key_size": len(vk),
                },
                "kdf": {
                    "type": "argon2id",
                    "time": time,
                    "memory": memory,
                    "cpus": cpus,
                    "salt": base64.b64encode(kdf.salt).decode(),
                },
            }
        },
        "tokens": {},
        "segments": {
            "0": {
                "type": "crypt",
                "offset": str(DATA_OFFSET),
                "size": "dynamic",
                "iv_tweak": "0",
                "encryption": CIPHER,
                "sector_size": _SECTOR,
            }
        },
        "digests": {
            "0": {
                "type": "pbkdf2",
                "keyslots": ["0"],
                "segments": ["0"],
                "hash": "sha256",
                "iterations": DIGEST_ITERATIONS,
                "salt": base64.b64encode(digest_salt).decode(),
                "digest": base64.b64encode(
                    hashlib.pbkdf2_hmac("sha256", vk, digest_salt, DIGEST_ITERATIONS, 32)
                ).decode(),
            }
        },
        "config": {
            "json_size": str(METADATA_SIZE - BINARY_HEADER),
            "keyslots_size": str(DATA_OFFSET - KEYSLOTS_OFFSET),
        },
    }
    text = json.dumps(metadata, separators=(",", ":")).encode()
    region = bytearray(DATA_OFFSET)
    uuid_text = str(uuid.uuid4()).encode()
    for offset, magic in ((0, MAGIC), (METADATA_SIZE, SECONDARY_MAGIC)):
        copy = bytearray(METADATA_SIZE)
        copy[0:6] = magic
        copy[6:8] = (2).to_bytes(2, "big")
        copy[8:16] = METADATA_SIZE.to_bytes(8, "big")
        copy[16:24] = (1).to_bytes(8, "big")
        copy[72:78] = b"sha256"
        copy[104:168] = os.urandom(64)
        copy[168 : 168 + len(uuid_text)] = uuid_text
        copy[256:264] = offset.to_bytes(8, "big")
        copy[BINARY_HEADER : BINARY_HEADER + len(text)] = text
        copy[448:480] = hashlib.sha256(copy).digest()
        region[offset : offset + METADATA_SIZE] = copy
    region[KEYSLOTS_OFFSET : KEYSLOTS_OFFSET + len(area)] = area
    return bytes(region), vk


def encrypt_data(
    plain: BinaryIO,
    out: BinaryIO,
    volume_key: bytes,
    progress: Callable[[int, int], None] = lambda d, t: None,
) -> None:
    """Write ``plain``, zero-padded to whole 512-byte sectors, as the data segment (XTS, sector tweak)."""
    total = os.fstat(plain.fileno()).st_size
    done = 0
    while chunk := plain.read(1 << 20):
        chunk += bytes(-len(chunk) % _SECTOR)
        out.write(xts(volume_key, chunk, _SECTOR, done // _SECTOR, 1, encrypt=True))
        done += len(chunk)
        progress(min(done, total), total)
