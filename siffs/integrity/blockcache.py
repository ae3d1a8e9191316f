"""A per-user cache of block tables, so re-verifying an unchanged image costs no hashing.

An entry records, for one object of one image file, the digest the object hashed to and its
block table, under a key made of:

* the file's identity: device, inode, size, mtime and ctime (ctime cannot be set back by the
  owner, so an edit in place always changes the key);
* the object ID;
* the SHA-256 of the signature object that verified it (a new or different signature never
  reuses an entry).

The verifier uses an entry only if its digest equals the one the signature states, so a
cached digest can only stand in for hashing when the signature still vouches for exactly
that value. Reads stay safe even if the file changed without changing its identity: every
block served is checked against the table.

Tampering: an attacker who can write the cache must not be able to make siffs accept bytes
that were never verified. Every entry carries an HMAC-SHA256 over its key and contents with a
random per-user secret (``$XDG_CONFIG_HOME/siffs/blocktable.key``, mode 0600); an entry whose
HMAC does not check is ignored and deleted. A plain checksum would only catch accidents:
whoever can rewrite the table can rewrite its checksum. (Someone who can read the secret is
the user, or root, and could replace siffs itself.)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import struct
from pathlib import Path
from typing import NamedTuple

from siffs import cache
from siffs.integrity.blocktable import BlockTable
from siffs.integrity.xdg import cache_dir, config_dir, private_dir
from siffs.sif.durable import replace_file

_MAGIC = b"SIFFSBT1"
_HEADER = struct.Struct("<16sQQ")  # algorithm name, object size, block size
_SECRET_SIZE = 32
#: The cache's default size limit. A table takes 32 bytes per 64 KiB block (0.05 % of the
#: image), so 64 MiB remember about 130 GB of verified images; the least recently used go first.
LIMIT_MIB = 64


class ImageIdentity(NamedTuple):
    """What identifies one version of an image file without reading it."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd: int) -> ImageIdentity:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class CachedDigest(NamedTuple):
    """A verified object's digest (in the signature's algorithm) and its block table."""

    algorithm: str
    digest: bytes
    table: BlockTable


def default_directory() -> Path:
    return cache_dir() / "blocktables"


class BlockTableCache:
    """Entries in ``directory``, authenticated with ``secret``."""

    def __init__(self, directory: Path, secret: bytes) -> None:
        self.directory = directory
        self.secret = secret

    @classmethod
    def default(cls) -> BlockTableCache:
        """The user's cache (``$XDG_CACHE_HOME/siffs/blocktables``) and secret."""
        return cls(default_directory(), _user_secret(config_dir() / "blocktable.key"))

    def _key(self, identity: ImageIdentity, object_id: int, signature_digest: bytes) -> bytes:
        fields = struct.pack(
            "<QQQqqI",
            identity.device,
            identity.inode,
            identity.size,
            identity.mtime_ns,
            identity.ctime_ns,
            object_id,
        )
        return fields + signature_digest

    def _path(self, key: bytes) -> Path:
        return self.directory / (hashlib.sha256(key).hexdigest() + ".bt")

    def load(self, identity: ImageIdentity, object_id: int, signature_digest: bytes) -> CachedDigest | None:
        key = self._key(identity, object_id, signature_digest)
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        entry = self._decode(key, data)
        if entry is None:
            with contextlib.suppress(OSError):
                path.unlink()
        else:
            cache.touch(path)
        return entry

    def store(
        self, identity: ImageIdentity, object_id: int, signature_digest: bytes, entry: CachedDigest
    ) -> None:
        """Best effort: a cache that cannot be written only costs time later."""
        key = self._key(identity, object_id, signature_digest)
        body = (
            _HEADER.pack(entry.algorithm.encode("ascii"), entry.table.object_size, entry.table.block_size)
            + bytes([len(entry.digest)])
            + entry.digest
            + entry.table.digests
        )
        data = _MAGIC + hmac.digest(self.secret, key + body, "sha256") + body
        try:
            directory = private_dir(self.directory)
            replace_file(self._path(key), data)
            cache.prune(directory, cache.limit(LIMIT_MIB))
        except OSError:
            return

    def _decode(self, key: bytes, data: bytes) -> CachedDigest | None:
        mac_end = len(_MAGIC) + 32
        if not data.startswith(_MAGIC) or len(data) < mac_end + _HEADER.size + 1:
            return None
        body = data[mac_end:]
        if not hmac.compare_digest(
            data[len(_MAGIC) : mac_end], hmac.digest(self.secret, key + body, "sha256")
        ):
            return None
        name, object_size, block_size = _HEADER.unpack_from(body)
        digest_size = body[_HEADER.size]
        start = _HEADER.size + 1
        digest = body[start : start + digest_size]
        try:
            table = BlockTable(object_size, block_size, body[start + digest_size :])
        except ValueError:
            return None
        return CachedDigest(name.rstrip(b"\0").decode("ascii"), digest, table)


def _user_secret(path: Path) -> bytes:
    """The per-user HMAC secret, created on first use (0600, never overwritten)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = None
    if data is not None and len(data) == _SECRET_SIZE:
        return data
    private_dir(path.parent)
    secret = secrets.token_bytes(_SECRET_SIZE)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secret)
    if data is not None:  # damaged: replace it (old cache entries just stop matching)
        os.replace(tmp, path)
        return secret
    try:
        os.link(tmp, path)  # fails if another process created it first: use theirs
    except FileExistsError:
        os.unlink(tmp)
        return _user_secret(path)
    os.unlink(tmp)
    return secret
