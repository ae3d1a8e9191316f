"""The native zsync seed scan (siffs/delta/_zscan.c) against its numpy oracle, and its MD4."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from Crypto.Hash import MD4

from siffs.delta import zsync
from tests.delta.conftest import vector

native = pytest.mark.skipif(
    not zsync.native_available(), reason="siffs.delta._zscan not built or SIFFS_NO_NATIVE set"
)


def control_for(
    target: bytes, block_size: int, seq: int, rsum_bytes: int, checksum_bytes: int
) -> zsync.ControlFile:
    """A control file with any hash lengths (zsyncmake picks them from the size; tests want all)."""
    padded = target + bytes(-len(target) % block_size)
    rows = np.frombuffer(padded, dtype=np.uint8).reshape(-1, block_size)
    a, b = zsync._rsums(rows)
    records = bytearray()
    for i, key in enumerate(((a << np.uint64(16)) | b).tolist()):
        records += key.to_bytes(4, "big")[4 - rsum_bytes :]
        records += MD4.new(padded[i * block_size : (i + 1) * block_size]).digest()[:checksum_bytes]
    return zsync.ControlFile(
        "t", block_size, len(target), seq, rsum_bytes, checksum_bytes, ("t",), None, bytes(records)
    )


def found(
    control: zsync.ControlFile, seeds: list[bytes], tmp_path, *, use_native: bool
) -> dict[int, tuple[int, int]]:
    finder = zsync.matcher(control, use_native=use_native)
    for number, data in enumerate(seeds):
        path = tmp_path / f"seed{number}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            finder.scan(number, fd, len(data), None)
        finally:
            os.close(fd)
    return dict(finder.found)


def _cases() -> list[tuple[bytes, list[bytes]]]:
    rng = random.Random(7)
    base = rng.randbytes(600_000)
    edited = bytearray(base)
    edited[100_000:100_010] = b"x" * 10
    edited = edited[:300_001] + rng.randbytes(777) + edited[300_001:] + b"tail"
    repeats = (vector(5000) * 40)[:190_000]
    return [
        (bytes(edited), [base]),
        (bytes(edited), [base[:200_000], base[200_000:] + bytes(3000)]),  # two seeds
        (bytes(20_000) + bytes(edited[:90_000]), [bytes(9000) + base[:120_000]]),  # zero blocks
        (repeats, [repeats[1000:] + repeats[:1000]]),  # many blocks with the same checksums
        (bytes(edited[:5000]), [bytes(edited)]),  # short target, last block short
        (bytes(edited), [b"", b"abc"]),  # seeds shorter than a block
    ]


@native
@pytest.mark.parametrize(
    ("block_size", "seq", "rsum_bytes", "checksum_bytes"),
    [(2048, 2, 2, 5), (2048, 1, 4, 16), (1024, 2, 3, 3), (4096, 1, 2, 8), (512, 2, 4, 4)],
)
def test_native_scan_equals_numpy(tmp_path, block_size, seq, rsum_bytes, checksum_bytes):
    hits = 0
    for target, seeds in _cases():
        control = control_for(target, block_size, seq, rsum_bytes, checksum_bytes)
        expected = found(control, seeds, tmp_path, use_native=False)
        assert found(control, seeds, tmp_path, use_native=True) == expected
        hits += len(expected)
    assert hits > 300  # the cases do find blocks


@native
def test_native_scan_equals_numpy_on_a_zsyncmake_file(tmp_path):
    target = tmp_path / "t.bin"
    rng = random.Random(3)
    old = rng.randbytes(3_000_000)
    new = old[:1_000_000] + rng.randbytes(5000) + old[1_000_000:2_000_000] + old[2_100_000:]
    target.write_bytes(new)
    zsync.make(str(target), str(tmp_path / "t.zsync"))
    control = zsync.parse((tmp_path / "t.zsync").read_bytes())
    expected = found(control, [old], tmp_path, use_native=False)
    assert found(control, [old], tmp_path, use_native=True) == expected
    assert len(expected) > control.blocks * 0.9


@native
def test_native_md4_is_rfc1320():
    from siffs.delta import _zscan  # noqa: PLC0415 -- only when built

    assert _zscan.md4(b"abc").hex() == "a448017aaf21d8525fc10ae87aa6729d"  # RFC 1320's test suite
    rng = random.Random(1)
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 4096, 100_001):
        data = rng.randbytes(n)
        assert _zscan.md4(data) == MD4.new(data).digest()


@native
def test_native_scan_reports_a_read_error(tmp_path):
    control = control_for(vector(50_000), 2048, 2, 2, 5)
    finder = zsync.matcher(control)
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: pread fails with EISDIR
    try:
        with pytest.raises(IsADirectoryError):
            finder.scan(0, fd, 100_000, None)
    finally:
        os.close(fd)


def test_runs_are_extended_backward_too(tmp_path):
    """The block before a run is taken from the seed when it is there (and only then)."""
    target = vector(20_000)
    control = control_for(target, 2048, 2, 2, 5)
    seed = tmp_path / "seed"
    seed.write_bytes(b"x" * 2048 + target)
    fd = os.open(seed, os.O_RDONLY)
    try:
        found = zsync._extend_backward(control, {3: (0, 2048 * 4), 7: (0, 2048 * 8 + 1)}, [fd])
    finally:
        os.close(fd)
    # Blocks 0-2 lie right before block 3 in the seed; before block 7's (wrong) place lies nothing
    # of the target, and no block is taken from before the seed's start.
    assert found == {0: (0, 2048), 1: (0, 4096), 2: (0, 6144), 3: (0, 8192), 7: (0, 16385)}
