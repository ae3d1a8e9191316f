"""Verified reads: the block table recorded while verifying, the reader, and the cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest

import siffs.integrity.blocktable as blocktable
import siffs.integrity.verify as verify_module
from siffs.integrity.blockcache import BlockTableCache, CachedDigest, ImageIdentity
from siffs.integrity.blocktable import (
    BLOCK_SIZE,
    READ_SIZE,
    BlockTable,
    Extent,
    VerifiedObjectReader,
    hash_extents,
)
from siffs.integrity.errors import NotTrustedError, ReadOutsideObjectError, TamperedBlockError
from siffs.integrity.keyring import Keyring, require_trusted
from siffs.integrity.keys import load_files, private_pem
from siffs.integrity.sign import DsseSigningKey, sign
from siffs.integrity.verify import verify
from siffs.sif import Image, ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType
from siffs.squashfs.errors import CorruptImage
from siffs.squashfs.source import FileSource
from tests.integrity.conftest import key_path
from tests.support.mounts import siffs

SIZE = READ_SIZE + 5 * BLOCK_SIZE + 123  # two read chunks, a short last block


@pytest.fixture
def signed_image(tmp_path):
    """A small image with a (random) 'partition' of SIZE bytes, DSSE-signed with Ed25519."""
    path = tmp_path / "small.sif"
    partition = os.urandom(SIZE)
    extra = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
    create(
        path,
        [
            ObjectInput(DataType.DEFFILE, b"Bootstrap: scratch\n"),
            ObjectInput(DataType.PARTITION, partition, extra=extra),
        ],
    )
    [f] = load_files([key_path("ed25519", "private")])
    sign(str(path), DsseSigningKey((private_pem(f),)))
    return path, partition


@pytest.fixture
def keys(keysets):
    return keysets["ed25519"]


def test_one_pass_digest_and_blocks_match_hashlib(signed_image):
    path, partition = signed_image
    with Image.open(path) as image:
        d = image.primary_partition()
        digest, [table] = hash_extents(image.fd, [Extent(d.offset, d.size)], "sha256")
    assert digest == hashlib.sha256(partition).digest()
    blocks = [partition[i : i + BLOCK_SIZE] for i in range(0, SIZE, BLOCK_SIZE)]
    assert table.digests == b"".join(hashlib.sha256(b).digest() for b in blocks)


def test_tampered_block_raises_other_blocks_read(signed_image, keys):
    path, partition = signed_image
    with Image.open(path) as image:
        report = verify(image, keys, record_blocks=True).check()
        d = image.primary_partition()
        reader = VerifiedObjectReader(image.fd, d.offset, d.size, report.block_tables[d.id])
        assert reader.size == SIZE
        assert reader.pread(0, SIZE) == partition
        assert reader.pread(SIZE - 10, 10) == partition[-10:]
        victim = 3 * BLOCK_SIZE + 7
        with open(path, "r+b") as f:  # change the file under the open image
            f.seek(d.offset + victim)
            f.write(bytes([partition[victim] ^ 1]))
        with pytest.raises(TamperedBlockError, match="block 3 "):
            reader.pread(victim, 1)
        with pytest.raises(TamperedBlockError):
            reader.pread(2 * BLOCK_SIZE, 2 * BLOCK_SIZE)  # spans the changed block
        assert reader.pread(0, 3 * BLOCK_SIZE) == partition[: 3 * BLOCK_SIZE]
        assert reader.pread(4 * BLOCK_SIZE, 1000) == partition[4 * BLOCK_SIZE : 4 * BLOCK_SIZE + 1000]


def test_small_reads_hash_each_block_once_and_serve_only_verified_bytes(signed_image, keys, monkeypatch):
    """A block read by a small read (inside one block or across two) is kept as verified: the next
    reads in it are slices, no hashing, and a read across a kept block and the next hashes only
    the next; a kept block changed on disk afterwards still serves the bytes that were verified; a
    block not kept (evicted, or read only by a large read, which keeps nothing) is checked again
    and refused."""
    path, partition = signed_image
    hashed: list[int] = []
    real = blocktable.hashlib.sha256

    def counting(data: bytes) -> Any:
        hashed.append(len(data))
        return real(data)

    def same(offset: int, size: int) -> None:
        assert reader.pread(offset, size) == partition[offset : offset + size]

    monkeypatch.setattr(blocktable.hashlib, "sha256", counting)
    with Image.open(path) as image:
        report = verify(image, keys, record_blocks=True).check()
        d = image.primary_partition()
        reader = VerifiedObjectReader(image.fd, d.offset, d.size, report.block_tables[d.id])
        hashed.clear()
        for offset, size in ((BLOCK_SIZE + 10, 2), (BLOCK_SIZE + 12, 3000), (2 * BLOCK_SIZE - 5, 5)):
            same(offset, size)
        assert hashed == [BLOCK_SIZE]  # block 1, once
        same(2 * BLOCK_SIZE - 100, 8194)  # a metadata block across blocks 1 and 2
        same(2 * BLOCK_SIZE + 50, 2)
        assert hashed == [BLOCK_SIZE] * 2  # block 2 once; block 1 was kept
        same(4 * BLOCK_SIZE, 3 * BLOCK_SIZE)  # a large read: checked whole, nothing kept
        same(5 * BLOCK_SIZE, 10)
        assert len(hashed) == 2 + 3 + 1
        with open(path, "r+b") as f:  # change blocks 1, 2 and 3 under the open image
            for victim in (BLOCK_SIZE + 100, 2 * BLOCK_SIZE + 100, 3 * BLOCK_SIZE + 100):
                f.seek(d.offset + victim)
                f.write(bytes([partition[victim] ^ 1]))
        same(BLOCK_SIZE + 100, 1)
        same(2 * BLOCK_SIZE - 1, 200)  # both kept: the verified bytes
        with pytest.raises(TamperedBlockError, match="block 3 "):
            reader.pread(3 * BLOCK_SIZE - 1, 200)  # block 2 kept, block 3 read and checked
        with pytest.raises(TamperedBlockError, match="block 1 "):
            reader.pread(0, 3 * BLOCK_SIZE)  # a large read checks every block it reads
        for block in range(6, 6 + blocktable.KEPT_BLOCKS):  # evicts blocks 1 and 2
            reader.pread(block * BLOCK_SIZE, 1)
        with pytest.raises(TamperedBlockError, match="block 1 "):
            reader.pread(BLOCK_SIZE + 100, 1)


def test_cache_skips_hashing_and_rejects_forged_entries(signed_image, keys, monkeypatch):
    path, _ = signed_image
    cache = BlockTableCache.default()
    with Image.open(path) as image:
        first = verify(image, keys, cache=cache).check()
    entries = list(cache.directory.iterdir())
    assert len(entries) == 2  # the definition file and the partition
    assert (cache.directory.stat().st_mode & 0o777) == 0o700

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed although the cache holds the digest")

    with monkeypatch.context() as mp:
        mp.setattr(verify_module, "hash_extents", no_hashing)
        with Image.open(path) as image:
            again = verify(image, keys, cache=cache).check()
    assert again.block_tables == first.block_tables

    for entry in entries:  # forge: flip a byte of every table; the HMAC no longer matches
        data = bytearray(entry.read_bytes())
        data[-1] ^= 1
        entry.write_bytes(data)
    with Image.open(path) as image:
        assert verify(image, keys, cache=cache).check().block_tables == first.block_tables
    assert all(e.read_bytes() != b"" for e in cache.directory.iterdir())


def test_a_cached_verification_starts_no_hashing_thread(signed_image):
    """``siffs mount``/``run`` of an unchanged image verify from the cache: the thread pool that
    hashes (and the logging it imports, ~5 ms before the mount) is loaded only to hash."""
    path, _ = signed_image
    code = (
        "import sys\n"
        "from siffs.integrity.blockcache import BlockTableCache\n"
        "from siffs.integrity.keys import key_material, load_files\n"
        "from siffs.integrity.verify import verify\n"
        "from siffs.sif import Image\n"
        "keys = key_material(load_files([sys.argv[2]]))\n"
        "with Image.open(sys.argv[1]) as image:\n"
        "    verify(image, keys, cache=BlockTableCache.default()).check()\n"
        "print('concurrent.futures' in sys.modules, 'logging' in sys.modules)\n"
    )
    argv = [sys.executable, "-c", code, str(path), str(key_path("ed25519", "public"))]
    first = subprocess.run(argv, capture_output=True, text=True, check=True)
    again = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert first.stdout.split() == ["True", "True"]  # hashed: the probe sees the pool
    assert again.stdout.split() == ["False", "False"]


def test_cache_key_follows_the_file(signed_image, keys, tmp_path):
    path, _ = signed_image
    with Image.open(path) as image:
        before = ImageIdentity.of(image.fd)
    copy = tmp_path / "copy.sif"
    shutil.copyfile(path, copy)
    with Image.open(copy) as image:
        assert ImageIdentity.of(image.fd) != before


def test_trust_policy(signed_image, tmp_path):
    path, _ = signed_image
    keyring = Keyring()
    with Image.open(path) as image, pytest.raises(NotTrustedError, match="siffs key import"):
        require_trusted(image, [image.primary_partition().id], keyring.key_material())
    keyring.import_file(key_path("rsa"))  # a key that did not sign
    with Image.open(path) as image, pytest.raises(NotTrustedError, match="--allow-unsigned"):
        require_trusted(image, [image.primary_partition().id], keyring.key_material())
    keyring.import_file(key_path("ed25519", "private"))  # only the public half is kept
    assert all(b"PRIVATE" not in p.read_bytes() for p in keyring.directory.iterdir())
    with Image.open(path) as image:
        report = require_trusted(image, [image.primary_partition().id], keyring.key_material())
    assert image.primary_partition().id in report.verified_objects
    assert set(report.block_tables) >= {image.primary_partition().id}


def _table(blocks: int) -> CachedDigest:
    digests = bytes(range(256)) * (blocks * 32 // 256)
    return CachedDigest("sha256", bytes(32), BlockTable(blocks * 65536, 65536, digests))


def test_cache_stays_under_its_limit_least_recently_used_first(tmp_path, monkeypatch):
    """Each entry here is ~300 KiB: a 1 MiB limit holds three; a fourth evicts the one used longest ago."""
    monkeypatch.setenv("SIFFS_CACHE_LIMIT_MIB", "1")
    cache = BlockTableCache(tmp_path / "tables", b"k" * 32)
    ids = [ImageIdentity(1, inode, 1, 1, 1) for inode in range(4)]
    for n, identity in enumerate(ids[:3]):
        cache.store(identity, 1, b"s", _table(9600))
        os.utime(cache._path(cache._key(identity, 1, b"s")), (1000 + n, 1000 + n))  # distinct ages
    assert cache.load(ids[0], 1, b"s") is not None  # the oldest, now used again
    cache.store(ids[3], 1, b"s", _table(9600))
    kept = [i.inode for i in ids if cache.load(i, 1, b"s") is not None]
    assert kept == [0, 2, 3]
    assert sum(p.stat().st_size for p in (tmp_path / "tables").iterdir()) <= 1 << 20


def test_cache_list_and_clean(signed_image, tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"))
    siffs("verify", signed_image[0], "--key", key_path("ed25519", "public"), env=env, check=True)
    listed = json.loads(siffs("cache", "list", "--json", env=env, check=True).stdout)
    tables = next(c for c in listed if c["name"] == "blocktables")
    assert tables["files"] >= 1 and tables["bytes"] > 0 and tables["limit_bytes"] == 64 << 20
    assert tables["directory"] == str(tmp_path / "cache" / "siffs" / "blocktables")
    cleaned = siffs("cache", "clean", "blocktables", env=env, check=True).stdout
    assert cleaned.startswith(f"blocktables: removed {tables['files']} files")
    assert not list((tmp_path / "cache" / "siffs" / "blocktables").iterdir())
    unknown = siffs("cache", "clean", "nope", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr == "siffs: no cache named 'nope'; caches: blocktables, registry, seeds\n"
    assert [c["name"] for c in listed] == ["blocktables", "registry", "seeds"]


def test_out_of_range_reads_raise_as_the_byte_source_protocol_says(signed_image, keys):
    """The verified reader and the plain FileSource agree: exact bytes, or an error carrying EIO."""
    path, partition = signed_image
    with Image.open(path) as image:
        report = verify(image, keys, record_blocks=True).check()
        d = image.primary_partition()
        verified = VerifiedObjectReader(image.fd, d.offset, d.size, report.block_tables[d.id])
        plain = FileSource(image.fd, d.offset, d.size)
        for offset, size in ((0, 0), (SIZE - 10, 10), (SIZE, 0), (5, BLOCK_SIZE)):
            expected = partition[offset : offset + size]
            assert verified.pread(offset, size) == plain.pread(offset, size) == expected
        for offset, size in ((SIZE - 10, 100), (SIZE, 1), (SIZE + 4096, 10), (-1, 2)):
            with pytest.raises(CorruptImage) as plain_error:
                plain.pread(offset, size)
            with pytest.raises(ReadOutsideObjectError) as verified_error:
                verified.pread(offset, size)
            assert plain_error.value.errno == verified_error.value.errno == errno.EIO
