"""Verification speed against plain hashlib SHA-256 over the same bytes, in the same run.

    .venv/bin/python bench/verify_speed.py [--size-mib 1024] [--dir /tmp]

Builds a DSSE-signed image with a SIZE MiB partition (random bytes) in a temporary directory,
then times, with the file in the page cache:
  * hashlib SHA-256 over the partition (8 MiB preadv into a reused buffer),
  * siffs verification without block digests (what 'siffs verify' needs),
  * siffs verification recording the per-block table (what a mount needs),
  * re-verification with a warm block-table cache (a re-mount).
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from siffs.integrity.blockcache import BlockTableCache
from siffs.integrity.blocktable import READ_SIZE
from siffs.integrity.dsse import DsseKey
from siffs.integrity.sign import DsseSigningKey, sign
from siffs.integrity.verify import KeyMaterial, verify
from siffs.sif import Image, ObjectInput, create
from siffs.sif.raw import partition_extra
from siffs.sif.types import DataType, FsType, PartType

#: The signing key, made for this run: what is measured does not depend on whose key it is.
KEY = ed25519.Ed25519PrivateKey.generate()


def build(path: Path, size: int) -> None:
    data = path.with_suffix(".data")
    with open(data, "wb") as f:
        chunk = os.urandom(16 << 20)
        for start in range(0, size, len(chunk)):
            f.write(chunk[: min(len(chunk), size - start)] if start else os.urandom(min(len(chunk), size)))
    with open(data, "rb") as f:
        extra = partition_extra(FsType.SQUASHFS, PartType.PRIMSYS, b"02")
        create(path, [ObjectInput(DataType.PARTITION, f, extra=extra)])
    data.unlink()
    sign(str(path), DsseSigningKey((KEY,)))


def plain_sha256(path: Path) -> float:
    with Image.open(path) as image:
        d = image.primary_partition()
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        h = hashlib.sha256()
        start = time.perf_counter()
        for offset in range(0, d.size, READ_SIZE):
            n = os.preadv(image.fd, [view[: min(READ_SIZE, d.size - offset)]], d.offset + offset)
            h.update(view[:n])
        return time.perf_counter() - start


def timed_verify(path: Path, **options: object) -> float:
    keys = KeyMaterial(dsse=(DsseKey(KEY.public_key()),))
    with Image.open(path) as image:
        start = time.perf_counter()
        verify(image, keys, **options).check()  # type: ignore[arg-type]
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to put the temporary image")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.sif"
        build(path, size)
        plain_sha256(path)  # warm the page cache
        mib = size / 2**20
        results: dict[str, list[float]] = {"hashlib": [], "verify": [], "verify+blocks": []}
        for _ in range(args.rounds):
            results["hashlib"].append(plain_sha256(path))
            results["verify"].append(timed_verify(path))
            results["verify+blocks"].append(timed_verify(path, record_blocks=True))
        cache = BlockTableCache(Path(tmp) / "cache", os.urandom(32))
        first = timed_verify(path, cache=cache)
        warm = min(timed_verify(path, cache=cache) for _ in range(args.rounds))
        best = {name: min(times) for name, times in results.items()}
        print(f"image: {mib:.0f} MiB partition, DSSE Ed25519, {os.cpu_count()} CPUs, best of {args.rounds}")
        for name, seconds in best.items():
            ratio = best["hashlib"] / seconds
            print(f"  {name:14s} {seconds:7.3f} s  {mib / seconds:7.0f} MiB/s  {ratio:5.2f}x hashlib")
        print(f"  cache fill     {first:7.3f} s")
        print(f"  cache warm     {warm:7.3f} s  (re-verify of the unchanged image)")


if __name__ == "__main__":
    main()
